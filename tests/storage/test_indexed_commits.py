"""Submits to the stores with an in-memory index (SQLite) while their commit runs: an answer
names only what is durable, and what is committed is served whether or not its caller
waited for it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from feeder.core import machine
from feeder.core.machine import Event
from feeder.core.model import State, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.store.base import Change, StoreUnavailable, Submitted
from feeder.store.sqlite import SqliteStore

POLICY = QueuePolicy()


async def submit(store: SqliteStore, specs: Sequence[TaskSpec]) -> list[Submitted]:
    return await store.submit(
        specs,
        create=lambda spec, task_id: machine.create(spec, task_id=task_id, now=1.0, policy=POLICY),
        max_depth=lambda queue: 1_000_000,
    )


def on_disk(path: Path, task_id: int) -> bool:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is not None


@pytest.fixture(params=["normal", "full"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "f.db", sync=request.param)
    await opened.open()
    yield opened
    await opened.close()


def batch(n: int, prefix: str = "k") -> list[TaskSpec]:
    return [TaskSpec(queue="q", payload=b"x", idempotency_key=f"{prefix}{i}") for i in range(n)]


async def test_a_deduplicated_answer_waits_until_its_twin_is_durable(
    store: SqliteStore, tmp_path: Path
) -> None:
    """A lone submit of a key that a batch still being committed holds is answered with the
    batch's task only once that task is on disk: a crash right after the answer must not
    lose the task it names (and hand its id out again)."""
    seen_on_disk: list[bool] = []
    first = asyncio.ensure_future(submit(store, batch(100)))
    # Runs right after the first has staged its batch, before that batch's commit.
    second = asyncio.ensure_future(submit(store, [batch(100)[50]]))
    second.add_done_callback(
        lambda f: seen_on_disk.append(on_disk(tmp_path / "f.db", f.result()[0].task.id))
    )
    results, [twin] = await asyncio.gather(first, second)
    assert twin.deduplicated and twin.task.id == results[50].task.id
    assert seen_on_disk == [True]


async def test_when_the_twin_commit_fails_the_waiting_submit_stores_its_own_task(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = store._write
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_write(batch: Any, errors: dict[int, BaseException]) -> None:
        if failures:
            raise failures.pop()
        real_write(batch, errors)

    monkeypatch.setattr(store, "_write", failing_write)
    first = asyncio.ensure_future(submit(store, batch(3)))
    second = asyncio.ensure_future(submit(store, [batch(3)[1]]))
    with pytest.raises(StoreUnavailable):
        await first
    [own] = await second
    assert not own.deduplicated
    assert on_disk(tmp_path / "f.db", own.task.id)
    assert (await store.get([own.task.id]))[own.task.id].idempotency_key == "k1"


async def test_a_submit_whose_caller_gave_up_during_its_commit_is_served(
    store: SqliteStore,
) -> None:
    """Cancelled after its tasks were staged for commit (the RPC's deadline passed, or its
    client went away): the committed tasks are leasable, and submitting them again
    deduplicates instead of failing on the unique key."""
    abandoned = asyncio.ensure_future(submit(store, batch(1000)))
    await asyncio.sleep(0)  # staged
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    again = await submit(store, batch(1000))
    assert all(r.deduplicated for r in again)
    ids = {r.task.id for r in again}
    assert len(ids) == 1000

    def lease(task: Any) -> Any:
        return machine.lease(task, now=2.0, lease_duration=60.0, worker_id="w", policy=POLICY)

    leased = await store.claim("q", 1000, lease)
    assert {t.id for t in leased} == ids
    assert all(t.state is State.LEASED for t in leased)


async def test_a_queue_with_a_submit_being_committed_is_not_forgotten(store: SqliteStore) -> None:
    """Its tasks are on their way to the index: the queue is not empty, and its totals (on
    disk and in memory) keep counting."""
    (old,) = await submit(store, [TaskSpec(queue="q")])
    await store.apply([Change(old.task, None)])
    submitting = asyncio.ensure_future(submit(store, [TaskSpec(queue="q")]))
    await asyncio.sleep(0)  # staged: in flight until its commit
    assert await store.forget_empty_queues(10) == 0
    (new,) = await submitting
    assert (await store.get([new.task.id]))[new.task.id] == new.task
    (counts,) = await store.queue_counts(["q"])
    assert counts.by_state[State.READY] == 1
    assert counts.totals == {Event.SUBMITTED: 2}
    assert await store.forget_empty_queues(10) == 0
