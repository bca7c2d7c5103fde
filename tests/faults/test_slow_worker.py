"""A worker slower than its lease, that never extends it: its late ack is ADOPTED or
DUPLICATE exactly as the contract says, and the ledger shows one completion per task.

The slow worker is the test itself on raw stubs (lease for 1 s, "work" past the deadline,
then ack), so that no automatic extension can rescue it:

a. Nobody else touched the task: the lease expired (the task is READY again, attempt 1
   EXPIRED), the late ack is ADOPTED and completes it.
b. A newer lease exists: the late ack is ADOPTED, the newer attempt is REVOKED, its Extend
   answers COMPLETED and its ack DUPLICATE.
c. A real worker completed the redelivered task first: the late ack is DUPLICATE.
d. A race against real workers, with acks just before or after the deadline: ACKED before,
   ADOPTED or DUPLICATE after, never two completions.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.handlers import record as record_execution
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    feeder_stub,
    get_tasks,
    record,
    running,
    scaled,
    submit,
    totals_figures,
    wait_settled,
)

N = scaled(10, 50)
RACE = scaled(24, 120)
SLOW_LEASE = 1.0

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(90, 400))]


def lease(
    stub: feeder_pb2_grpc.FeederStub, queue: str, n: int, seconds: float, worker: str
) -> list[pb.LeasedTask]:
    request = pb.LeaseRequest(
        queue=queue,
        max_tasks=n,
        lease_duration=Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)),
        worker_id=worker,
    )
    return list(stub.Lease(request, timeout=10).tasks)


def ack(stub: feeder_pb2_grpc.FeederStub, leased: list[pb.LeasedTask]) -> list[int]:
    items = [pb.AckItem(lease_token=t.lease_token, result=b"slow") for t in leased]
    return [r.outcome for r in stub.Ack(pb.AckRequest(items=items), timeout=10).results]


def run_slowly(ledger: Path, leased: list[pb.LeasedTask], seconds: float) -> None:
    for task in leased:
        record_execution(str(ledger), task.task_id, task.attempt)
    time.sleep(seconds)


def outcomes(stub: feeder_pb2_grpc.FeederStub, ids: list[str]) -> dict[str, list[int]]:
    return {i: [h.outcome for h in t.history] for i, t in get_tasks(stub, ids).items()}


def test_late_acks_are_adopted_or_duplicate(tmp_path: Path) -> None:
    seed = time.time_ns() % 1_000_000
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", "10s"])
    started = time.monotonic()
    counts: Counter[str] = Counter()
    all_ids: dict[str, list[str]] = {}
    with running(feeder), feeder_stub(feeder.target) as stub:
        feeder.start()
        late = SLOW_LEASE + 0.4

        # a. Alone: the expired lease's ack is adopted.
        ids = all_ids["slow-a"] = submit(stub, "slow-a", [{}] * N)
        slow = lease(stub, "slow-a", N, SLOW_LEASE, "slow")
        run_slowly(ledger, slow, late)
        for task in get_tasks(stub, ids).values():
            assert task.state == pb.TASK_STATE_READY, task  # expired, waiting for a worker
            assert [h.outcome for h in task.history] == [pb.ATTEMPT_OUTCOME_EXPIRED]
        assert ack(stub, slow) == [pb.ACK_OUTCOME_ADOPTED] * N
        assert set(map(tuple, outcomes(stub, ids).values())) == {(pb.ATTEMPT_OUTCOME_ACKED,)}
        counts["adopted_alone"] += N

        # b. Over a newer lease: adopted, and the newer attempt is revoked.
        ids = all_ids["slow-b"] = submit(stub, "slow-b", [{}] * N)
        slow = lease(stub, "slow-b", N, SLOW_LEASE, "slow")
        run_slowly(ledger, slow, late)
        fast = lease(stub, "slow-b", N, 30, "fast")
        assert len(fast) == N and all(t.attempt == 2 for t in fast)
        run_slowly(ledger, fast, 0)
        assert ack(stub, slow) == [pb.ACK_OUTCOME_ADOPTED] * N
        extend = stub.Extend(
            pb.ExtendRequest(items=[pb.ExtendItem(lease_token=t.lease_token) for t in fast])
        )
        assert [r.outcome for r in extend.results] == [pb.EXTEND_OUTCOME_COMPLETED] * N
        assert ack(stub, fast) == [pb.ACK_OUTCOME_DUPLICATE] * N
        assert set(map(tuple, outcomes(stub, ids).values())) == {
            (pb.ATTEMPT_OUTCOME_ACKED, pb.ATTEMPT_OUTCOME_REVOKED)
        }
        counts["adopted_over_newer_lease"] += N
        counts["duplicate_after_adoption"] += N

        # c. A real worker completed the redelivered task first: duplicate.
        ids = all_ids["slow-c"] = submit(stub, "slow-c", [{"sleep": 0.05}] * N)
        slow = lease(stub, "slow-c", N, SLOW_LEASE, "slow")
        pool = WorkerPool(tmp_path, feeder.target, queue="slow-c", ledger=ledger, concurrency=4)
        with running(pool):
            pool.start(2)
            run_slowly(ledger, slow, 0)
            wait_settled(stub, "slow-c", N, within=30)
        assert ack(stub, slow) == [pb.ACK_OUTCOME_DUPLICATE] * N
        assert set(map(tuple, outcomes(stub, ids).values())) == {
            (pb.ATTEMPT_OUTCOME_EXPIRED, pb.ATTEMPT_OUTCOME_ACKED)
        }
        counts["duplicate_after_worker"] += N

        # d. A race against real workers: acks spread from before the deadline to well
        # after it, while two workers take the expired tasks and complete them.
        ids = all_ids["slow-d"] = submit(
            stub, "slow-d", [{"sleep": round(rng.uniform(0.1, 0.5), 3)} for _ in range(RACE)]
        )
        slow = lease(stub, "slow-d", RACE, SLOW_LEASE, "slow")
        leased_at = time.monotonic()
        run_slowly(ledger, slow, 0)
        schedule = sorted((rng.uniform(0.5, 3.0), task) for task in slow)
        race: Counter[str] = Counter()
        pool = WorkerPool(tmp_path, feeder.target, queue="slow-d", ledger=ledger, concurrency=2)
        with running(pool):
            pool.start(2)
            for at, task in schedule:
                time.sleep(max(0.0, leased_at + at - time.monotonic()))
                elapsed = time.monotonic() - leased_at  # a little less than since the grant
                (outcome,) = ack(stub, [task])
                race[pb.AckOutcome.Name(outcome).removeprefix("ACK_OUTCOME_").lower()] += 1
                assert outcome in (
                    pb.ACK_OUTCOME_ACKED,
                    pb.ACK_OUTCOME_ADOPTED,
                    pb.ACK_OUTCOME_DUPLICATE,
                ), outcome
                history = get_tasks(stub, [task.task_id])[task.task_id].history
                mine = next(h for h in history if h.attempt == task.attempt)
                taken = outcome in (pb.ACK_OUTCOME_ACKED, pb.ACK_OUTCOME_ADOPTED)
                assert (mine.outcome == pb.ATTEMPT_OUTCOME_ACKED) == taken, (outcome, history)
                if elapsed < SLOW_LEASE - 0.3:
                    assert outcome == pb.ACK_OUTCOME_ACKED, (elapsed, outcome)
                if elapsed > SLOW_LEASE:
                    assert outcome != pb.ACK_OUTCOME_ACKED, (elapsed, outcome)
            wait_settled(stub, "slow-d", RACE, within=30)
        counts.update({f"race_{k}": v for k, v in race.items()})

        every = [i for ids in all_ids.values() for i in ids]
        result, _ = audit(stub, every, ledger)
        totals = call_stats(stub)
    elapsed = time.monotonic() - started

    record(
        "slow_worker",
        {
            "seed": seed,
            "slow_lease_s": SLOW_LEASE,
            "tasks": len(every),
            "late_acks": dict(sorted(counts.items())),
            **result.figures(),
            "feeder_totals": totals_figures(totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, totals)
    assert totals.adopted >= 2 * N
    assert totals.duplicate_acks >= 2 * N


def call_stats(stub: feeder_pb2_grpc.FeederStub) -> pb.Totals:
    return stub.GetStats(pb.GetStatsRequest(), timeout=10).totals
