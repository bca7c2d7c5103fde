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


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    return {**env, "PYTHONPATH": str(ROOT)}


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


@pytest.fixture
def secure_feeder(tmp_path: Path, certs: Path) -> Iterator[FeederProcess]:
    args = [
        "--tls-cert", str(certs / "feeder.pem"),
        "--tls-key", str(certs / "feeder-key.pem"),
        "--auth-file", str(certs / "auth.txt"),
        "--audit-log", str(tmp_path / "audit.log"),
    ]  # fmt: skip
    process = FeederProcess(tmp_path / "feedwork.db", tmp_path, args)
    process.start()
    process.target = process.target.replace("127.0.0.1", "localhost")
    try:
        yield process
    finally:
        process.stop()


def cli(role: str, certs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **base_env(),
        "FEEDWORK_TLS_CA": str(certs / "ca.pem"),
        "FEEDWORK_API_KEY_FILE": str(certs / f"{role}.key"),
    }
    return run([sys.executable, "-m", "feedwork.cli", *args], env, certs.parent)


def test_a_worker_and_the_cli_with_tls_and_role_keys(
    secure_feeder: FeederProcess, certs: Path, tmp_path: Path
) -> None:
    target = ["--target", secure_feeder.target]
    health = run(
        [
            sys.executable,
            "-m",
            "feedwork.healthcheck",
            "--tls-ca",
            str(certs / "ca.pem"),
            secure_feeder.target,
        ],
        base_env(),
        tmp_path,
    )
    assert health.returncode == 0, health.stderr
    submitted = cli("producer", certs, "submit", *target, "-q", "demo", '{"sleep_ms": 1}')
    assert submitted.returncode == 0, submitted.stderr
    tasks = tmp_path / "tasks.jsonl"
    line = '{"queue": "demo", "payload": {"sleep_ms": 1}}\n'
    tasks.write_text(line * (TASKS - 1))
    submitted = cli("producer", certs, "submit", *target, "--file", str(tasks))
    assert submitted.returncode == 0, submitted.stderr
    denied = cli("worker", certs, "submit", *target, "-q", "demo", "{}")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr, denied.stderr
    refused = cli("producer", certs, "stats", *target)
    assert refused.returncode != 0 and "admin role" in refused.stderr, refused.stderr

    worker_env = {
        **base_env(),
        "FEEDWORK_TLS_CA": str(certs / "ca.pem"),
        "FEEDWORK_API_KEY_FILE": str(certs / "worker.key"),
    }
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
            stats = cli("admin", certs, "stats", *target, "--json")
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
