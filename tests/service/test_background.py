"""The background loops are one step each: run_once(now) is tested directly with a fake
clock, no sleeping."""

from __future__ import annotations

import asyncio
import contextlib

from feeder.core.machine import Event
from feeder.core.model import AttemptOutcome, State, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.service import AckItem, TaskService
from feeder.service.janitor import BATCH, Janitor, Sweep
from feeder.service.waiters import Waiters
from feeder.store.memory import MemoryStore


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_service(clock: FakeClock, **policy: float) -> TaskService:
    return TaskService(
        store=MemoryStore(),
        policies=lambda queue: QueuePolicy(**policy),  # type: ignore[arg-type]
        clock=clock,
        retention=3600.0,
    )


async def test_reaper_expires_exactly_the_leases_past_their_deadline() -> None:
    clock = FakeClock()
    service = make_service(clock, lease_duration=10.0, max_attempts=2)
    await service.start(background=False)
    await service.submit([TaskSpec(queue="q", payload=b"a"), TaskSpec(queue="q", payload=b"b")])
    first = await service.lease("q", max_tasks=1, lease_duration=10.0, wait=0, worker_id="w")
    clock.now += 5
    second = await service.lease("q", max_tasks=1, lease_duration=10.0, wait=0, worker_id="w")

    clock.now += 4.999  # neither deadline has passed
    assert await service.reaper.run_once(clock.now) == 0
    clock.now += 0.001  # the first deadline is exactly now
    assert await service.reaper.run_once(clock.now) == 1
    expired = await service.get_task(first[0].task.id)
    held = await service.get_task(second[0].task.id)
    assert expired is not None and expired.state is State.READY and expired.failures == 1
    assert held is not None and held.state is State.LEASED
    assert await service._store.next_due() == second[0].task.lease_deadline

    # Leased again and expired again: out of attempts, dead.
    again = await service.lease("q", max_tasks=1, lease_duration=10.0, wait=0, worker_id="w")
    assert again[0].task.id == first[0].task.id and again[0].task.attempt == 2
    clock.now += 10
    assert await service.reaper.run_once(clock.now) == 2
    dead = await service.get_task(first[0].task.id)
    assert dead is not None and dead.state is State.DEAD and dead.failures == 2
    counts = (await service.stats(["q"]))[0]
    assert counts.totals[Event.EXPIRED] == 3
    await service.stop()


async def test_reaper_promotes_scheduled_tasks_when_due() -> None:
    clock = FakeClock()
    service = make_service(clock)
    await service.start(background=False)
    [submitted] = await service.submit([TaskSpec(queue="q", not_before=clock.now + 30)])
    assert submitted.task.state is State.SCHEDULED
    assert await service.lease("q", max_tasks=1, lease_duration=None, wait=0, worker_id="w") == []
    clock.now += 29.9
    assert await service.reaper.run_once(clock.now) == 0
    clock.now += 0.1
    assert await service.reaper.run_once(clock.now) == 1
    grants = await service.lease("q", max_tasks=1, lease_duration=None, wait=0, worker_id="w")
    assert [g.task.id for g in grants] == [submitted.task.id]
    await service.stop()


async def test_janitor_purges_only_finished_tasks_past_retention() -> None:
    clock = FakeClock()
    service = make_service(clock)
    await service.start(background=False)
    await service.submit([TaskSpec(queue="q") for _ in range(3)])
    grants = await service.lease("q", max_tasks=2, lease_duration=None, wait=0, worker_id="w")
    await service.ack([AckItem(g.lease_token) for g in grants])
    clock.now += 3599
    assert await service.janitor.run_once(clock.now) == Sweep(purged=0, forgotten=0)
    clock.now += 2
    assert await service.janitor.run_once(clock.now) == Sweep(purged=2, forgotten=0)
    for grant in grants:
        assert await service.get_task(grant.task.id) is None
    counts = (await service.stats(["q"]))[0]
    assert counts.by_state[State.READY] == 1 and counts.by_state[State.COMPLETED] == 0
    # A token of a purged task is NOT_FOUND, not an error.
    [result] = await service.ack([AckItem(grants[0].lease_token)])
    assert result.outcome.name == "NOT_FOUND"
    await service.stop()


