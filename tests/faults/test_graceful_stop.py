"""SIGTERM a busy worker: its in-flight tasks finish within the grace period, the ones that
cannot are given back (released), and another worker gets them at once.

Per round, worker A (concurrency 4, grace 2 s) takes four tasks: two that finish in 1 s
and two that would run for a minute. Then A gets SIGTERM and worker B starts. Expected:

- the short tasks are ACKED by A, on their first attempt;
- the long ones end their first attempt RELEASED (no failure counted) when the grace
  period runs out, long before their 30 s lease deadline, and B leases them within a
  fraction of a second of the release;
- the tasks A never took (queued behind) go to B on their first attempt;
- A exits with status 0 soon after the grace period.
"""

from __future__ import annotations

import signal
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
    summary,
    totals_figures,
    ts,
    wait_for,
    wait_settled,
)

QUEUE = "graceful"
LEASE = 30.0
GRACE = 2.0
ROUNDS = scaled(2, 8)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(90, 300))]


def test_sigterm_finishes_in_flight_tasks_and_releases_the_rest(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = WorkerPool(
        tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=4, grace=GRACE
    )
    started = time.monotonic()
    all_ids: list[str] = []
    release_gaps: list[float] = []  # release -> next lease
    release_margins: list[float] = []  # release -> the lease deadline it did not wait for
    exit_after_term: list[float] = []
    short_acked = long_released = queued_to_b = 0
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        for _ in range(ROUNDS):
            before = len(read_ledger(ledger))
            short = submit(stub, QUEUE, [{"sleep": 1.0}] * 2)
            long = submit(stub, QUEUE, [{"sleep_first": 60, "sleep": 0.1}] * 2)
            a = workers.start_one()
            # A is busy with all four before the rest is submitted.
            wait_for(
                lambda n=before: len(read_ledger(ledger)) - n >= 4, within=20, what="A to take 4"
            )
            queued = submit(stub, QUEUE, [{"sleep": 0.1}] * 4)
            all_ids += short + long + queued
            a.signal(signal.SIGTERM)
            term_at = time.monotonic()
            b = workers.start_one()
            assert a.wait(timeout=GRACE + 15) == 0, a.log_tail()
            exit_after_term.append(time.monotonic() - term_at)
            wait_settled(stub, QUEUE, len(all_ids), within=30)
            b.stop()

            for task_id in short:
                task = stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task
                assert [h.outcome for h in task.history] == [pb.ATTEMPT_OUTCOME_ACKED], task
                assert task.history[0].worker_id == a.name
                short_acked += 1
            for task_id in long:
                task = stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task
                first, second = task.history
                assert first.outcome == pb.ATTEMPT_OUTCOME_RELEASED, task
                assert first.worker_id == a.name and second.worker_id == b.name
                assert second.outcome == pb.ATTEMPT_OUTCOME_ACKED
                assert task.failures == 0  # a release is not a failure
                released_at = ts(first.ended_at)
                release_margins.append(ts(first.leased_at) + LEASE - released_at)
                release_gaps.append(ts(second.leased_at) - released_at)
                long_released += 1
            for task_id in queued:
                task = stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task
                assert [(h.attempt, h.worker_id) for h in task.history] == [(1, b.name)]
                queued_to_b += 1
        result, _ = audit(stub, all_ids, ledger)
        stats = queue_stats(stub, QUEUE)
    elapsed = time.monotonic() - started

    record(
        "graceful_stop",
        {
            "rounds": ROUNDS,
            "grace_s": GRACE,
            "lease_s": LEASE,
            "tasks": len(all_ids),
            "in_flight_finished": short_acked,
            "released_at_grace_end": long_released,
            "queued_taken_by_next_worker": queued_to_b,
            **result.figures(),
            "release_to_next_lease_s": summary(release_gaps),
            "release_before_lease_deadline_s": summary(release_margins),
            "worker_exit_after_sigterm_s": summary(exit_after_term),
            "feeder_totals": totals_figures(stats.totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    assert stats.totals.expired == 0 and stats.totals.failed == 0
    # Released at the end of the grace period, not at the lease deadline 30 s on...
    assert min(release_margins) > LEASE - GRACE - 5, release_margins
    # ...and leased again at once by the idle worker.
    assert max(release_gaps) < 1.0, release_gaps
    assert max(exit_after_term) < GRACE + 5, exit_after_term
