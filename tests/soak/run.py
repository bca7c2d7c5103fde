"""One soak run: a real feeder, worker processes and steady producers, the feeder's RSS
sampled until the time is up, then the drain, the completion check and the verdict."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    feeder_stub,
    queue_stats,
    read_ledger,
    read_receipts,
    running,
    wait_for,
)
from tests.soak.load import Producer
from tests.soak.verdict import Completion, MiB, Rules, completion_problems, judge

QUEUE = "soak"
# The feeder's janitor purges every 30 s (feeder/service/janitor.py): a finished task
# lives retention + up to 30 s. The warm-up adds a margin over that.
JANITOR_INTERVAL = 30.0
WARMUP_MARGIN = 30.0
# Keys resubmitted are this old at most (a quarter of the retention if that is less).
RESUBMIT_AGE = 60.0
# The live table shows about this many rows, whatever the duration (the CSV has all).
TABLE_ROWS = 30


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the feeder: its memory (/proc/PID/status) and its counts (GetStats)."""

    seconds: float
    rss: int  # VmRSS, bytes; the figure judged
    anon: int  # RssAnon: the heap
    file: int  # RssFile: mapped files (libraries)
    peak: int  # VmHWM: the highest VmRSS so far
    submitted: int  # totals since the database was made
    completed: int
    pending: int  # scheduled + ready + leased now
    kept: int  # completed tasks not purged yet
    db_bytes: int | None  # SQLite file and WAL (None on PostgreSQL)


def memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def db_bytes(db: Path | str) -> int | None:
    if not isinstance(db, Path):
        return None
    files = (db, db.with_name(db.name + "-wal"))
    return sum(path.stat().st_size for path in files if path.exists())


def take_sample(seconds: float, feeder: FeederProc, stub: feeder_pb2_grpc.FeederStub) -> Sample:
    stats = queue_stats(stub, QUEUE)
    mem = memory(feeder.pid)
    return Sample(
        seconds=round(seconds, 1),
        rss=mem["VmRSS"],
        anon=mem["RssAnon"],
        file=mem["RssFile"],
        peak=mem["VmHWM"],
        submitted=stats.totals.submitted,
        completed=stats.totals.completed,
        pending=stats.scheduled + stats.ready + stats.leased,
        kept=stats.completed,
        db_bytes=db_bytes(feeder.db),
    )


class Table:
    """The samples as a CSV file (all of them) and a table on stdout (about TABLE_ROWS)."""

    HEADER = (
        f"{'time':>6} {'phase':<7} {'RSS MiB':>8} {'anon':>7} {'peak':>7} {'in/s':>6}"
        f" {'done/s':>6} {'pending':>7} {'kept':>7} {'db MiB':>7}"
    )

    def __init__(self, path: Path, *, warmup: float, every: float) -> None:
        self._file = open(path, "w", newline="")  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._file)
        self._csv.writerow([f.name for f in fields(Sample)])
        self._warmup = warmup
        self._every = every
        self._next_row = 0.0
        self._shown: Sample | None = None
        print(self.HEADER, flush=True)

    def add(self, sample: Sample, *, last: bool = False) -> None:
        self._csv.writerow(["" if v is None else v for v in astuple(sample)])
        self._file.flush()
        if sample.seconds >= self._next_row or last:
            print(self._row(sample, self._shown), flush=True)
            self._shown = sample
            self._next_row = sample.seconds + self._every

    def _row(self, sample: Sample, before: Sample | None) -> str:
        span = sample.seconds - before.seconds if before else 0.0
        in_rate = (sample.submitted - before.submitted) / span if before and span else 0.0
        done_rate = (sample.completed - before.completed) / span if before and span else 0.0
        minutes, seconds = divmod(int(sample.seconds), 60)
        db = "-" if sample.db_bytes is None else f"{sample.db_bytes / MiB:.1f}"
        phase = "warm-up" if sample.seconds < self._warmup else "judged"
        return (
            f"{minutes:3d}:{seconds:02d} {phase:<7} {sample.rss / MiB:8.1f}"
            f" {sample.anon / MiB:7.1f} {sample.peak / MiB:7.1f} {in_rate:6.0f}"
            f" {done_rate:6.0f} {sample.pending:7d} {sample.kept:7d} {db:>7}"
        )

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def database(store: str) -> Iterator[str | None]:
    """None for SQLite; for PostgreSQL, the URL of a new database, dropped at the end (the
    server of the tests: FEEDWORK_TEST_POSTGRES, by default the local one)."""
    if store != "postgres":
        yield None
        return
    from tests import postgres

    name = postgres.create_database(None)
    try:
        yield postgres.dsn_of(name)
    finally:
        postgres.drop_database(name)


