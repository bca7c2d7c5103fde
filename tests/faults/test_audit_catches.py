"""The audit can fail: against a feeder whose store is broken on purpose, it reports what
the feeder's own records hide.

The feeder (tests/faults/faulty_feeder.py, FAULTY_FEEDER_DROP_ACKS) answers acks as usual
but never writes a completion to disk. Workers complete a batch of tasks; the feeder is
killed and restarted, forgets those completions, and the tasks run and complete again. The
feeder's history then shows one ACKED attempt per task (the first one is gone with the
crash), so counting ACKED attempts finds nothing wrong. The workers' ack ledgers do: tasks
acknowledged as completed to two attempts, and first completions whose result the feeder
did not keep.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.faulty_feeder import DROP_ACKS_ENV
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    assert_clean,
    audit,
    child_env,
    feeder_stub,
    read_receipts,
    record,
    running,
    submit,
    wait_for,
    wait_settled,
)

QUEUE = "broken"
TASKS = 40
LEASE = 2.0

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


def test_the_audit_catches_a_feeder_that_loses_acknowledged_completions(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(
        tmp_path,
        module="tests.faults.faulty_feeder",
        args=["--lease-duration", f"{LEASE:g}s"],
        env=child_env(**{DROP_ACKS_ENV: "1"}),
    )
    workers = WorkerPool(tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=4)
    started = time.monotonic()
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        task_ids = submit(stub, QUEUE, [{"sleep": 0.01}] * TASKS)
        workers.start(2)
        # Every task acknowledged as completed to a worker, then the feeder crashes.
        wait_for(
            lambda: sum(r.completed for r in read_receipts(ledger)) >= TASKS,
            within=30,
            what="every task to be acked",
        )
        feeder.restart()
        wait_settled(stub, QUEUE, TASKS, within=60)
        result, tasks = audit(stub, task_ids, ledger)

    # What the feeder's own records say: one ACKED attempt per completed task.
    history_acked_twice = sum(
        sum(a.outcome == pb.ATTEMPT_OUTCOME_ACKED for a in t.history) > 1 for t in tasks.values()
    )
    assert history_acked_twice == 0
    assert result.completed == TASKS and result.lost == 0
    # What the workers were told: every task was completed twice, and the first completion
    # was not kept.
    assert result.completed_twice == TASKS, result.problems[:5]
    assert result.acknowledged_not_kept == TASKS, result.problems[:5]
    with pytest.raises(AssertionError, match="completed twice"):
        assert_clean(result)
    record(
        "audit_catches_broken_store",
        {
            "tasks": TASKS,
            "feeder_kills": feeder.kills,
            "history_acked_twice": history_acked_twice,
            **result.figures(),
            "seconds": round(time.monotonic() - started, 1),
        },
    )
