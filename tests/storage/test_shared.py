"""The conformance suite for backends that several feeders share (SHARED_BACKENDS): two
stores open on one database at once, racing. Whatever the interleaving, the database
decides: two claims never hand out one task, a decision made from a record the other store
has changed never applies, an idempotency key makes one task, and a queue's max_depth
holds for both together.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from feeder.core import machine
from feeder.core.machine import Event
from feeder.core.model import State, Task
from feeder.store import Change, QueueFull, Store, StoreHooks, TooManyQueues
from feeder.store.postgres import sql
from feeder.store.postgres import store as postgres_store
from tests.storage.test_conformance import (
    T0,
    TIMEOUT,
    ack_d,
    claim,
    counts,
    current,
    lease_d,
    leaser,
    spec,
    step,
    submit,
    submit_tasks,
    totals,
)

pytestmark = pytest.mark.timeout(60)

R = TypeVar("R")
StoreFactory = Callable[[], Store]


def run_two(make_shared_store: StoreFactory, body: Callable[[Store, Store], Awaitable[R]]) -> R:
    """Opens two stores on the same database (two feeders), runs `body`, closes both."""

    async def main() -> R:
        first, second = make_shared_store(), make_shared_store()
        await first.open()
        try:
            await second.open()
            try:
                return await asyncio.wait_for(body(first, second), TIMEOUT * 3)
            finally:
                await second.close()
        finally:
            await first.close()

    return asyncio.run(main())


def test_both_stores_share_the_token_secret_and_never_share_an_id(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        assert a.shared and b.shared
        assert a.token_secret == b.token_secret
        batches = await asyncio.gather(
            *(submit_tasks(s, [spec(payload=bytes([i])) for i in range(50)]) for s in (a, b) * 4)
        )
        ids = [t.id for batch in batches for t in batch]
        assert len(ids) == len(set(ids)) == 400
        assert (await a.get(ids)).keys() == (await b.get(ids)).keys() == set(ids)

    run_two(make_shared_store, body)


def test_concurrent_claims_through_both_stores_take_each_task_once(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        tasks = await submit_tasks(a, [spec(payload=bytes([i % 256])) for i in range(300)])
        claimed: list[Task] = []

        async def drain(store: Store, worker: str) -> None:
            while True:
                batch = await store.claim("q", 7, leaser(T0 + 1, worker))
                if not batch:
                    return
                claimed.extend(batch)

        await asyncio.gather(*(drain(s, f"w{i}") for i, s in enumerate((a, b) * 4)))
        assert sorted(t.id for t in claimed) == sorted(t.id for t in tasks)
        assert all(t.state is State.LEASED and t.attempt == 1 for t in claimed)
        assert await counts(a) == await counts(b) == {State.LEASED: 300}

    run_two(make_shared_store, body)


def test_a_decision_from_a_record_the_other_store_changed_never_applies(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        (task,) = await submit_tasks(a, [spec()])
        (leased,) = await claim(b, now=T0 + 1)
        # Store a still has the record from before the lease: its decision loses.
        cancel = machine.cancel(task, now=T0 + 2).task
        assert await a.apply([Change(task, cancel)]) == [False]
        assert await current(a, task.id) == leased
        # Both decide on the same current record at once: exactly one applies.
        done_a = ack_d(leased, T0 + 3, b"from a").task
        done_b = ack_d(leased, T0 + 3, b"from b").task
        results = await asyncio.gather(
            a.apply([Change(leased, done_a)], None), b.apply([Change(leased, done_b)], None)
        )
        assert sorted(results) == [[False], [True]]
        final = await current(b, task.id)
        assert final.state is State.COMPLETED
        assert final.result == (b"from a" if results[0] == [True] else b"from b")
        assert await counts(a) == {State.COMPLETED: 1}

    run_two(make_shared_store, body)


def test_racing_writers_through_both_stores_keep_counts_exact(
    make_shared_store: StoreFactory,
) -> None:
    """Many rounds of read, decide, apply on the same tasks from both stores: every applied
    change counted once, the counts match the records."""

    async def body(a: Store, b: Store) -> None:
        tasks = await submit_tasks(a, [spec() for _ in range(20)])
        ids = [t.id for t in tasks]
        applied: Counter[str] = Counter()

        async def writer(store: Store, name: str) -> None:
            for round_ in range(15):
                records = await store.get(ids)
                changes = []
                for task in records.values():
                    now = T0 + round_
                    if task.state is State.READY:
                        decision = lease_d(task, now)
                    elif task.state is State.LEASED:
                        decision = machine.nack(
                            task, task.attempt, error="x", retry_after=0.0, terminal=False,
                            release=True, now=now, policy=machine.QueuePolicy(),
                            rng=__import__("random").Random(1),
                        )  # fmt: skip
                    else:
                        continue
                    assert decision.task is not None
                    changes.append(Change(task, decision.task, decision.events))
                for change, ok in zip(changes, await store.apply(changes), strict=True):
                    if ok:
                        applied[change.after.state.name if change.after else "gone"] += 1
                await asyncio.sleep(0)

        await asyncio.gather(writer(a, "a"), writer(b, "b"), writer(a, "a2"), writer(b, "b2"))
        records = await a.get(ids)
        by_state = Counter(t.state for t in records.values())
        assert await counts(b) == {s: n for s, n in by_state.items() if n}
        # Every lease that applied is one attempt of its task: none was applied twice.
        assert sum(t.attempt for t in records.values()) == applied["LEASED"]

    run_two(make_shared_store, body)


def test_one_idempotency_key_submitted_through_both_at_once_makes_one_task(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        for round_ in range(10):
            key = f"key-{round_}"
            results = await asyncio.gather(
                *(submit(s, [spec(idempotency_key=key, payload=b"p")]) for s in (a, b, a, b))
            )
            made = [r for (r,) in results if not r.deduplicated]
            assert len(made) == 1
            assert {r.task.id for (r,) in results} == {made[0].task.id}
        assert await counts(a) == {State.READY: 10}
        assert await totals(b) == {Event.SUBMITTED: 10}

    run_two(make_shared_store, body)


def test_max_depth_holds_for_both_stores_together(make_shared_store: StoreFactory) -> None:
    async def body(a: Store, b: Store) -> None:
        outcomes = await asyncio.gather(
            *(submit(s, [spec() for _ in range(10)], max_depth=55) for s in (a, b) * 6),
            return_exceptions=True,
        )
        accepted = [o for o in outcomes if isinstance(o, list)]
        refused = [o for o in outcomes if isinstance(o, QueueFull)]
        assert len(accepted) + len(refused) == 12
        # Batches are all or nothing: five fit under 55, a sixth would make 60.
        assert len(accepted) == 5
        assert await counts(b) == {State.READY: 50}
        assert all(r.depth + 10 > 55 for r in refused)

    run_two(make_shared_store, body)


def test_each_expired_lease_is_requeued_once_by_racing_reapers(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        await submit_tasks(a, [spec(lease_duration=5.0) for _ in range(60)])
        assert len(await claim(a, limit=100, now=T0)) == 60

        async def reap(store: Store) -> None:
            while due := await store.due(T0 + 10, 13):
                decisions = [(t, machine.advance(t, T0 + 10)) for t in due]
                await store.apply([Change(t, d.task, d.events) for t, d in decisions if d.task])

        await asyncio.gather(reap(a), reap(b), reap(a), reap(b))
        assert await counts(a) == {State.READY: 60}
        assert (await totals(b))[Event.EXPIRED] == 60

    run_two(make_shared_store, body)


def test_each_store_hears_of_ready_tasks_and_timers_set_through_the_other(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        heard: Counter[str] = Counter()
        timers: list[float] = []
        arrived = asyncio.Event()

        def ready(queue: str, count: int) -> None:
            heard[queue] += count
            arrived.set()

        b.set_hooks(StoreHooks(ready=ready, timer=timers.append))
        await submit_tasks(a, [spec("x"), spec("x"), spec("y")])
        await asyncio.wait_for(arrived.wait(), 5.0)
        while sum(heard.values()) < 3:
            await asyncio.sleep(0.01)
        assert heard == {"x": 2, "y": 1}
        # A timer due soon is announced (the leader would re-read it too late otherwise).
        loop_now = __import__("time").time()
        await submit_tasks(a, [spec("z", not_before=loop_now + 0.2)], now=loop_now)
        for _ in range(500):
            if timers:
                break
            await asyncio.sleep(0.01)
        assert timers and abs(timers[0] - (loop_now + 0.2)) < 1e-6

    run_two(make_shared_store, body)


def test_the_maintenance_role_is_held_by_one_and_moves_when_it_lets_go(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        holders: list[str] = []
        release_a = asyncio.Event()

        async def lead(store: Store, name: str, until: asyncio.Event) -> None:
            async with store.leadership() as lost:
                holders.append(name)
                await asyncio.wait(
                    [asyncio.ensure_future(until.wait()), asyncio.ensure_future(lost.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                )

        first = asyncio.create_task(lead(a, "a", release_a))
        while not holders:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(lead(b, "b", asyncio.Event()))
        await asyncio.sleep(0.3)
        assert holders == ["a"]  # b waits
        release_a.set()
        await first
        for _ in range(300):
            if len(holders) == 2:
                break
            await asyncio.sleep(0.01)
        assert holders == ["a", "b"]
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)

    run_two(make_shared_store, body)


def test_counts_and_totals_add_up_across_both_stores(make_shared_store: StoreFactory) -> None:
    async def body(a: Store, b: Store) -> None:
        await submit_tasks(a, [spec() for _ in range(5)])
        await submit_tasks(b, [spec() for _ in range(7)])
        leased = await claim(a, limit=4, now=T0 + 1)
        for task in leased[:3]:
            await step(b, task, ack_d(task, T0 + 2))
        await b.apply([], {("q", Event.DUPLICATE_ACK): 2})
        for store in (a, b):
            assert await counts(store) == {
                State.READY: 8,
                State.LEASED: 1,
                State.COMPLETED: 3,
            }
            assert await totals(store) == {
                Event.SUBMITTED: 12,
                Event.COMPLETED: 3,
                Event.DUPLICATE_ACK: 2,
            }

    run_two(make_shared_store, body)


def test_a_store_recalls_its_own_record_as_not_current_once_the_other_changed_it(
    make_shared_store: StoreFactory,
) -> None:
    async def body(a: Store, b: Store) -> None:
        await submit_tasks(a, [spec()])
        (leased,) = await claim(a, now=T0 + 1)
        extended = machine.extend(leased, 1, lease_duration=99.0, now=T0 + 2).task
        assert extended is not None
        assert await b.apply([Change(leased, extended)]) == [True]
        records, current = await a.recall([leased.id])
        if leased.id in current:
            assert records[leased.id] == extended
        else:  # remembered from a's own claim: out of date, and not claimed current
            assert records[leased.id] == leased
        # A decision from it loses its guard; `get` has the current record.
        done = ack_d(records[leased.id], T0 + 3).task
        if records[leased.id] == leased:
            assert await a.apply([Change(leased, done)]) == [False]
        assert await a.get([leased.id]) == {leased.id: extended}

    run_two(make_shared_store, body)


def test_max_depth_is_exact_under_many_concurrent_single_submits(
    make_shared_store: StoreFactory,
) -> None:
    """Sixty submits of one task each, through both stores at once, to a queue that takes
    thirty: exactly thirty are stored, whatever order they commit in."""

    async def body(a: Store, b: Store) -> None:
        outcomes = await asyncio.gather(
            *(submit(s, [spec()], max_depth=30) for s in (a, b) * 30), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, QueueFull)]
        assert len(refused) == 30, [o for o in outcomes if not isinstance(o, list | QueueFull)]
        assert {(r.queue, r.max_depth) for r in refused} == {("q", 30)}
        assert all(r.depth >= 29 for r in refused)
        assert await counts(a) == {State.READY: 30}
        assert await totals(b) == {Event.SUBMITTED: 30}

    run_two(make_shared_store, body)


def test_claims_leave_no_marks_behind(make_shared_store: StoreFactory) -> None:
    """A claim marks the tasks it reads (advisory locks on their ids, for the other claims
    to pass over) and drops every mark once its leases are committed."""

    async def body(a: Store, b: Store) -> None:
        await submit_tasks(a, [spec(payload=bytes([i % 256])) for i in range(300)])
        leased = await asyncio.gather(*(s.claim("q", 70, leaser(T0 + 1)) for s in (a, b) * 3))
        assert sum(len(batch) for batch in leased) == 300

        async def marks(conn: Any) -> int:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
                )
            )

        for _ in range(100):  # dropped off the claim's path: a moment after it returns
            if await a._connector.run(marks) == 0:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        assert await a._connector.run(marks) == 0  # type: ignore[attr-defined]

    run_two(make_shared_store, body)


# -- forgetting empty queues while others submit -------------------------------------------


async def _waiting_on_locks(dsn: str, count: int) -> None:
    """Returns once `count` sessions of the database wait on a lock (a row another holds)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(1000):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{waiting} sessions wait on a lock, not {count}")
    finally:
        await conn.close()