def check_health(feeder: FeederProc, workers: WorkerPool, producers: Sequence[Producer]) -> None:
    """Stops the run at once when a process or a producer died: nothing left to measure."""
    if not feeder.alive():
        raise RunFailed(f"the feeder exited ({feeder.returncode()}):\n{feeder.log_tail()}")
    for producer in producers:
        if not producer.is_alive():
            raise RunFailed("; ".join(producer.tally.problems) or f"{producer.name} stopped")
    workers.supervise()  # a worker that died is replaced, and counted as a crash


class RunFailed(Exception):
    pass


def measure(
    args: argparse.Namespace,
    feeder: FeederProc,
    workers: WorkerPool,
    producers: Sequence[Producer],
    stub: feeder_pb2_grpc.FeederStub,
    table: Table,
) -> list[Sample]:
    """Samples every `args.sample_every` seconds until the duration is up."""
    began = time.monotonic()
    samples = []
    tick = 0
    while True:
        check_health(feeder, workers, producers)
        elapsed = time.monotonic() - began
        last = elapsed >= args.seconds
        samples.append(take_sample(elapsed, feeder, stub))
        table.add(samples[-1], last=last)
        if last:
            return samples
        tick += 1
        pause = began + min(tick * args.sample_every, args.seconds) - time.monotonic()
        time.sleep(max(0.0, pause))


def completions(ledger: Path) -> Iterator[Completion]:
    for receipt in read_receipts(ledger):
        if receipt.completed:
            yield Completion(receipt.task_id, receipt.attempt)


def drain(stub: feeder_pb2_grpc.FeederStub, within: float) -> list[str]:
    """Waits for the queue to empty once the load stopped; a problem if it does not."""
    try:
        wait_for(lambda: pending(stub) == 0, within=within, what="the drain", every=0.5)
    except AssertionError:
        return [f"{pending(stub)} tasks still pending {within:g} s after the load stopped"]
    return []


def pending(stub: feeder_pb2_grpc.FeederStub) -> int:
    stats = queue_stats(stub, QUEUE)
    return int(stats.scheduled + stats.ready + stats.leased)


