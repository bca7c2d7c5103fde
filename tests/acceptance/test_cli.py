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
    assert cancel.returncode == 4, cancel.stderr  # a completed task cannot be cancelled
    assert json.loads(cancel.stdout)["outcome"] == "ALREADY_COMPLETED"
    assert f"task {task_id} had completed: not cancelled" in cancel.stderr


def test_exit_codes(feeder: str) -> None:
    assert feedwork("--help").returncode == 0
    assert feedwork("dead", "purge", "--help").returncode == 0
    assert feedwork("submit", "--target", feeder).returncode == 2  # no --queue
    assert feedwork("dead", "purge", "q", "--target", feeder).returncode == 2  # no --yes
    assert feedwork("frobnicate").returncode == 2

    missing = feedwork("status", "987654", "--target", feeder)
    assert missing.returncode == 3
    assert "NOT_FOUND" in missing.stderr

    # Refused by the feeder as INVALID_ARGUMENT: a usage error like any other (before: 1).
    invalid = feedwork("submit", "--queue", "no spaces allowed", "x", "--target", feeder)
    assert invalid.returncode == 2
    assert "INVALID_ARGUMENT" in invalid.stderr
    assert "queue" in invalid.stderr

    version = feedwork("--version")
    assert version.returncode == 0
    assert re.fullmatch(r"feedwork \d+\.\d+\.\d+\S*\n", version.stdout)

    # A typo in a queue name says so (before: an empty table, exit 0).
    task_id = feedwork("submit", "--queue", "emails", "x", "--target", feeder).stdout.strip()
    assert feedwork("stats", "--queue", "emails", "--target", feeder).returncode == 0
    typo = feedwork("stats", "--queue", "emials", "--target", feeder)
    assert typo.returncode == 3
    assert "no queue 'emials' on the feeder" in typo.stderr
    assert feedwork("dead", "list", "emials", "--target", feeder).returncode == 3
    assert feedwork("dead", "list", "emails", "--target", feeder).returncode == 0  # none dead

    # Redriving or purging tasks that are not dead tasks of the queue (before: exit 0).
    for action in (["redrive"], ["purge", "--yes"]):
        for task in ("987654", task_id):  # no such task; a READY one
            run = feedwork("dead", *action, "emails", "--task-id", task, "--target", feeder)
            assert run.returncode == 3, run.stderr
            assert "1 of the 1 tasks given are not dead tasks of queue 'emails'" in run.stderr
    assert feedwork("dead", "redrive", "emails", "--target", feeder).returncode == 0


def test_durations_as_the_feeder_takes_them(feeder: str) -> None:
    # Before: "--delay: not a number: '1h'", though the feeder's own options take 1h.
    run = feedwork("submit", "-q", "later", "--delay", "1h", "--json", "x", "--target", feeder)
    assert run.returncode == 0, run.stderr
    task = json.loads(feedwork("status", json.loads(run.stdout)["task_id"], "--json",
                               "--target", feeder).stdout)  # fmt: skip
    assert task["state"] == "SCHEDULED"
    bad = feedwork("submit", "-q", "later", "--delay", "1 hour", "x", "--target", feeder)
    assert bad.returncode == 2
    assert "invalid duration '1 hour'" in bad.stderr


def test_a_file_that_is_not_utf8_is_refused_by_line(feeder: str, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"queue": "q", "payload": "ok"}\n{"queue": "q", "payload": "caf\xe9"}\n')
    run = feedwork("submit", "--file", str(latin1), "--target", feeder)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"{latin1}: line 2: not UTF-8 text (byte 31 is 0xe9)" in run.stderr
    assert "nothing was submitted" in run.stderr


def test_a_closed_pipe_ends_output_quietly(feeder: str, tmp_path: Path) -> None:
    # `| head -c 1`: the reader goes away after one byte of output much larger than a
    # pipe holds; the CLI stops without a word (before: a BrokenPipeError traceback).
    many = tmp_path / "many.jsonl"
    many.write_text("".join(f'{{"queue": "q", "payload": "{n}"}}\n' for n in range(5000)))
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"queue": "q", "payload": "word " * 2**17}))
    big = feedwork("submit", "--file", str(one), "--target", feeder)
    assert big.returncode == 0, big.stderr
    task_id = big.stdout.strip()
    for args in (
        ["submit", "--file", str(many), "--json"],
        ["status", task_id, "--json"],
        ["status", task_id],
    ):
        pipeline = subprocess.run(
            f"{' '.join(FEEDWORK)} {' '.join(args)} --target {feeder} | head -c 1 >/dev/null;"
            " echo ${PIPESTATUS[0]}",
            shell=True, executable="/bin/bash", capture_output=True, text=True, env=ENV,
            timeout=60,
        )  # fmt: skip
        assert "Traceback" not in pipeline.stderr
        assert "Exception ignored" not in pipeline.stderr
        # 141 (128 + SIGPIPE, as for a program the signal ended) when the CLI saw the pipe
        # close; 0 when its last write had gone into the pipe before that.
        assert pipeline.stdout.strip() in ("141", "0"), (args, pipeline.stderr)


