"""Producers and workers of different languages on one feeder, held to the fault tests'
ledger audit: every task completed exactly once, nothing lost.

- a Python producer (feedwork.client.FeederClient) with Node.js workers (the SDK's
  feedwork-node-worker running tests/faults/handlers.js);
- a Node.js producer (tests/acceptance/produce.js: the SDK's FeederClient.submitMany) with
  `python -m worker` workers; its idempotency keys deduplicate across languages;
- Python and Node.js workers sharing one queue, one of each killed mid-task: a task whose
  lease expired under a worker of one language completes under the other.

Plus the Node CLI's handler loading (CommonJS and ES modules). Real processes on
127.0.0.1 (tests/faults/harness.py); a few seconds each. Tests that need Node.js fail,
they do not skip, when it cannot be built (the `node_sdk` fixture).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from feedwork.client import FeederClient
from feedwork.types import TaskSpec
from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import (
    FeederProc,
    WorkerCommand,
    WorkerPool,
    assert_clean,
    audit,
    child_env,
    feeder_stub,
    read_ledger,
    read_receipts,
    running,
    wait_for,
    wait_settled,
)
from tests.node_sdk import NodeSdk

PRODUCE = Path(__file__).with_name("produce.js")
LEASE = 3.0
TASKS = 240

pytestmark = pytest.mark.timeout(90)


def payloads(rng: random.Random, count: int) -> list[dict[str, Any]]:
    return [{"sleep": round(rng.uniform(0.0, 0.02), 3)} for _ in range(count)]


def node_submit(
    sdk: NodeSdk, target: str, queue: str, tasks: list[dict[str, Any]]
) -> dict[str, list[Any]]:
    """Runs produce.js: the Node SDK's submitMany of `tasks` ({"payload": ...,
    "idempotencyKey": ...}); its answer (task_ids, deduplicated, idempotency_keys)."""
    done = subprocess.run(
        [sdk.node, str(PRODUCE)],
        input=json.dumps({"target": target, "queue": queue, "tasks": tasks}),
        capture_output=True,
        text=True,
        env=child_env(FEEDWORK_NODE_SDK=str(sdk.index)),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, list[Any]] = json.loads(done.stdout)
    return answer


def completed_by(ledger: Path) -> dict[str, str]:
    """task id -> the worker whose ack completed it (by the ack ledgers)."""
    return {r.task_id: r.worker_id for r in read_receipts(ledger) if r.completed}


def test_python_producer_node_workers(tmp_path: Path, node_sdk: NodeSdk) -> None:
    rng = random.Random(1)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = WorkerPool(
        tmp_path,
        feeder.target,
        queue="mixed",
        ledger=ledger,
        concurrency=4,
        command=WorkerCommand.node(node_sdk),
        name="node",
    )
    with running(feeder, workers):
        feeder.start()
        workers.start(3)
        with FeederClient(feeder.target) as client:
            specs = [TaskSpec("mixed", payload=json.dumps(p)) for p in payloads(rng, TASKS)]
            # A few that fail every attempt: nacked by Node, DEAD after two.
            specs += [TaskSpec("mixed", payload='{"fail": true}', max_attempts=2)] * 4
            task_ids = [r.task_id for r in client.submit_many(specs)]
            failing = task_ids[-4:]
            waited = client.wait(task_ids[0], timeout=30)
        with feeder_stub(feeder.target) as stub:
            wait_settled(stub, "mixed", len(task_ids), within=60)
            result, tasks = audit(
                stub, task_ids, ledger, expect_for=dict.fromkeys(failing, pb.TASK_STATE_DEAD)
            )
        pids = {w.name: w.pid for w in workers.procs}
    assert_clean(result)
    assert result.completed == TASKS and result.dead == len(failing)
    # Every completion was a Node worker's, answered and written in its ack ledger.
    by = completed_by(ledger)
    assert result.acks_recorded == TASKS
    assert set(by.values()) <= set(pids), set(by.values())
    for task_id, worker in by.items():
        assert tasks[task_id].result == f"{pids[worker]} 1".encode()
    assert waited.result == tasks[task_ids[0]].result
    assert all(len(tasks[t].history) == 2 for t in failing)


def test_node_producer_python_workers(tmp_path: Path, node_sdk: NodeSdk) -> None:
    rng = random.Random(2)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = WorkerPool(tmp_path, feeder.target, queue="mixed", ledger=ledger, concurrency=4)
    with running(feeder, workers):
        feeder.start()
        workers.start(3)
        tasks_in = [
            {"payload": p, "idempotencyKey": f"node-{i}"}
            for i, p in enumerate(payloads(rng, TASKS))
        ]
        first = node_submit(node_sdk, feeder.target, "mixed", tasks_in)
        task_ids = first["task_ids"]
        assert len(set(task_ids)) == TASKS and not any(first["deduplicated"])
        assert first["idempotency_keys"] == [t["idempotencyKey"] for t in tasks_in]
        # The same keys again, from Node and from Python: the same tasks, nothing new.
        again = node_submit(node_sdk, feeder.target, "mixed", tasks_in)
        assert again["task_ids"] == task_ids and all(again["deduplicated"])
        with FeederClient(feeder.target) as client:
            python = client.submit_many(
                TaskSpec("mixed", payload=json.dumps(t["payload"]), idempotency_key=key)
                for t in tasks_in
                if (key := t["idempotencyKey"])
            )
        assert [r.task_id for r in python] == task_ids and all(r.deduplicated for r in python)
        # Keys the Node SDK made up itself (auto-...) are distinct and stay on the tasks.
        auto = node_submit(node_sdk, feeder.target, "mixed", [{"payload": {}}] * 3)
        assert len(set(auto["idempotency_keys"])) == 3
        assert all(k.startswith("auto-") for k in auto["idempotency_keys"])
        task_ids += auto["task_ids"]
        with feeder_stub(feeder.target) as stub:
            stats = wait_settled(stub, "mixed", len(task_ids), within=60)
            result, tasks = audit(stub, task_ids, ledger)
        names = {w.name for w in workers.procs}
    assert_clean(result)
    assert result.completed == len(task_ids) == TASKS + 3
    assert stats.totals.submitted == len(task_ids)
    assert set(completed_by(ledger).values()) <= names
    assert result.acks_recorded == len(task_ids)
    for task_id, key in zip(auto["task_ids"], auto["idempotency_keys"], strict=True):
        assert tasks[task_id].idempotency_key == key


def test_python_and_node_workers_share_a_queue_through_kills(
    tmp_path: Path, node_sdk: NodeSdk
) -> None:
    """Two pools on one queue and one ledger; the worker of each language that most
    recently started a task is killed once (and replaced). The tasks it held expire and
    complete under either language, once."""
    rng = random.Random(3)
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    common: dict[str, Any] = {"queue": "mixed", "ledger": ledger, "concurrency": 4}
    python = WorkerPool(tmp_path, feeder.target, **common, name="py")
    node = WorkerPool(
        tmp_path, feeder.target, **common, command=WorkerCommand.node(node_sdk), name="node"
    )
    with running(feeder, python, node):
        feeder.start()
        python.start(2)
        node.start(2)
        slow = [{"sleep": round(rng.uniform(0.2, 0.6), 3)} for _ in range(80)]
        with FeederClient(feeder.target) as client:
            specs = [TaskSpec("mixed", payload=json.dumps(p)) for p in slow]
            task_ids = [r.task_id for r in client.submit_many(specs)]
        killed: set[str] = set()
        for pool in (node, python):
            # The worker of this pool that most recently started a task: mid-task for sure.
            mine = {w.pid: w for w in pool.alive()}

            def busy(mine: dict[int, Any] = mine) -> Any:
                recent = [pid for _, _, pid in read_ledger(ledger)[-12:] if pid in mine]
                return mine[recent[-1]] if recent else None

            victim = wait_for(busy, within=20, what=f"a {pool.name} worker mid-task", every=0.02)
            killed.add(victim.name)
            pool.kill9(victim)
            time.sleep(0.3)
        with feeder_stub(feeder.target) as stub:
            wait_settled(stub, "mixed", len(task_ids), within=60)
            result, tasks = audit(stub, task_ids, ledger)
    assert_clean(result)
    assert result.completed == len(task_ids)
    expired = [
        (a.worker_id, task.task_id)
        for task in tasks.values()
        for a in task.history
        if a.outcome == pb.ATTEMPT_OUTCOME_EXPIRED
    ]
    assert expired, "no kill caught a worker mid-task"
    assert {w for w, _ in expired} <= killed
    # Both languages completed tasks, as the ack ledgers show.
    finishers = set(completed_by(ledger).values())
    assert any(w.startswith("py") for w in finishers), finishers
    assert any(w.startswith("node") for w in finishers), finishers


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("handler.js", "module.exports.work = async (task) => task.id;\n"),
        ("handler.mjs", "export async function work(task) { return task.id; }\n"),
    ],
    ids=["commonjs", "es-module"],
)
def test_node_cli_loads_commonjs_and_es_module_handlers(
    tmp_path: Path, node_sdk: NodeSdk, name: str, source: str
) -> None:
    """The module is loaded (the function it names missing is the only complaint); a
    missing file is named as missing. No feeder is needed: loading comes first."""
    handler = tmp_path / name
    handler.write_text(source)

    def cli(spec: str) -> subprocess.CompletedProcess[str]:
        argv = [node_sdk.node, str(node_sdk.cli), "--queue", "q", "--handler", spec]
        return subprocess.run(
            [*argv, "--target", "127.0.0.1:9"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
            check=False,
        )

    missing_export = cli(f"{handler}:nosuch")
    assert missing_export.returncode == 2, missing_export.stderr
    assert f'"nosuch" is not a function exported by {handler}' in missing_export.stderr
    missing_file = cli(f"{tmp_path / 'nosuch.js'}:work")
    assert missing_file.returncode == 2
    assert "Cannot find module" in missing_file.stderr
