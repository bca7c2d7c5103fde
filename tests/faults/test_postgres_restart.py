"""PostgreSQL itself goes away under load: three feeders, 8 workers and 2 producers keep
running while the database server is stopped (fast shutdown: every session cut, open
transactions rolled back) and started again a little later.

Meanwhile the feeders answer UNAVAILABLE (the clients retry) and report NOT_SERVING; they
reconnect by themselves, report SERVING again, and nothing already accepted is lost:

- every task whose Submit returned is COMPLETED exactly once, no lease executed twice;
- one task per distinct idempotency key;
- no feeder and no worker was restarted.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests import postgres
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    every_worker_runs_again,
    feeder_stub,
    free_port,
    healthy,
    queue_stats,
    record,
    running,
    scaled,
    summary,
    totals_figures,
    wait_for,
    wait_settled,
)
from tests.faults.test_feeder_killed import Producer

RESTARTS = scaled(2, 5)
FEEDERS = 3
WORKERS = 8
CONCURRENCY = 4
PRODUCERS = 2
LEASE = 5.0
QUEUE = "feeder-kills"  # the queue the shared Producer submits to

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(240, 900))]


def test_postgres_restarted_under_load(tmp_path: Path, postgres_dsn: str) -> None:
    seed = int(os.environ.get("FEEDWORK_CHAOS_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    feeders = [
        FeederProc(
            tmp_path,
            db=postgres_dsn,
            port=free_port(),
            name=f"feeder{i}",
            args=["--lease-duration", f"{LEASE:g}s"],
        )
        for i in range(FEEDERS)
    ]
    target = ",".join(f.target for f in feeders)
    workers = WorkerPool(
        tmp_path, target, queue=QUEUE, ledger=ledger, concurrency=CONCURRENCY, wait=2.0
    )
    started = time.monotonic()
    outages: list[float] = []
    not_serving_after: list[float] = []
    serving_again_after: list[float] = []
    with running(*feeders, workers):
        for feeder in feeders:
            feeder.start()
        workers.start(WORKERS)
        stop = threading.Event()
        producers = [Producer(f"p{i}", target, stop, seed + i) for i in range(PRODUCERS)]
        for producer in producers:
            producer.start()
        try:
            for _ in range(RESTARTS):
                time.sleep(rng.uniform(1.0, 3.0))
                down = rng.uniform(1.0, 3.0)
                stopped_at = time.monotonic()
                postgres.stop_server()
                try:
                    # Health follows the database on every feeder.
                    wait_for(
                        lambda: not any(healthy(f.target) for f in feeders),
                        within=10,
                        what="every feeder to report NOT_SERVING",
                    )
                    not_serving_after.append(time.monotonic() - stopped_at)
                    time.sleep(max(0.0, down - (time.monotonic() - stopped_at)))
                finally:
                    postgres.start_server()
                back_at = time.monotonic()
                outages.append(back_at - stopped_at)
                wait_for(
                    lambda: all(healthy(f.target) for f in feeders),
                    within=30,
                    what="every feeder to report SERVING again",
                )
                serving_again_after.append(time.monotonic() - back_at)
            time.sleep(2.0)  # a little work after the last restart
        finally:
            stop.set()
        for producer in producers:
            producer.join(timeout=120)
            assert not producer.is_alive(), f"{producer.name} is stuck"
        assert not [e for p in producers for e in p.errors], [p.errors for p in producers]

        assert all(f.alive() for f in feeders), "a feeder died"
        assert all(w.alive() for w in workers.procs), "a worker died"
        probe_ids = every_worker_runs_again(target, workers, ledger, QUEUE, within=60)

        task_ids = sorted({t for p in producers for t in p.keys.values()} | set(probe_ids), key=int)
        keys = sum(len(p.keys) for p in producers) + len(probe_ids)
        with feeder_stub(feeders[0].target) as stub:
            wait_settled(stub, QUEUE, len(task_ids), within=90)
            result, _ = audit(stub, task_ids, ledger)
            stats = queue_stats(stub, QUEUE)
        # Measured, not assumed: worker processes that exited (none was restarted).
        workers_exited = sum(not w.alive() for w in workers.procs)
        feeder_restarts = sum(f.starts - 1 for f in feeders)
        elapsed = time.monotonic() - started

    record(
        "postgres_restarted",
        {
            "seed": seed,
            "feeders": FEEDERS,
            "restarts": len(outages),
            "workers": WORKERS,
            "feeder_restarts": feeder_restarts,
            "workers_exited": workers_exited,
            "tasks": len(task_ids),
            "distinct_keys": keys,
            "duplicates_created": stats.totals.submitted - keys,
            "submit_batches": sum(p.batches for p in producers),
            "submits_retried": sum(p.retried for p in producers),
            "lost_replies_recovered": sum(p.recovered for p in producers),
            "database_down_s": summary(outages),
            "not_serving_after_s": summary(not_serving_after),
            "serving_again_after_s": summary(serving_again_after),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    assert len(task_ids) == keys
    assert stats.totals.submitted == keys, (stats.totals.submitted, keys)
    assert stats.completed == keys
