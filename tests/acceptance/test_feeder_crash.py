"""kill -9 the real `python -m feeder` process and restart it on the same database.

After the crash: every task whose Submit returned is still there, acked tasks stay completed,
attempt numbers do not go backwards, a task leased before the crash is leasable again no
later than its old deadline, and acks with pre-crash tokens follow the usual rules.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


class FeederProcess:
    def __init__(self, db: Path | str, workdir: Path, args: Sequence[str] = ()) -> None:
        self.args = list(args)
        self.db = db
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.target = ""

    def start(self) -> None:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "feeder",
                "--listen", "127.0.0.1:0",
                "--db", str(self.db),
                "--port-file", str(port_file),
                "--log-level", "warning",
                *self.args,
            ],
            cwd=self.workdir,
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                self.target = f"127.0.0.1:{port_file.read_text().strip()}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"feeder exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError("feeder did not start in 30 s")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def feeder_process(tmp_path: Path) -> Iterator[FeederProcess]:
    process = FeederProcess(tmp_path / "feedwork.db", tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _stub(target: str) -> tuple[grpc.Channel, feeder_pb2_grpc.FeederStub]:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, feeder_pb2_grpc.FeederStub(channel)


def _lease(stub: feeder_pb2_grpc.FeederStub, n: int, lease_s: int, wait_s: float = 0) -> list:
    request = pb.LeaseRequest(
        queue="crash",
        max_tasks=n,
        lease_duration=Duration(seconds=lease_s),
        wait=Duration(seconds=int(wait_s), nanos=int((wait_s % 1) * 1e9)),
        worker_id="test",
    )
    return list(stub.Lease(request, timeout=30).tasks)


# The short leases: long enough to be held across a quiet restart (about a second), so
# that the usual run sees them LEASED after it and expiring at their deadline. On a busy
# machine the restart may outlast them; then they must expire as soon as the feeder is
# back, and the checks below say which case they are in.
SHORT_LEASE = 3
# How late after its deadline (or after the restart, if that came later) an expired lease
# may be taken back, by the feeder's own clock.
EXPIRY_SLACK = 1.0


def _secs(timestamp: Timestamp) -> float:
    return float(timestamp.ToNanoseconds()) / 1e9


def test_kill9_restart_keeps_every_promise(feeder_process: FeederProcess) -> None:
    channel, stub = _stub(feeder_process.target)
    specs = [pb.TaskSpec(queue="crash", payload=f"task-{i}".encode()) for i in range(300)]
    submitted = [r.task_id for r in stub.Submit(pb.SubmitRequest(tasks=specs)).results]
    assert len(set(submitted)) == 300

    acked = _lease(stub, 100, lease_s=60)
    results = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=t.lease_token) for t in acked]))
    assert {r.outcome for r in results.results} == {pb.ACK_OUTCOME_ACKED}

    held_long = _lease(stub, 50, lease_s=60)  # acked after the restart: still current
    held_short = _lease(stub, 50, lease_s=SHORT_LEASE)  # must come back by its deadline
    short_deadlines = {t.task_id: _secs(t.lease_deadline) for t in held_short}
    channel.close()

    feeder_process.kill9()
    feeder_process.start()
    back_at = time.time()  # the restarted feeder serves (its port file is written)
    channel, stub = _stub(feeder_process.target)

    # Leases survived the crash: the long ones are held, the short ones too unless their
    # deadline passed (read first, so that a quiet run sees every one of them held).
    for task in held_long + held_short:
        read = stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).task
        answered_at = time.time()
        assert read.attempts == 1, read
        deadline = short_deadlines.get(task.task_id)
        if deadline is None or answered_at < deadline:
            assert read.state == pb.TASK_STATE_LEASED, (read, answered_at, deadline)
        elif read.state != pb.TASK_STATE_LEASED:
            # Past its deadline: expired (not dropped), and not before the deadline.
            assert read.state == pb.TASK_STATE_READY, read
            [attempt] = read.history
            assert attempt.outcome == pb.ATTEMPT_OUTCOME_EXPIRED
            assert _secs(attempt.ended_at) >= deadline
    # Every submitted task survived; acked ones stay completed.
    states: dict[str, int] = {}
    for task_id in submitted:
        task = stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task
        states[task_id] = task.state
        assert task.attempts <= 1
    assert all(states[t.task_id] == pb.TASK_STATE_COMPLETED for t in acked)

    # Pre-crash tokens: ack of a current lease is ACKED, a second ack is DUPLICATE.
    first = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=held_long[0].lease_token)]))
    again = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=held_long[0].lease_token)]))
    assert first.results[0].outcome == pb.ACK_OUTCOME_ACKED
    assert again.results[0].outcome == pb.ACK_OUTCOME_DUPLICATE
    stale = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=acked[0].lease_token)]))
    assert stale.results[0].outcome == pb.ACK_OUTCOME_DUPLICATE

    # The 100 never-leased tasks come first (an expired lease is ready only from its
    # expiry on, after them); the short leases come back by their deadline.
    fresh = _lease(stub, 100, lease_s=60)
    assert len(fresh) == 100 and all(t.attempt == 1 for t in fresh)
    assert not {t.task_id for t in fresh} & {t.task_id for t in acked + held_long + held_short}
    redelivered = []
    give_up = max(short_deadlines.values()) + 60
    while len(redelivered) < 50 and time.time() < give_up:
        redelivered += _lease(stub, 50, lease_s=60, wait_s=1)
    assert len(redelivered) == 50
    assert all(t.attempt == 2 for t in redelivered)  # attempt numbers never go backwards
    assert {t.task_id for t in redelivered} == {t.task_id for t in held_short}
    # Each short lease expired at its deadline, or as soon as the feeder was back if it was
    # down then; never before it. By the feeder's clock, so a slow test process does not
    # count against the feeder.
    for task in redelivered:
        read = stub.GetTask(pb.GetTaskRequest(task_id=task.task_id)).task
        expired = read.history[0]
        assert expired.attempt == 1 and expired.outcome == pb.ATTEMPT_OUTCOME_EXPIRED
        deadline = short_deadlines[task.task_id]
        due = max(deadline, back_at)
        assert deadline <= _secs(expired.ended_at) <= due + EXPIRY_SLACK, (
            _secs(expired.ended_at) - deadline,
            back_at - deadline,
        )

    # A late ack of a pre-crash token whose lease expired and was redelivered is ADOPTED.
    late = stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=held_short[0].lease_token)]))
    assert late.results[0].outcome == pb.ACK_OUTCOME_ADOPTED
    stats = stub.GetStats(pb.GetStatsRequest(queues=["crash"])).queues[0]
    assert stats.totals.submitted == 300
    assert stats.completed == 100 + 1 + 1
    channel.close()