async def _emptied(store: Store, tasks: int = 1) -> None:
    """Gives queue "q" tasks that are then deleted: its gate has admitted them, its counters
    and totals know them, it holds no task."""
    made = await submit_tasks(store, [spec() for _ in range(tasks)])
    assert await store.apply([Change(t, None) for t in made]) == [True] * tasks
    assert await counts(store) == {}


def test_a_submit_holding_the_gate_keeps_its_queue_from_being_forgotten(
    make_shared_store: StoreFactory, postgres_dsn: str
) -> None:
    """A submit to an empty queue takes its turn on the gate first; the forgetting, which
    read the queue as empty before, waits for it and then finds its task: nothing is
    forgotten, nothing lost, the totals keep counting."""

    async def body(a: Store, b: Store) -> None:
        await _emptied(a)
        holder = await asyncpg.connect(postgres_dsn)
        try:
            async with holder.transaction():
                await holder.execute(
                    "SELECT FROM feedwork.queue_gates WHERE queue = 'q' FOR UPDATE"
                )
                submitting = asyncio.ensure_future(submit_tasks(b, [spec()]))
                await _waiting_on_locks(postgres_dsn, 1)
                forgetting = asyncio.ensure_future(a.forget_empty_queues(limit=10))
                await _waiting_on_locks(postgres_dsn, 2)
        finally:
            await holder.close()
        (task,), forgotten = await asyncio.gather(submitting, forgetting)
        assert forgotten == 0
        assert await current(a, task.id) == task
        assert await counts(a) == {State.READY: 1}
        assert await totals(b) == {Event.SUBMITTED: 2}
        assert [c.queue for c in await a.queue_counts()] == ["q"]

    run_two(make_shared_store, body)


