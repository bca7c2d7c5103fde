"""`python -m worker` as a real process against a real `python -m feeder` process:
options and environment variables, `--processes`, `--metrics-listen`, and what signals do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from worker.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "cli"

HANDLERS = """
import os
import threading
import time

def report_pid(task):
    time.sleep(0.1)
    return str(os.getpid())

def hang(task):
    open(os.environ["STARTED_FILE"], "w").close()
    threading.Event().wait(60)  # ignores task.cancelled on purpose
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(tmp_path), str(ROOT)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    return {**env, "PYTHONPATH": path, **extra}


def _wait_for(condition: Callable[[], object], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def feeder_target(tmp_path: Path) -> Iterator[str]:
    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "feeder", "--listen", "127.0.0.1:0", "--db",
        str(tmp_path / "feeder.db"), "--port-file", str(port_file), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=_env(tmp_path))
    try:
        _wait_for(lambda: port_file.exists() and port_file.read_text().strip())
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        process.terminate()
        process.wait(15)


@pytest.fixture
def stub(feeder_target: str) -> Iterator[feeder_pb2_grpc.FeederStub]:
    with grpc.insecure_channel(feeder_target) as channel:
        yield feeder_pb2_grpc.FeederStub(channel)


@pytest.fixture
def handlers(tmp_path: Path) -> str:
    (tmp_path / "cli_handlers.py").write_text(textwrap.dedent(HANDLERS))
    return "cli_handlers"


