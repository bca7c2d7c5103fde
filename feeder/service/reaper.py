"""The reaper: applies the transitions time causes (lease expiry, scheduled promotion).

It sleeps until the earliest timer of any task, so an expired lease is ready again within
milliseconds of its deadline without any periodic scan. `run_once(now)` is the whole logic.
Tasks it makes ready are announced by the store (its hooks), like any other change.

With several feeders on one database, one of them runs the reaper (see
`TaskService._maintain`). It hears of the timers its own feeder sets, not of the others':
for those it reads the earliest timer again every `Store.timer_recheck` seconds, which is
shorter than the shortest lease, so it still wakes at each deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from feeder.core import machine
from feeder.service.observer import IGNORED, Observer
from feeder.store.base import Change, Store, StoreUnavailable

log = logging.getLogger("feedwork.feeder.reaper")

# An expiry storm is applied in steps with RPCs served between them, so a Lease waits behind
# at most about one step. Steps are sized by time, not count (500 tasks took 5-20 ms, with
# the machine's load): the next takes what STEP_BUDGET holds at the last one's cost per task.
# MAX_BATCH caps it when a step measured next to nothing; MIN_BATCH keeps one slow step (a GC
# pause) from making the next so small that the pauses alone slow a storm (50k tasks at 50 a
# step would sleep 3 s).
STEP_BUDGET = 0.005
MAX_BATCH = 500
MIN_BATCH = 50
STEP_PAUSE = 0.003
# Sleep at most this long even with no timer: a cheap safety net, not the mechanism.
MAX_SLEEP = 5.0
MIN_SLEEP = 0.001
# After a step failed because the database is unreachable.
UNAVAILABLE_PAUSE = 0.5


class Reaper:
    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float],
        step_budget: float | None = STEP_BUDGET,
        timer: Callable[[], float] = time.thread_time,
        observer: Observer = IGNORED,
    ) -> None:
        """`step_budget` None makes every step MAX_BATCH tasks. `timer` measures a step's
        cost: by default this thread's CPU time, so a commit's fsync in the writer thread
        (sync=full), which the loop does not wait for, does not shrink the steps."""
        self._store = store
        self._clock = clock
        self._observer = observer
        self._step_budget = step_budget
        self._timer = timer
        self._poke = asyncio.Event()
        self._sleeping_until: float | None = None
        self._batch = MAX_BATCH

    @property
    def batch(self) -> int:
        """How many tasks the next step takes at most."""
        return self._batch

    async def run_once(self, now: float) -> int:
        """Advances the tasks whose timer has passed, up to `batch` of them, and sizes the next
        step from this one's cost. Returns how many it advanced."""
        started = self._timer()
        due = await self._store.due(now, self._batch)
        changes: list[Change] = []
        # Every task made ready here gets ready_at = now; in id order each one joins the end
        # of its FIFO instead of being sorted into it.
        due.sort(key=lambda task: task.id)
        for task in due:
            decision = machine.advance(task, now)
            if decision.task is not None:
                changes.append(Change(task, decision.task, decision.events))
        if changes:
            await self._store.apply(changes)
            self._observer.advanced(
                [(c.before, c.after, c.events) for c in changes if c.after is not None]
            )
        if due and self._step_budget is not None:
            cost = (self._timer() - started) / len(due)
            fits = MAX_BATCH if cost <= 0 else int(self._step_budget / cost)
            self._batch = max(MIN_BATCH, min(MAX_BATCH, fits))
        return len(changes)

    def wake_by(self, when: float) -> None:
        """A timer at `when` was added: wake up earlier if sleeping past it."""
        if self._sleeping_until is None or when < self._sleeping_until:
            self._poke.set()

    async def run(self) -> None:
        while True:
            try:
                while True:
                    limit = self._batch
                    if await self.run_once(self._clock()) < limit:
                        break  # nothing more is due
                    # A real pause, not sleep(0): an RPC needs several loop turns (read,
                    # handle, commit, reply) and would otherwise wait out the whole storm.
                    await asyncio.sleep(STEP_PAUSE)
            except StoreUnavailable as exc:
                log.warning("reaper step failed (%s); retrying", exc)
                await asyncio.sleep(UNAVAILABLE_PAUSE)
            except Exception:
                log.exception("reaper step failed; retrying")
                await asyncio.sleep(0.1)
            self._poke.clear()
            try:
                next_due = await self._store.next_due()
            except StoreUnavailable:
                next_due = None  # the step above says so, once per retry
            except Exception:
                log.exception("reading the next timer failed; retrying")
                next_due = None
            delay = MAX_SLEEP if next_due is None else max(0.0, next_due - self._clock())
            delay = min(delay, self._store.timer_recheck or MAX_SLEEP, MAX_SLEEP)
            # A timer that is due already but could not be applied (another feeder changed
            # the task meanwhile) is looked at again soon, not in a tight loop.
            delay = max(delay, MIN_SLEEP)
            self._sleeping_until = self._clock() + delay
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=delay)
            except TimeoutError:
                pass
            finally:
                self._sleeping_until = None
