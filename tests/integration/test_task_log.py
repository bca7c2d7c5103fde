"""The feeder's log lines about tasks (feeder.service.observer.TaskLog): a task gone dead,
a lease that expired, an ack adopted after its lease expired, each with the task's id,
queue and attempt; and `--log-format json` writes one JSON object a line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import RunningFeeder

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
GRPC_CORE_LINE = re.compile(r"[EWID]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def task_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "feedwork.feeder.tasks"]


async def lease(feeder: RunningFeeder, queue: str, seconds: int = 30) -> pb.LeasedTask:
    request = pb.LeaseRequest(
        queue=queue,
        max_tasks=1,
        worker_id="w1",
        lease_duration=Duration(seconds=seconds),
    )
    (task,) = (await feeder.stub.Lease(request)).tasks
    return task


async def test_dead_expired_and_adopted_tasks_are_logged_with_their_fields(
    feeder: RunningFeeder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedwork.feeder.tasks")
    specs = [
        pb.TaskSpec(queue="dies", payload=b"", max_attempts=1),
        pb.TaskSpec(queue="slow", payload=b"", max_attempts=5),
    ]
    dies, slow = (
        r.task_id for r in (await feeder.stub.Submit(pb.SubmitRequest(tasks=specs))).results
    )
    leased = await lease(feeder, "dies")
    await feeder.stub.Nack(
        pb.NackRequest(items=[pb.NackItem(lease_token=leased.lease_token, error="no such image")])
    )
    (dead,) = task_lines(caplog)
    assert dead.levelno == logging.WARNING
    assert dead.getMessage() == f"task {dies} is dead: failed on attempt 1 of 1: no such image"
    assert (dead.task_id, dead.queue, dead.attempt) == (dies, "dies", 1)  # type: ignore[attr-defined]

    first = await lease(feeder, "slow", seconds=1)
    for _ in range(100):  # the reaper expires the lease
        if len(task_lines(caplog)) > 1:
            break
        await asyncio.sleep(0.05)
    expired = task_lines(caplog)[1]
    assert expired.levelno == logging.INFO
    assert (
        expired.getMessage()
        == f"task {slow}: the lease of attempt 1 expired; the task is READY again"
    )
    assert (expired.task_id, expired.queue, expired.attempt) == (slow, "slow", 1)  # type: ignore[attr-defined]
    await feeder.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=first.lease_token)]))
    adopted = task_lines(caplog)[2]
    assert (
        adopted.getMessage() == f"task {slow} completed by a late ack of an expired lease (adopted)"
    )


def test_the_feeder_logs_json_lines(tmp_path: Path) -> None:
    """A feeder started with --log-format json that cannot bind its port (taken): every
    line it writes on the way is a JSON object."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "feeder", "--listen", listen, "--db", ":memory:",
             "--log-format", "json", "--log-level", "debug"],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
    assert result.returncode != 0
    # gRPC's C core writes its own lines ("E1204 21:50:10.110226 ... add_port.cc:83] ...",
    # docs/OBSERVABILITY.md); every other line is one of ours.
    lines = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.strip() and not GRPC_CORE_LINE.match(line)
    ]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(f"cannot listen on {listen}" in line["message"] for line in lines), lines


async def test_the_worker_logs_json_lines_with_the_task_and_its_traceback(
    feeder: RunningFeeder, tmp_path: Path
) -> None:
    spec = pb.TaskSpec(queue="jl", payload=b'{"fail": true}', max_attempts=1)
    (submitted,) = (await feeder.stub.Submit(pb.SubmitRequest(tasks=[spec]))).results
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEEDWORK_FAULTS_LEDGER": str(tmp_path / "l")}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--target", feeder.target, "--queue", "jl",
        "--handler", "tests.faults.handlers:ledger", "--log-format", "json", "--wait", "1",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        request = pb.GetTaskRequest(task_id=submitted.task_id)
        for _ in range(200):
            if (await feeder.stub.GetTask(request)).task.state == pb.TASK_STATE_DEAD:
                break
            await asyncio.sleep(0.05)
    finally:
        worker.terminate()
        _, stderr = await asyncio.wait_for(worker.communicate(), 30)
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert lines and all("time" in line and "level" in line for line in lines)
    (failed,) = [line for line in lines if line.get("task_id") == submitted.task_id]
    assert failed["level"] == "WARNING" and failed["queue"] == "jl" and failed["attempt"] == 1
    assert failed["message"] == f"task {submitted.task_id} (attempt 1) failed"
    assert failed["exception"].endswith("RuntimeError: asked to fail")
