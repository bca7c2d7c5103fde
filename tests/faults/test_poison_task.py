"""A poison task: its handler kills the worker process (os._exit) every time it runs.

A supervisor loop in the test restarts every worker that dies, as a process manager would.
Each crash leaves the poison task's lease to expire; after max_attempts expiries it is DEAD
(every attempt EXPIRED, no more executions than attempts), and the ordinary tasks around it
all complete exactly once. Tasks that shared a process with the poison when it crashed are
redelivered too; those extra executions are counted redeliveries.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    feeder_stub,
    queue_stats,
    read_ledger,
    record,
    running,
    scaled,
    submit,
    totals_figures,
    wait_for,
)

QUEUE = "poison"
LEASE = 2.0
MAX_ATTEMPTS = 3
WORKERS = 3
POISON = scaled(1, 4)
ORDINARY = scaled(80, 600)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(90, 400))]


def test_poison_task_ends_dead_and_spares_the_others(tmp_path: Path) -> None:
    seed = time.time_ns() % 1_000_000
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = WorkerPool(tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=2)
    started = time.monotonic()
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        workers.start(WORKERS)
        ordinary = [{"sleep": round(rng.uniform(0.02, 0.2), 3)} for _ in range(ORDINARY)]
        poison_ids: list[str] = []
        ordinary_ids: list[str] = []
        # The poison tasks go in among the ordinary ones.
        chunks = [ordinary[i :: POISON + 1] for i in range(POISON + 1)]
        for i, chunk in enumerate(chunks):
            ordinary_ids += submit(stub, QUEUE, chunk)
            if i < POISON:
                poison_ids += submit(stub, QUEUE, [{"exit": 3}], max_attempts=MAX_ATTEMPTS)
        task_ids = ordinary_ids + poison_ids

        def settled() -> bool:
            workers.supervise()  # restart whoever crashed
            stats = queue_stats(stub, QUEUE)
            return stats.completed + stats.dead == len(task_ids) and stats.leased == 0

        wait_for(settled, within=scaled(60, 300), what="every task to settle", every=0.1)
        workers.supervise()
        result, tasks = audit(
            stub,
            task_ids,
            ledger,
            expect_for={task_id: pb.TASK_STATE_DEAD for task_id in poison_ids},
        )
        stats = queue_stats(stub, QUEUE)
        exits = [p.returncode() for p in workers.procs if p.reaped]
    elapsed = time.monotonic() - started

    collateral = sum(
        1
        for task_id in ordinary_ids
        if any(h.outcome == pb.ATTEMPT_OUTCOME_EXPIRED for h in tasks[task_id].history)
    )
    record(
        "poison_task",
        {
            "seed": seed,
            "poison_tasks": POISON,
            "max_attempts": MAX_ATTEMPTS,
            "lease_s": LEASE,
            "worker_crashes": workers.crashes,
            "workers_restarted": workers.crashes,
            "ordinary_tasks": ORDINARY,
            "ordinary_redelivered_after_crash": collateral,
            "tasks": len(task_ids),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    executions = read_ledger(ledger)
    for task_id in poison_ids:
        task = tasks[task_id]
        assert task.state == pb.TASK_STATE_DEAD
        assert task.failures == MAX_ATTEMPTS and task.attempts == MAX_ATTEMPTS
        assert [h.outcome for h in task.history] == [pb.ATTEMPT_OUTCOME_EXPIRED] * MAX_ATTEMPTS
        assert sum(t == task_id for t, _, _ in executions) == MAX_ATTEMPTS
    assert result.completed == ORDINARY and result.dead == POISON
    # One crash per poison execution, each with the poison's exit status.
    assert workers.crashes == POISON * MAX_ATTEMPTS, workers.crashes
    assert exits == [3] * len(exits)
