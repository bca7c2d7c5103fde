"""Large requests are served a slice per event-loop turn (feeder.service.turns): other
callbacks run while they are handled, and the slices add up to the same answer as one
piece would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from feeder.core.model import AckOutcome, ExtendOutcome, State, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.service import AckItem, ExtendItem, NackItem, TaskService
from feeder.service.turns import in_slices
from feeder.store.memory import MemoryStore

T = TypeVar("T")
LONG = 600.0


async def make_service() -> TaskService:
    service = TaskService(
        store=MemoryStore(),
        policies=lambda queue: QueuePolicy(max_attempts=1, max_depth=10_000),
        max_unacked=10_000,
    )
    await service.start(background=False)
    return service


@contextlib.asynccontextmanager
async def turns_counted() -> AsyncIterator[list[int]]:
    """Counts the loop turns that pass meanwhile (a callback that reschedules itself)."""
    count = [0]
    loop = asyncio.get_running_loop()
    handle: list[asyncio.Handle] = []

    def tick() -> None:
        count[0] += 1
        handle[:] = [loop.call_soon(tick)]

    handle.append(loop.call_soon(tick))
    try:
        yield count
    finally:
        handle[0].cancel()


async def turns_taken(work: Awaitable[T]) -> tuple[T, int]:
    async with turns_counted() as count:
        result = await work
    return result, count[0]


async def test_in_slices_yields_before_each_of_several_slices_only() -> None:
    async def collect(items: list[int], size: int) -> tuple[list[list[int]], int]:
        async def gather() -> list[list[int]]:
            return [list(part) async for part in in_slices(items, size)]

        return await turns_taken(gather())

    assert await collect(list(range(5)), 2) == ([[0, 1], [2, 3], [4]], 3)
    assert await collect([1, 2], 2) == ([[1, 2]], 0)  # one slice: no turn given up
    assert await collect([], 2) == ([], 0)
    with pytest.raises(ValueError):
        await collect([1], 0)


async def test_a_thousand_acks_let_other_calls_run_and_keep_their_order() -> None:
    service = await make_service()
    await service.submit([TaskSpec(queue="q") for _ in range(1000)])
    grants = await service.lease("q", max_tasks=1000, lease_duration=LONG, wait=0, worker_id="w")
    assert len(grants) == 1000
    items = [AckItem(g.lease_token) for g in grants]
    # The same lease acked again far down the batch, in another slice: a duplicate.
    items[700] = AckItem(grants[10].lease_token)
    results, turns = await turns_taken(service.ack(items))
    assert turns >= 3
    outcomes = [r.outcome for r in results]
    assert outcomes[10] is AckOutcome.ACKED and outcomes[700] is AckOutcome.DUPLICATE
    assert outcomes.count(AckOutcome.ACKED) == 999
    assert [r.task_id for r in results] == [
        g.task.id for g in [*grants[:700], grants[10], *grants[701:]]
    ]


async def test_changes_chained_on_one_task_apply_in_order_across_slices() -> None:
    service = await make_service()
    await service.submit([TaskSpec(queue="q") for _ in range(1000)])
    grants = await service.lease("q", max_tasks=1000, lease_duration=LONG, wait=0, worker_id="w")
    items = [ExtendItem(g.lease_token, lease_duration=60.0) for g in grants]
    # The same lease extended early in the batch and again far down it, in another apply.
    items[900] = ExtendItem(grants[10].lease_token, lease_duration=120.0)
    results = await service.extend(items)
    assert {r.outcome for r in results} == {ExtendOutcome.EXTENDED}
    first, second = results[10].lease_deadline, results[900].lease_deadline
    assert first is not None and second is not None and second > first
    task = await service.get_task(grants[10].task.id)
    assert task is not None and task.lease_deadline == second


async def test_a_lease_of_a_thousand_lets_other_calls_run() -> None:
    service = await make_service()
    await service.submit([TaskSpec(queue="q") for _ in range(1000)])
    grants, turns = await turns_taken(
        service.lease("q", max_tasks=1000, lease_duration=LONG, wait=0, worker_id="w")
    )
    assert turns >= 3
    ids = [g.task.id for g in grants]
    assert len(ids) == 1000 and ids == sorted(ids)
    results = await service.ack([AckItem(g.lease_token) for g in grants])
    assert {r.outcome for r in results} == {AckOutcome.ACKED}


async def test_a_lease_cancelled_between_slices_gives_its_tasks_back() -> None:
    service = await make_service()
    await service.submit([TaskSpec(queue="q") for _ in range(1000)])
    leasing = asyncio.ensure_future(
        service.lease("q", max_tasks=1000, lease_duration=LONG, wait=0, worker_id="w")
    )
    for _ in range(3):  # some slices leased, not all
        await asyncio.sleep(0)
    assert not leasing.done()
    leasing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leasing
    for _ in range(100):
        (counts,) = await service.stats(["q"])
        if counts.by_state[State.READY] == 1000:
            break
        await asyncio.sleep(0.01)
    assert counts.by_state[State.READY] == 1000
    assert counts.by_state[State.LEASED] == 0


async def test_stats_of_many_queues_come_in_name_order_over_slices() -> None:
    service = await make_service()
    names = [f"q{i:04d}" for i in range(700)]
    await service.submit([TaskSpec(queue=name) for name in reversed(names)])
    page, turns = await turns_taken(service.stats(None, limit=701))
    assert [c.queue for c in page] == names
    assert turns >= 2
    assert [c.queue for c in await service.stats(None, after=names[99], limit=300)] == names[
        100:400
    ]
    named = await service.stats(names[::-1][:600])
    assert [c.queue for c in named] == names[::-1][:600]
    assert all(c.by_state[State.READY] == 1 for c in named)


async def dead_tasks(service: TaskService, count: int) -> list[int]:
    await service.submit([TaskSpec(queue="q") for _ in range(count)])
    grants = await service.lease("q", max_tasks=count, lease_duration=LONG, wait=0, worker_id="w")
    await service.nack([NackItem(g.lease_token, terminal=True) for g in grants])
    return [g.task.id for g in grants]


async def test_redrive_and_purge_of_many_dead_tasks_go_a_slice_at_a_time() -> None:
    service = await make_service()
    ids = await dead_tasks(service, 1200)
    redriven, turns = await turns_taken(service.redrive("q", task_ids=None, limit=700))
    assert redriven == 700
    assert turns >= 1
    page = await service.list_dead("q", page_size=1000, after_id=None)
    assert [t.id for t in page.tasks] == ids[700:]  # the oldest went first
    # By id: the ones that are not dead any more are skipped, in every slice.
    purged = await service.purge_dead("q", task_ids=ids, limit=0)
    assert purged == 500
    (counts,) = await service.stats(["q"])
    assert (counts.by_state[State.READY], counts.by_state[State.DEAD]) == (700, 0)