def test_max_depth_holds_for_submits_that_saw_the_gate_their_queue_had_before_it_was_forgotten(
    make_shared_store: StoreFactory, postgres_dsn: str
) -> None:
    """Submits that read a queue's gate (30 admitted) in their snapshot, then wait while the
    queue is forgotten: they go on with a new gate row, that starts from nothing. Their
    depth check still holds the queue to max_depth."""

    async def body(a: Store, b: Store) -> None:
        await _emptied(a, tasks=30)
        holder = await asyncpg.connect(postgres_dsn)
        try:
            async with holder.transaction():
                # The forgetting's own statements, with the lock held while submits queue up.
                await holder.execute(sql.LOCK_GATES, ["q"])
                submits = [
                    asyncio.ensure_future(submit(s, [spec()], max_depth=2)) for s in (a, b) * 3
                ]
                await _waiting_on_locks(postgres_dsn, len(submits))
                gone = await holder.fetch(sql.FORGET_QUEUES, ["q"], False)
                assert [row[0] for row in gone] == ["q"]
        finally:
            await holder.close()
        outcomes = await asyncio.gather(*submits, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, QueueFull)]
        assert len(refused) == 4, outcomes
        assert await counts(a) == {State.READY: 2}
        assert await totals(b) == {Event.SUBMITTED: 2}

    run_two(make_shared_store, body)


