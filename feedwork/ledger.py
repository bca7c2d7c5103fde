"""The demo's audit: read every task back from the feeder and count who did what.

A task counts as "completed exactly once" when it is COMPLETED, exactly one attempt in
its history is ACKED, and its result names the sleep its payload asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from feedwork.client import FeederClient
from feedwork.errors import NotFound
from feedwork.types import AttemptOutcome, TaskInfo, TaskState

# GetTask calls in flight while reading the ledger back.
_READERS = 8


@dataclass
class Ledger:
    tasks: int = 0
    completed: int = 0
    exactly_once: int = 0
    # Not completed: still pending, dead, cancelled, or missing from the feeder.
    lost: int = 0
    # worker id -> (tasks completed, milliseconds slept), from the task results.
    by_worker: dict[str, tuple[int, int]] = field(default_factory=dict)
    # From the first lease to the last completion, by the feeder's clock.
    busy_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exactly_once == self.tasks and self.lost == 0

    def summary(self) -> str:
        return (
            f"ledger: {self.tasks} tasks, {self.exactly_once} completed exactly once, "
            f"{self.lost} lost"
        )


def read_ledger(client: FeederClient, task_ids: Sequence[str], sleeps: Mapping[str, int]) -> Ledger:
    """Reads each task (several at a time) and audits it against the sleep it was given."""

    def get(task_id: str) -> TaskInfo | None:
        try:
            return client.get(task_id)
        except NotFound:
            return None

    with ThreadPoolExecutor(_READERS) as pool:
        tasks = list(pool.map(get, task_ids))
    ledger = Ledger(tasks=len(task_ids))
    first_lease: datetime | None = None
    last_finish: datetime | None = None
    for task_id, task in zip(task_ids, tasks, strict=True):
        if task is None:
            ledger.lost += 1
            ledger.problems.append(f"{task_id}: not found")
            continue
        _audit(ledger, task, sleeps[task.task_id])
        for attempt in task.history:
            if attempt.leased_at and (first_lease is None or attempt.leased_at < first_lease):
                first_lease = attempt.leased_at
        if task.finished_at and (last_finish is None or task.finished_at > last_finish):
            last_finish = task.finished_at
    if first_lease and last_finish:
        ledger.busy_seconds = (last_finish - first_lease).total_seconds()
    return ledger


def _audit(ledger: Ledger, task: TaskInfo, sleep_ms: int) -> None:
    if task.state != TaskState.COMPLETED:
        ledger.lost += 1
        ledger.problems.append(f"{task.task_id}: {task.state}")
        return
    ledger.completed += 1
    acks = sum(attempt.outcome == AttemptOutcome.ACKED for attempt in task.history)
    try:
        result = json.loads(task.result)
        worker, slept = str(result["worker"]), int(result["sleep_ms"])
    except (ValueError, KeyError, TypeError):
        ledger.problems.append(f"{task.task_id}: unreadable result {task.result!r}")
        return
    count, total = ledger.by_worker.get(worker, (0, 0))
    ledger.by_worker[worker] = (count + 1, total + slept)
    if acks != 1:
        ledger.problems.append(f"{task.task_id}: {acks} acked attempts")
    elif slept != sleep_ms:
        ledger.problems.append(f"{task.task_id}: slept {slept} ms, asked {sleep_ms} ms")
    else:
        ledger.exactly_once += 1