async def test_janitor_forgets_the_queues_its_purge_left_empty() -> None:
    clock = FakeClock()
    service = make_service(clock)
    await service.start(background=False)
    await service.submit([TaskSpec(queue="gone"), TaskSpec(queue="kept")])
    grants = await service.lease("gone", max_tasks=1, lease_duration=None, wait=0, worker_id="w")
    await service.ack([AckItem(grants[0].lease_token)])
    clock.now += 3599
    # Its completed task is a task until the retention purge takes it.
    assert await service.janitor.run_once(clock.now) == Sweep(purged=0, forgotten=0)
    assert [c.queue for c in await service.stats(None)] == ["gone", "kept"]
    clock.now += 2
    assert await service.janitor.run_once(clock.now) == Sweep(purged=1, forgotten=1)
    assert [c.queue for c in await service.stats(None)] == ["kept"]
    (gone,) = await service.stats(["gone"])
    assert sum(gone.by_state.values()) == 0 and gone.totals == {}
    assert await service.janitor.run_once(clock.now) == Sweep(purged=0, forgotten=0)
    await service.stop()


class BacklogStore:
    """Just what the janitor calls: a purge backlog of `backlog` tasks, and empty queues
    without end."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.forget_limits: list[int] = []

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        purged = min(limit, self.backlog)
        self.backlog -= purged
        return purged

    async def forget_empty_queues(self, limit: int) -> int:
        self.forget_limits.append(limit)
        return limit


async def test_janitor_forgets_queues_once_its_purge_has_caught_up() -> None:
    store = BacklogStore(backlog=2 * BATCH + 5)
    janitor = Janitor(store=store, clock=FakeClock(), retention=60.0)  # type: ignore[arg-type]
    assert await janitor.run_once(0.0) == Sweep(purged=BATCH, forgotten=0)
    assert await janitor.run_once(0.0) == Sweep(purged=BATCH, forgotten=0)
    assert store.forget_limits == []
    sweep = await janitor.run_once(0.0)
    assert sweep == Sweep(purged=5, forgotten=BATCH) and sweep.more  # a full batch forgotten
    assert store.forget_limits == [BATCH]
    assert not Sweep(purged=BATCH - 1, forgotten=BATCH - 1).more


async def test_waiters_are_woken_one_at_a_time_in_arrival_order() -> None:
    waiters = Waiters()
    first = waiters.enqueue("q")
    second = waiters.enqueue("q")
    third = waiters.enqueue("q", first=True)  # a woken waiter that found nothing goes back first
    waiters.wake_first("q")
    assert third.done() and not first.done() and not second.done()
    waiters.wake_first("q")
    assert first.done() and not second.done()
    waiters.discard("q", second)
    waiters.wake_first("q")  # nobody left: nothing happens
    assert not second.done()
    late = waiters.enqueue("q")
    waiters.wake_all()
    assert late.result() is False
    await asyncio.sleep(0)


class SlowCommitStore(MemoryStore):
    """Holds every commit of changes until `commit` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.commit = asyncio.Event()
        self.committing = asyncio.Event()

    async def _persist_changes(self, changes, events) -> None:  # type: ignore[no-untyped-def]
        self.committing.set()
        await self.commit.wait()


async def test_tasks_leased_for_a_caller_that_went_away_are_released() -> None:
    clock = FakeClock()
    store = SlowCommitStore()
    service = TaskService(store=store, policies=lambda q: QueuePolicy(), clock=clock)
    await service.start(background=False)
    store.commit.set()
    [submitted] = await service.submit([TaskSpec(queue="q", payload=b"a")])
    store.commit.clear()
    lease = asyncio.create_task(
        service.lease("q", max_tasks=1, lease_duration=30.0, wait=0, worker_id="w")
    )
    await store.committing.wait()  # the task is claimed; its lease is being committed
    lease.cancel()  # ...when the caller goes away
    await asyncio.sleep(0)
    store.commit.set()
    with contextlib.suppress(asyncio.CancelledError):
        await lease
    for _ in range(10):  # the release is a nack of its own
        await asyncio.sleep(0)
    task = await service.get_task(submitted.task.id)
    assert task is not None and task.state is State.READY and task.failures == 0
    assert task.history[-1].outcome is AttemptOutcome.RELEASED
    # Ready for the next caller at once, not after its 30 s lease.
    [again] = await service.lease("q", max_tasks=1, lease_duration=30.0, wait=0, worker_id="w2")
    assert again.task.id == submitted.task.id
    await service.stop()
