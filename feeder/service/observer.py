"""What the service tells observers about the work it does: metrics count it
(`feeder.server.metrics`), the task log writes it down (`TaskLog`).

The service calls these on the event loop, once per batch, after the change is applied;
they must be cheap and must not block. The base class ignores everything: a feeder without
observers pays one method call per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from feeder.core.machine import Event
from feeder.core.model import AckOutcome, ExtendOutcome, NackOutcome, State, Task

# A task's transition made by the feeder's own clock (the reaper): the record before, the
# record after, and the events counted.
Advanced = tuple[Task, Task, tuple[Event, ...]]


class Observer:
    def leased(self, queue: str, tasks: Sequence[Task], now: float) -> None:
        """`tasks` of `queue` were leased at `now` (their records after the lease: each
        `ready_at` is when it became ready)."""

    def acked(self, decided: Sequence[tuple[AckOutcome, Task | None]], now: float) -> None:
        """Acks were decided at `now`: each outcome with the task's record after it (None
        when the task was not found)."""

    def nacked(self, decided: Sequence[tuple[NackOutcome, Task | None]]) -> None:
        """Nacks were decided: each outcome with the task's record after it."""

    def extended(self, outcomes: Sequence[ExtendOutcome]) -> None:
        """Extends were decided."""

    def advanced(self, changes: Sequence[Advanced]) -> None:
        """The reaper moved tasks on: leases expired, delays ended."""


IGNORED = Observer()


class Observers(Observer):
    """Tells each of several observers."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._all = tuple(observers)

    def leased(self, queue: str, tasks: Sequence[Task], now: float) -> None:
        for observer in self._all:
            observer.leased(queue, tasks, now)

    def acked(self, decided: Sequence[tuple[AckOutcome, Task | None]], now: float) -> None:
        for observer in self._all:
            observer.acked(decided, now)

    def nacked(self, decided: Sequence[tuple[NackOutcome, Task | None]]) -> None:
        for observer in self._all:
            observer.nacked(decided)

    def extended(self, outcomes: Sequence[ExtendOutcome]) -> None:
        for observer in self._all:
            observer.extended(outcomes)

    def advanced(self, changes: Sequence[Advanced]) -> None:
        for observer in self._all:
            observer.advanced(changes)


def task_fields(task: Task) -> dict[str, object]:
    """The fields every log line about a task carries (`extra=`; JSON logs show them)."""
    return {"task_id": str(task.id), "queue": task.queue, "attempt": task.attempt}


class TaskLog(Observer):
    """Log lines about tasks (logger feedwork.feeder.tasks), each with the task's id, queue
    and attempt: at INFO what an operator wants to hear of (a lease that expired, a task
    gone dead, an ack adopted after its lease had expired), at DEBUG every lease, ack and
    nack. A feeder at INFO writes nothing for the tasks that go well."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self._log = log or logging.getLogger("feedwork.feeder.tasks")

    def leased(self, queue: str, tasks: Sequence[Task], now: float) -> None:
        log = self._log
        if log.isEnabledFor(logging.DEBUG):
            for task in tasks:
                worker = task.history[-1].worker_id if task.history else ""
                log.debug(
                    "task %d leased to %s (attempt %d)",
                    task.id, worker, task.attempt, extra=task_fields(task),
                )  # fmt: skip

    def acked(self, decided: Sequence[tuple[AckOutcome, Task | None]], now: float) -> None:
        log = self._log
        debug = log.isEnabledFor(logging.DEBUG)
        for outcome, task in decided:
            if task is None:
                continue
            if outcome is AckOutcome.ADOPTED:
                log.info(
                    "task %d completed by a late ack of an expired lease (adopted)",
                    task.id, extra=task_fields(task),
                )  # fmt: skip
            elif debug:
                log.debug("task %d ack: %s", task.id, outcome.name, extra=task_fields(task))

    def nacked(self, decided: Sequence[tuple[NackOutcome, Task | None]]) -> None:
        log = self._log
        debug = log.isEnabledFor(logging.DEBUG)
        for outcome, task in decided:
            if task is None:
                continue
            if outcome is NackOutcome.DEAD:
                self._dead(task, "failed")
            elif debug:
                log.debug("task %d nack: %s", task.id, outcome.name, extra=task_fields(task))

    def advanced(self, changes: Sequence[Advanced]) -> None:
        log = self._log
        for before, after, events in changes:
            if Event.EXPIRED not in events:
                continue
            if after.state is State.DEAD:
                self._dead(after, "its lease expired")
            else:
                log.info(
                    "task %d: the lease of attempt %d expired; the task is %s again",
                    after.id, before.attempt, after.state.name, extra=task_fields(before),
                )  # fmt: skip

    def _dead(self, task: Task, why: str) -> None:
        error = task.history[-1].error if task.history else ""
        self._log.warning(
            "task %d is dead: %s on attempt %d of %d%s",
            task.id, why, task.attempt, task.max_attempts, f": {error}" if error else "",
            extra=task_fields(task),
        )  # fmt: skip
