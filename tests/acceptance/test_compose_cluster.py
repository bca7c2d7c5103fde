"""The compose file's cluster profile, run as local processes on loopback.

Every service of the `cluster` profile is started as docker-compose.yml defines it: its
command, its environment, its replicas, in the order its `depends_on` gives, each one
started once its dependencies' healthchecks (the file's own `test` commands) pass. What a
container would change is changed the way docker/compose.host.yml does it: service names
resolve to 127.0.0.1 and servers listen on 127.0.0.1. The one service not run is
`postgres` itself: the machine's PostgreSQL stands in for it, with a database of this
test's own. (`make docker-cluster` runs the same file on a real Docker engine.)

Then: tasks are submitted to all three feeders, one feeder is killed with SIGKILL while
the workers work, and every task completes exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from feedwork.client import FeederClient
from feedwork.types import TaskSpec
from tests.faults.harness import free_port
from tests.processes import die_with_parent

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROFILE = "cluster"
TASKS = 400
WORKERS = 4  # --scale cluster-worker=4
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR} and ${VAR:-default}, through lists and mappings."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m[1]) or (m[2] or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def cluster_services(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE.read_text())
    services = interpolate(document["services"], env)
    return {name: s for name, s in services.items() if PROFILE in s.get("profiles", [])}


def start_order(services: Mapping[str, dict[str, Any]]) -> list[str]:
    """Services in an order that starts each after what it depends on."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {(*path, name)}"
        if name in order:
            return
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*path, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


class Local:
    """How a service's command runs here: python is this interpreter, names are 127.0.0.1,
    servers listen on 127.0.0.1, and the database URL is the test's own database."""

    def __init__(self, names: list[str], database: str) -> None:
        self.names = names
        self.database = database

    def arg(self, arg: str) -> str:
        if arg.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(arg)
            assert parts.hostname == "postgres", (
                f"a database URL not on the postgres service: {arg}"
            )
            return self.database
        arg = arg.replace("0.0.0.0:", "127.0.0.1:")
        for name in self.names:
            arg = re.sub(rf"(?<![\w.-]){re.escape(name)}:(?=\d)", "127.0.0.1:", arg)
        return arg

    def command(self, command: list[str]) -> list[str]:
        args = [self.arg(a) for a in command]
        if args and args[0] == "python":
            args[0] = sys.executable
        return args


def healthy(service: dict[str, Any], local: Local, env: dict[str, str]) -> bool:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", test
    result = subprocess.run(
        local.command(test[1:]), env=env, capture_output=True, timeout=10, cwd=ROOT
    )
    return result.returncode == 0


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_the_cluster_profile_runs_and_loses_nothing_when_a_feeder_dies(
    processes: list[subprocess.Popen[bytes]], postgres_dsn: str, tmp_path: Path
) -> None:
    ports = {
        "FEEDWORK_FEEDER_1_PORT": str(free_port()),
        "FEEDWORK_FEEDER_2_PORT": str(free_port()),
        "FEEDWORK_FEEDER_3_PORT": str(free_port()),
    }
    services = cluster_services(ports)
    assert {"postgres", "feeder-1", "feeder-2", "feeder-3"} <= set(services)
    local = Local(list(services), postgres_dsn)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    base_env["PYTHONPATH"] = str(ROOT)
    by_service: dict[str, list[subprocess.Popen[bytes]]] = {}
    for name in start_order(services):
        service = services[name]
        if name == "postgres":
            continue  # the machine's PostgreSQL, a database of this test's own
        for dependency, condition in service.get("depends_on", {}).items():
            if dependency == "postgres":
                continue
            if condition.get("condition") == "service_healthy":
                deadline = time.monotonic() + 30
                while not healthy(services[dependency], local, base_env):
                    assert time.monotonic() < deadline, f"{dependency} never became healthy"
                    time.sleep(0.2)
        env = {**base_env, **{k: str(v) for k, v in (service.get("environment") or {}).items()}}
        replicas = (
            WORKERS if name == "cluster-worker" else service.get("deploy", {}).get("replicas", 1)
        )
        for replica in range(replicas):
            log = open(tmp_path / f"{name}-{replica}.log", "wb")  # noqa: SIM115 - the process's
            process = subprocess.Popen(
                die_with_parent(local.command(service["command"])),
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            processes.append(process)
            by_service.setdefault(name, []).append(process)
    assert len(by_service["cluster-worker"]) == WORKERS
    feeders = ",".join(f"127.0.0.1:{ports[f'FEEDWORK_FEEDER_{i}_PORT']}" for i in (1, 2, 3))

    with FeederClient(feeders, timeout=5) as client:
        submitted = client.submit_many(
            TaskSpec("demo", payload=f'{{"sleep_ms": {5 + i % 20}}}') for i in range(TASKS)
        )
        ids = [s.task_id for s in submitted]

        def completed() -> int:
            return client.stats(["demo"]).queue("demo").completed

        deadline = time.monotonic() + 60
        while completed() < TASKS // 3:
            assert time.monotonic() < deadline, "the workers do not work"
            time.sleep(0.05)
        victim = by_service["feeder-2"][0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        while completed() < TASKS:
            assert time.monotonic() < deadline + 60, (
                f"{completed()} of {TASKS} completed:\n"
                + (tmp_path / "cluster-worker-0.log").read_text()[-3000:]
            )
            time.sleep(0.1)
        stats = client.stats(["demo"]).queue("demo")
        tasks = [client.get(task_id) for task_id in ids]

    assert all(w.poll() is None for w in by_service["cluster-worker"]), "a worker died"
    assert stats.totals.submitted == TASKS and stats.completed == TASKS
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 0)
    # Exactly once: every task has one ACKED attempt.
    acked = [sum(a.outcome == "ACKED" for a in task.history) for task in tasks]
    assert acked == [1] * TASKS
    assert {task.state for task in tasks} == {"COMPLETED"}
