"""kill -9 one of three feeders on one PostgreSQL database, again and again, under load.

Three `python -m feeder` processes share a database; 8 workers and 2 producers are given
all three (`--target a,b,c`) and spread over them. At random moments one feeder (any of
them, the maintenance leader included) is killed with SIGKILL and restarted a little later,
while the other two carry on. In the end:

- every task whose Submit returned is COMPLETED (nothing lost), with exactly one ACKED
  attempt (nothing completed twice), and no lease was executed twice;
- one task per distinct idempotency key (no duplicates created by retried Submits);
- every execution beyond a task's first was a redelivery the feeders counted;
- no worker was restarted: each one carried on through the surviving feeders.

The same with Node.js workers (the SDK's feedwork-node-worker, tests/faults/handlers.js)
given both addresses of two feeders, one of which is killed: that SDK's round robin over
several feeders, and its reconnection to the other when one dies.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.faults.harness import (
    FeederProc,
    WorkerCommand,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    every_worker_runs_again,
    feeder_stub,
    free_port,
    queue_stats,
    record,
    running,
    scaled,
    summary,
    totals_figures,
    wait_settled,
)
from tests.faults.test_feeder_killed import Producer
from tests.node_sdk import NodeSdk

KILLS = scaled(10, 40)
FEEDERS = 3
# The Node.js run: one of two feeders killed, fewer times in CI.
NODE_KILLS = scaled(5, 40)
NODE_FEEDERS = 2
WORKERS = 8
CONCURRENCY = 4
PRODUCERS = 2
LEASE = 5.0
QUEUE = "feeder-kills"  # the queue the shared Producer submits to

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(180, 900))]


def test_one_of_three_feeders_killed_again_and_again(tmp_path: Path, postgres_dsn: str) -> None:
    kill_one_feeder_of_a_cluster(
        tmp_path,
        postgres_dsn,
        WorkerCommand.python(),
        key="cluster_feeder_killed",
        feeder_count=FEEDERS,
        kills=KILLS,
    )


def test_one_of_two_feeders_of_node_workers_killed_again_and_again(
    tmp_path: Path, postgres_dsn: str, node_sdk: NodeSdk
) -> None:
    kill_one_feeder_of_a_cluster(
        tmp_path,
        postgres_dsn,
        WorkerCommand.node(node_sdk),
        key="node_cluster_feeder_killed",
        feeder_count=NODE_FEEDERS,
        kills=NODE_KILLS,
    )


def kill_one_feeder_of_a_cluster(
    tmp_path: Path,
    postgres_dsn: str,
    command: WorkerCommand,
    *,
    key: str,
    feeder_count: int,
    kills: int,
) -> None:
    """The test, with `feeder_count` feeders and workers that run `command`; its figures
    are recorded as `key`."""
    seed = int(os.environ.get("FEEDWORK_CHAOS_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    ports = [free_port() for _ in range(feeder_count)]
    feeders = [
        FeederProc(
            tmp_path,
            db=postgres_dsn,
            port=port,
            name=f"feeder{i}",
            args=["--lease-duration", f"{LEASE:g}s"],
        )
        for i, port in enumerate(ports)
    ]
    target = ",".join(f.target for f in feeders)
    workers = WorkerPool(
        tmp_path,
        target,
        queue=QUEUE,
        ledger=ledger,
        concurrency=CONCURRENCY,
        wait=2.0,
        command=command,
    )
    started = time.monotonic()
    with running(*feeders, workers):
        for feeder in feeders:
            feeder.start()
        workers.start(WORKERS)
        stop = threading.Event()
        producers = [Producer(f"p{i}", target, stop, seed + i) for i in range(PRODUCERS)]
        for producer in producers:
            producer.start()

        restarts: list[float] = []
        downtimes: list[float] = []
        kills_by_feeder = [0] * feeder_count
        try:
            while sum(kills_by_feeder) < kills:
                time.sleep(rng.uniform(0.3, 1.5))
                victim = rng.randrange(feeder_count)
                feeders[victim].kill9()
                kills_by_feeder[victim] += 1
                down = rng.uniform(0.0, 1.5)
                time.sleep(down)
                restarts.append(feeders[victim].start())
                downtimes.append(down + restarts[-1])
        finally:
            stop.set()
        for producer in producers:
            producer.join(timeout=90)
            assert not producer.is_alive(), f"{producer.name} is stuck"
        assert not [e for p in producers for e in p.errors], [p.errors for p in producers]
        chaos_seconds = time.monotonic() - started

        # No worker died, and after the chaos every one of them runs tasks again.
        assert all(w.alive() for w in workers.procs), "a worker died"
        probe_ids = every_worker_runs_again(target, workers, ledger, QUEUE, within=30)

        task_ids = sorted({t for p in producers for t in p.keys.values()} | set(probe_ids), key=int)
        keys = sum(len(p.keys) for p in producers) + len(probe_ids)
        with feeder_stub(feeders[0].target) as stub:
            wait_settled(stub, QUEUE, len(task_ids), within=90)
            result, _ = audit(stub, task_ids, ledger)
            stats = queue_stats(stub, QUEUE)
        # Every feeder reports the same counts (they are the database's).
        for feeder in feeders[1:]:
            with feeder_stub(feeder.target) as stub:
                assert queue_stats(stub, QUEUE) == stats
        # Measured, not assumed: worker processes that exited (none was restarted).
        workers_exited = sum(not w.alive() for w in workers.procs)
        elapsed = time.monotonic() - started

    record(
        key,
        {
            "seed": seed,
            "workers_language": command.language,
            "feeders": feeder_count,
            "kills": sum(kills_by_feeder),
            "kills_by_feeder": kills_by_feeder,
            "workers": WORKERS,
            "workers_exited": workers_exited,
            "tasks": len(task_ids),
            "distinct_keys": keys,
            "duplicates_created": stats.totals.submitted - keys,
            "submit_batches": sum(p.batches for p in producers),
            "submits_retried": sum(p.retried for p in producers),
            "lost_replies_recovered": sum(p.recovered for p in producers),
            "deliberate_resends": sum(p.resent for p in producers),
            "feeder_restart_s": summary(restarts),
            "feeder_down_s": summary(downtimes),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "chaos_seconds": round(chaos_seconds, 1),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    assert len(task_ids) == keys
    assert stats.totals.submitted == keys, (stats.totals.submitted, keys)
    assert stats.completed == keys
    assert sum(kills_by_feeder) >= kills
