"""The conformance suite, continued: what the store offers an operator's queue controls
(pausing, listing tasks and lease holders, purging, forgetting a named queue), on every
backend (tests/storage/conftest.py), across reopen where the backend is durable, and
between two feeders where it is shared.

Purges are made here as the service makes them: the queue's READY and SCHEDULED tasks
listed, `machine.purge` asked about each, the deletions applied with their events.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from feeder.core import machine
from feeder.core.machine import Event
from feeder.core.model import State, Task
from feeder.store import Change, Store, StoreHooks, StoreUnavailable
from feeder.store.base import listed_size
from feeder.store.sqlite import SqliteStore
from tests.storage.test_conformance import (
    T0,
    TIMEOUT,
    Heard,
    cancel,
    claim,
    complete,
    counts,
    current,
    emptied,
    kill,
    lease_d,
    leaser,
    run,
    run_async,
    spec,
    step,
    submit,
    submit_tasks,
    totals,
)
from tests.storage.test_shared import run_two

pytestmark = pytest.mark.timeout(30)

StoreFactory = Callable[[], Store]
PENDING = frozenset({State.READY, State.SCHEDULED})


async def purge(store: Store, queue: str, *, before: float = T0 + 1000) -> int:
    """Purges `queue` as the service does; how many tasks went."""
    page = await store.list_tasks(queue, PENDING, after_id=None, limit=1000, payloads=False)
    changes = []
    for task in page.tasks:
        decision = machine.purge(task, before=before)
        if decision.outcome:
            changes.append(Change(task, None, decision.events))
    return sum(await store.apply(changes))


async def listed(
    store: Store, queue: str, states: frozenset[State] | None, *, newest_first: bool = False
) -> list[int]:
    """Every id a listing gives, page by page (pages of 2)."""
    found: list[int] = []
    after: int | None = None
    while True:
        page = await store.list_tasks(
            queue, states, after_id=after, limit=2, newest_first=newest_first
        )
        found += [t.id for t in page.tasks]
        if page.next_after_id is None:
            return found
        after = page.next_after_id


# -- pausing ------------------------------------------------------------------------------


def test_a_paused_queue_is_claimed_from_by_nobody_until_resumed(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        heard = Heard()
        store.set_hooks(heard.hooks())
        first, second = await submit_tasks(store, [spec(), spec()])
        (other,) = await submit_tasks(store, [spec("other")])
        heard.take()

        assert await store.pause("q", at=T0 + 1) is True
        assert await store.pause("q", at=T0 + 2) is False  # paused already: its time stays
        assert await claim(store) == []
        assert [t.id for t in await claim(store, "other")] == [other.id]
        # Submits, and everything else but claims, go on.
        (third,) = await submit_tasks(store, [spec()])
        assert await counts(store) == {State.READY: 3}
        (found,) = await store.queue_counts(["q"])
        assert found.paused_at == T0 + 1
        (elsewhere,) = await store.queue_counts(["other"])
        assert elsewhere.paused_at is None
        heard.take()

        assert await store.resume("q") is True
        assert await store.resume("q") is False
        assert heard.take() == ({"q": 3}, None)  # waiting leasers are woken
        assert (await store.queue_counts(["q"]))[0].paused_at is None
        assert [t.id for t in await claim(store)] == [first.id, second.id, third.id]

    run(make_store, body)


def test_leases_out_before_a_pause_may_still_be_acked(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec(), spec()])
        (leased,) = await store.claim("q", 1, leaser(T0 + 1))
        await store.pause("q", at=T0 + 2)
        extended = await step(
            store, leased, machine.extend(leased, leased.attempt, lease_duration=60, now=T0 + 3)
        )
        done = await step(
            store, extended, machine.ack(extended, extended.attempt, result=b"", now=T0 + 4)
        )
        assert done.state is State.COMPLETED
        assert await counts(store) == {State.READY: 1, State.COMPLETED: 1}
        assert await claim(store) == []

    run(make_store, body)


def test_a_paused_queue_is_listed_and_kept_by_the_janitor(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await emptied(store, "idle")
        await emptied(store, "held")
        await store.pause("held", at=T0 + 5)
        assert await store.forget_empty_queues(limit=10) == 1  # "idle" only
        names = [c.queue for c in await store.queue_counts()]
        assert names == ["held"]
        paged = await store.queue_counts(after="", limit=10)
        assert [(c.queue, c.paused_at) for c in paged] == [("held", T0 + 5)]
        assert await store.forget_empty_queues(limit=10) == 0
        await store.resume("held")
        assert await store.forget_empty_queues(limit=10) == 1
        assert await store.queue_counts() == []

    run(make_store, body)


def test_a_pause_survives_reopen(make_durable_store: StoreFactory) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        (task,) = await submit_tasks(store, [spec()])
        await submit_tasks(store, [spec("other")])
        await store.pause("q", at=T0 + 7)
        await store.pause("other", at=T0 + 8)
        await store.resume("other")
        await store.close()

        store = make_durable_store()
        await store.open()
        try:
            assert await claim(store) == []
            by_queue = {c.queue: c.paused_at for c in await store.queue_counts(["q", "other"])}
            assert by_queue == {"q": T0 + 7, "other": None}
            await store.resume("q")
        finally:
            await store.close()

        store = make_durable_store()
        await store.open()
        try:
            assert [t.id for t in await claim(store)] == [task.id]
        finally:
            await store.close()

    run_async(body)


def test_a_pause_through_one_feeder_holds_for_the_other(make_shared_store: StoreFactory) -> None:
    async def body(a: Store, b: Store) -> None:
        ready: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        b.set_hooks(StoreHooks(ready=lambda queue, count: ready.put_nowait((queue, count))))
        tasks = await submit_tasks(a, [spec(), spec()])
        await a.pause("q", at=T0 + 1)
        assert await claim(b) == []
        assert (await b.queue_counts(["q"]))[0].paused_at == T0 + 1
        while not ready.empty():
            ready.get_nowait()
        await a.resume("q")
        # b hears of the ready tasks (through a notification), and its claim gets them.
        assert await asyncio.wait_for(ready.get(), TIMEOUT) == ("q", 2)
        assert [t.id for t in await claim(b)] == [t.id for t in tasks]

    run_two(make_shared_store, body)


# -- listing tasks ------------------------------------------------------------------------


async def a_queue_in_every_state(store: Store) -> dict[State, Task]:
    """One task of "q" in each state (ids in this order), and a ready one of "other"."""
    scheduled, ready, leased, completed, dead, cancelled = await submit_tasks(
        store,
        [spec(not_before=T0 + 500), spec(), spec(), spec(), spec(), spec()],
    )
    await submit_tasks(store, [spec("other")])
    return {
        State.SCHEDULED: scheduled,
        State.READY: ready,
        State.LEASED: await step(store, leased, lease_d(leased, T0 + 1)),
        State.COMPLETED: await complete(store, completed, T0 + 2),
        State.DEAD: await kill(store, dead, T0 + 3),
        State.CANCELLED: await cancel(store, cancelled, T0 + 4),
    }


def test_list_tasks_by_state_in_either_order(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        tasks = await a_queue_in_every_state(store)
        every = [t.id for t in tasks.values()]
        assert await listed(store, "q", None) == every
        assert await listed(store, "q", None, newest_first=True) == every[::-1]
        for state, task in tasks.items():
            page = await store.list_tasks("q", frozenset({state}), after_id=None, limit=10)
            assert page.tasks == [task] and page.next_after_id is None
        pending = await listed(store, "q", PENDING)
        assert pending == [tasks[State.SCHEDULED].id, tasks[State.READY].id]
        assert await listed(store, "other", frozenset({State.LEASED})) == []
        assert await listed(store, "nothing", None) == []

    run(make_store, body)


def test_list_tasks_pages_keep_their_cursor(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        made = [
            t.id for t in await submit_tasks(store, [spec(payload=bytes([n])) for n in range(7)])
        ]
        page = await store.list_tasks("q", None, after_id=None, limit=3)
        assert [t.id for t in page.tasks] == made[:3] and page.next_after_id == made[2]
        page = await store.list_tasks("q", None, after_id=page.next_after_id, limit=3)
        assert [t.id for t in page.tasks] == made[3:6]
        page = await store.list_tasks("q", None, after_id=page.next_after_id, limit=3)
        assert [t.id for t in page.tasks] == made[6:] and page.next_after_id is None
        newest = await store.list_tasks("q", None, after_id=made[4], limit=10, newest_first=True)
        assert [t.id for t in newest.tasks] == made[3::-1]
        # With payloads, whatever the store holds in memory.
        assert [t.payload for t in page.tasks] == [bytes([6])]
        # Many more than one read of the backend (pages of hundreds).
        many = [t.id for t in await submit_tasks(store, [spec("many")] * 300)]
        assert await listed(store, "many", None) == many
        page = await store.list_tasks("many", None, after_id=many[10], limit=250, newest_first=True)
        assert [t.id for t in page.tasks] == many[9::-1]

    run(make_store, body)


def test_a_listing_with_payloads_stops_at_its_byte_budget(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        made = await submit_tasks(store, [spec(payload=b"x" * 1000) for _ in range(5)])
        budget = listed_size(made[0]) * 2 + 10
        page = await store.list_tasks("q", None, after_id=None, limit=10, max_bytes=budget)
        assert [t.id for t in page.tasks] == [made[0].id, made[1].id]
        assert page.next_after_id == made[1].id
        page = await store.list_tasks("q", None, after_id=made[1].id, limit=10, max_bytes=1)
        assert [t.id for t in page.tasks] == [made[2].id]  # a page is never empty for its size
        # Without payloads, the budget does not apply (and payloads may be left out).
        page = await store.list_tasks(
            "q", None, after_id=None, limit=10, payloads=False, max_bytes=budget
        )
        assert [t.id for t in page.tasks] == [t.id for t in made]
        assert page.next_after_id is None

    run(make_store, body)


# -- who holds leases ---------------------------------------------------------------------


def test_lease_holders_group_leases_by_queue_worker_and_caller(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        await submit_tasks(store, [spec()] * 5 + [spec("other")])
        await store.claim("q", 2, leaser(T0 + 1, "w1", caller="alice"))
        await store.claim("q", 1, leaser(T0 + 5, "w1", caller="alice"))
        (mine,) = await store.claim("q", 1, leaser(T0 + 3, "w2"))
        await store.claim("other", 1, leaser(T0 + 4, "w1", caller="alice"))
        holders = await store.lease_holders(None, limit=10)
        assert [(h.queue, h.worker_id, h.caller, h.leases) for h in holders] == [
            ("other", "w1", "alice", 1),
            ("q", "w1", "alice", 3),
            ("q", "w2", "", 1),
        ]
        assert (holders[1].oldest_leased_at, holders[1].newest_leased_at) == (T0 + 1, T0 + 5)
        assert [h.worker_id for h in await store.lease_holders("q", limit=1)] == ["w1"]
        # An ended lease is no longer held.
        await step(store, mine, machine.ack(mine, mine.attempt, result=None, now=T0 + 6))
        assert [h.worker_id for h in await store.lease_holders("q", limit=10)] == ["w1"]
        assert await store.lease_holders("nothing", limit=10) == []

    run(make_store, body)


# -- purging ------------------------------------------------------------------------------


def test_a_purge_deletes_ready_and_scheduled_tasks_and_counts_them(
    make_store: StoreFactory,
) -> None:
    async def body(store: Store) -> None:
        tasks = await a_queue_in_every_state(store)
        (keyed,) = await submit_tasks(store, [spec(idempotency_key="k")])
        assert await purge(store, "q") == 3  # scheduled, ready and the keyed one
        assert await counts(store) == {
            State.LEASED: 1,
            State.COMPLETED: 1,
            State.DEAD: 1,
            State.CANCELLED: 1,
        }
        assert (await totals(store))[Event.PURGED] == 3
        assert await totals(store, "other") == {Event.SUBMITTED: 1}
        gone = [tasks[State.SCHEDULED].id, tasks[State.READY].id, keyed.id]
        assert await store.get(gone) == {}
        leased = tasks[State.LEASED]
        assert await current(store, leased.id) == leased
        # Its key is free again: the same key makes a new task.
        (again,) = await submit(store, [spec(idempotency_key="k")])
        assert not again.deduplicated and again.task.id != keyed.id
        assert await purge(store, "q", before=T0 - 1) == 0  # only what was there before

    run(make_store, body)


# -- forgetting a named queue -------------------------------------------------------------


def test_forget_only_the_named_queues_paused_or_not(make_store: StoreFactory) -> None:
    async def body(store: Store) -> None:
        for name in ("a", "b", "paused"):
            await emptied(store, name)
        await store.pause("paused", at=T0)
        await submit_tasks(store, [spec("busy")])
        assert await store.forget_empty_queues(10, only=["busy"]) == 0
        assert await store.forget_empty_queues(10, only=["b", "paused", "unknown"]) == 2
        assert [c.queue for c in await store.queue_counts()] == ["a", "busy"]
        # Its pause went with it: made anew by a submit, the queue is not paused.
        (task,) = await submit_tasks(store, [spec("paused")])
        assert [t.id for t in await claim(store, "paused")] == [task.id]

    run(make_store, body)


def test_a_queue_forgotten_with_its_pause_stays_so_after_reopen(
    make_durable_store: StoreFactory,
) -> None:
    async def body() -> None:
        store = make_durable_store()
        await store.open()
        await emptied(store, "gone")
        await store.pause("gone", at=T0)
        assert await store.forget_empty_queues(10, only=["gone"]) == 1
        await submit_tasks(store, [spec("kept")])
        await store.pause("kept", at=T0 + 1)
        await store.close()

        store = make_durable_store()
        await store.open()
        try:
            assert [(c.queue, c.paused_at) for c in await store.queue_counts()] == [
                ("kept", T0 + 1)
            ]
        finally:
            await store.close()

    run_async(body)


# -- SQLite specifics ---------------------------------------------------------------------


def test_a_pause_whose_commit_fails_is_undone(tmp_path: Path) -> None:
    """A pause is in effect before its commit (claims stop at once); a commit that fails
    reloads the index from disk, pause and all, and the caller hears of it."""

    async def body(store: Store) -> None:
        task, other = await submit_tasks(store, [spec(), spec("other")])
        outside = sqlite3.connect(tmp_path / "f.db")
        try:
            outside.execute("UPDATE tasks SET version = version + 5 WHERE id = ?", (other.id,))
            outside.commit()
        finally:
            outside.close()
        leased = lease_d(other, T0 + 1).task
        # One commit: the pause with a change the disk refuses.
        paused, applied = await asyncio.gather(
            store.pause("q", at=T0 + 1),
            store.apply([Change(other, leased)]),
            return_exceptions=True,
        )
        assert isinstance(paused, StoreUnavailable) and isinstance(applied, StoreUnavailable)
        assert (await store.queue_counts(["q"]))[0].paused_at is None
        assert [t.id for t in await claim(store)] == [task.id]

    run(lambda: SqliteStore(tmp_path / "f.db"), body)
