"""Who holds which lease (feeder.service.consumers): the cap's bookkeeping, and ends of
leases this feeder did not hear of, found by re-reading."""

from __future__ import annotations

import asyncio

from feeder.core.model import TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.service import AckItem, TaskService
from feeder.store.base import StoreHooks
from feeder.store.memory import MemoryStore


def make_service(store: MemoryStore, cap: int = 1000) -> TaskService:
    return TaskService(store=store, policies=lambda queue: QueuePolicy(), max_unacked=cap)


async def test_a_cancellation_whose_notice_was_lost_is_pushed_after_a_missed_notice() -> None:
    store = MemoryStore()
    service = make_service(store)
    await service.start(background=False)
    await service.submit([TaskSpec(queue="q", payload=b"a")])
    heard: list[int] = []
    consumer = service.stream_consumer(heard.append)
    (grant,) = await service.lease(
        "q", max_tasks=1, lease_duration=None, wait=0, worker_id="w", consumer=consumer
    )
    # Cancelled where this feeder does not hear of it (as by another feeder whose
    # notification was lost): the store reports nothing.
    hooks = store._hooks
    store.set_hooks(StoreHooks())
    await service.cancel(grant.task.id)
    store.set_hooks(hooks)
    assert heard == []
    hooks.missed()  # the listen connection came back: anything may have changed
    for _ in range(100):
        if heard:
            break
        await asyncio.sleep(0.01)
    assert heard == [grant.task.id]
    assert consumer.held == {}
    await service.stop()


async def test_lease_callers_without_leases_are_forgotten() -> None:
    store = MemoryStore()
    service = make_service(store, cap=2)
    await service.start(background=False)
    await service.submit([TaskSpec(queue="q", payload=b"a")] * 3)
    grants = await service.lease("q", max_tasks=5, lease_duration=None, wait=0, worker_id="w")
    assert len(grants) == 2
    assert await service.lease("q", max_tasks=5, lease_duration=None, wait=0, worker_id="w") == []
    # Made-up worker ids that lease nothing leave nothing behind.
    for number in range(100):
        await service.lease(
            "empty", max_tasks=1, lease_duration=None, wait=0, worker_id=f"x{number}"
        )
    assert set(service._consumers._callers) == {"w"}
    await service.ack([AckItem(g.lease_token) for g in grants])
    assert service._consumers._callers == {}
    assert service._consumers.holders == 0
    await service.stop()
