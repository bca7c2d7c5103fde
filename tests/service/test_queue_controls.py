"""An operator's queue controls in the service (feeder.service.queues), on the memory store
with a fake clock: what is refused and why, purges that race other changes, and the
consumers a feeder lists. (Every backend, through gRPC: tests/integration.)"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from feeder.core import machine
from feeder.core.machine import Event
from feeder.core.model import State, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.service import AckItem, NackItem, TaskService
from feeder.service.queues import QueueNotEmpty, QueueNotFound
from feeder.store.base import Change, TaskPage
from feeder.store.memory import MemoryStore
from tests.service.test_background import FakeClock


def make_service(store: MemoryStore, clock: FakeClock) -> TaskService:
    return TaskService(store=store, policies=lambda queue: QueuePolicy(), clock=clock)


async def started(store: MemoryStore | None = None) -> tuple[TaskService, FakeClock]:
    clock = FakeClock()
    service = make_service(store or MemoryStore(), clock)
    await service.start(background=False)
    return service, clock


async def submit(service: TaskService, queue: str, n: int = 1, **fields: Any) -> list[int]:
    done = await service.submit([TaskSpec(queue=queue, **fields)] * n)
    return [s.task.id for s in done]


async def states(service: TaskService, ids: Iterable[int]) -> list[State | None]:
    return [None if (t := await service.get_task(i)) is None else t.state for i in ids]


async def test_controls_of_a_queue_nobody_submitted_to_are_not_found() -> None:
    service, _ = await started()
    for control in (
        service.queues.pause,
        service.queues.resume,
        service.queues.purge,
        service.queues.delete,
    ):
        with pytest.raises(QueueNotFound, match='no queue "nothing"'):
            await control("nothing")
    await service.stop()


async def test_pause_and_resume_say_whether_they_changed_anything() -> None:
    service, clock = await started()
    (task_id,) = await submit(service, "q")
    assert await service.queues.resume("q") is False  # known, not paused
    assert await service.queues.pause("q") is True
    clock.now += 10
    assert await service.queues.pause("q") is False
    (counts,) = await service.stats(["q"])
    assert counts.paused_at == clock.now - 10
    grants = await service.lease("q", max_tasks=1, lease_duration=None, wait=0, worker_id="w")
    assert grants == []
    assert await service.queues.resume("q") is True
    grants = await service.lease("q", max_tasks=1, lease_duration=None, wait=0, worker_id="w")
    assert [g.task.id for g in grants] == [task_id]
    await service.stop()


async def test_a_purge_takes_waiting_tasks_and_leaves_the_others() -> None:
    service, clock = await started()
    released, *others = await submit(service, "q", 4)
    leased, done, dead = others
    (scheduled,) = await submit(service, "q", not_before=clock.now + 60)
    (elsewhere,) = await submit(service, "other")
    grants = await service.lease("q", max_tasks=4, lease_duration=None, wait=0, worker_id="w")
    by_id = {g.task.id: g.lease_token for g in grants}
    await service.nack([NackItem(by_id[released], release=True)])  # ready again
    await service.ack([AckItem(by_id[done])])
    await service.nack([NackItem(by_id[dead], terminal=True)])
    clock.now += 1
    assert await service.queues.purge("q") == 2
    assert await states(service, [released, scheduled]) == [None, None]
    assert await states(service, [leased, done, dead, elsewhere]) == [
        State.LEASED,
        State.COMPLETED,
        State.DEAD,
        State.READY,
    ]
    (counts,) = await service.stats(["q"])
    assert counts.totals[Event.PURGED] == 2
    assert counts.by_state[State.READY] == counts.by_state[State.SCHEDULED] == 0
    assert await service.queues.purge("q") == 0
    await service.stop()


class RacingStore(MemoryStore):
    """Changes the queue's first listed task after each listing of a purge, before the
    purge deletes it, as a concurrent call would: by `change(task)`."""

    def __init__(self, change: Any) -> None:
        super().__init__()
        self.change = change

    async def list_tasks(self, queue: str, states: Any, **options: Any) -> TaskPage:
        page = await super().list_tasks(queue, states, **options)
        if page.tasks:
            first = page.tasks[0]
            decision = self.change(first)
            assert decision.task is not None
            assert await self.apply([Change(first, decision.task, decision.events)]) == [True]
        return page


async def test_a_task_leased_as_the_purge_reads_it_is_kept() -> None:
    def lease(task: Any) -> Any:
        return machine.lease(
            task, now=task.created_at + 1, worker_id="w", lease_duration=None, policy=QueuePolicy()
        )

    service, clock = await started(RacingStore(lease))
    first, *rest = await submit(service, "q", 3)
    clock.now += 1
    assert await service.queues.purge("q") == 2
    assert await states(service, [first, *rest]) == [State.LEASED, None, None]
    await service.stop()


async def test_a_task_that_became_ready_as_the_purge_read_it_is_purged_all_the_same() -> None:
    service, clock = await started(RacingStore(lambda task: machine.advance(task, 2e9)))
    (scheduled,) = await submit(service, "q", not_before=clock.now + 60)  # listed first
    ready = await submit(service, "q", 2)
    clock.now += 1
    assert await service.queues.purge("q") == 3
    assert await states(service, [scheduled, *ready]) == [None] * 3
    await service.stop()


async def test_delete_only_a_queue_that_holds_no_task() -> None:
    service, _ = await started()
    (task_id,) = await submit(service, "q")
    with pytest.raises(QueueNotEmpty, match=r'queue "q" holds 1 tasks \(1 ready\)'):
        await service.queues.delete("q")
    await service.cancel(task_id)
    with pytest.raises(QueueNotEmpty, match=r"1 cancelled"):
        await service.queues.delete("q")
    await service.queues._store.purge_finished(finished_before=2e9, limit=10)
    await service.queues.pause("q")
    await service.queues.delete("q")  # paused, and empty: goes with its pause
    assert await service.stats(None) == []
    with pytest.raises(QueueNotFound):
        await service.queues.delete("q")
    await service.stop()


async def test_consumers_lists_streams_and_lease_callers() -> None:
    service, clock = await started()
    await submit(service, "q", 3)
    await submit(service, "other")
    stream = service.stream_consumer(
        lambda task_id: None, queue="q", worker_id="s1", caller="alice", peer="ipv4:1.2.3.4:5"
    )
    await service.lease(
        "q", max_tasks=2, lease_duration=None, wait=0, worker_id="s1", consumer=stream
    )
    clock.now += 5
    await service.lease("other", max_tasks=1, lease_duration=None, wait=0, worker_id="u1")
    idle = service.stream_consumer(lambda task_id: None, queue="idle", worker_id="s2")
    views = service.consumers()
    assert [(v.stream, v.worker_id, v.caller, v.queues, v.leases) for v in views] == [
        (True, "s1", "alice", ("q",), 2),
        (True, "s2", "", ("idle",), 0),
        (False, "u1", "", ("other",), 1),
    ]
    assert views[0].peer == "ipv4:1.2.3.4:5" and views[2].since == clock.now
    assert [v.worker_id for v in service.consumers("other")] == ["u1"]
    service.close_consumer(idle)
    assert [v.worker_id for v in service.consumers()] == ["s1", "u1"]
    await service.stop()
