"""The wall clock steps under a running feeder (libfaketime): leases, backoff and delays
follow elapsed time.

The feeder runs with libfaketime preloaded, its wall clock read from a file the test
rewrites (`+600`: ten minutes ahead); its monotonic clock is left alone, as NTP or an
operator's `date -s` would leave it. Seen before the fix: a +10 min step expired a
healthy worker's 5 min lease within seconds, and a -1 h step kept a dead worker's 3 s
lease LEASED for an hour.
"""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import (
    FeederProc,
    call,
    child_env,
    feeder_stub,
    record,
    running,
    wait_for,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
FORWARD_STEP = 600  # s: 10 min ahead
HEALTHY_LEASE = 300  # s: 5 min
BACKWARD_STEP = -3600  # s: an hour back


@pytest.fixture
def stepped_feeder(tmp_path: Path) -> tuple[FeederProc, Path]:
    if not LIBFAKETIME:
        pytest.fail("libfaketime is missing: `make services` installs the Debian package faketime")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = child_env(
        LD_PRELOAD=LIBFAKETIME[0],
        FAKETIME_TIMESTAMP_FILE=str(offset),
        FAKETIME_NO_CACHE="1",  # read the file at every clock reading: steps apply at once
        DONT_FAKE_MONOTONIC="1",
    )
    return FeederProc(tmp_path, env=env), offset


def step(offset: Path, seconds: int) -> None:
    offset.write_text(f"{seconds:+d}\n")


def lease(stub: object, queue: str, seconds: int) -> pb.LeasedTask:
    request = pb.LeaseRequest(
        queue=queue, max_tasks=1, lease_duration=Duration(seconds=seconds), worker_id="w"
    )
    [leased] = call(stub.Lease, request).tasks  # type: ignore[attr-defined]
    return leased  # type: ignore[no-any-return]


def state(stub: object, task_id: str) -> int:
    reply = call(stub.GetTask, pb.GetTaskRequest(task_id=task_id))  # type: ignore[attr-defined]
    return int(reply.task.state)


def test_a_forward_step_does_not_expire_a_healthy_lease(
    stepped_feeder: tuple[FeederProc, Path],
) -> None:
    feeder, offset = stepped_feeder
    with running(feeder), feeder_stub(feeder.target) as stub:
        feeder.start()
        call(stub.Submit, pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"{}")]))
        leased = lease(stub, "q", HEALTHY_LEASE)
        step(offset, FORWARD_STEP)  # the wall clock jumps ahead
        time.sleep(2.0)  # the reaper has had its chance
        after_step = state(stub, leased.task_id)
        extended = call(
            stub.Extend,
            pb.ExtendRequest(items=[pb.ExtendItem(lease_token=leased.lease_token)]),
        )
        record(
            "clock_steps",
            {
                "forward_step_s": FORWARD_STEP,
                "lease_s": HEALTHY_LEASE,
                "state_2_s_after_the_step": pb.TaskState.Name(after_step),
                "extend_after_the_step": pb.ExtendOutcome.Name(extended.results[0].outcome),
            },
            merge=True,
        )
        assert after_step == pb.TASK_STATE_LEASED
        assert extended.results[0].outcome == pb.EXTEND_OUTCOME_EXTENDED
        acked = call(
            stub.Ack,
            pb.AckRequest(
                items=[pb.AckItem(lease_token=leased.lease_token, result=json.dumps(1).encode())]
            ),
        )
        assert acked.results[0].outcome == pb.ACK_OUTCOME_ACKED


def test_a_backward_step_does_not_hold_a_dead_workers_lease_or_a_delay(
    stepped_feeder: tuple[FeederProc, Path],
) -> None:
    feeder, offset = stepped_feeder
    with running(feeder), feeder_stub(feeder.target) as stub:
        feeder.start()
        call(stub.Submit, pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"{}")]))
        delayed = call(
            stub.Submit,
            pb.SubmitRequest(
                tasks=[pb.TaskSpec(queue="later", payload=b"{}", delay=Duration(seconds=3))]
            ),
        ).results[0]
        leased = lease(stub, "q", 3)  # and the worker dies: no ack, no extend
        step(offset, BACKWARD_STEP)  # the wall clock jumps back
        started = time.monotonic()
        wait_for(
            lambda: state(stub, leased.task_id) == pb.TASK_STATE_READY,
            within=10.0,
            what="the dead worker's 3 s lease to expire",
        )
        wait_for(
            lambda: state(stub, delayed.task_id) == pb.TASK_STATE_READY,
            within=10.0,
            what="the 3 s delay to pass",
        )
        elapsed = time.monotonic() - started
        record(
            "clock_steps",
            {
                "backward_step_s": BACKWARD_STEP,
                "dead_lease_and_delay_ended_after_s": round(elapsed, 2),
            },
            merge=True,
        )
        assert elapsed < 6.0
        again = lease(stub, "q", 30)
        assert again.task_id == leased.task_id and again.attempt == 2