def start_worker(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with (tmp_path / "worker.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            cwd=tmp_path,
            env=_env(tmp_path, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def worker_log(tmp_path: Path) -> str:
    return (tmp_path / "worker.log").read_text()


def submit(stub: feeder_pb2_grpc.FeederStub, count: int) -> list[str]:
    tasks = [pb.TaskSpec(queue=QUEUE, payload=b"x") for _ in range(count)]
    return [result.task_id for result in stub.Submit(pb.SubmitRequest(tasks=tasks)).results]


def states(stub: feeder_pb2_grpc.FeederStub, task_ids: list[str]) -> list[pb.Task]:
    return [stub.GetTask(pb.GetTaskRequest(task_id=task_id)).task for task_id in task_ids]


# ---------------------------------------------------------------------------------------


def test_help_documents_every_option_with_its_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    help_text = " ".join(result.stdout.split())
    for option in (
        "target", "queue", "handler", "concurrency", "processes", "lease-duration",
        "task-timeout", "grace", "worker-id", "log-level", "metrics-listen",
    ):  # fmt: skip
        assert f"--{option}" in help_text
        assert "FEEDWORK_" + option.upper().replace("-", "_") in help_text


def test_flags_beat_environment_beats_defaults() -> None:
    environ = {
        "FEEDWORK_QUEUE": "from-env",
        "FEEDWORK_HANDLER": "m:f",
        "FEEDWORK_GRACE": "7",
        # Durations as the feeder writes them, so one environment can serve both.
        "FEEDWORK_LEASE_DURATION": "2m",
        "FEEDWORK_ACK_FLUSH_INTERVAL": "10ms",
    }
    config = parse_config(["--queue", "from-flag", "--concurrency", "4"], environ)
    assert (config.queue, config.handler, config.concurrency) == ("from-flag", "m:f", 4)
    assert (config.grace, config.target, config.task_timeout) == (7.0, "localhost:50051", None)
    assert (config.lease_duration, config.ack_flush_interval) == (120.0, 0.01)


def test_missing_or_invalid_options_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as missing:
        parse_config(["--queue", "q"], {})
    assert missing.value.code == 2
    with pytest.raises(SystemExit):
        parse_config(["--queue", "q", "--handler", "m:f"], {"FEEDWORK_CONCURRENCY": "0"})
    assert "FEEDWORK_CONCURRENCY" in capsys.readouterr().err


def test_processes_share_the_work_and_stop_on_sigterm(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, handlers: str
) -> None:
    task_ids = submit(stub, 30)
    worker = start_worker(
        tmp_path, "--target", feeder_target, "--queue", QUEUE, "--processes", "2",
        "--handler", f"{handlers}:report_pid", "--wait", "1",
    )  # fmt: skip
    try:
        _wait_for(lambda: all(t.state == pb.TASK_STATE_COMPLETED for t in states(stub, task_ids)))
        pids = {task.result for task in states(stub, task_ids)}
        assert len(pids) == 2 and str(worker.pid).encode() not in pids
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    log = worker_log(tmp_path)
    assert "started 2 worker processes" in log
    assert log.count("stopped: {") == 2


def test_second_signal_exits_at_once(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, handlers: str
) -> None:
    [task_id] = submit(stub, 1)
    started = tmp_path / "started"
    worker = start_worker(
        tmp_path, "--target", feeder_target, "--queue", QUEUE, "--grace", "60",
        "--handler", f"{handlers}:hang", STARTED_FILE=str(started),
    )  # fmt: skip
    try:
        _wait_for(started.exists)
        worker.send_signal(signal.SIGTERM)
        _wait_for(lambda: "shutting down" in worker_log(tmp_path))
        began = time.monotonic()
        worker.send_signal(signal.SIGINT)
        assert worker.wait(10) == 130
        assert time.monotonic() - began < 5
    finally:
        worker.kill()
    assert "second signal" in worker_log(tmp_path)
    # Nothing was reported: the task is still leased, and comes back when its lease expires.
    assert states(stub, [task_id])[0].state == pb.TASK_STATE_LEASED


def test_grace_runs_out_then_tasks_are_released_and_the_process_exits(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, handlers: str
) -> None:
    [task_id] = submit(stub, 1)
    started = tmp_path / "started"
    worker = start_worker(
        tmp_path, "--target", feeder_target, "--queue", QUEUE, "--grace", "0.5",
        "--handler", f"{handlers}:hang", STARTED_FILE=str(started),
    )  # fmt: skip
    try:
        _wait_for(started.exists)
        worker.send_signal(signal.SIGINT)
        # The handler thread never returns; the process exits anyway.
        assert worker.wait(20) == 0
    finally:
        worker.kill()
    [task] = states(stub, [task_id])
    assert task.state == pb.TASK_STATE_READY
    assert task.history[-1].outcome == pb.ATTEMPT_OUTCOME_RELEASED


@pytest.mark.parametrize(
    "command",
    [
        # As the `feedwork` console script runs: -P keeps the current directory off sys.path.
        [sys.executable, "-P", "-m", "feedwork.cli", "worker", "--processes", "2"],
        [sys.executable, "-m", "worker"],
    ],
    ids=["feedwork-worker", "python-m-worker"],
)
def test_a_handler_in_the_current_directory_loads_from_either_command(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, command: list[str]
) -> None:
    # A new user's project: myapp/jobs.py in the directory they run the worker from, not
    # installed and not on PYTHONPATH. `python -m worker` finds it (python -m puts the
    # current directory on sys.path); the `feedwork` console script did not.
    project = tmp_path / "project"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text("")
    (project / "myapp" / "jobs.py").write_text("def handle(task):\n    return b'done'\n")
    [task_id] = submit(stub, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [*command, "--target", feeder_target, "--queue", QUEUE, "--wait", "1",
             "--handler", "myapp.jobs:handle"],
            cwd=project,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(lambda: worker.poll() is not None or states(stub, [task_id])[0].result)
        assert worker.poll() is None, worker_log(tmp_path)
        assert states(stub, [task_id])[0].result == b"done"
        # Every process up (a spawned one signalled while it starts dies of the signal).
        processes = 2 if "--processes" in command else 1
        _wait_for(lambda: worker_log(tmp_path).count(" started: queue ") == processes)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    assert "No module named" not in worker_log(tmp_path)


# ---------------------------------------------------------------------------------------
# --metrics-listen


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1 (free when checked)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port + count - 1 > 65535:
                continue
            others = [socket.socket() for _ in range(count - 1)]
            try:
                for offset, other in enumerate(others, 1):
                    other.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
            finally:
                for other in others:
                    other.close()
            return port
    raise AssertionError(f"no {count} consecutive free ports")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def succeeded(port: int) -> float:
    key = (("outcome", "succeeded"), ("queue", QUEUE))
    try:
        return scrape(port).get(("feedwork_worker_tasks_total", key), 0.0)
    except OSError:  # not listening yet
        return -1.0


def test_metrics_listen_serves_the_workers_metrics_until_it_stops(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, handlers: str
) -> None:
    port = free_ports(1)
    task_ids = submit(stub, 5)
    worker = start_worker(
        tmp_path, "--target", feeder_target, "--queue", QUEUE, "--wait", "1",
        "--handler", f"{handlers}:report_pid", "--metrics-listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    try:
        _wait_for(lambda: all(t.state == pb.TASK_STATE_COMPLETED for t in states(stub, task_ids)))
        _wait_for(lambda: succeeded(port) == 5)
        samples = scrape(port)
        assert samples[("feedwork_worker_received_tasks_total", (("queue", QUEUE),))] == 5
        assert samples[("feedwork_worker_transport_info", (("transport", "stream"),))] == 1
        assert samples[("feedwork_worker_process_resident_memory_bytes", ())] > 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    assert f"metrics at http://127.0.0.1:{port}/metrics" in worker_log(tmp_path)
    with pytest.raises(urllib.error.URLError):  # gone with the worker
        scrape(port)


def test_each_of_several_processes_serves_on_its_own_port(
    tmp_path: Path, feeder_target: str, stub: feeder_pb2_grpc.FeederStub, handlers: str
) -> None:
    port = free_ports(2)
    task_ids = submit(stub, 20)
    # From the environment this time: FEEDWORK_METRICS_LISTEN.
    worker = start_worker(
        tmp_path, "--target", feeder_target, "--queue", QUEUE, "--wait", "1",
        "--processes", "2", "--handler", f"{handlers}:report_pid",
        FEEDWORK_METRICS_LISTEN=f"127.0.0.1:{port}",
    )  # fmt: skip
    try:
        _wait_for(lambda: all(t.state == pb.TASK_STATE_COMPLETED for t in states(stub, task_ids)))
        # Process 1 on PORT, process 2 on PORT+1: each counts its own tasks.
        _wait_for(lambda: succeeded(port) + succeeded(port + 1) == 20)
        pids = {task.result for task in states(stub, task_ids)}
        assert len(pids) == 2 and succeeded(port) > 0 and succeeded(port + 1) > 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    log = worker_log(tmp_path)
    assert f"metrics at http://127.0.0.1:{port}/metrics" in log
    assert f"metrics at http://127.0.0.1:{port + 1}/metrics" in log


def test_bad_metrics_addresses_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--queue", "q", "--handler", "m:f"]
    for bad in ("9100", "localhost", "127.0.0.1:70000", "[::1]"):
        with pytest.raises(SystemExit) as refused:
            parse_config([*base, "--metrics-listen", bad], {})
        assert refused.value.code == 2
        err = capsys.readouterr().err
        assert "--metrics-listen" in err and "want HOST:PORT" in err, err
    with pytest.raises(SystemExit):
        parse_config(base, {"FEEDWORK_METRICS_LISTEN": "nowhere"})
    assert "FEEDWORK_METRICS_LISTEN='nowhere'" in capsys.readouterr().err
    # N processes serve on PORT to PORT+N-1: those must be ports.
    with pytest.raises(SystemExit):
        parse_config([*base, "--processes", "3", "--metrics-listen", "127.0.0.1:65534"], {})
    assert "ports 65534 to 65536, past 65535" in capsys.readouterr().err
    config = parse_config([*base, "--processes", "3", "--metrics-listen", "[::1]:9100"], {})
    assert [config.metrics_listen_of(i) for i in (1, 2, 3)] == [
        "[::1]:9100", "[::1]:9101", "[::1]:9102",
    ]  # fmt: skip
    any_port = parse_config([*base, "--processes", "3", "--metrics-listen", "0.0.0.0:0"], {})
    assert any_port.metrics_listen_of(3) == "0.0.0.0:0"
    assert parse_config(base, {}).metrics_listen is None  # off by default


def test_a_bad_address_or_a_taken_port_stops_the_command(tmp_path: Path) -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "worker", "--queue", "q", "--handler", "m:f",
         "--metrics-listen", "localhost"],
        capture_output=True, text=True, env=_env(tmp_path), timeout=60,
    )  # fmt: skip
    assert usage.returncode == 2
    assert "argument --metrics-listen: invalid address 'localhost'" in usage.stderr
    (tmp_path / "noop.py").write_text("def handle(task):\n    return None\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker(
            tmp_path, "--target", "127.0.0.1:1", "--queue", "q", "--handler", "noop:handle",
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        try:
            assert worker.wait(30) == 1
        finally:
            worker.kill()
    log = worker_log(tmp_path)
    assert f"cannot serve metrics on 127.0.0.1:{port}" in log
    assert "Traceback" not in log
