"""The index's timers: ended leases leave stale entries behind, dropped STALE_POPS at a
time, so no single call walks all of them (20,000 at once held the loop for 20-40 ms)."""

from __future__ import annotations

from feeder.core import machine
from feeder.core.model import TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.store.index import STALE_POPS, TaskIndex

T0 = 1_700_000_000.0
POLICY = QueuePolicy(lease_duration=30.0)


def test_stale_timers_are_dropped_a_bounded_number_per_call() -> None:
    index = TaskIndex()
    count = 2 * STALE_POPS + 500
    leased = []
    for i in range(count):
        task = machine.create(TaskSpec(queue="q"), task_id=i + 1, now=T0, policy=POLICY).task
        assert task is not None
        index.put(None, task)
        # Leased one after another: deadlines in id order, the last one latest.
        lease = machine.lease(
            task, now=T0 + i * 1e-3, worker_id="w", lease_duration=None, policy=POLICY
        ).task
        assert lease is not None
        index.put(task, lease)
        leased.append(lease)
    for task in leased[:-1]:
        index.put(task, machine.ack(task, task.attempt, result=None, now=T0 + 5).task)
    live = leased[-1]
    assert live.lease_deadline is not None

    answers = [index.next_due() for _ in range(3)]
    # Early, never late, and the live deadline once the stale entries before it are gone.
    assert answers[0] is not None and answers[0] < live.lease_deadline
    assert answers[1] is not None and answers[0] < answers[1] < live.lease_deadline
    assert answers[2] == live.lease_deadline
    assert index.due(live.lease_deadline, 10) == [live]


def test_due_stops_after_a_bounded_number_of_stale_entries() -> None:
    index = TaskIndex()
    leased = []
    for i in range(STALE_POPS + 10):
        task = machine.create(TaskSpec(queue="q"), task_id=i + 1, now=T0, policy=POLICY).task
        assert task is not None
        index.put(None, task)
        lease = machine.lease(task, now=T0, worker_id="w", lease_duration=None, policy=POLICY)
        assert lease.task is not None
        index.put(task, lease.task)
        leased.append(lease.task)
    for task in leased[:-1]:
        index.put(task, machine.ack(task, task.attempt, result=None, now=T0 + 5).task)
    after_all = T0 + 100
    assert index.due(after_all, 10) == []  # stopped after STALE_POPS stale entries
    assert index.due(after_all, 10) == [leased[-1]]
