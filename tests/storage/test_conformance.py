"""The storage conformance suite: the contract of `feeder.store.base.Store`, which every
backend must pass (see conftest.py for the backends).

Records are only ever built by the state machine (`feeder.core.machine`), as the service
builds them; the store is then asked to apply those decisions. Every test runs its coroutine
with `run`, bounded by TIMEOUT seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from feeder.core import machine
from feeder.core.machine import Decision, Event
from feeder.core.model import (
    AckOutcome,
    Attempt,
    AttemptOutcome,
    NackOutcome,
    State,
    Task,
    TaskSpec,
)
from feeder.core.policy import QueuePolicy
from feeder.store import (
    Change,
    QueueFull,
    Store,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TooManyPending,
    TooManyQueues,
)
from feeder.store.base import wire_size
from feeder.store.memory import MemoryStore
from feeder.store.sqlite import SqliteStore
from tests.storage.conftest import LeanSqliteStore

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 10.0
T0 = 1_700_000_000.0
POLICY = QueuePolicy(max_attempts=3, lease_duration=30.0)
R = TypeVar("R")
StoreFactory = Callable[[], Store]


# -- helpers ------------------------------------------------------------------------------


def run(make_store: StoreFactory, body: Callable[[Store], Awaitable[R]]) -> R:
    """Opens a store, runs `body` on it (bounded), closes it."""

    async def main() -> R:
        store = make_store()
        await store.open()
        try:
            return await asyncio.wait_for(body(store), TIMEOUT)
        finally:
            await store.close()

    return asyncio.run(main())


def run_async(body: Callable[[], Awaitable[R]]) -> R:
    async def main() -> R:
        return await asyncio.wait_for(body(), TIMEOUT)

    return asyncio.run(main())


def spec(queue: str = "q", **fields: Any) -> TaskSpec:
    return TaskSpec(queue=queue, **fields)


async def submit(
    store: Store, specs: Sequence[TaskSpec], *, now: float = T0, max_depth: int = 1000
) -> list[Submitted]:
    def create(s: TaskSpec, task_id: int) -> Decision[State]:
        return machine.create(s, task_id=task_id, now=now, policy=POLICY)

    return await store.submit(specs, create=create, max_depth=lambda _queue: max_depth)


async def submit_tasks(store: Store, specs: Sequence[TaskSpec], *, now: float = T0) -> list[Task]:
    results = await submit(store, specs, now=now)
    assert [r.deduplicated for r in results] == [False] * len(specs)
    return [r.task for r in results]


def leaser(
    now: float, worker: str = "w1", duration: float | None = None, *, caller: str = ""
) -> Callable[[Task], Decision[bool]]:
    def decide(task: Task) -> Decision[bool]:
        return machine.lease(
            task, now=now, worker_id=worker, lease_duration=duration, policy=POLICY, caller=caller
        )

    return decide


async def claim(store: Store, queue: str = "q", limit: int = 100, *, now: float = T0) -> list[Task]:
    return await store.claim(queue, limit, leaser(now))


async def step(store: Store, task: Task, decision: Decision[Any]) -> Task:
    """Applies one machine decision on `task` (which must be current); returns the new record."""
    assert decision.task is not None
    events = Counter((task.queue, e) for e in decision.events)
    assert await store.apply([Change(task, decision.task)], events) == [True]
    return decision.task


def lease_d(task: Task, now: float, duration: float | None = None) -> Decision[bool]:
    return machine.lease(task, now=now, worker_id="w1", lease_duration=duration, policy=POLICY)


def ack_d(task: Task, now: float, result: bytes | None = b"ok") -> Decision[Any]:
    return machine.ack(task, task.attempt, result=result, now=now)


def nack_d(
    task: Task,
    now: float,
    *,
    terminal: bool = False,
    release: bool = False,
    retry_after: float | None = None,
) -> Decision[Any]:
    return machine.nack(
        task,
        task.attempt,
        error="boom",
        retry_after=retry_after,
        terminal=terminal,
        release=release,
        now=now,
        policy=POLICY,
        rng=random.Random(7),
    )


async def complete(store: Store, task: Task, now: float, result: bytes | None = b"ok") -> Task:
    leased = await step(store, task, lease_d(task, now))
    return await step(store, leased, ack_d(leased, now, result))


async def kill(store: Store, task: Task, now: float) -> Task:
    leased = await step(store, task, lease_d(task, now))
    dead = await step(store, leased, nack_d(leased, now, terminal=True))
    assert dead.state is State.DEAD
    return dead


async def cancel(store: Store, task: Task, now: float) -> Task:
    return await step(store, task, machine.cancel(task, now=now))


async def current(store: Store, task_id: int) -> Task:
    return (await store.get([task_id]))[task_id]


async def counts(store: Store, queue: str = "q") -> dict[State, int]:
    (found,) = await store.queue_counts([queue])
    assert found.queue == queue
    return {s: n for s, n in found.by_state.items() if n}


async def totals(store: Store, queue: str = "q") -> dict[Event, int]:
    (found,) = await store.queue_counts([queue])
    return {e: n for e, n in found.totals.items() if n}


# -- submit -------------------------------------------------------------------------------


def test_submit_returns_records_with_increasing_ids_in_order(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        specs = [
            spec(payload=b"a", headers={"k": "v"}, priority=3, max_attempts=7),
            spec(payload=b"b", lease_duration=12.5),
            spec("other", payload=b"c"),
        ]
        results = await submit(store, specs)
        tasks = [r.task for r in results]
        assert [r.deduplicated for r in results] == [False, False, False]
        assert [t.payload for t in tasks] == [b"a", b"b", b"c"]
        assert [t.queue for t in tasks] == ["q", "q", "other"]
        ids = [t.id for t in tasks]
        assert ids == sorted(set(ids))
        first = tasks[0]
        assert (first.headers, first.priority, first.max_attempts) == ({"k": "v"}, 3, 7)
        assert (first.state, first.version, first.created_at, first.ready_at) == (
            State.READY,
            1,
            T0,
            T0,
        )
        assert tasks[1].max_attempts == POLICY.max_attempts
        assert tasks[1].lease_duration == 12.5
        assert await store.get(ids) == {t.id: t for t in tasks}

        later = await submit_tasks(store, [spec(payload=b"d"), spec(payload=b"e")], now=T0 + 1)
        assert later[0].id > ids[-1]
        assert later[1].id > later[0].id
        assert await counts(store) == {State.READY: 4}
        assert await totals(store) == {Event.SUBMITTED: 4}
        assert await totals(store, "other") == {Event.SUBMITTED: 1}

    run(make_store, body)


def test_submit_queue_full_stores_nothing(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        a1, a2 = await submit_tasks(store, [spec("a", idempotency_key="k1"), spec("a")])
        with pytest.raises(QueueFull) as raised:
            await submit(store, [spec("b"), spec("a"), spec("a")], max_depth=3)
        assert (raised.value.queue, raised.value.depth, raised.value.max_depth) == ("a", 2, 3)
        # All or nothing: the task for "b" was not stored either.
        assert await counts(store, "a") == {State.READY: 2}
        assert await counts(store, "b") == {}
        assert await totals(store, "b") == {}
        assert await claim(store, "b") == []

        # Scheduled and leased tasks count towards the depth...
        leased = await step(store, a1, lease_d(a1, T0))
        await submit_tasks(store, [spec("a", not_before=T0 + 100)])
        with pytest.raises(QueueFull):
            await submit(store, [spec("a")], max_depth=3)
        # ...a deduplicated spec adds nothing, so it is accepted even when the queue is full...
        (again,) = await submit(store, [spec("a", idempotency_key="k1")], max_depth=3)
        assert (again.deduplicated, again.task) == (True, leased)
        # ...and finished tasks do not count.
        await step(store, leased, ack_d(leased, T0 + 1))
        (fits,) = await submit(store, [spec("a")], max_depth=3)
        assert not fits.deduplicated
        assert fits.task.id > a2.id
        assert await counts(store, "a") == {
            State.READY: 2,
            State.SCHEDULED: 1,
            State.COMPLETED: 1,
        }

    run(make_store, body)


def test_idempotency_key_within_a_batch(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        results = await submit(
            store,
            [
                spec(payload=b"1", idempotency_key="k"),
                spec(payload=b"2"),
                spec(payload=b"3", idempotency_key="k"),
            ],
        )
        assert [r.deduplicated for r in results] == [False, False, True]
        assert results[2].task.id == results[0].task.id
        assert results[2].task.payload == b"1"
        assert results[1].task.id != results[0].task.id
        assert await counts(store) == {State.READY: 2}
        assert await totals(store) == {Event.SUBMITTED: 2}
        assert len(await claim(store)) == 2

    run(make_store, body)


def test_idempotency_key_across_batches_returns_current_state(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        (task,) = await submit_tasks(store, [spec(payload=b"x", idempotency_key="k")])
        (leased,) = await claim(store, now=T0 + 1)

        (again,) = await submit(store, [spec(payload=b"different", idempotency_key="k")])
        assert again.deduplicated
        assert again.task == leased
        assert (again.task.id, again.task.state, again.task.version) == (task.id, State.LEASED, 2)

        done = await step(store, leased, ack_d(leased, T0 + 2, b"result"))
        results = await submit(store, [spec(idempotency_key="k"), spec(idempotency_key="new")])
        assert [r.deduplicated for r in results] == [True, False]
        assert results[0].task == done
        assert (results[0].task.state, results[0].task.result) == (State.COMPLETED, b"result")
        assert results[1].task.id > task.id
        assert await totals(store) == {Event.SUBMITTED: 2, Event.COMPLETED: 1}

    run(make_store, body)


def test_concurrent_submits_of_one_key_store_one_task(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        batches = await asyncio.gather(
            *(submit(store, [spec(payload=bytes([i]), idempotency_key="k")]) for i in range(4))
        )
        results = [b[0] for b in batches]
        assert sorted(r.deduplicated for r in results) == [False, True, True, True]
        assert len({r.task.id for r in results}) == 1
        assert await counts(store) == {State.READY: 1}

    run(make_store, body)


def test_a_large_submit_keeps_its_order_and_dedups_across_the_whole_batch(
    make_store: StoreFactory,
) -> None:
    """A batch of a thousand (made a slice at a time by the in-memory stores) keeps its
    order and ids and finds a key repeated far apart in it."""

    async def body(store: Store) -> None:
        (old,) = await submit_tasks(store, [spec(idempotency_key="old")])
        specs = [spec(payload=str(i).encode(), idempotency_key=f"k{i}") for i in range(1000)]
        specs[990] = spec(payload=b"again", idempotency_key="k3")
        specs[995] = spec(idempotency_key="old")
        results = await submit(store, specs)
        fresh = [r for i, r in enumerate(results) if i not in (990, 995)]
        assert [r.deduplicated for r in fresh] == [False] * 998
        ids = [r.task.id for r in fresh]
        assert ids == sorted(ids) and len(set(ids)) == 998 and ids[0] > old.id
        assert [r.task.payload for r in fresh[:3]] == [b"0", b"1", b"2"]
        assert results[990].deduplicated and results[990].task.id == results[3].task.id
        assert results[990].task.payload == b"3"
        assert results[995].deduplicated and results[995].task.id == old.id
        assert await counts(store) == {State.READY: 999}
        assert await totals(store) == {Event.SUBMITTED: 999}
        claimed = await claim(store, limit=1000)
        assert [t.id for t in claimed] == [old.id, *ids]

    run(make_store, body)


def test_a_large_submit_holds_its_room_and_keys_against_concurrent_submits(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec()])
        big = [spec(idempotency_key=f"k{i}") for i in range(998)]  # the queue full: 999
        outcomes = await asyncio.gather(
            submit(store, big, max_depth=999),
            submit(store, [spec(idempotency_key="k500")], max_depth=999),
            submit(store, [spec()], max_depth=999),
            return_exceptions=True,
        )
        assert all(isinstance(o, list | QueueFull) for o in outcomes)
        assert sum(n for n in (await counts(store)).values()) <= 999
        # One task per key, whoever made it; the batch stored all of its keys or none.
        made_k500 = [o[0] if len(o) == 1 else o[500] for o in outcomes[:2] if isinstance(o, list)]
        (k500,) = await submit(store, [spec(idempotency_key="k500")], max_depth=2000)
        assert {r.task.id for r in made_k500} <= {k500.task.id}
        assert k500.deduplicated == bool(made_k500)
        again = await submit(
            store, [spec(idempotency_key=f"k{i}") for i in (0, 997)], max_depth=2000
        )
        assert again[0].deduplicated == again[1].deduplicated == isinstance(outcomes[0], list)
        if not store.shared:
            # The only store on its data reserves the batch's room and keys at once.
            big_results, keyed, extra = outcomes
            assert isinstance(big_results, list) and isinstance(keyed, list)
            assert isinstance(extra, QueueFull)
            assert keyed[0].deduplicated and keyed[0].task.id == big_results[500].task.id

    run(make_store, body)


def test_a_large_submit_that_does_not_fit_stores_nothing(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        specs = [spec(idempotency_key=f"k{i}") for i in range(999)] + [spec("other")]
        with pytest.raises(QueueFull):
            await submit(store, specs, max_depth=998)
        assert await counts(store) == {}
        assert await counts(store, "other") == {}
        # Nothing of it was kept: neither the room, nor the keys.
        results = await submit(store, specs, max_depth=999)
        assert [r.deduplicated for r in results] == [False] * 1000
        assert await counts(store) == {State.READY: 999}

    run(make_store, body)


def test_idempotency_keys_are_per_queue(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        results = await submit(
            store, [spec("a", idempotency_key="k"), spec("b", idempotency_key="k")]
        )
        assert [r.deduplicated for r in results] == [False, False]
        assert results[0].task.id != results[1].task.id
        (again,) = await submit(store, [spec("b", idempotency_key="k")])
        assert (again.deduplicated, again.task.id, again.task.queue) == (
            True,
            results[1].task.id,
            "b",
        )

    run(make_store, body)


def test_scheduled_tasks_are_not_claimable(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        (task,) = await submit_tasks(store, [spec(not_before=T0 + 60)])
        assert (task.state, task.not_before) == (State.SCHEDULED, T0 + 60)
        # A not-before time already passed makes a ready task.
        (past,) = await submit_tasks(store, [spec("p", not_before=T0 - 5)])
        assert (past.state, past.not_before) == (State.READY, None)

        assert await claim(store, now=T0 + 100) == []
        assert await store.next_due() == T0 + 60
        (found,) = await store.queue_counts(["q"])
        assert found.oldest_ready_at is None
        assert await counts(store) == {State.SCHEDULED: 1}

    run(make_store, body)


def test_timers_come_out_right_after_thousands_of_leases_ended(make_store: StoreFactory) -> None:
    """Every ended lease may leave its timer behind in a store's memory; a store drops those
    a bounded number at a time (the in-memory ones: 1,000 per call), so it may answer
    `next_due` early, never late, and `due` finds the live timer within a few calls."""

    async def body(store: Store) -> None:
        await submit(store, [spec() for _ in range(2500)], max_depth=2500)
        leased = await claim(store, limit=2500, now=T0)
        assert len(leased) == 2500
        live = leased[-1]  # the last of equal deadlines: behind every ended one
        done = [Change(t, ack_d(t, T0 + 1).task) for t in leased[:-1]]
        assert await store.apply(done) == [True] * 2499
        deadline = live.lease_deadline
        assert deadline is not None
        for _ in range(5):
            when = await store.next_due()
            assert when is not None and when <= deadline
            if when == deadline:
                break
        assert when == deadline
        found: list[Task] = []
        for _ in range(5):
            found += await store.due(deadline + 1, 100)
            if found:
                break
        assert [t.id for t in found] == [live.id]

    run(make_store, body)


# -- claim --------------------------------------------------------------------------------


def test_claim_orders_by_priority_then_id(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        tasks = await submit_tasks(
            store, [spec(priority=p, payload=bytes([i])) for i, p in enumerate([0, 5, 0, 5, -1, 9])]
        )
        ids = [t.id for t in tasks]
        first = await claim(store, limit=3)
        assert [t.id for t in first] == [ids[5], ids[1], ids[3]]
        rest = await claim(store, limit=10)
        assert [t.id for t in rest] == [ids[0], ids[2], ids[4]]
        assert await claim(store) == []

    run(make_store, body)


def test_claim_orders_by_ready_time_then_id(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec(payload=bytes([i])) for i in range(4)])
        leased = await claim(store)
        t1, t2, t3, t4 = leased
        # Released (made ready again) in the order t4, t3, t2, t1 but with ready times that
        # order them t2 (T0+10, lower id), t3 (T0+10), t4 (T0+20), t1 (T0+25).
        await step(store, t4, nack_d(t4, T0 + 20, release=True))
        await step(store, t3, nack_d(t3, T0 + 10, release=True))
        await step(store, t2, nack_d(t2, T0 + 10, release=True))
        await step(store, t1, nack_d(t1, T0 + 25, release=True))
        (found,) = await store.queue_counts(["q"])
        assert found.oldest_ready_at == T0 + 10
        again = await claim(store, now=T0 + 40)
        assert [t.id for t in again] == [t2.id, t3.id, t4.id, t1.id]

    run(make_store, body)


def test_claim_takes_only_ready_tasks_of_its_queue(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        ready, _scheduled, _other, done = await submit_tasks(
            store, [spec("a"), spec("a", not_before=T0 + 60), spec("b"), spec("a")]
        )
        await complete(store, done, T0)
        (leased,) = await claim(store, "a", now=T0 + 1)
        assert leased.id == ready.id
        assert await claim(store, "a", now=T0 + 1) == []
        assert await counts(store, "b") == {State.READY: 1}
        assert await claim(store, "nothing") == []
        assert await counts(store, "a") == {
            State.LEASED: 1,
            State.SCHEDULED: 1,
            State.COMPLETED: 1,
        }

    run(make_store, body)


def test_claim_applies_the_lease_decider(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        (task,) = await submit_tasks(store, [spec(max_attempts=5)])
        (leased,) = await store.claim("q", 1, leaser(T0 + 1, "worker-7", 45.0))
        expected = machine.lease(
            task, now=T0 + 1, worker_id="worker-7", lease_duration=45.0, policy=POLICY
        )
        assert leased == expected.task
        assert (leased.state, leased.attempt, leased.version) == (State.LEASED, 1, 2)
        assert leased.lease_deadline == T0 + 46
        assert leased.history == (Attempt(1, "worker-7", T0 + 1),)
        assert await current(store, task.id) == leased
        assert await totals(store) == {Event.SUBMITTED: 1}

        # Expired by time, leased again: the decider's events are counted.
        expired = await step(store, leased, machine.advance(leased, T0 + 50))
        assert expired.state is State.READY
        (second,) = await store.claim("q", 1, leaser(T0 + 60, "worker-8"))
        assert (second.attempt, second.version, second.failures) == (2, 4, 1)
        assert second.history[0].outcome is AttemptOutcome.EXPIRED
        assert second.history[1] == Attempt(2, "worker-8", T0 + 60)
        assert await totals(store) == {
            Event.SUBMITTED: 1,
            Event.EXPIRED: 1,
            Event.REDELIVERED: 1,
        }
        assert await counts(store) == {State.LEASED: 1}

    run(make_store, body)


def test_a_large_claim_takes_tasks_in_order(make_store: StoreFactory) -> None:
    """More tasks than one claim statement of the PostgreSQL store takes (it chunks)."""

    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec(payload=bytes([i % 256])) for i in range(150)])
        first = await claim(store, limit=130, now=T0 + 1)
        assert [t.id for t in first] == [t.id for t in tasks[:130]]
        rest = await claim(store, limit=130, now=T0 + 1)
        assert [t.id for t in rest] == [t.id for t in tasks[130:]]
        assert await claim(store, now=T0 + 1) == []
        assert await counts(store) == {State.LEASED: 150}

    run(make_store, body)


def test_a_claim_of_a_thousand_counts_its_byte_budget_over_all_of_it(
    make_store: StoreFactory,
) -> None:
    """A large claim (taken a slice at a time by the in-memory stores) stops at its byte
    budget counted over every task it took, not per slice, and leaves the rest in order."""

    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec(payload=b"p" * 100) for _ in range(1000)])
        budget = wire_size(tasks[0]) * 600 + 10
        first = await store.claim("q", 1000, leaser(T0 + 1), max_bytes=budget)
        assert [t.id for t in first] == [t.id for t in tasks[:600]]
        rest = await store.claim("q", 1000, leaser(T0 + 1, "w2"))
        assert [t.id for t in rest] == [t.id for t in tasks[600:]]
        assert await counts(store) == {State.LEASED: 1000}

    run(make_store, body)


def test_concurrent_large_claims_get_disjoint_tasks_each_in_order(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        tasks = [r.task for r in await submit(store, [spec() for _ in range(1500)], max_depth=1500)]
        batches = await asyncio.gather(
            *(store.claim("q", 1000, leaser(T0 + 1, f"w{i}")) for i in range(2))
        )
        claimed = [t.id for b in batches for t in b]
        assert sorted(claimed) == [t.id for t in tasks]
        assert all([t.id for t in b] == sorted(t.id for t in b) for b in batches)
        assert await counts(store) == {State.LEASED: 1500}

    run(make_store, body)


def test_concurrent_claims_get_disjoint_tasks(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec(payload=bytes([i])) for i in range(20)])
        batches = await asyncio.gather(
            *(store.claim("q", 6, leaser(T0 + 1, f"w{i}")) for i in range(5))
        )
        assert all(len(b) <= 6 for b in batches)
        claimed = [t.id for b in batches for t in b]
        assert sorted(claimed) == sorted(t.id for t in tasks)
        assert all(t.state is State.LEASED and t.attempt == 1 for b in batches for t in b)
        assert await claim(store) == []
        assert await counts(store) == {State.LEASED: 20}

    run(make_store, body)


# -- apply --------------------------------------------------------------------------------


def test_apply_with_a_stale_before_changes_nothing(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        (task,) = await submit_tasks(store, [spec()])
        (leased,) = await claim(store, now=T0 + 1)

        # A decision made from the record before the lease.
        stale = machine.cancel(task, now=T0 + 2)
        assert await store.apply([Change(task, stale.task)]) == [False]
        assert await current(store, task.id) == leased
        assert await counts(store) == {State.LEASED: 1}

        done = machine.ack(leased, 1, result=b"r", now=T0 + 3).task
        assert await store.apply([Change(leased, done)]) == [True]
        # The same decision again: its `before` is gone.
        again = machine.ack(leased, 1, result=b"other", now=T0 + 4).task
        assert await store.apply([Change(leased, again)]) == [False]
        assert await current(store, task.id) == done
        assert (await current(store, task.id)).result == b"r"
        # Nor can a stale change delete it.
        assert await store.apply([Change(leased, None)]) == [False]
        assert await current(store, task.id) == done
        assert await counts(store) == {State.COMPLETED: 1}

    run(make_store, body)


def test_apply_chains_changes_of_one_task(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        first, second = await submit_tasks(store, [spec(), spec()])
        leased = lease_d(first, T0 + 1).task
        assert leased is not None
        extended = machine.extend(leased, 1, lease_duration=100.0, now=T0 + 2).task
        assert extended is not None
        done = machine.ack(extended, 1, result=b"r", now=T0 + 3).task
        assert done is not None
        other = lease_d(second, T0 + 1).task
        forked = machine.cancel(leased, now=T0 + 2).task
        applied = await store.apply(
            [
                Change(first, leased),
                Change(second, other),
                Change(leased, extended),
                Change(leased, forked),  # no longer current: `extended` replaced it
                Change(extended, done),
            ]
        )
        assert applied == [True, True, True, False, True]
        assert await store.get([first.id, second.id]) == {first.id: done, second.id: other}
        assert await counts(store) == {State.COMPLETED: 1, State.LEASED: 1}
        assert await store.next_due() == (other.lease_deadline if other else None)

    run(make_store, body)


def test_apply_of_a_batch_stores_each_change_its_own_values(make_store: StoreFactory) -> None:
    """Acks of one batch share most values (state, finish time) and differ in others
    (results, attempts, versions): each task gets exactly its own, and a stale change
    among them applies nowhere."""

    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec() for _ in range(6)])
        # Two of them are on a second attempt (and a higher version) when the batch comes.
        again = []
        for task in tasks[:2]:
            leased = await step(store, task, lease_d(task, T0 + 1))
            again.append(await step(store, leased, nack_d(leased, T0 + 1, release=True)))
        leased = await claim(store, now=T0 + 2)
        assert sorted(t.attempt for t in leased) == [1, 1, 1, 1, 2, 2]
        stale = leased[3]
        await step(
            store, stale, machine.extend(stale, stale.attempt, lease_duration=60.0, now=T0 + 3)
        )
        results = [b"r%d" % t.id if t.id % 2 else b"same" for t in leased]
        results[0] = None  # an ack without a result
        done = [ack_d(t, T0 + 4, r).task for t, r in zip(leased, results, strict=True)]
        applied = await store.apply([Change(t, d) for t, d in zip(leased, done, strict=True)])
        assert applied == [True, True, True, False, True, True]
        now = await store.get([t.id for t in leased])
        for position, (before, after) in enumerate(zip(leased, done, strict=True)):
            if position == 3:
                assert now[before.id].state is State.LEASED
            else:
                assert now[before.id] == after
                assert now[before.id].result == results[position]
                assert now[before.id].attempt == before.attempt
        assert await counts(store) == {State.COMPLETED: 5, State.LEASED: 1}

    run(make_store, body)


def test_delete_removes_the_task_and_frees_its_key(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        task, keep = await submit_tasks(store, [spec(idempotency_key="k"), spec()])
        done = await complete(store, task, T0 + 1)
        assert await store.apply([Change(done, None)]) == [True]
        assert await store.get([task.id, keep.id]) == {keep.id: keep}
        assert await counts(store) == {State.READY: 1}
        # Deleting it again does nothing.
        assert await store.apply([Change(done, None)]) == [False]

        (again,) = await submit(store, [spec(payload=b"new", idempotency_key="k")], now=T0 + 2)
        assert not again.deduplicated
        assert again.task.id not in (task.id, keep.id)
        assert (again.task.payload, again.task.state) == (b"new", State.READY)

        # A pending task can be deleted too (purge of a dead task, in the service).
        assert await store.apply([Change(keep, None)]) == [True]
        assert await store.get([keep.id]) == {}
        assert [t.id for t in await claim(store)] == [again.task.id]

    run(make_store, body)


def test_event_counts_accumulate_into_totals(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec("a"), spec("a"), spec("b")])
        assert await store.apply([], {("a", Event.COMPLETED): 2, ("b", Event.FAILED): 1}) == []
        assert await store.apply([], {("a", Event.COMPLETED): 3, ("a", Event.ADOPTED): 1}) == []
        assert await totals(store, "a") == {
            Event.SUBMITTED: 2,
            Event.COMPLETED: 5,
            Event.ADOPTED: 1,
        }
        assert await totals(store, "b") == {Event.SUBMITTED: 1, Event.FAILED: 1}
        # Counts of a queue without tasks are kept too.
        await store.apply([], {("c", Event.CANCELLED): 4})
        assert await totals(store, "c") == {Event.CANCELLED: 4}

    run(make_store, body)


# -- hooks --------------------------------------------------------------------------------


class Heard:
    """Records what a store announces through its hooks."""

    def __init__(self) -> None:
        self.ready: Counter[str] = Counter()
        self.timers: list[float] = []

    def hooks(self) -> StoreHooks:
        return StoreHooks(
            ready=lambda queue, count: self.ready.update({queue: count}),
            timer=self.timers.append,
        )

    def take(self) -> tuple[dict[str, int], float | None]:
        """(ready tasks per queue, earliest timer) heard since the last take."""
        heard = dict(self.ready), min(self.timers, default=None)
        self.ready.clear()
        self.timers.clear()
        return heard


def test_hooks_announce_ready_tasks_and_timers(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        heard = Heard()
        store.set_hooks(heard.hooks())
        a1, _a2, _b, sched = await submit_tasks(
            store, [spec("a"), spec("a"), spec("b"), spec("a", not_before=T0 + 50)]
        )
        assert heard.take() == ({"a": 2, "b": 1}, T0 + 50)
        # A deduplicated submit creates nothing, so it announces nothing.
        await submit(store, [spec("a", idempotency_key="k")])
        heard.take()
        await submit(store, [spec("a", idempotency_key="k")])
        assert heard.take() == ({}, None)

        leased = await store.claim("a", 1, leaser(T0 + 1, duration=20.0))
        assert heard.take() == ({}, T0 + 21)
        released = await step(store, leased[0], nack_d(leased[0], T0 + 2, release=True))
        assert released.state is State.READY
        assert heard.take() == ({"a": 1}, None)
        again = await step(store, released, lease_d(released, T0 + 3, 5.0))
        assert heard.take() == ({}, T0 + 8)
        await step(store, again, ack_d(again, T0 + 4))
        assert heard.take() == ({}, None)
        # Time-driven changes are announced like any other: promotion, expiry.
        await step(store, sched, machine.advance(sched, T0 + 60))
        assert heard.take() == ({"a": 1}, None)
        (b,) = await store.claim("b", 1, leaser(T0 + 61))
        heard.take()
        await step(store, b, machine.advance(b, T0 + 1000))
        assert heard.take() == ({"b": 1}, None)
        # A change that does not apply announces nothing.
        assert await store.apply([Change(a1, lease_d(a1, T0 + 5).task)]) == [False]
        assert heard.take() == ({}, None)

    run(make_store, body)


def test_hooks_announce_ended_leases(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        ended: list[tuple[int, State | None]] = []
        store.set_hooks(StoreHooks(ended=ended.extend))
        acked, nacked, expired, cancelled, kept = await submit_tasks(store, [spec()] * 5)
        leased = {t.id: t for t in await store.claim("q", 5, leaser(T0 + 1, duration=20.0))}
        assert ended == []  # leasing ends nothing
        await step(store, leased[acked.id], ack_d(leased[acked.id], T0 + 2))
        await step(store, leased[nacked.id], nack_d(leased[nacked.id], T0 + 2))
        await step(store, leased[expired.id], machine.advance(leased[expired.id], T0 + 100))
        await step(store, leased[cancelled.id], machine.cancel(leased[cancelled.id], now=T0 + 2))
        kept_task = leased[kept.id]
        await step(
            store,
            kept_task,
            machine.extend(kept_task, kept_task.attempt, lease_duration=None, now=T0 + 3),
        )
        assert sorted(ended) == sorted(
            [
                (acked.id, State.COMPLETED),
                (nacked.id, State.SCHEDULED),
                (expired.id, State.READY),
                (cancelled.id, State.CANCELLED),
            ]
        )

    run(make_store, body)


# -- timers -------------------------------------------------------------------------------


def test_due_returns_passed_timers_earliest_first(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        late, early, r1, r2, _ready = await submit_tasks(
            store,
            [
                spec(not_before=T0 + 50),
                spec(not_before=T0 + 20),
                spec(lease_duration=30.0),
                spec(lease_duration=100.0),
                spec(),
            ],
        )
        assert await store.next_due() == T0 + 20
        l1 = await step(store, r1, lease_d(r1, T0))
        l2 = await step(store, r2, lease_d(r2, T0))
        assert (l1.lease_deadline, l2.lease_deadline) == (T0 + 30, T0 + 100)
        assert await store.next_due() == T0 + 20
        assert await store.due(T0 + 19, 10) == []

        due = await store.due(T0 + 60, 2)
        assert due == [early, l1]
        # Applied as the reaper applies them: promotion and expiry.
        promoted = await step(store, early, machine.advance(early, T0 + 60))
        expired = await step(store, l1, machine.advance(l1, T0 + 60))
        assert (promoted.state, expired.state) == (State.READY, State.READY)
        assert await store.next_due() == T0 + 50

        assert await store.due(T0 + 60, 10) == [late]
        await step(store, late, machine.advance(late, T0 + 60))
        assert await store.next_due() == T0 + 100
        assert await store.due(T0 + 60, 10) == []
        done = await step(store, l2, ack_d(l2, T0 + 61))
        assert done.state is State.COMPLETED
        assert await store.next_due() is None
        assert await store.due(T0 + 10_000, 10) == []
        assert await totals(store) == {
            Event.SUBMITTED: 5,
            Event.EXPIRED: 1,
            Event.COMPLETED: 1,
        }

    run(make_store, body)


def test_due_ignores_the_old_timer_of_a_changed_task(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        task, sched = await submit_tasks(store, [spec(), spec(not_before=T0 + 10)])
        leased = await step(store, task, lease_d(task, T0, 30.0))
        extended = await step(
            store, leased, machine.extend(leased, 1, lease_duration=60.0, now=T0 + 5)
        )
        assert extended.lease_deadline == T0 + 65
        # The scheduled task is cancelled before its time: its timer is dead.
        await cancel(store, sched, T0 + 6)
        assert await store.next_due() == T0 + 65
        assert await store.due(T0 + 40, 10) == []
        assert await store.due(T0 + 70, 10) == [extended]

    run(make_store, body)


# -- reads --------------------------------------------------------------------------------


def test_get_returns_current_records_and_leaves_out_missing_ids(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        a, b = await submit_tasks(store, [spec(), spec(headers={"h": "1"})])
        leased = await step(store, a, lease_d(a, T0 + 1))
        found = await store.get([a.id, 999_999, b.id, a.id])
        assert found == {a.id: leased, b.id: b}
        assert await store.get([]) == {}
        assert await store.get([999_999]) == {}

    run(make_store, body)


def test_recall_gives_what_the_store_last_wrote_and_says_what_is_current(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        a, b, _c = await submit_tasks(store, [spec(), spec(), spec()])
        leased = {t.id: t for t in await claim(store, limit=2, now=T0 + 1)}
        done = await step(store, leased[b.id], ack_d(leased[b.id], T0 + 2))
        records, current = await store.recall([a.id, b.id, 999_999])
        # Through one store alone, what it recalls is what is there.
        assert records == await store.get([a.id, b.id]) == {a.id: leased[a.id], b.id: done}
        assert current <= set(records)
        # A record not known current is one this store wrote.
        assert all(records[i] in (leased[a.id], done) for i in set(records) - current)

    run(make_store, body)


def test_get_never_returns_a_task_deleted_concurrently(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        task, other = await submit_tasks(store, [spec(), spec()])
        done = await complete(store, task, T0)
        await complete(store, other, T0 + 5)
        purged, found = await asyncio.gather(
            store.purge_finished(finished_before=T0 + 1, limit=10), store.get([task.id])
        )
        assert purged == 1
        # A get racing the delete may see the task as it was, but not once the delete is done.
        assert found in ({}, {task.id: done})
        assert await store.get([task.id]) == {}
        assert await counts(store) == {State.COMPLETED: 1}
        # Nor can the record it read be changed any more.
        assert await store.apply([Change(done, None)]) == [False]
        assert await store.get([task.id]) == {}
        assert await counts(store) == {State.COMPLETED: 1}

    run(make_store, body)


def test_list_dead_pages_in_id_order(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec(payload=bytes([i])) for i in range(7)])
        other, done, *rest = await submit_tasks(store, [spec("other"), spec(), spec(), spec()])
        dead = [await kill(store, t, T0 + 1) for t in reversed(tasks[:5])][::-1]
        await kill(store, other, T0 + 1)
        await complete(store, done, T0 + 1)
        ids = [t.id for t in dead]

        page = await store.list_dead("q", after_id=None, limit=2)
        assert (page.tasks, page.next_after_id) == (dead[:2], ids[1])
        page = await store.list_dead("q", after_id=page.next_after_id, limit=2)
        assert (page.tasks, page.next_after_id) == (dead[2:4], ids[3])
        page = await store.list_dead("q", after_id=page.next_after_id, limit=2)
        assert (page.tasks, page.next_after_id) == (dead[4:], None)
        page = await store.list_dead("q", after_id=ids[1], limit=3)
        assert (page.tasks, page.next_after_id) == (dead[2:], None)
        page = await store.list_dead("q", after_id=None, limit=100)
        assert [t.id for t in page.tasks] == ids
        assert all(t.state is State.DEAD and t.finished_at == T0 + 1 for t in page.tasks)
        assert (await store.list_dead("nothing", after_id=None, limit=10)).tasks == []

        # A redriven dead task leaves the list; the records listed can be applied.
        redriven = await step(store, dead[0], machine.redrive(dead[0], now=T0 + 2))
        assert redriven.state is State.READY
        page = await store.list_dead("q", after_id=None, limit=100)
        assert [t.id for t in page.tasks] == ids[1:]
        assert await store.apply([Change(t, None) for t in page.tasks]) == [True] * 4
        assert (await store.list_dead("q", after_id=None, limit=100)).tasks == []
        assert len(rest) == 2
        assert await counts(store) == {State.READY: 5, State.COMPLETED: 1}

    run(make_store, body)


def test_purge_finished_deletes_only_old_completed_and_cancelled(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        c10, c20, x15, d5, pending, x30 = await submit_tasks(
            store, [spec(idempotency_key="c10"), spec(), spec(), spec(), spec(), spec()]
        )
        c10 = await complete(store, c10, T0 + 10)
        c20 = await complete(store, c20, T0 + 20)
        x15 = await cancel(store, x15, T0 + 15)
        d5 = await kill(store, d5, T0 + 5)
        x30 = await cancel(store, x30, T0 + 30)
        pending = await step(store, pending, lease_d(pending, T0))

        assert await store.purge_finished(finished_before=T0 + 15, limit=10) == 1  # not 15
        assert await store.purge_finished(finished_before=T0 + 16, limit=10) == 1
        left = await store.get([c10.id, c20.id, x15.id, d5.id, pending.id, x30.id])
        assert left == {c20.id: c20, d5.id: d5, pending.id: pending, x30.id: x30}

        assert await store.purge_finished(finished_before=T0 + 100, limit=1) == 1
        left = await store.get([c20.id, x30.id])
        assert len(left) == 1
        assert await store.purge_finished(finished_before=T0 + 100, limit=10) == 1
        assert await store.purge_finished(finished_before=T0 + 100, limit=10) == 0
        assert await store.get([c20.id, x30.id, d5.id, pending.id]) == {
            d5.id: d5,
            pending.id: pending,
        }
        assert await counts(store) == {State.DEAD: 1, State.LEASED: 1}
        # Their idempotency keys went with them.
        (again,) = await submit(store, [spec(idempotency_key="c10")])
        assert not again.deduplicated

    run(make_store, body)


def test_list_dead_follows_deaths_in_any_order_between_pages(make_store: StoreFactory) -> None:
    """What a page shows follows every death, redrive and delete since the last page, in
    id order, whatever order the tasks died in."""

    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec(payload=bytes([i])) for i in range(8)])
        (other,) = await submit_tasks(store, [spec("other")])

        async def listed(after_id: int | None = None, limit: int = 100) -> list[int]:
            page = await store.list_dead("q", after_id=after_id, limit=limit)
            return [t.id for t in page.tasks]

        ids = [t.id for t in tasks]
        dead = {i: await kill(store, tasks[i], T0 + 1) for i in (5, 2, 7, 0)}
        await kill(store, other, T0 + 1)
        assert await listed() == [ids[0], ids[2], ids[5], ids[7]]
        page = await store.list_dead("q", after_id=None, limit=2)
        assert [t.id for t in page.tasks] == [ids[0], ids[2]]
        # Deaths after the first page, before and after its cursor.
        dead[6] = await kill(store, tasks[6], T0 + 2)
        dead[1] = await kill(store, tasks[1], T0 + 2)
        assert await listed(page.next_after_id) == [ids[5], ids[6], ids[7]]
        assert await listed() == [ids[0], ids[1], ids[2], ids[5], ids[6], ids[7]]
        # Redriven: gone from the list; dead again: back, once.
        ready = await step(store, dead[2], machine.redrive(dead[2], now=T0 + 3))
        assert await listed() == [ids[0], ids[1], ids[5], ids[6], ids[7]]
        await kill(store, ready, T0 + 4)
        assert await listed() == [ids[0], ids[1], ids[2], ids[5], ids[6], ids[7]]
        # Deleted: gone.
        assert await store.apply([Change(dead[6], None)]) == [True]
        assert await listed(ids[2], 2) == [ids[5], ids[7]]
        assert [t.id for t in (await store.list_dead("other", after_id=None, limit=9)).tasks] == [
            other.id
        ]

    run(make_store, body)


def test_list_dead_pages_of_hundreds_keep_order_and_cursor(make_store: StoreFactory) -> None:
    """Pages longer than a store reads at once (the SQL stores: 128 rows per statement)."""

    async def body(store: Store) -> None:
        await submit_tasks(store, [spec(payload=bytes([i % 256])) for i in range(300)])
        leased = await claim(store, limit=300, now=T0)
        killed = [Change(t, nack_d(t, T0 + 1, terminal=True).task) for t in leased]
        assert await store.apply(killed) == [True] * 300
        ids = sorted(t.id for t in leased)
        page = await store.list_dead("q", after_id=None, limit=250)
        assert [t.id for t in page.tasks] == ids[:250]
        assert page.next_after_id == ids[249]
        assert all(t.state is State.DEAD for t in page.tasks)
        page = await store.list_dead("q", after_id=page.next_after_id, limit=250)
        assert ([t.id for t in page.tasks], page.next_after_id) == (ids[250:], None)
        page = await store.list_dead("q", after_id=None, limit=300)
        assert ([t.id for t in page.tasks], page.next_after_id) == (ids, None)
        page = await store.list_dead("q", after_id=ids[10], limit=128)
        assert ([t.id for t in page.tasks], page.next_after_id) == (ids[11:139], ids[138])

    run(make_store, body)


def test_purge_finished_takes_every_old_task_whatever_order_they_finished_in(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        tasks = await submit_tasks(store, [spec() for _ in range(40)])
        order = random.Random(3).sample(range(30), 30)  # finish times T0 + 0..29, shuffled
        finished: dict[int, float] = {}
        for task, offset in zip(tasks[:30], order, strict=True):
            when = T0 + offset
            done = await (cancel(store, task, when) if offset % 3 else complete(store, task, when))
            finished[done.id] = when
        for task in tasks[30:35]:
            await kill(store, task, T0 + 1)
        cutoff = T0 + 20
        old = {i for i, when in finished.items() if when < cutoff}
        purged_total = 0
        while purged := await store.purge_finished(finished_before=cutoff, limit=7):
            assert purged <= 7
            purged_total += purged
        assert purged_total == len(old) == 20
        left = await store.get([t.id for t in tasks])
        assert not old & left.keys()
        assert {i for i in finished if i in left} == finished.keys() - old
        assert len(left) == 20  # 10 finished at or after the cutoff, 5 dead, 5 ready
        assert await store.purge_finished(finished_before=T0 + 100, limit=100) == 10

    run(make_store, body)


def test_a_claim_stops_before_a_task_that_would_pass_its_byte_budget(
    make_store: StoreFactory,
) -> None:
    """The tasks a claim leases fit one reply: it stops before the task that would take
    them past `max_bytes` (and always takes the first), leaving the rest READY in order."""

    async def body(store: Store) -> None:
        sizes = [1000, 1000, 5000, 10, 10, 10]
        tasks = await submit_tasks(store, [spec(payload=b"x" * n) for n in sizes])
        budget = wire_size(tasks[0]) * 2 + 100
        first = await store.claim("q", 10, leaser(T0), max_bytes=budget)
        assert [t.id for t in first] == [tasks[0].id, tasks[1].id]
        # Larger than the budget alone: taken all the same, alone.
        (big,) = await store.claim("q", 10, leaser(T0), max_bytes=1)
        assert big.id == tasks[2].id
        rest = await store.claim("q", 10, leaser(T0), max_bytes=budget)
        assert [t.id for t in rest] == [t.id for t in tasks[3:]]
        assert all(t.state is State.LEASED for t in [*first, big, *rest])

    run(make_store, body)


def test_payloads_come_back_whatever_the_store_holds_in_memory(make_store: StoreFactory) -> None:
    """Every read that hands a task out (claim, get, list_dead) gives its payload, through
    nacks, dead-lettering and redrives, though a store may hold payloads apart from the
    records it keeps in memory (sqlite-lean holds 64 bytes of them)."""

    async def body(store: Store) -> None:
        payloads = [bytes([i]) * (40 + i) for i in range(12)]
        tasks = await submit_tasks(store, [spec(payload=p) for p in payloads])
        ids = [t.id for t in tasks]
        got = await store.get(ids)
        assert [got[i].payload for i in ids] == payloads
        leased = await claim(store, limit=4)
        assert [t.payload for t in leased] == payloads[:4]
        # Back to READY (nack, expiry), then leased again: the payload comes along.
        again = await step(store, leased[0], nack_d(leased[0], T0 + 1, retry_after=0))
        expired = await step(store, leased[1], machine.advance(leased[1], T0 + 100))
        assert (again.state, expired.state) == (State.READY, State.READY)
        dead = await step(store, leased[2], nack_d(leased[2], T0 + 1, terminal=True))
        done = await step(store, leased[3], ack_d(leased[3], T0 + 1, b"result"))
        page = await store.list_dead("q", after_id=None, limit=10)
        assert [(t.id, t.payload) for t in page.tasks] == [(dead.id, payloads[2])]
        redriven = await step(store, page.tasks[0], machine.redrive(page.tasks[0], now=T0 + 2))
        assert redriven.state is State.READY
        rest = await claim(store, limit=100, now=T0 + 200)
        assert sorted((t.id, t.payload) for t in rest) == sorted(
            (i, p) for i, p in zip(ids, payloads, strict=True) if i != done.id
        )
        finished = (await store.get([done.id]))[done.id]
        assert (finished.payload, finished.result) == (payloads[3], b"result")

    run(make_store, body)


def test_keys_of_finished_tasks_deduplicate_however_long_ago_they_finished(
    make_store: StoreFactory,
) -> None:
    """A store may keep the keys of finished tasks on disk only (sqlite-lean holds two
    finished records): a resubmit still finds them, until the task is deleted."""

    async def body(store: Store) -> None:
        keyed = await submit_tasks(store, [spec(idempotency_key=f"k{i}") for i in range(6)])
        finished = [await complete(store, t, T0 + 1) for t in keyed]
        for filler in await submit_tasks(store, [spec() for _ in range(6)]):
            await complete(store, filler, T0 + 2)
        again = await submit(store, [spec(idempotency_key=f"k{i}") for i in range(6)])
        assert [(r.deduplicated, r.task.id, r.task.state) for r in again] == [
            (True, t.id, State.COMPLETED) for t in finished
        ]
        assert await store.apply([Change(finished[0], None)]) == [True]
        (fresh,) = await submit(store, [spec(idempotency_key="k0")])
        assert not fresh.deduplicated and fresh.task.id > finished[-1].id

    run(make_store, body)


def test_a_submit_that_would_pass_the_queue_limit_stores_nothing(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        def create(s: TaskSpec, task_id: int) -> Decision[State]:
            return machine.create(s, task_id=task_id, now=T0, policy=POLICY)

        async def submit_limited(*queues: str) -> list[Submitted]:
            return await store.submit(
                [spec(q) for q in queues], create=create, max_depth=lambda _: 100, max_queues=3
            )

        await submit_limited("a", "b")
        await submit_limited("c", "a")
        with pytest.raises(TooManyQueues) as refused:
            await submit_limited("a", "d")
        assert (refused.value.queue, refused.value.known, refused.value.max_queues) == ("d", 3, 3)
        assert "max_queues 3" in str(refused.value)
        await submit_limited("a", "b", "c")  # known queues stay open
        counts = {c.queue: c.by_state[State.READY] for c in await store.queue_counts()}
        assert counts == {"a": 3, "b": 2, "c": 2}

    run(make_store, body)


def test_queue_counts(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec("a"), spec("a", priority=5)], now=T0 + 10)
        await submit_tasks(store, [spec("a", priority=1), spec("a")], now=T0 + 20)
        await submit_tasks(store, [spec("a", not_before=T0 + 99), spec("b")], now=T0 + 30)
        leased = await store.claim("a", 1, leaser(T0 + 40))  # the priority-5 task
        assert [t.priority for t in leased] == [5]
        done, dead = await store.claim("a", 2, leaser(T0 + 40))  # the priority-1 task, then T0+10
        await step(store, done, ack_d(done, T0 + 41))
        await step(store, dead, nack_d(dead, T0 + 41, terminal=True))

        by_queue = {c.queue: c for c in await store.queue_counts(["a", "b", "empty"])}
        assert set(by_queue) == {"a", "b", "empty"}
        a = by_queue["a"]
        assert {s: n for s, n in a.by_state.items() if n} == {
            State.READY: 1,
            State.SCHEDULED: 1,
            State.LEASED: 1,
            State.COMPLETED: 1,
            State.DEAD: 1,
        }
        assert a.oldest_ready_at == T0 + 20
        assert a.totals == {
            Event.SUBMITTED: 5,
            Event.COMPLETED: 1,
            Event.FAILED: 1,
            Event.DEAD_LETTERED: 1,
        }
        b = by_queue["b"]
        assert {s: n for s, n in b.by_state.items() if n} == {State.READY: 1}
        assert (b.oldest_ready_at, b.totals) == (T0 + 30, {Event.SUBMITTED: 1})
        empty = by_queue["empty"]
        assert (sum(empty.by_state.values()), empty.oldest_ready_at, empty.totals) == (
            0,
            None,
            {},
        )
        everything = {c.queue for c in await store.queue_counts()}
        assert {"a", "b"} <= everything

    run(make_store, body)


# -- forgetting empty queues --------------------------------------------------------------


async def listed(store: Store) -> list[str]:
    """The queues the store lists, whole and by page."""
    names = [c.queue for c in await store.queue_counts()]
    paged = [c.queue for c in await store.queue_counts(after="", limit=len(names) + 5)]
    assert paged == names
    return names


async def emptied(store: Store, queue: str) -> None:
    """Gives `queue` a task that runs to its end and is deleted (as the retention purge
    does): the queue knows totals, and holds no task."""
    (task,) = await submit_tasks(store, [spec(queue)])
    done = await complete(store, task, T0 + 1)
    assert await store.apply([Change(done, None)]) == [True]
    assert await counts(store, queue) == {}


def test_a_queue_whose_tasks_were_all_purged_is_forgotten(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        gone, also_gone, kept = await submit_tasks(store, [spec("gone"), spec("gone"), spec()])
        for task in (gone, also_gone):
            await complete(store, task, T0 + 1)
        await store.apply([], {("gone", Event.DUPLICATE_ACK): 1})
        # Finished tasks are tasks: the queue stays until the retention purge took them.
        assert await store.forget_empty_queues(limit=10) == 0
        assert await listed(store) == ["gone", "q"]
        assert await store.purge_finished(finished_before=T0 + 2, limit=10) == 2
        assert await totals(store, "gone") == {
            Event.SUBMITTED: 2,
            Event.COMPLETED: 2,
            Event.DUPLICATE_ACK: 1,
        }

        assert await store.forget_empty_queues(limit=10) == 1
        assert await listed(store) == ["q"]
        assert await totals(store, "gone") == {}
        assert await counts(store, "gone") == {}
        assert await store.forget_empty_queues(limit=10) == 0
        # The other queue is untouched.
        assert await counts(store) == {State.READY: 1}
        assert await totals(store) == {Event.SUBMITTED: 1}
        assert await current(store, kept.id) == kept

        # A submit makes it anew, its totals counted from nothing.
        (again,) = await submit_tasks(store, [spec("gone")])
        assert await listed(store) == ["gone", "q"]
        assert await counts(store, "gone") == {State.READY: 1}
        assert await totals(store, "gone") == {Event.SUBMITTED: 1}
        assert [t.id for t in await claim(store, "gone")] == [again.id]

    run(make_store, body)


def test_a_queue_holding_a_task_in_any_state_is_not_forgotten(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        names = ["cancelled", "completed", "dead", "leased", "ready", "scheduled"]
        specs = [spec(name, not_before=T0 + 99 if name == "scheduled" else None) for name in names]
        cancelled, completed, dead, leased, _ready, _scheduled = await submit_tasks(store, specs)
        await cancel(store, cancelled, T0 + 1)
        await complete(store, completed, T0 + 1)
        await kill(store, dead, T0 + 1)
        await step(store, leased, lease_d(leased, T0 + 1))
        await emptied(store, "empty")

        assert await store.forget_empty_queues(limit=100) == 1  # "empty" only
        assert await listed(store) == names
        for name in names:
            assert await counts(store, name) == {State[name.upper()]: 1}
            assert (await totals(store, name))[Event.SUBMITTED] == 1

    run(make_store, body)


def test_forget_empty_queues_forgets_at_most_its_limit(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        for name in ("a", "b", "c"):
            await emptied(store, name)
        await submit_tasks(store, [spec("d")])
        assert await store.forget_empty_queues(limit=2) == 2
        assert len(await listed(store)) == 2
        assert await store.forget_empty_queues(limit=2) == 1
        assert await store.forget_empty_queues(limit=2) == 0
        assert await listed(store) == ["d"]

    run(make_store, body)


def test_a_forgotten_queue_no_longer_counts_against_max_queues(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        def create(s: TaskSpec, task_id: int) -> Decision[State]:
            return machine.create(s, task_id=task_id, now=T0, policy=POLICY)

        async def submit_limited(*queues: str) -> list[Submitted]:
            return await store.submit(
                [spec(q) for q in queues], create=create, max_depth=lambda _: 100, max_queues=2
            )

        (a,) = await submit_limited("a")
        await submit_limited("b")
        with pytest.raises(TooManyQueues):
            await submit_limited("c")
        await complete(store, a.task, T0 + 1)
        assert await store.purge_finished(finished_before=T0 + 2, limit=10) == 1
        with pytest.raises(TooManyQueues):  # empty, but not forgotten yet
            await submit_limited("c")

        assert await store.forget_empty_queues(limit=10) == 1
        await submit_limited("c")  # in the place "a" left
        assert await listed(store) == ["b", "c"]
        with pytest.raises(TooManyQueues) as refused:  # "a" is a new queue now
            await submit_limited("a")
        assert (refused.value.queue, refused.value.known) == ("a", 2)

    run(make_store, body)


def test_a_submit_racing_the_forgetting_of_its_queue_keeps_its_task_and_counts(
    make_store: StoreFactory,
) -> None:
    """Whichever comes first: the queue is forgotten before the task is stored (its totals
    then start from nothing) or not at all; the task is there and counted either way."""

    async def body(store: Store) -> None:
        for first in ("forget", "submit", "forget", "submit"):
            await emptied(store, "q")
            before = (await totals(store))[Event.SUBMITTED]
            forgetting = store.forget_empty_queues(limit=10)
            submitting = submit_tasks(store, [spec()])
            if first == "forget":
                forgotten, (task,) = await asyncio.gather(forgetting, submitting)
            else:
                (task,), forgotten = await asyncio.gather(submitting, forgetting)
            assert forgotten in (0, 1)
            assert await current(store, task.id) == task
            assert await counts(store) == {State.READY: 1}
            assert "q" in await listed(store)
            if forgotten:
                assert await totals(store) == {Event.SUBMITTED: 1}
            else:
                assert (await totals(store))[Event.SUBMITTED] == before + 1
            await store.apply([Change(task, None)])

    run(make_store, body)


# -- how attempts ended -------------------------------------------------------------------


async def long_history(store: Store) -> Task:
    """A task whose attempt 1 expired and attempt 2 was released by its worker, followed by
    more released attempts than the history keeps; left READY."""
    (task,) = await submit_tasks(store, [spec(max_attempts=5)])
    task = await step(store, task, lease_d(task, T0 + 1))
    task = await step(store, task, machine.advance(task, T0 + 100))  # attempt 1 expires
    now = T0 + 100
    for _ in range(machine.MAX_HISTORY + 3):
        now += 1
        task = await step(store, task, lease_d(task, now))
        task = await step(store, task, nack_d(task, now, release=True))
    assert task.attempt == machine.MAX_HISTORY + 4
    return task


def check_long_history(task: Task) -> None:
    """The decisions on `long_history`'s task, made from a record the store gave back."""
    assert task.attempt_record(1) is None and task.attempt_record(2) is None  # trimmed
    assert task.attempts_omitted == 4
    now = T0 + 1000
    # Attempt 2 gave the task back: its ack is rejected, however long ago that was.
    assert machine.ack(task, 2, result=b"x", now=now).outcome is AckOutcome.REJECTED
    again = machine.nack(
        task, 2, error="", retry_after=None, terminal=False, release=True, now=now,
        policy=POLICY, rng=random.Random(1),
    )  # fmt: skip
    assert again.outcome is NackOutcome.DUPLICATE
    # Attempt 1 lost its lease to expiry: its late ack still completes the task.
    assert machine.ack(task, 1, result=b"x", now=now).outcome is AckOutcome.ADOPTED


