"""TaskService: every feeder operation, in domain terms (no protobuf, no gRPC).

It reads records from the store, asks the state machine what happens, and has the store
apply the decision guarded by the version it was made from. A guard that fails means a
concurrent change won; the item is decided again from the fresh record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from feeder.core import machine
from feeder.core.machine import Decision, Event
from feeder.core.model import (
    AckOutcome,
    CancelOutcome,
    ExtendOutcome,
    NackOutcome,
    State,
    Task,
    TaskSpec,
)
from feeder.core.policy import QueuePolicy
from feeder.core.records import fast_init
from feeder.core.tokens import KeyRing, LeaseRef, TokenCodec, TokenError
from feeder.service.clock import SteadyClock
from feeder.service.consumers import CAP_RECHECK, Consumer, Consumers, ConsumerView
from feeder.service.janitor import Janitor
from feeder.service.observer import IGNORED, Observer
from feeder.service.queues import QueueControls
from feeder.service.reaper import Reaper
from feeder.service.token_keys import KEY_FILE_CHECK, TokenKeyFile
from feeder.service.turns import in_slices, next_turn
from feeder.service.waiters import Waiters
from feeder.store.base import (
    Change,
    QueueCounts,
    Store,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TaskPage,
)

log = logging.getLogger("feedwork.feeder")

OutcomeT = TypeVar("OutcomeT")
# A decision is retried this often when concurrent changes keep winning the guard.
MAX_RACES = 8
# How long to wait before trying again to take the maintenance role after a failure.
LEADERSHIP_RETRY = 1.0
# The most leases one consumer (a Consume stream, a Lease caller) holds unacked, by default.
MAX_UNACKED_PER_CONSUMER = 1000
# On a shared database, the leases consumers hold are all re-read this often: ends this
# feeder did not hear of (acks through other feeders, expiries by another's reaper) would
# otherwise stay in its books for as long as their consumer stays below its cap.
RECHECK_EVERY = 60.0
RECHECK_BATCH = 1000
# Queues counted per store call, dead tasks redriven or purged per apply: each slice holds
# the event loop for a few ms at most (see feeder.service.turns); a request of more is
# served in several, other calls in between.
STATS_SLICE = 256
DEAD_SLICE = 500
# Items of an Ack, Nack or Extend decided per turn: a decision takes 5-35 us (a terminal
# nack, with its history, the most).
DECIDE_SLICE = 64
# Changes per store apply: an apply of 1000 held the loop 4-6 ms in one turn. Each slice is
# its own transaction (the items of an Ack, Nack or Extend have outcomes of their own).
APPLY_SLICE = 256


@fast_init
@dataclass(frozen=True, slots=True)
class LeaseGrant:
    task: Task
    lease_token: str


@fast_init
@dataclass(frozen=True, slots=True)
class AckItem:
    lease_token: str
    result: bytes | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class AckResult:
    outcome: AckOutcome
    task_id: int | None


@fast_init
@dataclass(frozen=True, slots=True)
class NackItem:
    lease_token: str
    error: str = ""
    retry_after: float | None = None
    terminal: bool = False
    release: bool = False


@fast_init
@dataclass(frozen=True, slots=True)
class NackResult:
    outcome: NackOutcome
    task_id: int | None
    retry_at: float | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class ExtendItem:
    lease_token: str
    lease_duration: float | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class ExtendResult:
    outcome: ExtendOutcome
    task_id: int | None
    lease_deadline: float | None = None


class TaskService:
    """The feeder's operations. Construct, `await start()`, use, `await stop()`."""

    def __init__(
        self,
        *,
        store: Store,
        policies: Callable[[str], QueuePolicy],
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        retention: float = 86400.0,
        on_availability: Callable[[bool], None] | None = None,
        max_reply_bytes: int | None = None,
        max_queues: int | None = None,
        max_unacked: int = MAX_UNACKED_PER_CONSUMER,
        token_secret_file: str | None = None,
        observer: Observer = IGNORED,
    ) -> None:
        """`on_availability(ok)` hears when the store becomes unreachable and reachable
        again (the server's health status follows it). `clock` defaults to a
        `SteadyClock`: wall-clock seconds that do not follow the wall clock's steps.
        `max_unacked` caps the leases one consumer holds unacked (see
        `feeder.service.consumers`). With a `token_secret_file`, lease tokens are signed
        with its current key (see `feeder.service.token_keys`), else with the database's
        secret. `observer` hears of leases, acks, nacks and extends (metrics)."""
        self._store = store
        self._observer = observer
        # A lease hands out no more tasks than fit one reply (None: no bound).
        self._max_reply_bytes = max_reply_bytes
        # Submits may not make the database know more queues than this (None: no bound).
        self._max_queues = max_queues
        self._policies = policies
        clock = clock or SteadyClock()
        self._clock = clock
        self._rng = rng or random.Random()
        self._waiters = Waiters()
        self._reaper = Reaper(store=store, clock=clock, observer=observer)
        self._janitor = Janitor(store=store, clock=clock, retention=retention)
        self._tokens: TokenCodec | None = None
        self._key_file = None if token_secret_file is None else TokenKeyFile(token_secret_file)
        self._loops: list[asyncio.Task[None]] = []
        self._releasing: set[asyncio.Future[list[NackResult]]] = set()
        self._draining = False
        self._leading = False
        self._consumers = Consumers()
        # Pause, resume, purge, delete and listings: an operator's controls of queues.
        self.queues = QueueControls(store=store, clock=clock, max_reply_bytes=max_reply_bytes)
        self._rechecks: set[asyncio.Future[None]] = set()
        self._rechecked_at = 0.0
        self.max_unacked = max_unacked
        # Looked up at each call (not bound now), so a test can stand in for any of them.
        store.set_hooks(
            StoreHooks(
                ready=lambda queue, count: self._waiters.wake(queue, count),
                timer=lambda when: self._reaper.wake_by(when),
                missed=lambda: self._missed(),
                available=on_availability or (lambda ok: None),
                ended=lambda leases: self._consumers.ended(leases),
            )
        )

    def _missed(self) -> None:
        """Notifications from other feeders may have been lost: long polls look again,
        and the leases of every consumer are re-read (a lost cancellation is then pushed
        to its holder all the same)."""
        self._waiters.wake_every_queue()
        self._recheck_consumers()

    def _recheck_consumers(self) -> None:
        """Re-reads every lease a consumer holds, in the background (once at a time)."""
        if self._rechecks or not self._consumers.holders:
            return
        self._rechecked_at = asyncio.get_running_loop().time()
        checking = asyncio.ensure_future(self._recheck())
        self._rechecks.add(checking)
        checking.add_done_callback(self._rechecks.discard)

    async def _recheck(self) -> None:
        consumers = self._consumers
        for consumer, ids in consumers.by_holder().items():
            for start in range(0, len(ids), RECHECK_BATCH):
                batch = ids[start : start + RECHECK_BATCH]
                try:
                    consumers.verify(consumer, batch, await self._store.get(batch, payloads=False))
                except StoreUnavailable:
                    return  # the next `missed`, once the store is back, tries again

    @property
    def reaper(self) -> Reaper:
        return self._reaper

    @property
    def janitor(self) -> Janitor:
        return self._janitor

    @property
    def leading(self) -> bool:
        """This feeder runs the database's maintenance (reaper and janitor) now."""
        return self._leading

    async def start(self, *, background: bool = True) -> None:
        """Raises TokenKeyFileError, before the store opens, if the token secret file cannot
        be used."""
        ring: KeyRing | None = None
        if self._key_file is not None:
            ring = await asyncio.to_thread(self._key_file.load)
        await self._store.open()
        # The database's secret stays in every codec: tokens issued before a key file was
        # configured, and by feeders without one, still verify.
        self._tokens = TokenCodec(self._store.token_secret, ring)
        if background:
            self._loops = [asyncio.create_task(self._maintain(), name="feedwork-maintenance")]
            if self._key_file is not None:
                watch = asyncio.create_task(self._watch_token_keys(), name="feedwork-token-keys")
                self._loops.append(watch)

    async def reload_token_keys(self) -> bool:
        """Re-reads the token secret file if it changed: True when new keys are now in use.
        An unreadable or invalid new version is logged, and the keys in use are kept."""
        if self._key_file is None or self._tokens is None:
            return False
        ring = await asyncio.to_thread(self._key_file.poll)
        if ring is None:
            return False
        self._tokens = TokenCodec(self._store.token_secret, ring)
        return True

    async def _watch_token_keys(self) -> None:
        while True:
            await asyncio.sleep(KEY_FILE_CHECK)
            try:
                await self.reload_token_keys()
            except Exception:
                log.exception("checking the token secret file failed; retrying")

    async def _maintain(self) -> None:
        """Runs the reaper and the janitor while this feeder holds the database's
        maintenance role; with several feeders on one database, one of them at a time does
        (and another takes over when it goes away)."""
        while True:
            try:
                async with self._store.leadership() as lost:
                    self._leading = True
                    log.info("this feeder runs the maintenance (reaper, janitor)")
                    loops = [
                        asyncio.create_task(self._reaper.run(), name="feedwork-reaper"),
                        asyncio.create_task(self._janitor.run(), name="feedwork-janitor"),
                    ]
                    try:
                        await lost.wait()
                        log.warning("maintenance role lost; trying to take it again")
                    finally:
                        self._leading = False
                        for loop in loops:
                            loop.cancel()
                        await asyncio.gather(*loops, return_exceptions=True)
            except StoreUnavailable as exc:
                log.warning("cannot take the maintenance role (%s); retrying", exc)
                await asyncio.sleep(LEADERSHIP_RETRY)
            except Exception:
                log.exception("maintenance failed; retrying")
                await asyncio.sleep(LEADERSHIP_RETRY)

    def lease_counts(self) -> tuple[int, int]:
        """(consumers holding leases from this feeder, leases they hold): streams and
        Lease callers, for metrics."""
        return self._consumers.holding(), self._consumers.holders

    @property
    def draining(self) -> bool:
        """Shutdown has begun: leases are no longer handed out."""
        return self._draining

    def drain(self) -> None:
        """Shutdown begins: no more leases; waiting leasers return empty-handed."""
        self._draining = True
        self._waiters.wake_all()

    async def stop(self) -> None:
        self.drain()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []
        for checking in list(self._rechecks):
            checking.cancel()
        if self._releasing:
            await asyncio.wait(self._releasing)
        await self._store.close()

    @property
    def _codec(self) -> TokenCodec:
        if self._tokens is None:
            raise StoreUnavailable("the feeder is not started")
        return self._tokens

    # -- submit -------------------------------------------------------------------------

    async def submit(self, specs: Sequence[TaskSpec]) -> list[Submitted]:
        now = self._clock()

        def create(spec: TaskSpec, task_id: int) -> Decision[State]:
            return machine.create(spec, task_id=task_id, now=now, policy=self._policies(spec.queue))

        return await self._store.submit(
            specs,
            create=create,
            max_depth=lambda q: self._policies(q).max_depth,
            max_queues=self._max_queues,
        )

    # -- lease --------------------------------------------------------------------------

    def stream_consumer(
        self,
        on_cancelled: Callable[[int], None],
        *,
        queue: str | None = None,
        worker_id: str = "",
        caller: str = "",
        peer: str = "",
    ) -> Consumer:
        """A consumer for one Consume stream (of `queue`, opened by `worker_id` of
        `caller` from `peer`: what `consumers` shows of it); `on_cancelled(task_id)` hears
        at once of the cancellation of a task it holds. `close_consumer` it when the
        stream ends."""
        consumer = Consumer(
            "stream",
            on_cancelled,
            worker_id=worker_id,
            caller=caller,
            queue=queue,
            peer=peer,
            since=self._clock(),
        )
        return self._consumers.open_stream(consumer)

    def consumers(self, queue: str | None = None) -> list[ConsumerView]:
        """This feeder's open streams and Lease callers (of `queue`, None: every queue),
        with the leases each holds as far as this feeder knows."""
        return self._consumers.listing(queue)

    def close_consumer(self, consumer: Consumer) -> None:
        self._consumers.close(consumer)

    async def lease(
        self,
        queue: str,
        *,
        max_tasks: int,
        lease_duration: float | None,
        wait: float,
        worker_id: str,
        caller: str = "",
        consumer: Consumer | None = None,
        max_unacked: int | None = None,
    ) -> list[LeaseGrant]:
        """Leases up to `max_tasks` for `consumer` (default: the Lease caller `worker_id` of
        `caller`),
        waiting up to `wait` for the first. A consumer holding its cap of unacked leases
        (the feeder's, or `max_unacked` if lower) gets none until some of them end. Each
        attempt records `worker_id` (the worker's own name) and `caller` (the identity the
        feeder authenticated, "" without auth)."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + wait
        if consumer is None:
            consumer = self._consumers.lease_caller(worker_id, caller, since=self._clock())
        consumer.queues.add(queue)
        cap = self.max_unacked if not max_unacked else min(max_unacked, self.max_unacked)
        room = await self._room(consumer, cap, give_up_at)
        if room <= 0:
            return []
        count = min(max_tasks, room)
        if self._store.shared and loop.time() - self._rechecked_at >= RECHECK_EVERY:
            self._recheck_consumers()
        consumer.reserved += count
        try:
            grants = await self._lease(queue, count, lease_duration, worker_id, caller, give_up_at)
            self._consumers.granted(consumer, (grant.task for grant in grants))
        finally:
            self._consumers.release_reservation(consumer, count)
        return grants

    async def _room(self, consumer: Consumer, cap: int, give_up_at: float) -> int:
        """How many more leases `consumer` may take, once it may take any (0: the wait
        ended first). At its cap it waits for one of its leases to end, and re-reads them
        every CAP_RECHECK seconds for ends this feeder did not hear of."""
        loop = asyncio.get_running_loop()
        consumers = self._consumers
        while not self._draining:
            room = consumer.room(cap)
            if room > 0:
                return room
            if consumer.held and consumers.due_check(consumer, loop.time()):
                held = list(consumer.held)
                consumers.verify(consumer, held, await self._store.get(held, payloads=False))
                continue
            remaining = give_up_at - loop.time()
            if remaining <= 0:
                return 0
            consumer.freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.freed.wait(), min(remaining, CAP_RECHECK))
        return 0

    async def _lease(
        self,
        queue: str,
        max_tasks: int,
        lease_duration: float | None,
        worker_id: str,
        caller: str,
        give_up_at: float,
    ) -> list[LeaseGrant]:
        loop = asyncio.get_running_loop()
        waiters = self._waiters
        first = False
        while not self._draining:
            # Arrival order: a newcomer queues behind leasers already waiting.
            if first or not waiters.has_waiters(queue):
                epoch = waiters.watch(queue)
                grants = await self._claim(queue, max_tasks, lease_duration, worker_id, caller)
                if grants:
                    if len(grants) >= max_tasks:
                        # A full claim may have left more: the next waiter looks.
                        waiters.wake_first(queue)
                    return grants
                if loop.time() >= give_up_at:
                    return []
                if waiters.epoch(queue) != epoch:
                    # Tasks were announced while the claim ran (perhaps after it looked):
                    # look again rather than sleep on a notice already gone by.
                    first = True
                    continue
            elif loop.time() >= give_up_at:
                return []
            turn = waiters.enqueue(queue, first=first)
            woken = await self._wait_turn(queue, turn, give_up_at)
            if woken is None:
                return []
            first = woken
        return []

    async def _wait_turn(
        self, queue: str, turn: asyncio.Future[bool], give_up_at: float
    ) -> bool | None:
        """Waits in line until `turn` comes (True), shutdown (False) or `give_up_at` (None).
        With a store that may miss notices from other feeders (`ready_recheck`), the first
        in line also takes a turn every `ready_recheck` seconds."""
        loop = asyncio.get_running_loop()
        waiters = self._waiters
        recheck = self._store.ready_recheck
        try:
            while True:
                remaining = give_up_at - loop.time()
                timeout = remaining if recheck is None else min(remaining, recheck)
                try:
                    return await asyncio.wait_for(asyncio.shield(turn), max(timeout, 0.0))
                except TimeoutError:
                    if turn.done():
                        # Woken while the timeout was being processed.
                        woken = turn.result()
                        if loop.time() < give_up_at or not woken:
                            return woken
                        # Out of time: pass the turn on, or the ready task would wait for
                        # the next leaser while others are waiting.
                        waiters.wake_first(queue)
                        return None
                    if loop.time() >= give_up_at:
                        waiters.discard(queue, turn)
                        if turn.done() and turn.result():
                            waiters.wake_first(queue)  # woken as we gave up: pass it on
                        return None
                    if waiters.is_first(queue, turn):
                        waiters.discard(queue, turn)
                        return True  # re-check for tasks a lost notice would have announced
                    # Not first in line: keep our place.
        except asyncio.CancelledError:
            waiters.discard(queue, turn)
            if turn.done() and not turn.cancelled() and turn.result():
                waiters.wake_first(queue)  # pass our turn on
            raise

    def _release_unclaimed(self, leased: list[Task]) -> None:
        """Gives back tasks leased for a caller that went away while the leases committed
        (a client that cancelled its Lease, a worker that closed its stream), instead of
        leaving them leased to nobody until their leases expire."""
        codec = self._codec
        items = [
            NackItem(
                codec.issue(task.id, task.attempt),
                error="released: the caller went away",
                release=True,
            )
            for task in leased
        ]
        releasing = asyncio.ensure_future(self.nack(items))
        self._releasing.add(releasing)
        releasing.add_done_callback(self._released)
        log.info("releasing %d tasks leased for a caller that went away", len(items))

    def _released(self, releasing: asyncio.Future[list[NackResult]]) -> None:
        self._releasing.discard(releasing)
        if not releasing.cancelled() and (exc := releasing.exception()) is not None:
            log.warning("could not release the tasks (their leases will expire): %s", exc)

    async def _claim(
        self,
        queue: str,
        max_tasks: int,
        lease_duration: float | None,
        worker_id: str,
        caller: str,
    ) -> list[LeaseGrant]:
        policy = self._policies(queue)
        now = self._clock()

        # What the store leases, known before it awaits the commit: if the caller goes away
        # meanwhile, those are released (the store applies every decision it asks for
        # before its first await).
        deciding: list[Task] = []

        def decide(task: Task) -> Decision[bool]:
            decision = machine.lease(
                task,
                now=now,
                worker_id=worker_id,
                lease_duration=lease_duration,
                policy=policy,
                caller=caller,
            )
            if decision.outcome and decision.task is not None:
                deciding.append(decision.task)
            return decision

        try:
            leased = await self._store.claim(
                queue, max_tasks, decide, max_bytes=self._max_reply_bytes
            )
        except asyncio.CancelledError:
            if deciding:
                self._release_unclaimed(deciding)
            raise
        if not leased:
            return []
        self._observer.leased(queue, leased, now)
        codec = self._codec
        grants: list[LeaseGrant] = []
        try:
            async for part in in_slices(leased):
                grants += [LeaseGrant(task, codec.issue(task.id, task.attempt)) for task in part]
        except asyncio.CancelledError:
            # Gone between two slices: the leases are committed, nobody will hear of them.
            self._release_unclaimed(leased)
            raise
        return grants

    # -- ack, nack, extend --------------------------------------------------------------

    async def ack(self, items: Sequence[AckItem]) -> list[AckResult]:
        now = self._clock()

        def decide(task: Task, ref: LeaseRef, index: int) -> Decision[AckOutcome]:
            return machine.ack(task, ref.attempt, result=items[index].result, now=now)

        decided = await self._decide_all(
            [i.lease_token for i in items], decide, AckOutcome.INVALID_TOKEN, AckOutcome.NOT_FOUND
        )
        self._observer.acked([(outcome, task) for outcome, _, task in decided], now)
        return [AckResult(outcome, task_id) for outcome, task_id, _ in decided]

    async def nack(self, items: Sequence[NackItem]) -> list[NackResult]:
        now = self._clock()

        def decide(task: Task, ref: LeaseRef, index: int) -> Decision[NackOutcome]:
            item = items[index]
            return machine.nack(
                task,
                ref.attempt,
                error=item.error,
                retry_after=item.retry_after,
                terminal=item.terminal,
                release=item.release,
                now=now,
                policy=self._policies(task.queue),
                rng=self._rng,
            )

        decided = await self._decide_all(
            [i.lease_token for i in items], decide, NackOutcome.INVALID_TOKEN, NackOutcome.NOT_FOUND
        )
        self._observer.nacked([(outcome, task) for outcome, _, task in decided])
        results = []
        for outcome, task_id, task in decided:
            retry_at = None
            if outcome is NackOutcome.RETRYING and task is not None:
                retry_at = task.not_before if task.state is State.SCHEDULED else now
            results.append(NackResult(outcome, task_id, retry_at))
        return results

    async def extend(self, items: Sequence[ExtendItem]) -> list[ExtendResult]:
        now = self._clock()

        def decide(task: Task, ref: LeaseRef, index: int) -> Decision[ExtendOutcome]:
            return machine.extend(
                task, ref.attempt, lease_duration=items[index].lease_duration, now=now
            )

        decided = await self._decide_all(
            [i.lease_token for i in items],
            decide,
            ExtendOutcome.INVALID_TOKEN,
            ExtendOutcome.NOT_FOUND,
        )
        self._observer.extended([outcome for outcome, _, _ in decided])
        results = []
        for outcome, task_id, task in decided:
            deadline = task.lease_deadline if outcome is ExtendOutcome.EXTENDED and task else None
            results.append(ExtendResult(outcome, task_id, deadline))
        return results

    async def _decide_all(
        self,
        tokens: Sequence[str],
        decide: Callable[[Task, LeaseRef, int], Decision[OutcomeT]],
        invalid: OutcomeT,
        missing: OutcomeT,
    ) -> list[tuple[OutcomeT, int | None, Task | None]]:
        """Verifies tokens, decides each item on the current record and applies the
        decisions; items whose guard failed are decided again from fresh records."""
        codec = self._codec
        refs: list[LeaseRef | None] = []
        async for part in in_slices(tokens):
            for token in part:
                try:
                    refs.append(codec.verify(token))
                except TokenError:
                    refs.append(None)
        results: list[tuple[OutcomeT, int | None, Task | None]] = [
            (invalid, None, None) if ref is None else (missing, ref.task_id, None) for ref in refs
        ]
        todo = [i for i, ref in enumerate(refs) if ref is not None]
        for race in range(MAX_RACES):
            if not todo:
                return results
            # The first round decides from the records the store recalls (the feeder that
            # leased a task knows its record), later rounds from fresh reads.
            todo = await self._decide_round(
                refs, todo, decide, results, missing, recalled=race == 0
            )
        raise StoreUnavailable("too many concurrent changes to the same tasks; retry")

    async def _decide_round(
        self,
        refs: Sequence[LeaseRef | None],
        todo: list[int],
        decide: Callable[[Task, LeaseRef, int], Decision[OutcomeT]],
        results: list[tuple[OutcomeT, int | None, Task | None]],
        missing: OutcomeT,
        *,
        recalled: bool,
    ) -> list[int]:
        ids = {refs[i].task_id for i in todo}  # type: ignore[union-attr]
        if recalled:
            records, current = await self._store.recall(ids)
            unverified = set(records) - current
        else:
            records, unverified = await self._store.get(ids, payloads=False), set()
        # Items of one batch that name the same task see each other's effect, in order.
        latest: dict[int, Task] = dict(records)
        changes: list[Change] = []
        change_items: list[int] = []
        deferred: list[int] = []
        deferred_tasks: set[int] = set()
        events: Counter[tuple[str, Event]] = Counter()
        for position, i in enumerate(todo):
            if position and not position % DECIDE_SLICE:
                # Records read before the turn may change during it: a decision made from
                # one that did fails its guard and is made again in the next round.
                await next_turn()
            ref = refs[i]
            assert ref is not None
            task = latest.get(ref.task_id)
            if task is None:
                results[i] = (missing, ref.task_id, None)
                continue
            if ref.task_id in deferred_tasks:
                deferred.append(i)  # after an earlier item on the same task, in order
                continue
            decision = decide(task, ref, i)
            if decision.task is None and ref.task_id in unverified:
                # Made from a record that may be out of date, and no guard would say so:
                # decided again from a fresh read.
                deferred.append(i)
                deferred_tasks.add(ref.task_id)
                continue
            results[i] = (decision.outcome, ref.task_id, decision.task or task)
            if decision.task is not None:
                changes.append(Change(task, decision.task, decision.events))
                change_items.append(i)
                latest[ref.task_id] = decision.task
                # Later items on it build on this change, which its guard confirms.
                unverified.discard(ref.task_id)
            else:
                # Counted now: a decision that changes nothing cannot lose a race.
                for event in decision.events:
                    events[(task.queue, event)] += 1
        if len(todo) > DECIDE_SLICE:
            await next_turn()  # the apply's own turn is not added to the last slice's
        if not changes:
            if events:
                await self._store.apply([], events)
            return deferred
        # APPLY_SLICE changes per apply, one after the other: an apply runs in one turn, and
        # changes chained on one task still apply in order (a link whose guard failed fails
        # the links after it, which are then decided again).
        applied: list[bool] = []
        for start in range(0, len(changes), APPLY_SLICE):
            if start:
                await next_turn()
            part = changes[start : start + APPLY_SLICE]
            applied += await self._store.apply(part, None if start else events)
        retry = [i for i, ok in zip(change_items, applied, strict=True) if not ok]
        if not retry:
            return deferred
        # A failed guard invalidates later decisions on the same task too.
        failed_tasks = {refs[i].task_id for i in retry}  # type: ignore[union-attr]
        retry += [
            i
            for i in todo
            if i not in retry and refs[i].task_id in failed_tasks  # type: ignore[union-attr]
        ]
        return sorted(set(retry) | set(deferred))

    # -- inspection and administration --------------------------------------------------

    async def get_task(self, task_id: int) -> Task | None:
        return (await self._store.get([task_id])).get(task_id)

    async def queue_of(self, task_id: int) -> str | None:
        """The queue of a task (None: no such task), read without its payload."""
        task = (await self._store.get([task_id], payloads=False)).get(task_id)
        return None if task is None else task.queue

    async def cancel(self, task_id: int) -> tuple[CancelOutcome, State] | None:
        for _ in range(MAX_RACES):
            task = (await self._store.get([task_id], payloads=False)).get(task_id)
            if task is None:
                return None
            now = self._clock()
            caught_up = machine.advance(task, now)
            current = caught_up.task or task
            decision = machine.cancel(current, now=now)
            if decision.task is None:
                if caught_up.task is not None:
                    await self._store.apply([Change(task, current, caught_up.events)])
                return decision.outcome, current.state
            change = Change(task, decision.task, (*caught_up.events, *decision.events))
            if (await self._store.apply([change]))[0]:
                return decision.outcome, decision.task.state
        raise StoreUnavailable("too many concurrent changes to this task; retry")

    async def list_dead(self, queue: str, *, page_size: int, after_id: int | None) -> TaskPage:
        return await self._store.list_dead(queue, after_id=after_id, limit=page_size)

    async def _dead_selection(
        self, queue: str, task_ids: Sequence[int] | None, limit: int
    ) -> AsyncIterator[list[Task]]:
        """The selected dead tasks, DEAD_SLICE at a time, each read when the caller has
        applied the previous slice (a selection may name 100,000 tasks)."""
        if task_ids is not None:
            async for part in in_slices(task_ids, DEAD_SLICE):
                found = await self._store.get(part, payloads=False)
                yield [t for t in found.values() if t.queue == queue and t.state is State.DEAD]
            return
        after_id: int | None = None
        while limit > 0:
            page = await self._store.list_dead(
                queue, after_id=after_id, limit=min(limit, DEAD_SLICE)
            )
            yield page.tasks
            limit -= len(page.tasks)
            if page.next_after_id is None:
                return
            # Onward from the last one looked at: one whose change lost a race stays dead
            # and is not taken again.
            after_id = page.next_after_id
            await next_turn()

    async def redrive(self, queue: str, *, task_ids: Sequence[int] | None, limit: int) -> int:
        redriven = 0
        async for dead in self._dead_selection(queue, task_ids, limit):
            now = self._clock()
            changes = []
            for task in dead:
                decision = machine.redrive(task, now=now)
                if decision.task is not None:
                    changes.append(Change(task, decision.task))
            redriven += sum(await self._store.apply(changes))
        return redriven

    async def purge_dead(self, queue: str, *, task_ids: Sequence[int] | None, limit: int) -> int:
        purged = 0
        async for dead in self._dead_selection(queue, task_ids, limit):
            purged += sum(await self._store.apply([Change(t, None) for t in dead]))
        return purged

    async def stats(
        self, queues: Sequence[str] | None, *, after: str | None = None, limit: int | None = None
    ) -> list[QueueCounts]:
        """Counts of `queues`, or a page of every queue (after `after`, up to `limit`),
        read STATS_SLICE queues at a time (the loop serves other calls between two)."""
        counts: list[QueueCounts] = []
        if queues:
            async for names in in_slices(queues, STATS_SLICE):
                counts += await self._store.queue_counts(names)
            return counts
        while limit is None or len(counts) < limit:
            want = STATS_SLICE if limit is None else min(STATS_SLICE, limit - len(counts))
            page = await self._store.queue_counts(None, after=after, limit=want)
            counts += page
            if len(page) < want:
                break
            after = page[-1].queue
            await next_turn()
        return counts