def test_status_shows_task_strings_as_text(feeder: str) -> None:
    hostile = "[/bold] [link=https://evil.example]x[/link] \x1b[2J\x1b]8;;https://e\x07y"
    submit = feedwork(
        "submit", "-q", "q", "-H", f"h={hostile}", "--idempotency-key", hostile, hostile,
        "--json", "--target", feeder,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    status = feedwork("status", json.loads(submit.stdout)["task_id"], "--target", feeder)
    # Before: rich.errors.MarkupError on "[/bold]", a traceback and exit 1.
    assert status.returncode == 0, status.stderr
    assert "[/bold] [link=https://evil.example]x[/link] \\x1b[2J\\x1b]8;;https://e\\x07y" in (
        status.stdout
    )
    assert "\x1b" not in status.stdout and "\x07" not in status.stdout


def test_unreachable_feeder_fails_fast_with_exit_1() -> None:
    run = feedwork("stats", "--target", "127.0.0.1:1", "--retry-for", "0.5", timeout=30)
    assert run.returncode == 1
    assert "UNAVAILABLE" in run.stderr


def stats_json(feeder: str) -> dict[str, dict[str, object]]:
    stats = feedwork("stats", "--json", "--target", feeder)
    return {q["queue"]: q for q in json.loads(stats.stdout)["queues"]}


def test_submit_a_file_of_more_than_a_message(feeder: str, tmp_path: Path) -> None:
    # Twelve payloads of 1 MiB, each within the feeder's limit, 12 MiB in all: more than
    # a gRPC message may hold (before: "Received message larger than max", nothing sent).
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(json.dumps({"queue": "big", "payload": chr(97 + n) * 2**20}) + "\n"
                for n in range(12))
    )  # fmt: skip
    run = feedwork("submit", "--file", str(big), "--target", feeder)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.split()) == 12
    assert "submitted 12 tasks (0 deduplicated)" in run.stderr
    assert stats_json(feeder)["big"]["ready"] == 12


def test_a_bad_line_is_named_and_nothing_is_submitted(feeder: str, tmp_path: Path) -> None:
    lines = [json.dumps({"queue": "q", "payload": f"task {n}"}) for n in range(1, 1501)]
    lines[1199] = json.dumps({"queue": "no spaces", "payload": "task 1200"})
    lines[1299] = json.dumps({"queue": "q", "priority": 5000})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")

    run = feedwork("submit", "--file", str(tasks), "--target", feeder)
    # Before: "tasks[199].queue", after the first 1000 tasks had been submitted.
    assert run.returncode == 2
    assert f"{tasks}: line 1200: queue: must be 1-128 characters" in run.stderr
    assert f"{tasks}: line 1300: priority: must be between -1000 and 1000" in run.stderr
    assert "2 bad lines: nothing was submitted" in run.stderr
    assert "q" not in stats_json(feeder)

    lines[1199] = json.dumps({"queue": "q", "payload": "task 1200"})
    lines[1299] = json.dumps({"queue": "q", "payload": "task 1300"})
    tasks.write_text("\n".join(lines) + "\n")
    run = feedwork("submit", "--file", str(tasks), "--target", feeder)
    assert run.returncode == 0, run.stderr
    assert "submitted 1500 tasks (0 deduplicated)" in run.stderr
    # Run again: every line is found by its key; nothing is submitted twice.
    again = feedwork("submit", "--file", str(tasks), "--target", feeder)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "submitted 1500 tasks (1500 deduplicated)" in again.stderr
    assert stats_json(feeder)["q"]["ready"] == 1500


def test_a_file_stopped_half_way_can_be_run_again(feeder: str, tmp_path: Path) -> None:
    # A payload over the feeder's limit (1 MiB) is only refused by the feeder, which
    # alone knows its limits: after the first slice of 1000 was submitted.
    lines = [json.dumps({"queue": "q", "payload": "same"}) for _ in range(1500)]
    lines[1199] = json.dumps({"queue": "q", "payload": "x" * (2**20 + 1)})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(lines) + "\n")
    run = feedwork("submit", "--file", str(tasks), "--target", feeder)
    assert run.returncode == 2
    assert f"{tasks}: line 1200: payload: " in run.stderr
    assert "the 1000 tasks before it were submitted; run the file again" in run.stderr
    assert stats_json(feeder)["q"]["ready"] == 1000

    lines[1199] = json.dumps({"queue": "q", "payload": "same"})
    tasks.write_text("\n".join(lines) + "\n")
    run = feedwork("submit", "--file", str(tasks), "--target", feeder)
    assert run.returncode == 0, run.stderr
    assert "submitted 1500 tasks (1000 deduplicated)" in run.stderr
    # 1500 identical lines are 1500 tasks, each once.
    assert stats_json(feeder)["q"]["ready"] == 1500

    fresh = feedwork("submit", "--file", str(tasks), "--fresh-keys", "--target", feeder)
    assert "submitted 1500 tasks (0 deduplicated)" in fresh.stderr
    assert stats_json(feeder)["q"]["ready"] == 3000


def test_a_file_that_can_be_read_once_is_read_once(feeder: str) -> None:
    # A pipe (bash's <(...)) is checked and sent from one reading.
    lines = "".join(f'{{"queue": "pipe", "payload": "{n}"}}\\n' for n in range(3))
    run = subprocess.run(
        f"{' '.join(FEEDWORK)} submit --file <(printf '{lines}') --target {feeder}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, env=ENV,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "submitted 3 tasks (0 deduplicated)" in run.stderr