def test_how_every_attempt_ended_is_kept_beyond_the_history(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        task = await long_history(store)
        stored = await current(store, task.id)
        assert stored == task
        check_long_history(stored)

    run(make_store, body)


def test_how_every_attempt_ended_survives_reopen(make_durable_store: StoreFactory) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        try:
            task = await long_history(store)
        finally:
            await store.close()
        store = make_durable_store()
        await store.open()
        try:
            stored = await current(store, task.id)
            assert stored == task
            check_long_history(stored)
            # The stored record decides through the store as well.
            done = await step(store, stored, machine.ack(stored, 1, result=b"late", now=T0 + 2000))
            assert (done.state, done.result) == (State.COMPLETED, b"late")
        finally:
            await store.close()

    run_async(body)


# -- who took each lease ------------------------------------------------------------------


async def leased_by_callers(store: Store) -> tuple[Task, Task, Task]:
    """Three tasks whose leases were taken by authenticated callers (and one without auth,
    caller ""): one with three attempts, left leased (callers in the history's JSON and in
    the last attempt's own columns), one acked (the short write of an ended attempt), one
    dead. The leases go through claims and through one batch that leases two tasks for two
    callers."""
    first, acked, dead = await submit_tasks(store, [spec(max_attempts=5), spec(), spec("dlq")])
    (task,) = await store.claim("q", 1, leaser(T0 + 1, "w1", caller="key-a"))
    assert task.id == first.id
    task = await step(store, task, machine.advance(task, T0 + 100))  # attempt 1 expires
    decisions = [lease_as(task, T0 + 101, "cert:b"), lease_as(dead, T0 + 101, "key-a")]
    changes = [Change(t, d.task) for t, d in zip((task, dead), decisions, strict=True)]
    assert await store.apply(changes) == [True, True]
    task, dead = (change.after for change in changes)  # type: ignore[misc]
    task = await step(store, task, nack_d(task, T0 + 102, retry_after=0.0))  # attempt 2 fails
    dead = await step(store, dead, nack_d(dead, T0 + 102, terminal=True))
    (acked,) = await store.claim("q", 1, leaser(T0 + 103, "w3", caller="key-c"))
    acked = await step(store, acked, ack_d(acked, T0 + 104))
    (task,) = await store.claim("q", 1, leaser(T0 + 105, "w1"))  # no auth: caller ""
    return task, acked, dead


def lease_as(task: Task, now: float, caller: str) -> Decision[bool]:
    return machine.lease(
        task, now=now, worker_id="w2", lease_duration=None, policy=POLICY, caller=caller
    )


def check_callers(task: Task, acked: Task, dead: Task) -> None:
    """The records of `leased_by_callers`, as a store gave them back."""
    assert [(a.attempt, a.worker_id, a.caller, a.outcome) for a in task.history] == [
        (1, "w1", "key-a", AttemptOutcome.EXPIRED),
        (2, "w2", "cert:b", AttemptOutcome.FAILED),
        (3, "w1", "", AttemptOutcome.RUNNING),
    ]
    assert [(a.worker_id, a.caller, a.outcome) for a in acked.history] == [
        ("w3", "key-c", AttemptOutcome.ACKED)
    ]
    assert [(a.caller, a.outcome) for a in dead.history] == [("key-a", AttemptOutcome.FAILED)]


def test_the_caller_of_each_lease_is_stored_with_its_attempt(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        made = await leased_by_callers(store)
        check_callers(*made)
        stored = await store.get([t.id for t in made])
        assert [stored[t.id] for t in made] == list(made)
        page = await store.list_dead("dlq", after_id=None, limit=10)
        assert page.tasks == [made[2]]

    run(make_store, body)


def test_the_caller_of_each_lease_survives_reopen(make_durable_store: StoreFactory) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        try:
            made = await leased_by_callers(store)
        finally:
            await store.close()
        store = make_durable_store()
        await store.open()
        try:
            stored = await store.get([t.id for t in made])
            assert [stored[t.id] for t in made] == list(made)
            check_callers(*made)
            page = await store.list_dead("dlq", after_id=None, limit=10)
            assert page.tasks == [made[2]]
            # The reopened record goes on, every caller kept.
            task = await step(store, made[0], ack_d(made[0], T0 + 106))
            assert await current(store, task.id) == task
            assert [a.caller for a in task.history] == ["key-a", "cert:b", ""]
        finally:
            await store.close()

    run_async(body)


# -- durability ---------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(make_durable_store: StoreFactory) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        secret = store.token_secret
        ready, sched, leased, done, dead, cancelled, redone = await submit_tasks(
            store,
            [
                spec(idempotency_key="k-ready", headers={"a": "1"}, priority=2),
                spec(not_before=T0 + 500, idempotency_key="k-sched"),
                spec(payload=b"\x00\xffleased", lease_duration=40.0),
                spec(idempotency_key="k-done", headers={"h": "v", "ü": "ß"}),
                spec("dlq"),
                spec(),
                spec(),
            ],
        )
        leased = await step(store, leased, lease_d(leased, T0 + 1))
        done = await complete(store, done, T0 + 2, result=b"\x00result")
        dead = await kill(store, dead, T0 + 3)
        cancelled = await cancel(store, cancelled, T0 + 4)
        first = await step(store, redone, lease_d(redone, T0 + 5))
        expired = await step(store, first, machine.advance(first, T0 + 200))
        redone = await step(store, expired, lease_d(expired, T0 + 201))
        await store.apply([], {("q", Event.DUPLICATE_ACK): 3})
        records = [ready, sched, leased, done, dead, cancelled, redone]
        before_counts = await store.queue_counts(["q", "dlq"])
        next_due = await store.next_due()
        await store.close()

        store = make_durable_store()
        await store.open()
        try:
            assert store.token_secret == secret
            assert await store.get([t.id for t in records]) == {t.id: t for t in records}
            assert await store.queue_counts(["q", "dlq"]) == before_counts
            assert before_counts[0].totals[Event.DUPLICATE_ACK] == 3
            assert await store.next_due() == next_due == T0 + 41
            got = await store.get([leased.id])
            assert (got[leased.id].state, got[leased.id].lease_deadline) == (
                State.LEASED,
                T0 + 41,
            )
            keys = await submit(
                store, [spec(idempotency_key=k) for k in ("k-ready", "k-sched", "k-done", "k-new")]
            )
            assert [r.deduplicated for r in keys] == [True, True, True, False]
            assert [r.task for r in keys[:3]] == [ready, sched, done]
            assert keys[3].task.id > max(t.id for t in records)
            assert [t.id for t in await claim(store, now=T0 + 300)] == [ready.id, keys[3].task.id]
            # Due records may come without payloads (the reaper needs none).
            due = await store.due(T0 + 300, 10)
            assert [t.evolve(payload=b"") for t in due] == [
                t.evolve(payload=b"") for t in (leased, redone)
            ]
            page = await store.list_dead("dlq", after_id=None, limit=10)
            assert page.tasks == [dead]
        finally:
            await store.close()

    run_async(body)


def test_ids_are_not_reused_after_reopen(make_durable_store: StoreFactory) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        tasks = await submit_tasks(store, [spec(), spec(), spec()])
        # The newest tasks finish and are purged: their ids must still never come back (a
        # lease token for an old task would be accepted for a new one with the same id).
        for t in tasks[1:]:
            await complete(store, t, T0 + 1)
        assert await store.purge_finished(finished_before=T0 + 2, limit=10) == 2
        await store.close()

        store = make_durable_store()
        await store.open()
        try:
            (new,) = await submit_tasks(store, [spec()])
            assert new.id > tasks[-1].id
        finally:
            await store.close()

    run_async(body)


def test_a_forgotten_queue_stays_forgotten_after_reopen(make_durable_store: StoreFactory) -> None:
    """And totals counted just before and just after the forgetting (on SQLite: in the
    same group commit) are kept or dropped on disk as they were in memory."""

    async def body() -> None:
        store = make_durable_store()
        await store.open()
        await emptied(store, "gone")
        await submit_tasks(store, [spec("kept")])
        assert await store.forget_empty_queues(limit=10) == 1
        await emptied(store, "early")
        await emptied(store, "late")
        await asyncio.gather(
            store.apply([], {("early", Event.DUPLICATE_ACK): 1}),
            store.forget_empty_queues(limit=10),
            store.apply([], {("late", Event.DUPLICATE_ACK): 1}),
        )
        before = await store.queue_counts()
        assert "gone" not in [c.queue for c in before]
        await store.close()

        store = make_durable_store()
        await store.open()
        try:
            assert await store.queue_counts() == before
            assert await totals(store, "gone") == {}
        finally:
            await store.close()

    run_async(body)


# -- SQLite specifics ---------------------------------------------------------------------


class TestSqlite:
    def test_memory_holds_pending_payloads_up_to_the_budget_and_no_old_keys(
        self, tmp_path: Path
    ) -> None:
        """Ten times the budget of pending payload bytes: the store holds no more than the
        budget in memory (the rest read back when leased, every one of them), and keeps
        finished records and keys within its cache."""
        budget = 4096

        async def fill(store: Store) -> list[bytes]:
            assert isinstance(store, SqliteStore)
            payloads = [bytes([i % 256]) * 1024 for i in range(40)]
            for start in range(0, 40, 8):
                await submit_tasks(
                    store,
                    [
                        spec(payload=p, idempotency_key=f"k{start + n}")
                        for n, p in enumerate(payloads[start : start + 8])
                    ],
                )
                assert store.held_payload_bytes <= budget
            return payloads

        async def drain(store: Store) -> None:
            assert isinstance(store, SqliteStore)
            got: list[bytes] = []
            while leased := await store.claim("q", 7, leaser(T0 + 1)):
                got += [t.payload for t in leased]
                for t in leased:
                    await step(store, t, ack_d(t, T0 + 2))
                assert store.held_payload_bytes <= budget
            assert got == payloads
            assert len(store._index.tasks) <= LeanSqliteStore.final_cache
            assert len(store._index.keys) <= LeanSqliteStore.final_cache

        payloads = run(lambda: LeanSqliteStore(tmp_path / "f.db", payload_memory=budget), fill)
        # Reopened: pending tasks come back without their payloads, read when leased.
        run(lambda: LeanSqliteStore(tmp_path / "f.db", payload_memory=budget), drain)

    def test_a_second_store_on_the_same_path_fails(self, tmp_path: Path) -> None:
        async def body() -> None:
            first = SqliteStore(tmp_path / "f.db")
            await first.open()
            try:
                second = SqliteStore(tmp_path / "f.db")
                with pytest.raises(RuntimeError, match="in use by another feeder"):
                    await second.open()
                await second.close()
                # The first one is unaffected.
                (task,) = await submit_tasks(first, [spec()])
                assert await first.get([task.id]) == {task.id: task}
            finally:
                await first.close()
            third = SqliteStore(tmp_path / "f.db")
            await third.open()
            try:
                assert (await third.get([task.id]))[task.id] == task
            finally:
                await third.close()

        run_async(body)

    @pytest.mark.parametrize("way", ["symlink", "hardlink", "relative"])
    def test_a_second_store_on_the_same_file_by_another_path_fails(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
    ) -> None:
        """The lock is the database file's, not its name's: a symlink, a hard link or a
        relative path to an open database cannot open it a second time."""
        (tmp_path / "data").mkdir()
        real = tmp_path / "data" / "f.db"
        other = tmp_path / "other.db"
        if way == "symlink":
            other.symlink_to(real)
        monkeypatch.chdir(tmp_path)

        async def body() -> None:
            first = SqliteStore(real)
            await first.open()
            try:
                if way == "hardlink":
                    os.link(real, other)
                path = Path("data/../data/f.db") if way == "relative" else other
                second = SqliteStore(path)
                with pytest.raises(RuntimeError, match="in use by another feeder"):
                    await second.open()
                await second.close()
                # The first one is unaffected, and its writes still commit.
                (task,) = await submit_tasks(first, [spec()])
                leased = await step(first, task, lease_d(task, T0 + 1))
                assert await first.get([task.id]) == {task.id: leased}
            finally:
                await first.close()
            third = SqliteStore(other if way != "relative" else Path("data/f.db"))
            await third.open()
            try:
                assert (await third.get([task.id]))[task.id] == leased
            finally:
                await third.close()

        run_async(body)

    def test_a_row_changed_behind_the_feeders_back_is_not_overwritten(self, tmp_path: Path) -> None:
        """The version guard is in the SQL: a row that is not at the version the index
        holds fails the commit (the store reloads from disk), it is not overwritten."""

        async def body(store: Store) -> None:
            task, other = await submit_tasks(store, [spec(), spec()])
            outside = sqlite3.connect(tmp_path / "f.db")
            try:
                outside.execute(
                    "UPDATE tasks SET version = version + 5, priority = 9 WHERE id = ?",
                    (task.id,),
                )
                outside.commit()
            finally:
                outside.close()
            leased = lease_d(task, T0 + 1).task
            other_leased = lease_d(other, T0 + 1).task
            with pytest.raises(StoreUnavailable, match="expected version"):
                await store.apply([Change(task, leased), Change(other, other_leased)])
            # Nothing of that transaction was written, and the index is the disk's again.
            reloaded = await store.get([task.id, other.id])
            assert (reloaded[task.id].version, reloaded[task.id].priority) == (6, 9)
            assert reloaded[other.id] == other
            assert [t.id for t in await claim(store, now=T0 + 2)] == [task.id, other.id]

        run(lambda: SqliteStore(tmp_path / "f.db"), body)

    def test_final_records_evicted_from_memory_come_back_identical(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(SqliteStore, "final_cache", 2)

        async def body(store: Store) -> None:
            assert isinstance(store, SqliteStore)
            done, dead, cancelled, redone, empty, *fillers = await submit_tasks(
                store,
                [
                    spec(payload=b"\x00p", headers={"x": "1", "y": "ü"}, idempotency_key="k"),
                    spec(lease_duration=15.0, priority=-3),
                    spec(),
                    spec(max_attempts=4),
                    spec(payload=b""),
                    *(spec() for _ in range(4)),
                ],
            )
            done = await complete(store, done, T0 + 1, result=b"\x01res")
            dead = await kill(store, dead, T0 + 2)
            cancelled = await cancel(store, cancelled, T0 + 3)
            first = await step(store, redone, lease_d(redone, T0 + 4))
            failed = await step(store, first, nack_d(first, T0 + 5, retry_after=0))
            second = await step(store, failed, lease_d(failed, T0 + 6))
            redone = await step(store, second, ack_d(second, T0 + 7, None))
            empty = await complete(store, empty, T0 + 8, result=b"")
            for f in fillers:
                await complete(store, f, T0 + 9)
            records = [done, dead, cancelled, redone, empty]
            assert len(redone.history) == 2
            assert all(t.id not in store._index.tasks for t in records)  # evicted

            assert await store.get([t.id for t in records]) == {t.id: t for t in records}
            for t in records:  # one by one, each evicting others again
                assert await store.get([t.id]) == {t.id: t}
            (again,) = await submit(store, [spec(idempotency_key="k")])
            assert (again.deduplicated, again.task) == (True, done)
            assert await counts(store) == {State.COMPLETED: 7, State.DEAD: 1, State.CANCELLED: 1}

            # Records of evicted tasks can still be changed, by a decision on any record the
            # store returned (here: from the dead-letter list).
            for f in fillers:
                await store.get([f.id])
            (listed,) = (await store.list_dead("q", after_id=None, limit=10)).tasks
            assert listed == dead
            redriven = machine.redrive(listed, now=T0 + 20).task
            assert await store.apply([Change(listed, redriven)]) == [True]
            assert await store.get([dead.id]) == {dead.id: redriven}
            assert [t.id for t in await claim(store, now=T0 + 21)] == [dead.id]

        run(lambda: SqliteStore(tmp_path / "f.db"), body)

    def test_a_full_database_fails_submits_but_not_updates(self, tmp_path: Path) -> None:
        async def body(store: Store) -> None:
            assert isinstance(store, SqliteStore)
            tasks = await submit_tasks(store, [spec(payload=bytes([i])) for i in range(4)])
            (leased,) = await claim(store, limit=1, now=T0 + 1)
            before = await store.queue_counts(["q"])
            writer = store._writer
            assert writer is not None
            (pages,) = writer.execute("PRAGMA page_count").fetchone()
            assert writer.execute(f"PRAGMA max_page_count={pages}").fetchone() == (pages,)

            big = spec(payload=b"x" * 200_000)
            with pytest.raises(StoreUnavailable, match="full"):
                await submit(store, [spec(payload=b"small"), big])
            assert await store.queue_counts(["q"]) == before
            probe = [t.id for t in tasks] + [tasks[-1].id + i for i in range(1, 5)]
            assert await store.get(probe) == {t.id: t for t in tasks[1:]} | {leased.id: leased}

            # Updates of stored tasks go on: claim, ack, and both at once with a failing submit.
            (second,) = await claim(store, limit=1, now=T0 + 2)
            done = await step(store, leased, ack_d(leased, T0 + 3))
            third = lease_d(tasks[2], T0 + 4).task
            failed, applied = await asyncio.gather(
                submit(store, [big]),
                store.apply([Change(tasks[2], third)]),
                return_exceptions=True,
            )
            assert isinstance(failed, StoreUnavailable)
            assert "full" in str(failed)
            assert applied == [True]
            assert await store.get([t.id for t in tasks]) == {
                tasks[0].id: done,
                tasks[1].id: second,
                tasks[2].id: third,
                tasks[3].id: tasks[3],
            }
            assert await counts(store) == {State.COMPLETED: 1, State.LEASED: 2, State.READY: 1}

            # The disk holds exactly that.
            check = sqlite3.connect(tmp_path / "f.db")
            try:
                rows = check.execute("SELECT id, state FROM tasks ORDER BY id").fetchall()
            finally:
                check.close()
            assert rows == [
                (tasks[0].id, State.COMPLETED),
                (tasks[1].id, State.LEASED),
                (tasks[2].id, State.LEASED),
                (tasks[3].id, State.READY),
            ]

            writer.execute("PRAGMA max_page_count=1073741823")
            (new,) = await submit_tasks(store, [big])
            assert new.id > tasks[-1].id
            assert await store.get([new.id]) == {new.id: new}

        run(lambda: SqliteStore(tmp_path / "f.db"), body)

    def test_close_waits_for_writes_staged_while_closing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Commits take a while, so writes are staged while close waits for the last one.
        commit = SqliteStore._commit

        def slow_commit(store: SqliteStore, batch: Any) -> None:
            time.sleep(0.02)
            commit(store, batch)

        monkeypatch.setattr(SqliteStore, "_commit", slow_commit)

        async def body() -> None:
            loop_errors: list[dict[str, Any]] = []
            asyncio.get_running_loop().set_exception_handler(
                lambda _loop, context: loop_errors.append(context)
            )
            store = SqliteStore(tmp_path / "f.db")
            await store.open()
            (task,) = await submit_tasks(store, [spec()])
            last = await step(store, task, lease_d(task, T0))
            applied = 0

            async def writer() -> None:
                nonlocal last, applied
                for i in range(1, 100):
                    decision = machine.extend(last, 1, lease_duration=30.0 + i, now=T0 + i)
                    assert decision.task is not None
                    try:
                        ok = await store.apply([Change(last, decision.task)])
                    except StoreUnavailable as exc:
                        assert str(exc) == "the store is closed"  # refused, not failed
                        return
                    assert ok == [True]
                    last = decision.task
                    applied += 1

            running = asyncio.create_task(writer())
            while applied < 2:
                await asyncio.sleep(0.001)
            await store.close()
            await running
            assert loop_errors == []
            assert 2 <= applied < 99

            store = SqliteStore(tmp_path / "f.db")
            await store.open()
            try:
                assert await store.get([task.id]) == {task.id: last}
            finally:
                await store.close()

        run_async(body)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_submit_past_the_pending_bound_stores_nothing(backend: str, tmp_path: Path) -> None:
    """The stores that hold pending tasks in memory bound them across queues."""

    def make() -> Store:
        if backend == "memory":
            return MemoryStore(max_pending=5)
        return SqliteStore(tmp_path / "f.db", max_pending=5)

    async def body(store: Store) -> None:
        first = await submit_tasks(store, [spec("a"), spec("b"), spec("c")])
        with pytest.raises(TooManyPending) as caught:
            await submit(store, [spec("a"), spec("d"), spec("e")])
        assert (caught.value.pending, caught.value.max_pending) == (3, 5)
        assert "max_pending 5" in str(caught.value)
        assert [c.queue for c in await store.queue_counts() if sum(c.by_state.values())] == [
            "a",
            "b",
            "c",
        ]
        await complete(store, first[0], T0 + 1)  # finished tasks do not count
        assert len(await submit_tasks(store, [spec("a"), spec("d"), spec("e")])) == 3

    run(make, body)
