"""How the reaper sizes its steps: by the last step's cost per task, within MIN_BATCH and
MAX_BATCH. A fake timer charges a fixed cost per applied task, so nothing here depends on
how fast the machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from feeder.core.model import State, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.service import TaskService
from feeder.service.reaper import MAX_BATCH, MIN_BATCH, Reaper
from feeder.store.base import Change, StoreHooks
from feeder.store.memory import MemoryStore

LEASE = 10.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CostlyStore(MemoryStore):
    """A memory store whose `apply` costs `per_task` of `timer` per change (a power of two,
    so the reaper's arithmetic is exact)."""

    def __init__(self, timer: FakeClock) -> None:
        super().__init__()
        self.timer = timer
        self.per_task = 0.0
        self.applied: list[int] = []  # changes per apply

    async def apply(self, changes: Sequence[Change], events=None) -> list[bool]:  # type: ignore[no-untyped-def]
        self.timer.now += self.per_task * len(changes)
        self.applied.append(len(changes))
        return await super().apply(changes, events)


async def expired_storm(n: int) -> tuple[FakeClock, CostlyStore, TaskService, FakeClock]:
    """`n` leased tasks of queue "q", all past their deadline at the returned clock's now."""
    clock, timer = FakeClock(), FakeClock(0.0)
    store = CostlyStore(timer)
    service = TaskService(
        store=store, policies=lambda queue: QueuePolicy(), clock=clock, max_unacked=n
    )
    await service.start(background=False)
    for start in range(0, n, 1000):
        await service.submit([TaskSpec(queue="q") for _ in range(min(1000, n - start))])
    leased = 0
    while leased < n:
        grants = await service.lease(
            "q", max_tasks=1000, lease_duration=LEASE, wait=0, worker_id="w"
        )
        leased += len(grants)
    clock.now += LEASE
    store.applied.clear()  # the leases were applied too
    return clock, store, service, timer


def reaper_for(
    store: CostlyStore, clock: FakeClock, timer: FakeClock, budget: float | None = 1.0
) -> tuple[Reaper, list[str]]:
    """A reaper on `store`, and the queue of every task the store announces as ready."""
    ready: list[str] = []
    store.set_hooks(StoreHooks(ready=lambda queue, count: ready.extend([queue] * count)))
    reaper = Reaper(store=store, clock=clock, step_budget=budget, timer=timer)
    return reaper, ready


async def test_the_first_step_is_a_full_one_and_cheap_tasks_keep_it_at_the_maximum() -> None:
    clock, store, service, timer = await expired_storm(3 * MAX_BATCH)
    reaper, _ = reaper_for(store, clock, timer)
    assert reaper.batch == MAX_BATCH
    store.per_task = 1 / 65536  # a whole budget holds 65536 of them: capped
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == MAX_BATCH
    store.per_task = 0.0  # no measurable cost at all: capped too, not a division by zero
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == MAX_BATCH
    assert store.applied == [MAX_BATCH, MAX_BATCH]
    await service.stop()


async def test_costly_tasks_shrink_the_next_step_to_what_the_budget_holds() -> None:
    clock, store, service, timer = await expired_storm(3 * MAX_BATCH)
    reaper, _ = reaper_for(store, clock, timer)
    store.per_task = 1 / 256  # a budget of 1.0 holds 256 tasks
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == 256
    assert await reaper.run_once(clock.now) == 256
    store.per_task = 1 / 128  # dearer still: the step after shrinks again
    assert await reaper.run_once(clock.now) == 256
    assert reaper.batch == 128
    store.per_task = 1 / 512  # cheaper: it grows back, up to the maximum
    assert await reaper.run_once(clock.now) == 128
    assert reaper.batch == MAX_BATCH
    assert store.applied == [MAX_BATCH, 256, 256, 128]
    await service.stop()


async def test_a_step_never_shrinks_below_the_minimum() -> None:
    clock, store, service, timer = await expired_storm(MAX_BATCH + 2 * MIN_BATCH)
    reaper, _ = reaper_for(store, clock, timer)
    store.per_task = 1.0  # one task fills the whole budget
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == MIN_BATCH
    store.per_task = 64.0  # not even one fits
    assert await reaper.run_once(clock.now) == MIN_BATCH
    assert reaper.batch == MIN_BATCH
    await service.stop()


async def test_a_step_with_nothing_due_keeps_the_size() -> None:
    clock, store, service, timer = await expired_storm(MAX_BATCH)
    reaper, _ = reaper_for(store, clock, timer)
    store.per_task = 1 / 256
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == 256
    timer.now += 100.0  # time passing between steps is not a step's cost
    assert await reaper.run_once(clock.now) == 0
    assert reaper.batch == 256
    await service.stop()


async def test_without_a_budget_every_step_is_the_maximum() -> None:
    clock, store, service, timer = await expired_storm(2 * MAX_BATCH)
    reaper, _ = reaper_for(store, clock, timer, budget=None)
    store.per_task = 1.0
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert reaper.batch == MAX_BATCH
    assert await reaper.run_once(clock.now) == MAX_BATCH
    await service.stop()


async def test_steps_of_changing_size_apply_every_due_task_exactly_once() -> None:
    n = 2345
    clock, store, service, timer = await expired_storm(n)
    reaper, ready = reaper_for(store, clock, timer)
    costs = [1 / 128, 1 / 4096, 1.0, 1 / 256, 1 / 64]
    steps: list[tuple[int, int]] = []  # (size allowed, tasks applied)
    while True:
        store.per_task = costs[len(steps) % len(costs)]
        limit = reaper.batch
        done = await reaper.run_once(clock.now)
        steps.append((limit, done))
        if done < limit:
            break
    assert all(MIN_BATCH <= limit <= MAX_BATCH and done <= limit for limit, done in steps)
    assert len({limit for limit, _ in steps}) > 2  # the sizes did change
    assert sum(done for _, done in steps) == n
    assert ready == ["q"] * n
    [counts] = await service.stats(["q"])
    assert counts.by_state[State.READY] == n and counts.by_state[State.LEASED] == 0
    assert await reaper.run_once(clock.now) == 0
    await service.stop()


async def test_the_loop_runs_steps_until_nothing_is_due() -> None:
    n = 3 * MAX_BATCH + 7
    clock, store, service, timer = await expired_storm(n)
    reaper, ready = reaper_for(store, clock, timer)
    store.per_task = 1 / 128  # steps of 128 after the first
    loop = asyncio.create_task(reaper.run())
    try:
        async with asyncio.timeout(10):
            while len(ready) < n:
                await asyncio.sleep(0.001)
    finally:
        loop.cancel()
    assert store.applied == [MAX_BATCH] + [128] * 7 + [n - MAX_BATCH - 7 * 128]
    [counts] = await service.stats(["q"])
    assert counts.by_state[State.READY] == n
    await service.stop()


async def test_the_default_timer_keeps_steps_within_the_bounds() -> None:
    clock, store, service, _ = await expired_storm(2 * MAX_BATCH)
    reaper = Reaper(store=store, clock=clock)
    assert await reaper.run_once(clock.now) == MAX_BATCH
    assert MIN_BATCH <= reaper.batch <= MAX_BATCH
    await service.stop()
