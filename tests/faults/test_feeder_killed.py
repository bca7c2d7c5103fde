"""kill -9 the feeder at random moments while producers submit and 8 workers work.

Each kill is followed by a restart on the same database and port. Producers submit with
FeederClient, with their own idempotency keys, and retry a Submit that failed; now and then
they send a batch that succeeded again on purpose. In the end:

- every task whose Submit returned is COMPLETED (nothing lost), with exactly one ACKED
  attempt (nothing completed twice), and no lease was executed twice;
- every execution beyond a task's first was a redelivery the feeder counted;
- no worker held an ack past its lease: no lease of a task that ran (tasks take at most
  50 ms, leases 5 s) expired while its worker had other acks answered (a worker retrying
  an ack through a restart must send it as soon as it reaches a feeder again). A lease may
  still expire when its worker could reach no feeder for that long (kills in a row, and
  gRPC's reconnection backoff): counted as expired_after_running;
- the feeder created exactly one task per distinct idempotency key (stats == keys), and
  every key always mapped to the same task id;
- the workers were never restarted: after the last restart each of them leased and ran
  tasks again by itself.

The same run with Node.js workers (the SDK's feedwork-node-worker, tests/faults/handlers.js)
checks that SDK's reconnection to a feeder that came back on its address.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from feedwork.client import FeederClient
from feedwork.errors import DeadlineExceeded, Unavailable
from feedwork.types import TaskSpec
from tests.faults.harness import (
    FeederProc,
    WorkerCommand,
    WorkerPool,
    acks_held_past_lease,
    assert_clean,
    audit,
    check_duplicates_counted,
    every_worker_runs_again,
    expired_after_running,
    feeder_stub,
    queue_stats,
    record,
    running,
    scaled,
    summary,
    totals_figures,
    wait_settled,
)
from tests.node_sdk import NodeSdk

KILLS = scaled(10, 30)
NODE_KILLS = scaled(5, 30)  # the Node.js run, smaller in CI
WORKERS = 8
CONCURRENCY = 4
PRODUCERS = 2
BATCH = 10
LEASE = 5.0
QUEUE = "feeder-kills"

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(150, 600))]


class Producer(threading.Thread):
    """Submits batches with its own idempotency keys until told to stop; retries a batch
    until the feeder takes it. Every fifth batch is sent a second time on purpose."""

    def __init__(self, name: str, target: str, stop: threading.Event, seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.target = target
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.keys: dict[str, str] = {}  # idempotency key -> task id
        self.batches = 0
        self.retried = 0  # Submits that failed for good and were sent again
        self.recovered = 0  # first sends answered `deduplicated`: an earlier try got through
        self.resent = 0  # deliberate second sends
        self.errors: list[str] = []
        self.seq = 0

    def run(self) -> None:
        try:
            with FeederClient(self.target, timeout=3.0, max_retry_delay=5.0) as client:
                while not self.stop_event.is_set():
                    self.one_batch(client)
                    time.sleep(self.rng.uniform(0.0, 0.05))
        except Exception as exc:  # reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def one_batch(self, client: FeederClient) -> None:
        specs = []
        for _ in range(BATCH):
            payload = json.dumps({"sleep": round(self.rng.uniform(0.005, 0.05), 3)})
            specs.append(
                TaskSpec(QUEUE, payload=payload, idempotency_key=f"{self.name}-{self.seq}")
            )
            self.seq += 1
        results = self.submit(client, specs)
        self.batches += 1
        self.recovered += any(r.deduplicated for r in results)
        self.note(specs, results)
        if self.batches % 5 == 0:
            again = self.submit(client, specs)
            self.resent += 1
            if not all(r.deduplicated for r in again):
                self.errors.append(f"resent batch created tasks: {again}")
            self.note(specs, again)

    def submit(self, client: FeederClient, specs: list[TaskSpec]) -> list:  # type: ignore[type-arg]
        deadline = time.monotonic() + 60
        while True:
            try:
                return client.submit_many(specs)
            except (Unavailable, DeadlineExceeded):
                self.retried += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def note(self, specs: list[TaskSpec], results: list) -> None:  # type: ignore[type-arg]
        for spec, result in zip(specs, results, strict=True):
            assert spec.idempotency_key is not None
            known = self.keys.setdefault(spec.idempotency_key, result.task_id)
            if known != result.task_id:
                self.errors.append(f"key {spec.idempotency_key}: {known} then {result.task_id}")


def test_feeder_killed_at_random_moments(tmp_path: Path) -> None:
    kill_feeder_under_load(tmp_path, WorkerCommand.python(), key="feeder_killed", kills=KILLS)


def test_feeder_of_node_workers_killed_at_random_moments(tmp_path: Path, node_sdk: NodeSdk) -> None:
    kill_feeder_under_load(
        tmp_path, WorkerCommand.node(node_sdk), key="node_feeder_killed", kills=NODE_KILLS
    )


def kill_feeder_under_load(tmp_path: Path, command: WorkerCommand, *, key: str, kills: int) -> None:
    """The test, with workers that run `command`; its figures are recorded as `key`."""
    seed = int(os.environ.get("FEEDWORK_CHAOS_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = WorkerPool(
        tmp_path,
        feeder.target,
        queue=QUEUE,
        ledger=ledger,
        concurrency=CONCURRENCY,
        wait=2.0,
        command=command,
    )
    started = time.monotonic()
    with running(feeder, workers):
        feeder.start()
        workers.start(WORKERS)
        stop = threading.Event()
        producers = [Producer(f"p{i}", feeder.target, stop, seed + i) for i in range(PRODUCERS)]
        for producer in producers:
            producer.start()

        # The chaos: kill -9 at random moments, down for a random while, restart.
        restarts: list[float] = []
        downtimes: list[float] = []
        try:
            while feeder.kills < kills:
                time.sleep(rng.uniform(0.2, 1.2))
                feeder.kill9()
                down = rng.uniform(0.0, 0.5)
                time.sleep(down)
                restarts.append(feeder.start())
                downtimes.append(down + restarts[-1])
        finally:
            stop.set()
        for producer in producers:
            producer.join(timeout=90)
            assert not producer.is_alive(), f"{producer.name} is stuck"
        assert not [e for p in producers for e in p.errors], [p.errors for p in producers]
        chaos_seconds = time.monotonic() - started

        # The workers reconnect by themselves: after the last restart, every one of them
        # runs tasks again (none was restarted by us).
        assert all(w.alive() for w in workers.procs), "a worker died"
        probe_ids = every_worker_runs_again(feeder.target, workers, ledger, QUEUE, within=30)

        task_ids = sorted({t for p in producers for t in p.keys.values()} | set(probe_ids), key=int)
        keys = sum(len(p.keys) for p in producers) + len(probe_ids)
        with feeder_stub(feeder.target) as stub:
            stats = wait_settled(stub, QUEUE, len(task_ids), within=60)
            result, tasks = audit(stub, task_ids, ledger)
            stats = queue_stats(stub, QUEUE)
        held = acks_held_past_lease(tasks.values(), ledger)
        ran_and_expired = len(expired_after_running(tasks.values(), ledger))
        # Measured, not assumed: worker processes that exited (none was restarted).
        workers_exited = sum(not w.alive() for w in workers.procs)
        elapsed = time.monotonic() - started

    record(
        key,
        {
            "seed": seed,
            "workers_language": command.language,
            "kills": feeder.kills,
            "workers": WORKERS,
            "workers_exited": workers_exited,
            "tasks": len(task_ids),
            "distinct_keys": keys,
            "submit_batches": sum(p.batches for p in producers),
            "submits_retried": sum(p.retried for p in producers),
            "lost_replies_recovered": sum(p.recovered for p in producers),
            "deliberate_resends": sum(p.resent for p in producers),
            "feeder_restart_s": summary(restarts),
            "feeder_down_s": summary(downtimes),
            **result.figures(),
            "expired_after_running": ran_and_expired,
            "acks_held_past_lease": len(held),
            "feeder_totals": totals_figures(stats.totals),
            "chaos_seconds": round(chaos_seconds, 1),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    assert not held, f"{len(held)} acks held past their leases: {held[:10]}"
    # One task per distinct key: retried and resent Submits created nothing.
    assert len(task_ids) == keys
    assert stats.totals.submitted == keys, (stats.totals.submitted, keys)
    assert stats.completed == keys
    assert feeder.kills >= kills
