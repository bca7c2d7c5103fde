"""The demo's ledger (`feedwork.ledger`) counts completions from the workers' side: a task
is "completed exactly once" only if the feeder acknowledged a completion to at most one
attempt and kept the result of every completion it acknowledged. The feeder's history
alone (one ACKED attempt) cannot show a completion answered twice."""

from __future__ import annotations

import json

from feedwork.ledger import read_ledger
from feedwork.types import AttemptInfo, AttemptOutcome, TaskInfo, TaskState
from worker.receipts import AckReceipt


def result(worker: str, sleep_ms: int) -> bytes:
    return json.dumps({"worker": worker, "sleep_ms": sleep_ms}).encode()


def completed(task_id: str, worker: str, attempt: int) -> TaskInfo:
    """A COMPLETED task whose history shows exactly one ACKED attempt."""
    return TaskInfo(
        task_id=task_id,
        queue="demo",
        state=TaskState.COMPLETED,
        attempts=attempt,
        result=result(worker, 10),
        history=(AttemptInfo(attempt, worker, None, None, AttemptOutcome.ACKED, ""),),
    )


class Feeder:
    def __init__(self, *tasks: TaskInfo) -> None:
        self.tasks = {t.task_id: t for t in tasks}

    def get(self, task_id: str) -> TaskInfo:
        return self.tasks[task_id]


def receipt(task_id: str, attempt: int, worker: str, outcome: str = "ACKED") -> AckReceipt:
    return AckReceipt(task_id, attempt, outcome, result(worker, 10), worker)


def test_a_task_acknowledged_once_and_kept_is_completed_exactly_once() -> None:
    feeder = Feeder(completed("1", "w1", 1), completed("2", "w2", 2))
    receipts = [
        receipt("1", 1, "w1"),
        receipt("2", 1, "w1", "DUPLICATE"),  # a late ack after w2 completed it
        receipt("2", 2, "w2"),
    ]
    ledger = read_ledger(feeder, ["1", "2"], {"1": 10, "2": 10}, receipts)
    assert ledger.ok, ledger.problems
    assert (ledger.exactly_once, ledger.confirmed, ledger.completed_twice) == (2, 2, 0)


def test_a_completion_acknowledged_to_two_attempts_is_not_exactly_once() -> None:
    # The feeder lost w1's completion (a crash) and completed the task again with w2: its
    # history shows one ACKED attempt, w1 and w2 were both told ACKED.
    feeder = Feeder(completed("1", "w2", 2))
    receipts = [receipt("1", 1, "w1"), receipt("1", 2, "w2")]
    ledger = read_ledger(feeder, ["1"], {"1": 10}, receipts)
    assert not ledger.ok
    assert ledger.exactly_once == 0
    assert ledger.completed_twice == 1
    assert ledger.not_kept == 1  # w1's result is not the one kept
    assert "twice" in ledger.summary() and "1 completed twice" in ledger.summary()


def test_an_adopted_completion_whose_result_was_not_kept_is_caught() -> None:
    feeder = Feeder(completed("1", "w2", 2))
    ledger = read_ledger(feeder, ["1"], {"1": 10}, [receipt("1", 1, "w1", "ADOPTED")])
    assert not ledger.ok and ledger.not_kept == 1


def test_a_task_no_worker_confirmed_still_counts_by_its_result() -> None:
    # Its worker was killed between the answer and writing it down.
    ledger = read_ledger(Feeder(completed("1", "w1", 1)), ["1"], {"1": 10}, [])
    assert ledger.ok and ledger.confirmed == 0
