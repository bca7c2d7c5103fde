"""The `feedwork` command as a user runs it: real processes, loopback only.

`feedwork demo` starts its own feeder and workers; the other tests start a feeder with
`feedwork feeder` (and a worker with `feedwork worker`) and drive it with the CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The installed console script when there is one (`make venv`), else the module.
_SCRIPT = Path(sys.executable).with_name("feedwork")
FEEDWORK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "feedwork.cli"]
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")},
    "PYTHONPATH": str(ROOT),
}

# What `feedwork demo` prints per worker, and the feeder's counters.
WORKER_LINE = re.compile(r"^worker (w\d\d) \(pid \d+\): +(\d+) tasks, slept +[\d.]+ s(.*)$", re.M)
FEEDER_LINE = re.compile(r"^feeder: expired \d+, redelivered \d+, duplicate acks dropped \d+", re.M)


def feedwork(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FEEDWORK, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )


class Background:
    """A `feedwork` subcommand left running (a feeder or a worker), stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*FEEDWORK, *args], stdout=out, stderr=subprocess.STDOUT, env=ENV
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def feeder(tmp_path: Path) -> Iterator[str]:
    """A feeder started with `feedwork feeder`; yields its address."""
    port_file = tmp_path / "port"
    process = Background(
        [
            "feeder",
            "--listen", "127.0.0.1:0",
            "--port-file", str(port_file),
            "--db", str(tmp_path / "feedwork.db"),
            "--log-level", "warning",
        ],
        tmp_path / "feeder.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.process.poll() is None, process.log.read_text()
            assert time.monotonic() < deadline, "the feeder wrote no port in 30 s"
            time.sleep(0.05)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        process.stop()


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_demo_completes_every_task_exactly_once_despite_a_killed_worker() -> None:
    run = feedwork(
        "demo", "--iterations", "200", "--workers", "4", "--kill-workers", "1", "--seed", "7",
        timeout=110,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout + run.stderr
    assert "ledger: 200 tasks, 200 completed exactly once, 0 lost, 0 completed twice" in run.stdout
    # Counted from the workers' side: their ack ledgers confirm (nearly) every completion
    # (a killed worker may have been told of a few it could not write down).
    confirmed = re.search(r"\((\d+)\s+confirmed\s+by\s+the\s+workers'", run.stdout)
    assert confirmed and int(confirmed.group(1)) >= 190, run.stdout
    workers = WORKER_LINE.findall(run.stdout)
    assert [name for name, _, _ in workers] == ["w01", "w02", "w03", "w04"]
    assert sum(int(tasks) for _, tasks, _ in workers) == 200
    assert [name for name, _, note in workers if "killed" in note] == ["w01"]
    assert re.search(r"^throughput: 200 tasks in [\d.]+ s", run.stdout, re.M)
    assert FEEDER_LINE.search(run.stdout)


def test_submit_file_then_stats_and_status(feeder: str, tmp_path: Path) -> None:
    tasks = tmp_path / "x.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps(record)
            for record in [
                {"queue": "mail", "payload": "hello", "headers": {"trace": "t1"}, "priority": 5},
                {"queue": "mail", "payload": {"to": "ana"}, "idempotency_key": "mail-2"},
                {"queue": "mail", "payload": "again", "idempotency_key": "mail-2"},
                {"queue": "img", "payload_b64": "AAEC", "delay": 300},
            ]
        )
        + "\n"
    )

    submit = feedwork("submit", "--file", str(tasks), "--json", "--target", feeder)
    assert submit.returncode == 0, submit.stderr
    results = json_lines(submit.stdout)
    assert [r["deduplicated"] for r in results] == [False, False, True, False]
    assert results[2]["task_id"] == results[1]["task_id"]
    assert [r["state"] for r in results] == ["READY", "READY", "READY", "SCHEDULED"]
    assert "submitted 4 tasks (1 deduplicated)" in submit.stderr

    stats = feedwork("stats", "--json", "--target", feeder)
    assert stats.returncode == 0, stats.stderr
    queues = {q["queue"]: q for q in json.loads(stats.stdout)["queues"]}
    assert queues["mail"]["ready"] == 2
    assert queues["mail"]["totals"]["submitted"] == 2
    assert queues["img"]["scheduled"] == 1

    status = feedwork("status", str(results[0]["task_id"]), "--json", "--target", feeder)
    assert status.returncode == 0, status.stderr
    task = json.loads(status.stdout)
    assert task["queue"] == "mail"
    assert task["state"] == "READY"
    assert task["payload"] == "hello"
    assert task["headers"] == {"trace": "t1"}
    assert task["priority"] == 5

    status = feedwork("status", str(results[1]["task_id"]), "--json", "--target", feeder)
    assert json.loads(status.stdout)["payload"] == '{"to":"ana"}'


def test_submit_from_stdin_and_wait_for_a_worker(feeder: str, tmp_path: Path) -> None:
    submit = feedwork(
        "submit", "--file", "-", "--queue", "work", "--json", "--target", feeder,
        stdin='{"payload": {"sleep_ms": 10}}\n',
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    (result,) = json_lines(submit.stdout)
    task_id = str(result["task_id"])

    worker = Background(
        [
            "worker",
            "--target", feeder,
            "--queue", "work",
            "--handler", "feedwork.demo:sleep_handler",
            "--worker-id", "cli-test",
        ],
        tmp_path / "worker.log",
    )  # fmt: skip
    try:
        status = feedwork("status", task_id, "--wait", "30", "--json", "--target", feeder)
    finally:
        worker.stop()

    assert status.returncode == 0, status.stderr + worker.log.read_text()
    task = json.loads(status.stdout)
    assert task["state"] == "COMPLETED"
    assert json.loads(task["result"])["sleep_ms"] == 10
    assert [(a["worker_id"], a["outcome"]) for a in task["history"]] == [("cli-test", "ACKED")]

    cancel = feedwork("cancel", task_id, "--json", "--target", feeder)
    assert cancel.returncode == 0, cancel.stderr
    assert json.loads(cancel.stdout)["outcome"] == "ALREADY_COMPLETED"


def test_exit_codes(feeder: str) -> None:
    assert feedwork("--help").returncode == 0
    assert feedwork("dead", "purge", "--help").returncode == 0
    assert feedwork("submit", "--target", feeder).returncode == 2  # no --queue
    assert feedwork("dead", "purge", "q", "--target", feeder).returncode == 2  # no --yes
    assert feedwork("frobnicate").returncode == 2

    missing = feedwork("status", "987654", "--target", feeder)
    assert missing.returncode == 3
    assert "NOT_FOUND" in missing.stderr

    invalid = feedwork("submit", "--queue", "no spaces allowed", "x", "--target", feeder)
    assert invalid.returncode == 1
    assert "INVALID_ARGUMENT" in invalid.stderr
    assert "queue" in invalid.stderr


def test_unreachable_feeder_fails_fast_with_exit_1() -> None:
    run = feedwork("stats", "--target", "127.0.0.1:1", "--retry-for", "0.5", timeout=30)
    assert run.returncode == 1
    assert "UNAVAILABLE" in run.stderr