def test_submits_racing_the_forgetting_of_their_queue_lose_nothing(
    make_shared_store: StoreFactory, postgres_dsn: str
) -> None:
    """Rounds of an empty queue forgotten through both stores at once (as when the
    maintenance role moves) while both submit to it, each round the submits a little
    later: every task stored, the counts exact, the queue's gate kept while it holds
    tasks, and its totals start from nothing exactly when it was forgotten."""

    async def body(a: Store, b: Store) -> None:
        submitted = 0
        forgotten_in: list[int] = []

        async def later(store: Store, delay: float) -> list[Task]:
            await asyncio.sleep(delay)
            return await submit_tasks(store, [spec(), spec()])

        for round_ in range(24):
            await _emptied(a)
            submitted += 1
            delay = (round_ % 6) * 0.002
            forgotten, *batches, also = await asyncio.gather(
                a.forget_empty_queues(limit=10),
                *(later(s, delay) for s in (b, a, b)),
                b.forget_empty_queues(limit=10),
            )
            assert forgotten + also in (0, 1)
            tasks = [t for batch in batches for t in batch]
            assert set(await a.get([t.id for t in tasks])) == {t.id for t in tasks}
            assert await counts(b) == {State.READY: 6}
            submitted = 6 if forgotten + also else submitted + 6
            assert await totals(a) == {Event.SUBMITTED: submitted}
            assert await _gates(postgres_dsn) == {"q"}
            assert await a.apply([Change(t, None) for t in tasks]) == [True] * 6
            if forgotten + also:
                forgotten_in.append(round_)
        print("forgotten in rounds", forgotten_in)

    run_two(make_shared_store, body)


