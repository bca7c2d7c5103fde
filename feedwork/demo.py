"""Run a feeder and worker processes on this machine, submit sleep tasks, optionally
SIGKILL some workers mid-run, and check that every task completed exactly once: the
feeder's records against the acks each worker recorded (`--ack-ledger`, see
feedwork.ledger).

Each task sleeps 10-60 ms. Killed workers' tasks come back after their lease (short
here, --lease) expires and are done by the others.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from feedwork.client import FeederClient
from feedwork.errors import FeedworkError
from feedwork.ledger import Ledger, read_ledger
from feedwork.processes import Child, ChildProcesses
from feedwork.types import TaskSpec
from worker.receipts import AckReceipt, read_ack_ledger

# Set in each demo worker's environment; the handler names it in its result.
WORKER_ID_ENV = "FEEDWORK_DEMO_WORKER_ID"
HANDLER = "feedwork.demo:sleep_handler"
_STARTUP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.1


def sleep_handler(task: Any) -> bytes:
    """The demo task: sleep `sleep_ms` from the JSON payload, report who did it."""
    payload = getattr(task, "payload", task)
    sleep_ms = int(json.loads(payload)["sleep_ms"])
    time.sleep(sleep_ms / 1000)
    worker = os.environ.get(WORKER_ID_ENV) or f"pid-{os.getpid()}"
    return json.dumps({"worker": worker, "sleep_ms": sleep_ms}).encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--iterations", type=_count(1), default=1000, metavar="N", help="tasks (default: 1000)"
    )
    parser.add_argument(
        "--workers", type=_count(1), default=16, metavar="N", help="worker processes (default: 16)"
    )
    parser.add_argument(
        "--kill-workers", type=_count(0), default=0, metavar="K", help="SIGKILL K workers mid-run"
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        metavar="FRACTION",
        help="kill once this fraction of the tasks is done (default: 0.3)",
    )
    parser.add_argument(
        "--target", metavar="HOST:PORT", help="use this feeder instead of starting one"
    )
    parser.add_argument("--db", metavar="PATH", help="the feeder's database (default: temporary)")
    parser.add_argument("--queue", default="demo", help="queue (default: demo)")
    parser.add_argument(
        "--lease", type=float, default=2.0, metavar="SECONDS", help="lease duration (default: 2)"
    )
    parser.add_argument("--seed", type=int, help="random seed for the sleep times")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long (default: 300)",
    )


def run(args: argparse.Namespace) -> int:
    if args.kill_workers >= args.workers:
        raise _usage("--kill-workers must leave at least one worker alive")
    console = Console()
    run_dir = Path(tempfile.mkdtemp(prefix="feedwork-demo-"))
    ok = keep_logs = False
    try:
        with _terminate_as_interrupt(), ChildProcesses(run_dir) as children:
            try:
                ok = _run(args, console, children, run_dir)
            except KeyboardInterrupt:
                console.print("interrupted: stopping the workers and the feeder")
                raise
            keep_logs = not ok
    except FeedworkError:
        keep_logs = True
        raise
    finally:
        if keep_logs:
            console.print(f"[yellow]logs kept in {run_dir}[/]")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0 if ok else 1


def _run(
    args: argparse.Namespace, console: Console, children: ChildProcesses, run_dir: Path
) -> bool:
    target = args.target or _start_feeder(children, run_dir, args.db or run_dir / "demo.db")
    with FeederClient(target, max_retry_delay=_STARTUP_TIMEOUT) as client:
        baseline = client.stats([args.queue]).queue(args.queue)
        task_ids, sleeps = _submit(client, args)
        console.print(f"submitted {len(task_ids)} tasks to queue {args.queue!r} at {target}")
        started = time.monotonic()
        workers = [
            _start_worker(children, run_dir, target, args.queue, n) for n in range(args.workers)
        ]
        done = _follow(client, args, console, children, workers, baseline.completed)
        wall_seconds = time.monotonic() - started
        children.stop([worker.name for worker in workers])
        if not done:
            console.print(f"[red]gave up after {args.timeout:.0f}s[/]")
        ledger = read_ledger(client, task_ids, sleeps, _receipts(run_dir))
        totals = client.stats([args.queue]).queue(args.queue).totals
    _report(console, ledger, workers, wall_seconds, args)
    console.print(
        f"feeder: expired {totals.expired - baseline.totals.expired}, "
        f"redelivered {totals.redelivered - baseline.totals.redelivered}, "
        f"duplicate acks dropped {totals.duplicate_acks - baseline.totals.duplicate_acks}, "
        f"adopted {totals.adopted - baseline.totals.adopted}"
    )
    for problem in ledger.problems[:10]:
        console.print(f"[red]problem:[/] {problem}", highlight=False)
    console.print(ledger.summary(), style="bold green" if ledger.ok else "bold red")
    return done and ledger.ok


def _start_feeder(children: ChildProcesses, run_dir: Path, db: str | Path) -> str:
    port_file = run_dir / "feeder.port"
    feeder = children.start_module(
        "feeder",
        "feeder",
        ["--listen", "127.0.0.1:0", "--port-file", str(port_file), "--db", str(db)],
    )
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        port = _read_port(port_file)
        if port:
            return f"127.0.0.1:{port}"
        if not feeder.alive():
            raise FeedworkError(f"the feeder exited at startup:\n{feeder.log_tail()}")
        time.sleep(0.05)
    raise FeedworkError(f"the feeder wrote no port within {_STARTUP_TIMEOUT:.0f}s")


def _read_port(port_file: Path) -> int | None:
    try:
        return int(port_file.read_text().strip())
    except (OSError, ValueError):
        return None  # not written yet, or half-written


def _submit(client: FeederClient, args: argparse.Namespace) -> tuple[list[str], dict[str, int]]:
    rng = random.Random(args.seed)
    sleeps = [rng.randint(10, 60) for _ in range(args.iterations)]
    specs = [
        TaskSpec(
            queue=args.queue,
            payload=json.dumps({"sleep_ms": sleep_ms}),
            lease_duration=args.lease,
        )
        for sleep_ms in sleeps
    ]
    results = client.submit_many(specs)
    task_ids = [result.task_id for result in results]
    return task_ids, dict(zip(task_ids, sleeps, strict=True))


def _start_worker(
    children: ChildProcesses, run_dir: Path, target: str, queue: str, index: int
) -> Child:
    name = f"w{index + 1:02d}"
    args = ["--target", target, "--queue", queue, "--handler", HANDLER, "--worker-id", name]
    args += ["--ack-ledger", str(run_dir / f"acks-{name}.jsonl")]
    # FEEDWORK_METRICS_LISTEN, if set, is for the feeder: the workers (which read it too)
    # would all ask for its port, and all but one fail. An empty value is "unset".
    env = {WORKER_ID_ENV: name, "FEEDWORK_METRICS_LISTEN": ""}
    return children.start_module(name, "worker", args, group="workers", env=env)


def _receipts(run_dir: Path) -> list[AckReceipt]:
    """What the workers were told of their acks (each worker's --ack-ledger)."""
    receipts: list[AckReceipt] = []
    for path in sorted(run_dir.glob("acks-*.jsonl")):
        receipts += read_ack_ledger(path)
    return receipts


def _follow(
    client: FeederClient,
    args: argparse.Namespace,
    console: Console,
    children: ChildProcesses,
    workers: list[Child],
    completed_before: int,
) -> bool:
    """Shows progress until every task is done; kills workers on the way if asked."""
    kill_pending = args.kill_workers > 0
    deadline = time.monotonic() + args.timeout
    progress = Progress(
        TextColumn("running"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
        console=console,
    )
    with progress:
        bar = progress.add_task("tasks", total=args.iterations, detail="")
        while time.monotonic() < deadline:
            queue = client.stats([args.queue]).queue(args.queue)
            done = queue.completed - completed_before
            detail = f"leased {queue.leased}, expired {queue.totals.expired}"
            progress.update(bar, completed=min(done, args.iterations), detail=detail)
            if done >= args.iterations:
                return True
            if kill_pending and done >= args.kill_at * args.iterations:
                kill_pending = False
                for worker in workers[: args.kill_workers]:
                    children.kill(worker.name)
                    progress.console.print(f"SIGKILL worker {worker.name} (pid {worker.pid})")
            if not any(worker.alive() for worker in workers):
                progress.console.print("[red]every worker has exited[/]")
                return False
            time.sleep(_POLL_INTERVAL)
    return False


def _report(
    console: Console,
    ledger: Ledger,
    workers: list[Child],
    wall_seconds: float,
    args: argparse.Namespace,
) -> None:
    for worker in workers:
        tasks, slept_ms = ledger.by_worker.get(worker.name, (0, 0))
        note = "  (killed)" if worker.killed else ""
        console.print(
            f"worker {worker.name} (pid {worker.pid}): {tasks:4d} tasks, "
            f"slept {slept_ms / 1000:6.2f} s{note}",
            highlight=False,
        )
    for name in sorted(set(ledger.by_worker) - {worker.name for worker in workers}):
        tasks, slept_ms = ledger.by_worker[name]
        console.print(f"unknown worker {name}: {tasks} tasks, slept {slept_ms / 1000:.2f} s")
    seconds = ledger.busy_seconds or wall_seconds
    console.print(
        f"throughput: {ledger.completed} tasks in {seconds:.2f} s = "
        f"{ledger.completed / seconds if seconds else 0:.0f} tasks/s "
        f"with {args.workers} workers ({args.kill_workers} killed)",
        highlight=False,
    )


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turns SIGTERM into KeyboardInterrupt so that children are cleaned up either way."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}")
        return value

    return parse


def _usage(message: str) -> Exception:
    from feedwork.cli_support import UsageError

    return UsageError(message)
