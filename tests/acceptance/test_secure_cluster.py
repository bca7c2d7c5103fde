"""The processes as a user runs them with TLS and keys (docs/SECURITY.md): certificates and
keys from `feedwork dev-certs --keys`, a feeder with --tls-cert, --tls-key and
--auth-file, a worker and the CLI with FEEDWORK_TLS_CA and a key file each; and the feeder
that refuses to serve in clear text on every interface."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_feeder_crash import ROOT, FeederProcess
from tests.processes import die_with_parent

pytestmark = pytest.mark.timeout(180)
TASKS = 20


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        die_with_parent(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def base_env(**feedwork: str) -> dict[str, str]:
    """This environment without FEEDWORK_* variables, but those given (`TLS_CA="..."`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    given = {f"FEEDWORK_{name}": value for name, value in feedwork.items() if value}
    return {**env, "PYTHONPATH": str(ROOT), **given}


def test_feeder_refuses_every_interface_in_clear_text(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "feeder", "--listen", "0.0.0.0:0", "--db", ":memory:"]
    refused = run(argv, base_env(), tmp_path)
    assert refused.returncode == 1, refused.stderr
    assert "refusing to listen on 0.0.0.0:0 without TLS" in refused.stderr
    assert "--insecure" in refused.stderr and "Traceback" not in refused.stderr
    insecure = FeederProcess(tmp_path / "f.db", tmp_path, ["--listen", "0.0.0.0:0", "--insecure"])
    insecure.start()  # starts (and would raise if it exited)
    insecure.stop()


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    made = run(
        [sys.executable, "-m", "feedwork.cli", "dev-certs", "--out", str(out), "--keys"],
        base_env(),
        tmp_path,
    )
    assert made.returncode == 0, made.stderr
    return out


def secure_args(certs: Path, audit_log: Path) -> list[str]:
    return [
        "--tls-cert", str(certs / "feeder.pem"),
        "--tls-key", str(certs / "feeder-key.pem"),
        "--auth-file", str(certs / "auth.txt"),
        "--audit-log", str(audit_log),
    ]  # fmt: skip


@pytest.fixture
def secure_feeder(tmp_path: Path, certs: Path) -> Iterator[FeederProcess]:
    args = secure_args(certs, tmp_path / "audit.log")
    process = FeederProcess(tmp_path / "feedwork.db", tmp_path, args)
    process.start()
    process.target = process.target.replace("127.0.0.1", "localhost")
    try:
        yield process
    finally:
        process.stop()


def client_env(role: str, certs: Path, server_name: str) -> dict[str, str]:
    return base_env(
        TLS_CA=str(certs / "ca.pem"),
        API_KEY_FILE=str(certs / f"{role}.key"),
        TLS_SERVER_NAME=server_name,
    )


def test_a_worker_and_the_cli_with_tls_and_role_keys(
    secure_feeder: FeederProcess, certs: Path, tmp_path: Path
) -> None:
    run_workload(secure_feeder.target, certs, tmp_path)


def test_a_cluster_on_postgresql_with_tls_and_role_keys(
    certs: Path, tmp_path: Path, postgres_dsn: str
) -> None:
    """Two feeders on one PostgreSQL database, each with TLS and the access list; the
    clients are given both (and the name their certificate shares)."""
    feeders = []
    try:
        for name in ("one", "two"):
            workdir = tmp_path / name
            workdir.mkdir()
            feeder = FeederProcess(postgres_dsn, workdir, secure_args(certs, workdir / "audit"))
            feeder.start()
            feeders.append(feeder)
        target = ",".join(f.target for f in feeders)
        run_workload(target, certs, tmp_path, server_name="localhost")
    finally:
        for feeder in feeders:
            feeder.stop()


def run_workload(target_text: str, certs: Path, tmp_path: Path, server_name: str = "") -> None:
    """The producer submits, a worker drains, the admin watches; each with its own key,
    and the calls a role may not make are refused."""
    target = ["--target", target_text]

    def cli(role: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = client_env(role, certs, server_name)
        return run([sys.executable, "-m", "feedwork.cli", *args], env, tmp_path)

    health = run(
        [
            sys.executable,
            "-m",
            "feedwork.healthcheck",
            "--tls-ca",
            str(certs / "ca.pem"),
            *(["--tls-server-name", server_name] if server_name else []),
            target_text,
        ],
        base_env(),
        tmp_path,
    )
    assert health.returncode == 0, health.stderr
    submitted = cli("producer", "submit", *target, "-q", "demo", '{"sleep_ms": 1}')
    assert submitted.returncode == 0, submitted.stderr
    tasks = tmp_path / "tasks.jsonl"
    line = '{"queue": "demo", "payload": {"sleep_ms": 1}}\n'
    tasks.write_text(line * (TASKS - 1))
    submitted = cli("producer", "submit", *target, "--file", str(tasks))
    assert submitted.returncode == 0, submitted.stderr
    denied = cli("worker", "submit", *target, "-q", "demo", "{}")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr, denied.stderr
    refused = cli("producer", "stats", *target)
    assert refused.returncode != 0 and "admin role" in refused.stderr, refused.stderr

    worker_env = client_env("worker", certs, server_name)
    worker = subprocess.Popen(
        die_with_parent([
            sys.executable, "-m", "worker", *target, "--queue", "demo",
            "--handler", "feedwork.demo:sleep_handler", "--concurrency", "4",
        ]),
        cwd=tmp_path, env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = cli("admin", "stats", *target, "--json")
            assert stats.returncode == 0, stats.stderr
            if json.loads(stats.stdout)["totals"]["completed"] == TASKS:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"not all tasks completed: {stats.stdout}")
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