def test_a_queue_forgotten_through_one_store_is_new_again_to_the_other(
    make_shared_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store remembers for a while that a queue is known; once that has passed, it asks
    again, and a queue the other store forgot meanwhile counts as new against max_queues."""
    monkeypatch.setattr(postgres_store, "KNOWN_QUEUE_TTL", 0.0)

    async def body(a: Store, b: Store) -> None:
        def create(s: Any, task_id: int) -> Any:
            return machine.create(s, task_id=task_id, now=T0, policy=machine.QueuePolicy())

        async def submit_limited(store: Store, queue: str) -> list[Any]:
            return await store.submit(
                [spec(queue)], create=create, max_depth=lambda _: 100, max_queues=2
            )

        (made,) = await submit_limited(a, "a")
        assert await a.apply([Change(made.task, None)]) == [True]
        assert await b.forget_empty_queues(limit=10) == 1
        await submit_limited(b, "b")
        await submit_limited(b, "c")
        with pytest.raises(TooManyQueues) as refused:
            await submit_limited(a, "a")
        assert (refused.value.queue, refused.value.known) == ("a", 2)

    run_two(make_shared_store, body)


async def _gates(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {row[0] for row in await conn.fetch("SELECT queue FROM feedwork.queue_gates")}
    finally:
        await conn.close()
