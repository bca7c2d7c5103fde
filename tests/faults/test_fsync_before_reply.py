"""Power loss: with the default `--sync full`, every Submit and Ack is on stable storage
(an fsync of the SQLite WAL) before its reply is sent; with `--sync normal` no fsync is
made for them at all (the documented loss window).

A power cut cannot be simulated on one machine, but what it would lose can be counted:
the feeder runs under strace, which records the time of every fsync/fdatasync it makes,
and each sequential call's send and reply times are taken on the client. A write that
survives power loss is one with an fsync between its request and its reply.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import (
    ROOT,
    call,
    child_env,
    feeder_stub,
    free_port,
    record,
    wait_for,
)
from tests.processes import die_with_parent

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

CALLS = 20


def fsync_times(trace: Path) -> list[float]:
    """Entry times (epoch seconds) of the fsync and fdatasync calls in an strace -ttt log."""
    times = []
    for line in trace.read_text().splitlines():
        fields = line.split()
        # "PID 1764799000.123456 fdatasync(7) = 0", or "<unfinished ...>" halves.
        if len(fields) >= 3 and fields[2].startswith(("fsync(", "fdatasync(")):
            times.append(float(fields[1]))
    return times


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_each_write_is_fsynced_before_its_reply_unless_sync_is_normal(
    sync: str, tmp_path: Path
) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing: `make services` installs it")
    port = free_port()
    port_file = tmp_path / "port"
    trace = tmp_path / "strace.log"
    argv = [
        strace, "-f", "-qq", "-ttt", "-e", "trace=fsync,fdatasync", "-o", str(trace),
        *die_with_parent([sys.executable]), "-m", "feeder",  # dies with strace
        "--listen", f"127.0.0.1:{port}",
        "--db", str(tmp_path / "feedwork.db"),
        "--port-file", str(port_file),
        "--log-level", "warning",
        *(["--sync", sync] if sync == "normal" else []),  # full is the default
    ]  # fmt: skip
    with open(tmp_path / "feeder.log", "wb") as log:
        feeder = subprocess.Popen(
            die_with_parent(argv), cwd=ROOT, env=child_env(), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(port_file.exists, within=60, what="the feeder under strace to listen")
        windows: list[tuple[str, float, float]] = []
        with feeder_stub(f"127.0.0.1:{port}") as stub:
            call(stub.GetStats, pb.GetStatsRequest())  # connected
            for i in range(CALLS):
                sent = time.time()
                reply = stub.Submit(
                    pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"%d" % i)]),
                    timeout=10,
                )
                windows.append(("submit", sent, time.time()))
                assert reply.results[0].task_id
            for _ in range(CALLS):
                [leased] = stub.Lease(
                    pb.LeaseRequest(queue="q", max_tasks=1, worker_id="w"), timeout=10
                ).tasks
                sent = time.time()
                stub.Ack(
                    pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)]), timeout=10
                )
                windows.append(("ack", sent, time.time()))
    finally:
        # The feeder is strace's child: stopped, it ends strace too.
        children = Path(f"/proc/{feeder.pid}/task/{feeder.pid}/children")
        for pid in children.read_text().split() if children.exists() else ():
            os.kill(int(pid), signal.SIGTERM)
        try:
            feeder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            feeder.kill()
            feeder.wait(timeout=10)
    fsyncs = fsync_times(trace)
    covered = [any(sent < t < replied for t in fsyncs) for _, sent, replied in windows]
    record(
        "fsync_before_reply",
        {
            f"writes_{sync}": len(windows),
            f"replies_after_an_fsync_{sync}": sum(covered),
            f"fsyncs_{sync}": len(fsyncs),
        },
        merge=True,
    )
    if sync == "full":
        missing = [
            (w[0], i) for i, (w, ok) in enumerate(zip(windows, covered, strict=True)) if not ok
        ]
        assert not missing, f"replied without an fsync since the request: {missing}"
    else:
        assert not any(covered), "--sync normal made an fsync for a single write"
