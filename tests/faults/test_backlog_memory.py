"""A backlog of ten times more payload bytes than the feeder may hold in memory: the feeder
stays within its bound and every task is drained with its payload intact.

Seen before the fix: every pending payload lived in the feeder's memory (1.26x the payload
bytes of the backlog, with no bound), and so did the idempotency key of every task kept
for the retention window. Now `--payload-memory` bounds the pending payloads a SQLite
feeder holds; the others stay on disk and are read when leased.

The same run with a bound large enough to hold everything is the control: it shows that
the measurement sees payloads held in memory (its growth is about the backlog's size).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import FeederProc, call, feeder_stub, record, running, scaled

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

MiB = 2**20
PAYLOAD = 64 * 1024
BOUND = 8 * MiB
# Ten times the bound (twenty at full size).
TASKS = scaled(10 * BOUND // PAYLOAD, 20 * BOUND // PAYLOAD)
SUBMIT_BATCH = 32  # 2 MiB per Submit, under the message limit
LEASE_BATCH = 16
# The bounded feeder may grow by the bound and this much besides (request buffers, SQLite's
# page caches, allocator slack: about 27 MiB measured); holding the backlog would take
# TASKS * PAYLOAD.
SLACK = 40 * MiB
# While the second half of the backlog arrives, the control grows by at least this share of
# it; the bounded feeder by at most this other share (it should stay flat: 6-9 MiB of the
# 40 MiB half measured, allocator and page-cache slack).
CONTROL_SHARE = 0.8
FLAT_SHARE = 0.4


def payload_of(i: int) -> bytes:
    return random.Random(i).randbytes(PAYLOAD)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fill_and_drain(workdir: Path, bound: int) -> dict[str, int]:
    """Fills a feeder with the backlog, then drains it checking every payload."""
    workdir.mkdir()
    feeder = FeederProc(workdir, args=["--payload-memory", str(bound)])
    with running(feeder), feeder_stub(feeder.target) as stub:
        feeder.start()
        # Warm up (imports, first commit) before the baseline.
        call(stub.Submit, pb.SubmitRequest(tasks=[pb.TaskSpec(queue="warm", payload=b"x")]))
        before = rss(feeder.pid)
        expected: dict[str, int] = {}
        half = 0
        for start in range(0, TASKS, SUBMIT_BATCH):
            if start >= TASKS // 2 and not half:
                half = rss(feeder.pid)
            numbers = range(start, min(start + SUBMIT_BATCH, TASKS))
            reply = call(
                stub.Submit,
                pb.SubmitRequest(
                    tasks=[
                        pb.TaskSpec(queue="backlog", payload=payload_of(i), idempotency_key=f"k{i}")
                        for i in numbers
                    ]
                ),
            )
            for i, result in zip(numbers, reply.results, strict=True):
                expected[result.task_id] = i
        filled = rss(feeder.pid)
        drained = intact = 0
        while True:
            leased = call(
                stub.Lease,
                pb.LeaseRequest(queue="backlog", max_tasks=LEASE_BATCH, worker_id="drain"),
            ).tasks
            if not leased:
                break
            for task in leased:
                drained += 1
                intact += task.payload == payload_of(expected[task.task_id])
            call(
                stub.Ack,
                pb.AckRequest(items=[pb.AckItem(lease_token=t.lease_token) for t in leased]),
            )
        return {
            "backlog_mib": TASKS * PAYLOAD // MiB,
            "bound_mib": bound // MiB,
            "rss_growth_mib": (filled - before) // MiB,
            "rss_growth_second_half_mib": (filled - half) // MiB,
            "submitted": len(expected),
            "drained": drained,
            "payloads_intact": intact,
        }


def test_a_backlog_ten_times_the_payload_bound_stays_within_it_and_drains_whole(
    tmp_path: Path,
) -> None:
    bounded = fill_and_drain(tmp_path / "bounded", BOUND)
    control = fill_and_drain(tmp_path / "control", 4 * TASKS * PAYLOAD)
    record("backlog_memory", {"bounded": bounded, "control (bound above the backlog)": control})
    for figures in (bounded, control):
        assert figures["drained"] == figures["payloads_intact"] == figures["submitted"] == TASKS
    half = TASKS // 2 * PAYLOAD
    assert control["rss_growth_mib"] * MiB >= CONTROL_SHARE * TASKS * PAYLOAD, control
    assert control["rss_growth_second_half_mib"] * MiB >= CONTROL_SHARE * half, control
    assert bounded["rss_growth_mib"] * MiB <= BOUND + SLACK, bounded
    assert bounded["rss_growth_second_half_mib"] * MiB <= FLAT_SHARE * half, bounded
