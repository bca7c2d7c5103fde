"""`IndexedStore`: decisions applied to an in-memory `TaskIndex`, the engine behind the memory
and SQLite stores. One feeder owns the data, so the index alone answers which tasks are ready
or due, and reports every change through the store hooks as it applies it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from secrets import token_bytes

from feeder.core.machine import Event
from feeder.core.model import State, Task, TaskSpec
from feeder.store.base import (
    Change,
    LeaseDecider,
    LeaseHolder,
    QueueCounts,
    QueueFull,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TaskFactory,
    TaskPage,
    TooManyPending,
    TooManyQueues,
    changes_news,
    fitting,
    report_news,
    wire_size,
)
from feeder.store.index import TaskIndex

EventCounts = Mapping[tuple[str, Event], int]
# Tasks a claim takes, decides and applies per loop turn (5-10 us each): a Lease of 1000
# holds the loop for a few ms at a time, not 10-20 ms at once.
CLAIM_SLICE = 256
# Records a listing looks at per loop turn (well under a millisecond's worth).
LIST_SCAN_SLICE = 4096
# New task records a submit makes per loop turn (their ids, depth and keys are reserved
# before the first): the batch is still stored, and shown, all at once.
CREATE_SLICE = 256


class IndexedStore:
    """Decisions applied to an in-memory `TaskIndex`. Subclasses make them durable by
    overriding the `_persist_*` hooks; this class alone forgets everything on exit.

    Only one feeder opens the data (`shared` is False), so it is always the maintenance
    leader and hears of every change: nothing needs re-checking."""

    shared = False
    ready_recheck: float | None = None
    timer_recheck: float | None = None
    # The index is the only record of final tasks: it keeps them findable (a subclass that
    # reads them from disk turns this off and overrides list_dead and purge_finished).
    final_lookup = True

    def __init__(
        self, *, payload_memory: int | None = None, max_pending: int | None = None
    ) -> None:
        self._index = TaskIndex(final_lookup=self.final_lookup)
        # Pending tasks held in memory, of every queue (None: no bound but the queues').
        self._max_pending = max_pending
        # Payload bytes of pending tasks held in memory; past it, new payloads are left on
        # disk and read back when leased (None: everything in memory, for a store without a
        # disk). See `_hold`.
        self._payload_memory = payload_memory
        # Tasks whose record is held without its payload: id -> payload size.
        self._offloaded: dict[int, int] = {}
        self._hooks = StoreHooks()
        self._secret = token_bytes(32)
        self._next_id = 1
        # New tasks of each queue between their depth check and their becoming visible.
        self._inflight: Counter[str] = Counter()
        self._inflight_total = 0
        # Idempotency keys of submits being made durable, with what their commit resolves.
        self._inflight_keys: dict[tuple[str, str], asyncio.Future[None]] = {}
        # Submits that run to their end even when their caller has gone.
        self._storing: set[asyncio.Future[None]] = set()

    @property
    def token_secret(self) -> bytes:
        return self._secret

    @property
    def held_payload_bytes(self) -> int:
        """Payload bytes of pending tasks held in memory: never more than `payload_memory`
        once a write has returned (see `_hold`)."""
        return self._index.payload_bytes

    def set_hooks(self, hooks: StoreHooks) -> None:
        self._hooks = hooks

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        await self._settle()

    async def _settle(self) -> None:
        """Waits for the submits still being made durable (their callers may be gone)."""
        while self._storing:
            await asyncio.wait(list(self._storing))

    @asynccontextmanager
    async def leadership(self) -> AsyncIterator[asyncio.Event]:
        # The only feeder on this data: the role is ours at once and never lost.
        yield asyncio.Event()

    # -- durability hooks ---------------------------------------------------------------

    async def _persist_new(self, tasks: Sequence[Task], events: EventCounts) -> None:
        """Makes new tasks durable before they become visible."""
        return None

    async def _persist_changes(self, changes: Sequence[Change], events: EventCounts) -> None:
        """Makes applied changes durable (they are already visible in the index)."""
        return None

    async def _fetch(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """Records that are not held in memory."""
        return {}

    async def _read_payloads(self, task_ids: Sequence[int]) -> dict[int, bytes]:
        """The stored payloads of tasks held without theirs."""
        raise NotImplementedError("a store without a disk holds every payload")

    def _find_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Stored tasks with these idempotency keys whose records are not held in memory."""
        return {}

    async def _persist_forgotten(self, queues: Sequence[str]) -> None:
        """Makes the forgetting of queues durable (it is already visible in the index):
        their totals and pauses go, in order with the writes before and after it."""
        return None

    async def _persist_paused(self, queue: str, at: float | None) -> None:
        """Makes a pause (`at`: when) or a resume (None) durable; it is already in effect
        in the index."""
        return None

    # -- writes -------------------------------------------------------------------------

    async def submit(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
        max_queues: int | None = None,
    ) -> list[Submitted]:
        while True:
            # A key that another submit is still committing: its answer may only name a
            # task once that task is durable, so wait for that commit, then look again
            # (the key is then stored, or free if that commit failed).
            pending = {
                self._inflight_keys[(spec.queue, spec.idempotency_key)]
                for spec in specs
                if spec.idempotency_key
                and (spec.queue, spec.idempotency_key) in self._inflight_keys
            }
            if not pending:
                return await self._submit_now(
                    specs, create=create, max_depth=max_depth, max_queues=max_queues
                )
            await asyncio.wait([asyncio.shield(f) for f in pending])

    async def _submit_now(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
        max_queues: int | None,
    ) -> list[Submitted]:
        index = self._index
        # Per position: the new task it is (its index in `new_specs`), or None for a task
        # that exists already (`existing_ids`). The records are made after the reservation.
        made: list[int | None] = []
        repeated: set[int] = set()  # positions that repeat a key of an earlier position
        new_specs: list[TaskSpec] = []
        batch_keys: dict[tuple[str, str], int] = {}
        existing_ids: dict[int, int] = {}
        # Keys of tasks not held in memory (finished a while ago) are looked up on disk,
        # all of the batch's at once.
        unheld = [
            (spec.queue, spec.idempotency_key)
            for spec in specs
            if spec.idempotency_key and (spec.queue, spec.idempotency_key) not in index.keys
        ]
        stored = self._find_keys(unheld) if unheld else {}
        for position, spec in enumerate(specs):
            key = (spec.queue, spec.idempotency_key) if spec.idempotency_key else None
            if key is not None and key in batch_keys:
                made.append(batch_keys[key])
                repeated.add(position)
                continue
            if key is not None and (key in index.keys or key in stored):
                existing_ids[position] = index.keys.get(key) or stored[key]
                made.append(None)
                continue
            if key is not None:
                batch_keys[key] = len(new_specs)
            made.append(len(new_specs))
            new_specs.append(spec)
        # Counted once per batch (Counter counts an iterable in C).
        added: Counter[str] = Counter(spec.queue for spec in new_specs)
        if max_queues is not None:
            new_queues = [q for q in added if not index.knows(q) and not self._inflight[q]]
            if new_queues:
                known = index.queue_count()
                if known + len(new_queues) > max_queues:
                    raise TooManyQueues(new_queues[0], known, max_queues)
        if self._max_pending is not None and new_specs:
            pending = index.pending_total + self._inflight_total
            if pending + len(new_specs) > self._max_pending:
                raise TooManyPending(pending, self._max_pending)
        for queue, count in added.items():
            depth = index.pending(queue) + self._inflight[queue]
            if depth + count > max_depth(queue):
                raise QueueFull(queue, depth, max_depth(queue))
        # Ids, depth and keys are reserved before any await so concurrent submits never
        # share one.
        first_id = self._next_id
        self._next_id += len(new_specs)
        new: list[Task] = []
        if new_specs:
            self._inflight.update(added)
            self._inflight_total += len(new_specs)
            storing = asyncio.ensure_future(
                self._store_new(new_specs, first_id, create, added, batch_keys, new)
            )
            for key in batch_keys:
                self._inflight_keys[key] = storing
            self._storing.add(storing)
            storing.add_done_callback(_settled(self._storing))
            # Shielded: a caller that gives up (deadline, cancel) while the commit runs
            # does not stop its tasks from joining the index once they are on disk.
            await asyncio.shield(storing)
        found = await self.get(existing_ids.values(), payloads=False) if existing_ids else {}
        return [
            Submitted(found[existing_ids[position]], deduplicated=True)
            if made_as is None
            else Submitted(new[made_as], deduplicated=position in repeated)
            for position, made_as in enumerate(made)
        ]

    async def _store_new(
        self,
        specs: Sequence[TaskSpec],
        first_id: int,
        create: TaskFactory,
        added: Counter[str],
        keys: Iterable[tuple[str, str]],
        new: list[Task],
    ) -> None:
        """Makes the new tasks' records (ids from `first_id` on, into `new`), makes them
        durable, then visible, all of them at once."""
        try:
            # Per new task, its queue and events: counted once per batch, below.
            new_events: list[tuple[str, tuple[Event, ...]]] = []
            for start in range(0, len(specs), CREATE_SLICE):
                if start:
                    await asyncio.sleep(0)  # other calls are served between two slices
                for spec in specs[start : start + CREATE_SLICE]:
                    decision = create(spec, first_id + len(new))
                    assert decision.task is not None
                    new.append(decision.task)
                    new_events.append((spec.queue, decision.events))
            events: Counter[tuple[str, Event]] = Counter()
            for (queue, decided), count in Counter(new_events).items():
                for event in decided:
                    events[(queue, event)] += count
            await self._persist_new(new, events)
            index = self._index
            for task in new:
                index.put(None, task)
            self._hold(new)
            self._count(events)
            self._report([(None, task) for task in new])
        finally:
            self._inflight.subtract(added)
            self._inflight_total -= len(specs)
            for key in keys:
                self._inflight_keys.pop(key, None)

    async def claim(
        self, queue: str, limit: int, lease: LeaseDecider, *, max_bytes: int | None = None
    ) -> list[Task]:
        # CLAIM_SLICE tasks at a time, each slice taken, decided and applied in one loop
        # turn (nothing is ever out of the ready FIFOs without being leased across a turn).
        # A paused queue hands out nothing, from the slice after the pause on.
        leased: list[Task] = []
        offloaded = self._offloaded
        paused = self._index.paused
        taken, size, full = 0, 0, False
        while taken < limit and not full and queue not in paused:
            if taken:
                await asyncio.sleep(0)  # other calls are served between two slices
                if queue in paused:
                    break
            want = min(CLAIM_SLICE, limit - taken)
            chunk = self._index.pop_ready(queue, want)
            if max_bytes is not None:
                for position, task in enumerate(chunk):
                    size += wire_size(task) + offloaded.get(task.id, 0)
                    if size > max_bytes and (position or taken):  # the first always goes
                        self._index.restore_ready(queue, chunk[position:])
                        # Still ready: the next waiter may take them.
                        self._hooks.ready(queue, len(chunk) - position)
                        del chunk[position:]
                        full = True
                        break
            taken += len(chunk)
            changes: list[Change] = []
            for task in chunk:
                decision = lease(task)
                if decision.task is not None:
                    changes.append(Change(task, decision.task, decision.events))
            if changes:
                await self.apply(changes)
            leased += [
                c.after for c in changes if c.after is not None and c.after.state is State.LEASED
            ]
            if len(chunk) < want:
                break  # nothing more is ready
        if offloaded and any(task.id in offloaded for task in leased):
            loaded = await self._with_payloads(leased)
            leased = [loaded.get(task.id, task) for task in leased]
        return leased

    async def apply(
        self, changes: Sequence[Change], events: EventCounts | None = None
    ) -> list[bool]:
        index = self._index
        applied: list[bool] = []
        done: list[Change] = []
        counted: Counter[tuple[str, Event]] = Counter(events or {})
        missing = [c.before.id for c in changes if c.before.id not in index.tasks]
        if missing:
            # Records no longer held in memory (final tasks a subclass evicted) are read
            # back; `get` keeps them in the index. Deleted tasks stay missing.
            await self.get(missing, payloads=False)
        offloaded = self._offloaded
        held: list[Task] = []
        for change in changes:
            # Every current record is in the index now; anything else was changed meanwhile.
            current = index.tasks.get(change.before.id)
            if current is None or current.version != change.before.version:
                applied.append(False)
                continue
            after = change.after
            if after is None:
                offloaded.pop(current.id, None)
            elif current.id in offloaded:
                # Decided from a record read with its payload: the index goes on holding
                # it without.
                if after.payload:
                    after = after.evolve(payload=b"")
            elif after.payload and after.state.is_pending and not current.state.is_pending:
                held.append(after)  # back to pending (redriven): counted in the budget
            index.put(current, after)
            applied.append(True)
            done.append(change)
            for event in change.events:
                counted[(current.queue, event)] += 1
        if held:
            self._hold(held)
        if counted:
            self._count(counted)
        if done or counted:
            await self._persist_changes(done, counted)
        if done:
            self._report([(c.before.state, c.after) for c in done])
        return applied

    def _hold(self, tasks: Sequence[Task]) -> None:
        """Keeps pending payloads in memory within the budget: past it, the payloads of
        `tasks` (just made pending), newest first, are left on disk. FIFO queues lease the
        oldest first, so those that wait longest are the ones read back."""
        budget = self._payload_memory
        index = self._index
        if budget is None or index.payload_bytes <= budget:
            return
        for task in reversed(tasks):
            current = index.tasks.get(task.id)
            if current is None or not current.payload or not current.state.is_pending:
                continue
            self._offloaded[task.id] = index.drop_payload(task.id)
            if index.payload_bytes <= budget:
                return

    async def _with_payloads(self, tasks: Iterable[Task]) -> dict[int, Task]:
        """Copies of the records held without their payloads, with them."""
        offloaded = self._offloaded
        missing = {task.id: task for task in tasks if task.id in offloaded and not task.payload}
        if not missing:
            return {}
        payloads = await self._read_payloads(list(missing))
        if len(payloads) < len(missing):
            lost = sorted(missing.keys() - payloads.keys())
            raise StoreUnavailable(f"payloads of tasks {lost[:5]} could not be read")
        return {i: missing[i].evolve(payload=payloads[i]) for i in missing}

    def _report(self, records: Sequence[tuple[State | None, Task | None]]) -> None:
        report_news(self._hooks, changes_news(records))

    def _count(self, events: EventCounts) -> None:
        for (queue, event), count in events.items():
            self._index.totals[queue][event] += count

    # -- reads --------------------------------------------------------------------------

    async def get(self, task_ids: Iterable[int], *, payloads: bool = True) -> dict[int, Task]:
        found: dict[int, Task] = {}
        missing: list[int] = []
        for task_id in task_ids:
            task = self._index.tasks.get(task_id)
            if task is None:
                missing.append(task_id)
            else:
                found[task_id] = task
        if missing:
            fetched = await self._fetch(missing)
            for task_id, task in fetched.items():
                # Another coroutine may have loaded (and changed) it during the await.
                found[task_id] = self._index.tasks.setdefault(task_id, task)
                self._cached_from_disk(task)
        if payloads and self._offloaded:
            found.update(await self._with_payloads(found.values()))
        return found

    async def recall(self, task_ids: Iterable[int]) -> tuple[dict[int, Task], set[int]]:
        # The index holds every current record: nothing is out of date. (Decisions on
        # acks and nacks need no payloads.)
        found = await self.get(task_ids, payloads=False)
        return found, set(found)

    def _cached_from_disk(self, task: Task) -> None:
        """Hook: a record read from disk is now held in memory."""

    async def due(self, now: float, limit: int) -> list[Task]:
        return self._index.due(now, limit)

    async def next_due(self) -> float | None:
        return self._index.next_due()

    async def list_dead(self, queue: str, *, after_id: int | None, limit: int) -> TaskPage:
        final = self._index.final
        assert final is not None  # see final_lookup
        dead = final.dead_after(queue, after_id, limit + 1)
        page = [self._index.tasks[i] for i in dead[:limit]]
        more = len(dead) > limit
        return TaskPage(page, page[-1].id if more and page else None)

    async def list_tasks(
        self,
        queue: str,
        states: frozenset[State] | None,
        *,
        after_id: int | None,
        limit: int,
        newest_first: bool = False,
        payloads: bool = True,
        max_bytes: int | None = None,
    ) -> TaskPage:
        # Every record is held (final_lookup): a look at each, LIST_SCAN_SLICE per loop
        # turn. An operator's listing, on the store for tests and benchmarks.
        assert self._index.final is not None  # see final_lookup; SQLite reads its disk
        records = list(self._index.tasks.values())
        found: list[Task] = []
        for start in range(0, len(records), LIST_SCAN_SLICE):
            if start:
                await asyncio.sleep(0)
            found += [
                t
                for t in records[start : start + LIST_SCAN_SLICE]
                if t.queue == queue
                and (states is None or t.state in states)
                and (after_id is None or (t.id < after_id if newest_first else t.id > after_id))
            ]
        found.sort(key=_task_id, reverse=newest_first)
        count, _ = fitting(found[:limit], max_bytes if payloads else None)
        page = found[:count]
        more = len(found) > count
        return TaskPage(page, page[-1].id if more and page else None)

    async def lease_holders(self, queue: str | None, *, limit: int) -> list[LeaseHolder]:
        index = self._index
        groups: dict[tuple[str, str, str], list[float]] = {}
        for task_id in index.leased:
            task = index.tasks[task_id]
            if queue is not None and task.queue != queue:
                continue
            current = task.current_attempt()
            worker, caller, leased_at = (
                ("", "", task.ready_at)
                if current is None
                else (current.worker_id, current.caller, current.leased_at)
            )
            groups.setdefault((task.queue, worker, caller), []).append(leased_at)
        return [
            LeaseHolder(name, worker, caller, len(times), min(times), max(times))
            for (name, worker, caller), times in sorted(groups.items())[:limit]
        ]

    async def pause(self, queue: str, *, at: float) -> bool:
        if not self._index.pause(queue, at):
            return False
        await self._persist_paused(queue, at)
        return True

    async def resume(self, queue: str) -> bool:
        if not self._index.resume(queue):
            return False
        await self._persist_paused(queue, None)
        ready = self._index.counts.get(queue, Counter())[State.READY]
        if ready:
            self._hooks.ready(queue, ready)
        return True

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        final = self._index.final
        assert final is not None  # see final_lookup
        old = final.finished(finished_before, limit, self._index.tasks)
        return sum(await self.apply([Change(t, None) for t in old]))

    async def forget_empty_queues(self, limit: int, *, only: Sequence[str] | None = None) -> int:
        # A queue with a submit in flight (between its depth check and its tasks joining
        # the index) is not empty: its tasks are on their way. Its entry in `_inflight`
        # goes with the queue, else every name ever submitted to would stay there.
        inflight = self._inflight
        forgotten = self._index.forget_empty(
            limit, busy=lambda queue: inflight[queue] > 0, only=only
        )
        for queue in forgotten:
            inflight.pop(queue, None)
        if forgotten:
            await self._persist_forgotten(forgotten)
        return len(forgotten)

    async def queue_counts(
        self,
        queues: Sequence[str] | None = None,
        *,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[QueueCounts]:
        index = self._index
        names = list(queues) if queues else index.queues(after=after, limit=limit)
        # .get, not [name]: asking about a queue must not make the feeder know it.
        none: Counter[State] = Counter()
        return [
            QueueCounts(
                queue=name,
                by_state={s: index.counts.get(name, none)[s] for s in State},
                oldest_ready_at=index.oldest_ready_at(name),
                totals=dict(index.totals.get(name, {})),
                paused_at=index.paused.get(name),
            )
            for name in names
        ]


def _task_id(task: Task) -> int:
    return task.id


def _settled(running: set[asyncio.Future[None]]) -> Callable[[asyncio.Future[None]], None]:
    """A done-callback: forgets a finished submit, and takes its error (the caller, if
    still there, has it too) so an abandoned one is not reported as never retrieved."""

    def done(future: asyncio.Future[None]) -> None:
        running.discard(future)
        if not future.cancelled():
            future.exception()

    return done
