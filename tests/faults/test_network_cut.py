"""Network faults between the workers and the feeder, from a TCP proxy of the test's own
(tests/faults/proxy.py) that cuts connections (resets them, and refuses new ones for a
while) and stalls them (forwards nothing for a while).

1. Random chaos while producers submit (straight to the feeder) and six workers work
   through the proxy: nothing is lost, nothing completed twice, every duplicate execution
   is a counted redelivery, and the workers recover by themselves.
2. Acks sent into a cut: the workers finish a batch of tasks while every connection is
   reset and refused. Their acks are retried once the network is back: each task is ACKED
   on its first attempt, executed once, and completed only after the cut ended.
3. Acks sent into a stall: the same with the network holding data instead of refusing it.
"""

from __future__ import annotations

import random
import threading
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
    get_tasks,
    queue_stats,
    read_ledger,
    record,
    running,
    scaled,
    submit,
    totals_figures,
    ts,
    wait_for,
    wait_settled,
)
from tests.faults.proxy import ChaosProxy

QUEUE = "network"
LEASE = 6.0
WORKERS = 6
CONCURRENCY = 4
CHAOS_SECONDS = scaled(15.0, 90.0)
CUT_ROUNDS = scaled(1, 4)
BURST = 16
BURST_SLEEP = 1.0
OUTAGE = 2.0

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(150, 600))]


def test_workers_survive_cuts_and_stalls(tmp_path: Path) -> None:
    seed = time.time_ns() % 1_000_000
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    started = time.monotonic()
    task_ids: list[str] = []
    late_acks: dict[str, list[float]] = {"cut": [], "stall": []}
    with running(feeder), feeder_stub(feeder.target) as stub:
        feeder.start()
        with ChaosProxy(("127.0.0.1", feeder.port)) as proxy:
            workers = WorkerPool(
                tmp_path, proxy.target, queue=QUEUE, ledger=ledger, concurrency=CONCURRENCY
            )
            with running(workers):
                workers.start(WORKERS)

                # 1. Random cuts and stalls under a steady load.
                stop = threading.Event()
                errors: list[BaseException] = []

                def produce() -> None:
                    try:
                        while not stop.is_set():
                            payloads = [
                                {"sleep": round(rng.uniform(0.02, 0.3), 3)} for _ in range(8)
                            ]
                            task_ids.extend(submit(stub, QUEUE, payloads))
                            time.sleep(0.25)
                    except BaseException as exc:
                        errors.append(exc)

                producer = threading.Thread(target=produce, daemon=True)
                producer.start()
                end = time.monotonic() + CHAOS_SECONDS
                try:
                    while time.monotonic() < end:
                        time.sleep(rng.uniform(0.3, 2.0))
                        if rng.random() < 0.5:
                            proxy.cut(refuse_for=rng.uniform(0.0, 1.5))
                        else:
                            proxy.stall(rng.uniform(0.3, 2.5))
                finally:
                    stop.set()
                producer.join(timeout=30)
                assert not errors, errors
                wait_settled(stub, QUEUE, len(task_ids), within=60)

                # 2 and 3. Acks sent while the network is cut, then while it stalls.
                for fault in ["cut", "stall"] * CUT_ROUNDS:
                    before = len(read_ledger(ledger))
                    burst = submit(
                        stub,
                        QUEUE,
                        [{"sleep": BURST_SLEEP}] * BURST,
                        lease_duration={"seconds": 15},
                    )
                    task_ids.extend(burst)
                    wait_for(
                        lambda n=before: len(read_ledger(ledger)) - n >= BURST,
                        within=20,
                        what="the burst to start",
                    )
                    # Every handler is running; they finish (and ack) inside the outage.
                    time.sleep(0.2)
                    outage_start = time.time()
                    outage_end = outage_start + OUTAGE
                    if fault == "cut":
                        proxy.cut(refuse_for=OUTAGE)
                    else:
                        proxy.stall(OUTAGE)
                    wait_settled(stub, QUEUE, len(task_ids), within=60)
                    into_outage = []
                    for task in get_tasks(stub, burst).values():
                        assert [h.outcome for h in task.history] == [pb.ATTEMPT_OUTCOME_ACKED]
                        # The handler returned (and the worker sent its ack) after the
                        # outage began: the ack got through only once it was over.
                        if ts(task.history[0].leased_at) + BURST_SLEEP > outage_start + 0.05:
                            into_outage.append(ts(task.finished_at) - outage_end)
                    assert into_outage, f"no ack was sent into the {fault}"
                    assert min(into_outage) > -0.2, (fault, into_outage)
                    late_acks[fault] += into_outage

                assert all(w.alive() for w in workers.procs), "a worker died"
            result, _ = audit(stub, task_ids, ledger)
            stats = queue_stats(stub, QUEUE)
            figures = {
                "faults": len(proxy.events),
                "cuts": proxy.cuts,
                "stalls": proxy.stalls,
                "connections_cut": proxy.connections_cut,
                "connections_refused": proxy.refused,
                "connections": proxy.connections,
            }
    elapsed = time.monotonic() - started

    record(
        "network_cut",
        {
            "seed": seed,
            "workers": WORKERS,
            "lease_s": LEASE,
            **figures,
            "tasks": len(task_ids),
            "acks_retried_through_cut": len(late_acks["cut"]),
            "acks_delayed_by_stall": len(late_acks["stall"]),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
