"""The in-memory TaskIndex: forgetting queues that hold no task, and the sorted list of
queue names it keeps cached."""

from __future__ import annotations

from feeder.core import machine
from feeder.core.machine import Event
from feeder.core.model import Task, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.store.index import TaskIndex

POLICY = QueuePolicy()


def new_task(queue: str, task_id: int) -> Task:
    task = machine.create(TaskSpec(queue=queue), task_id=task_id, now=1.0, policy=POLICY).task
    assert task is not None
    return task


def never_busy(queue: str) -> bool:
    return False


def test_a_queue_forgotten_and_another_made_since_are_both_seen_in_the_names() -> None:
    """The cached names are rebuilt when a queue appears, which the sizes of the counts and
    totals used to tell alone: one queue gone and one made leave both sizes as they were."""
    index = TaskIndex()
    a, b = new_task("a", 1), new_task("b", 2)
    for task in (a, b):
        index.put(None, task)
        index.count_events(task.queue, {Event.SUBMITTED: 1})
    assert index.queues() == ["a", "b"]
    index.put(a, None)
    assert index.forget_empty(10, busy=never_busy) == ["a"]
    c = new_task("c", 3)
    index.put(None, c)
    index.count_events("c", {Event.SUBMITTED: 1})
    assert index.queues() == ["b", "c"]
    assert index.queue_count() == 2
    assert not index.knows("a") and index.knows("c")


def test_only_queues_without_tasks_and_not_busy_are_forgotten_up_to_the_limit() -> None:
    index = TaskIndex()
    tasks = [new_task(queue, i) for i, queue in enumerate("abcde", start=1)]
    for task in tasks:
        index.put(None, task)
    for task in tasks[:4]:
        index.put(task, None)  # a, b, c, d hold nothing now; e holds its task
    # A final task whose record was evicted from memory still counts, and keeps its queue.
    done = new_task("f", 9)
    index.put(None, done)
    finished = machine.cancel(done, now=2.0).task
    assert finished is not None
    index.put(done, finished)
    index.evict(finished)

    assert index.forget_empty(2, busy=lambda queue: queue == "a") == ["b", "c"]
    assert index.forget_empty(10, busy=lambda queue: queue == "a") == ["d"]
    assert index.queues() == ["a", "e", "f"]
    assert index.forget_empty(10, busy=never_busy) == ["a"]
    assert index.forget_empty(10, busy=never_busy) == []
    assert index.queues() == ["e", "f"]
    assert index.pop_ready("e", 10) == [tasks[4]]
