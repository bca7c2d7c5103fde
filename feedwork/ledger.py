"""The demo's audit: read every task back from the feeder and hold it to what the workers
were told.

Each demo worker keeps an ack ledger (`--ack-ledger`, see `worker.receipts`): every ack the
feeder answered, with the result the worker sent. A task counts as "completed exactly
once" when it is COMPLETED, the feeder acknowledged a completion (ACKED or ADOPTED) to at
most one attempt, every completion it acknowledged is the result it kept, and that result
names the sleep its payload asked for. (The feeder's own history cannot show a completion
answered twice: it records one completing attempt, and one lost in a crash leaves no trace.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from feedwork.errors import NotFound
from feedwork.types import TaskInfo, TaskState
from worker.receipts import AckReceipt

# GetTask calls in flight while reading the ledger back.
_READERS = 8


class _Reader(Protocol):
    def get(self, task_id: str) -> TaskInfo: ...


@dataclass
class Ledger:
    tasks: int = 0
    completed: int = 0
    exactly_once: int = 0
    # Not completed: still pending, dead, cancelled, or missing from the feeder.
    lost: int = 0
    # Acknowledged as completed to two attempts (by the workers' ack ledgers).
    completed_twice: int = 0
    # Acknowledged as completed to a worker, but not COMPLETED with that worker's result.
    not_kept: int = 0
    # COMPLETED tasks whose completion a worker's ack ledger confirms.
    confirmed: int = 0
    # worker id -> (tasks completed, milliseconds slept), from the task results.
    by_worker: dict[str, tuple[int, int]] = field(default_factory=dict)
    # From the first lease to the last completion, by the feeder's clock.
    busy_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.exactly_once == self.tasks
            and self.lost == 0
            and self.completed_twice == 0
            and self.not_kept == 0
        )

    def summary(self) -> str:
        return (
            f"ledger: {self.tasks} tasks, {self.exactly_once} completed exactly once, "
            f"{self.lost} lost, {self.completed_twice} completed twice "
            f"({self.confirmed} confirmed by the workers' ack ledgers)"
        )


def read_ledger(
    client: _Reader,
    task_ids: Sequence[str],
    sleeps: Mapping[str, int],
    receipts: Iterable[AckReceipt],
) -> Ledger:
    """Reads each task (several at a time) and audits it against the sleep it was given and
    the acks the workers recorded."""

    def get(task_id: str) -> TaskInfo | None:
        try:
            return client.get(task_id)
        except NotFound:
            return None

    with ThreadPoolExecutor(_READERS) as pool:
        tasks = list(pool.map(get, task_ids))
    by_task: dict[str, list[AckReceipt]] = {}
    for receipt in receipts:
        if receipt.completed:
            by_task.setdefault(receipt.task_id, []).append(receipt)
    ledger = Ledger(tasks=len(task_ids))
    first_lease: datetime | None = None
    last_finish: datetime | None = None
    for task_id, task in zip(task_ids, tasks, strict=True):
        if task is None:
            ledger.lost += 1
            ledger.problems.append(f"{task_id}: not found")
            continue
        _audit(ledger, task, sleeps[task.task_id], by_task.get(task.task_id, []))
        for attempt in task.history:
            if attempt.leased_at and (first_lease is None or attempt.leased_at < first_lease):
                first_lease = attempt.leased_at
        if task.finished_at and (last_finish is None or task.finished_at > last_finish):
            last_finish = task.finished_at
    if first_lease and last_finish:
        ledger.busy_seconds = (last_finish - first_lease).total_seconds()
    return ledger


def _audit(ledger: Ledger, task: TaskInfo, sleep_ms: int, acked: list[AckReceipt]) -> None:
    attempts = sorted({receipt.attempt for receipt in acked})
    twice = len(attempts) > 1
    if twice:
        ledger.completed_twice += 1
        ledger.problems.append(f"{task.task_id}: acknowledged as completed to attempts {attempts}")
    not_kept = [r for r in acked if task.state != TaskState.COMPLETED or task.result != r.result]
    if not_kept:
        ledger.not_kept += 1
        for r in not_kept:
            ledger.problems.append(
                f"{task.task_id}: attempt {r.attempt} was {r.outcome} to {r.worker_id} with "
                f"{r.result!r}, but the task is {task.state} with {task.result!r}"
            )
    if task.state != TaskState.COMPLETED:
        ledger.lost += 1
        ledger.problems.append(f"{task.task_id}: {task.state}")
        return
    ledger.completed += 1
    ledger.confirmed += bool(acked)
    try:
        result = json.loads(task.result)
        worker, slept = str(result["worker"]), int(result["sleep_ms"])
    except (ValueError, KeyError, TypeError):
        ledger.problems.append(f"{task.task_id}: unreadable result {task.result!r}")
        return
    count, total = ledger.by_worker.get(worker, (0, 0))
    ledger.by_worker[worker] = (count + 1, total + slept)
    if slept != sleep_ms:
        ledger.problems.append(f"{task.task_id}: slept {slept} ms, asked {sleep_ms} ms")
    elif not twice and not not_kept:
        ledger.exactly_once += 1