def run(args: argparse.Namespace) -> int:
    """The whole soak; the exit status (0: passed)."""
    workdir = Path(args.out or tempfile.mkdtemp(prefix="feedwork-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(describe_run(args, workdir), flush=True)
    try:
        return soak(args, workdir)
    finally:
        if not args.keep:
            cleanup(workdir)
        print(f"samples: {workdir / 'rss.csv'}; logs: {workdir}")


def soak(args: argparse.Namespace, workdir: Path) -> int:
    ledger = workdir / "ledger.txt"
    stop = threading.Event()
    table = Table(
        workdir / "rss.csv",
        warmup=args.warmup,
        every=max(args.sample_every, args.seconds / TABLE_ROWS),
    )
    with database(args.store) as url:
        feeder = FeederProc(
            workdir, db=url, args=["--retention", f"{args.retention:g}s", *args.feeder_arg]
        )
        workers = WorkerPool(
            workdir, feeder.target, queue=QUEUE, ledger=ledger, concurrency=args.concurrency
        )
        producers = [
            Producer(
                name=f"producer{i}",
                target=feeder.target,
                queue=QUEUE,
                rate=args.rate / args.producers,
                resubmit_age=min(args.retention / 4, RESUBMIT_AGE),
                stop=stop,
                seed=i,
            )
            for i in range(args.producers)
        ]
        with running(feeder, workers), feeder_stub(feeder.target) as stub:
            feeder.start()
            workers.start(args.workers)
            for producer in producers:
                producer.start()
            try:
                samples = measure(args, feeder, workers, producers, stub, table)
            except RunFailed as exc:
                print(f"soak: FAILED: {exc}", file=sys.stderr)
                return 1
            finally:
                stop.set()
                for producer in producers:
                    producer.join(timeout=30)
                table.close()
            problems = drain(stub, args.drain_timeout)
            workers.stop_all(grace=10.0)
            totals = queue_stats(stub, QUEUE).totals
    problems += audit(producers, ledger, totals, workers.crashes)
    verdict = judge([(s.seconds, s.rss) for s in samples], rules_of(args))
    print()
    print(verdict.describe())
    print(summary(producers, samples, totals, ledger, args.seconds))
    for problem in problems:
        print(f"  - {problem}")
    passed = verdict.flat and not problems
    print(f"soak: {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


def rules_of(args: argparse.Namespace) -> Rules:
    return Rules(
        warmup=args.warmup,
        tolerance=args.tolerance,
        tolerance_floor=int(args.tolerance_mib * MiB),
        max_slope=args.max_slope,
        cycle=JANITOR_INTERVAL,
        ceiling=int(args.max_rss_mib * MiB) if args.max_rss_mib else None,
    )


def audit(
    producers: Sequence[Producer], ledger: Path, totals: pb.Totals, crashes: int
) -> list[str]:
    """Everything but memory that must hold at the end: every task stored was completed
    once (the workers' ack ledgers), the feeder's totals agree, no producer or worker
    failed."""
    task_ids = [task_id for p in producers for task_id in p.tally.task_ids]
    problems = [problem for p in producers for problem in p.tally.problems]
    problems += completion_problems(task_ids, completions(ledger))
    if totals.submitted != len(task_ids):
        problems.append(f"the feeder counted {totals.submitted} submitted, not {len(task_ids)}")
    if totals.completed != len(task_ids):
        problems.append(f"the feeder counted {totals.completed} completed, not {len(task_ids)}")
    if totals.dead_lettered or totals.failed:
        problems.append(f"{totals.failed} failed attempts, {totals.dead_lettered} dead tasks")
    if crashes:
        problems.append(f"{crashes} worker processes died and were replaced")
    return problems


def summary(
    producers: Sequence[Producer],
    samples: Sequence[Sample],
    totals: pb.Totals,
    ledger: Path,
    seconds: float,
) -> str:
    submitted = sum(p.tally.submitted for p in producers)
    payload = sum(p.tally.payload_bytes for p in producers)
    resubmitted = sum(p.tally.resubmitted for p in producers)
    retried = sum(p.tally.retried_calls for p in producers)
    behind = sum(p.tally.behind for p in producers)
    executions = len(read_ledger(ledger))
    return "\n".join(
        [
            f"tasks: {submitted} submitted ({submitted / seconds:.0f}/s, payloads"
            f" {payload / max(submitted, 1) / 1024:.1f} KiB on average), {totals.completed}"
            f" completed, {executions} executions ({totals.redelivered} redelivered,"
            f" {totals.expired} leases expired)",
            f"producers: {resubmitted} keys resubmitted (each found its task unless listed"
            f" below), {retried} calls sent again, {behind} tasks behind the rate at the end",
            f"machine: {load_average()}",
            f"feeder: RSS peak (VmHWM) {max(s.peak for s in samples) / MiB:.1f} MiB,"
            f" finished tasks kept at most {max(s.kept for s in samples)},"
            f" pending at most {max(s.pending for s in samples)}",
        ]
    )


def cleanup(workdir: Path) -> None:
    """Removes the bulky files the soak made (database, ledgers); keeps the CSV and logs."""
    for pattern in ("feedwork.db*", "ledger*", "*.port"):
        for path in workdir.glob(pattern):
            path.unlink(missing_ok=True)


def describe_run(args: argparse.Namespace, workdir: Path) -> str:
    extra = " ".join(args.feeder_arg)
    return (
        f"soak: {args.seconds / 60:g} min on {args.store}, {args.rate:g} tasks/s from"
        f" {args.producers} producers, {args.workers} workers x {args.concurrency},"
        f" retention {args.retention:g} s, warm-up {args.warmup:g} s,"
        f" a sample every {args.sample_every:g} s{f', feeder {extra}' if extra else ''};"
        f" pid {os.getpid()}, in {workdir}; {load_average()}"
    )


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
