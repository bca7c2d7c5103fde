"""kill -9 workers mid-task; their tasks come back when the leases expire and complete.

Tasks are shorter than two thirds of the lease, so no lease is ever extended and each
attempt's deadline is exactly leased_at + lease duration. From the attempt history of
every task the test measures, per EXPIRED attempt:

- lateness: ended_at minus the deadline (how promptly the feeder expires a lease; never
  negative: a lease is never taken away early);
- redelivery delay: the next attempt's leased_at minus the deadline (lateness plus the time
  until a free worker leased it).

Producers submit at well under the workers' capacity, so a redelivered task does not wait
behind a backlog. Each killed worker is replaced by a fresh process, as a process manager
would do; every EXPIRED attempt must belong to a killed worker.

The same run with Node.js workers (the SDK's feedwork-node-worker and tests/faults/
handlers.js): the promises do not depend on the worker's language.
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
    WorkerCommand,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    expiries,
    feeder_stub,
    queue_stats,
    read_ledger,
    record,
    running,
    scaled,
    submit,
    summary,
    totals_figures,
    wait_settled,
)
from tests.node_sdk import NodeSdk

QUEUE = "worker-kills"
LEASE = 3.0
WORKERS = 6
CONCURRENCY = 4
TASKS = scaled(160, 1200)
KILLS = scaled(8, 40)
# The Node.js run, smaller in CI (one size at full size).
NODE_TASKS = scaled(96, 1200)
NODE_KILLS = scaled(5, 40)
RATE = 16.0  # tasks per second; capacity is about 24 slots / 0.75 s = 32 per second

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(120, 600))]


def test_killed_workers_tasks_are_redelivered_after_lease_expiry(tmp_path: Path) -> None:
    kill_workers_under_load(
        tmp_path, WorkerCommand.python(), key="workers_killed", tasks=TASKS, kills=KILLS
    )


def test_killed_node_workers_tasks_are_redelivered_after_lease_expiry(
    tmp_path: Path, node_sdk: NodeSdk
) -> None:
    kill_workers_under_load(
        tmp_path,
        WorkerCommand.node(node_sdk),
        key="node_workers_killed",
        tasks=NODE_TASKS,
        kills=NODE_KILLS,
    )


def kill_workers_under_load(
    tmp_path: Path, command: WorkerCommand, *, key: str, tasks: int, kills: int
) -> None:
    """The test, with workers that run `command`; its figures are recorded as `key`."""
    seed = time.time_ns() % 1_000_000
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
    task_ids: list[str] = []
    killed_names: set[str] = set()
    errors: list[BaseException] = []
    with running(feeder, workers):
        feeder.start()
        workers.start(WORKERS)
        # Kills are timed from now on: every worker must be up (a loaded machine once took
        # 6 s to start Node workers, and every kill hit a worker still starting).
        workers.wait_started()
        with feeder_stub(feeder.target) as stub:

            def produce() -> None:
                try:
                    batch = 4
                    for _ in range(0, tasks, batch):
                        payloads = [
                            {"sleep": round(rng.uniform(0.3, 1.2), 3), "ignore_cancel": True}
                            for _ in range(batch)
                        ]
                        task_ids.extend(submit(stub, QUEUE, payloads))
                        time.sleep(batch / RATE)
                except BaseException as exc:
                    errors.append(exc)

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            span = tasks / RATE
            time.sleep(1.0)
            for _ in range(kills):
                time.sleep(rng.uniform(0.5, 1.5) * (span - 1.0) / kills)
                # The worker that most recently started a task: it is mid-task for sure.
                pids = {w.pid: w for w in workers.alive()}
                recent = [pid for _, _, pid in read_ledger(ledger)[-20:] if pid in pids]
                victim = pids[recent[-1]] if recent else rng.choice(list(pids.values()))
                killed_names.add(victim.name)
                workers.kill9(victim)
            producer.join(timeout=120)
            assert not errors, errors
            wait_settled(stub, QUEUE, len(task_ids), within=60)
            result, tasks = audit(stub, task_ids, ledger)
            stats = queue_stats(stub, QUEUE)
    elapsed = time.monotonic() - started

    found = expiries(tasks.values(), LEASE)
    late = [e.lateness for e in found]
    delays = [d for e in found if (d := e.redelivery_delay) is not None]
    record(
        key,
        {
            "seed": seed,
            "workers_language": command.language,
            "kills": workers.kills,
            "workers": WORKERS,
            "lease_s": LEASE,
            "tasks": len(task_ids),
            **result.figures(),
            "expired_attempts": len(found),
            "expiry_lateness_s": summary(late),
            "redelivery_delay_after_deadline_s": summary(delays),
            "feeder_totals": totals_figures(stats.totals),
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)
    assert found, "no kill caught a worker mid-task"
    assert stats.totals.expired == len(found)
    assert len(delays) == len(found), "an expired task was never leased again"
    # Never taken away early (5 ms for float rounding of the stored times).
    assert min(late) >= -0.005, sorted(late)[:5]
    # The feeder expires a lease promptly, and an idle worker gets it at once.
    assert max(late) < 2.0, sorted(late)[-5:]
    assert max(delays) < 2 * LEASE, sorted(delays)[-5:]
    # Every expiry is explained by a kill: the attempt belonged to a killed worker.
    for task in tasks.values():
        for attempt in task.history:
            if attempt.outcome == pb.ATTEMPT_OUTCOME_EXPIRED:
                assert attempt.worker_id in killed_names, (task.task_id, attempt.worker_id)
