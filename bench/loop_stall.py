"""``python -m bench.loop_stall [--stores memory,sqlite,postgres]``: how long single hostile
requests hold the feeder's event loop, per request kind.

Every RPC of a feeder runs on one event loop: a request whose handling holds the loop for
200 ms makes every other call wait 200 ms. For each store this starts a real feeder (the
`FeederServer` of ``python -m feeder`` behind `bench.loop_stall_feeder`, which lets the
experiment read the feeder's own event-loop lag probe between phases), on loopback, and
drives it hostile-style, one kind of request per phase:

- Submit batches of the largest size (`MAX_BATCH` tasks): first across new queues until the
  feeder knows `--max-queues` of them (10,000, its default), then into one deep queue, with
  idempotency keys;
- Lease of `MAX_LEASE_TASKS` tasks at a time, then Ack of them in full batches;
- a few thousand dead tasks in one queue (Nack terminal, full batches);
- GetStats of every page at the largest page size, and of `MAX_BATCH` named queues;
- ListDeadTasks of every page with payloads; RedriveDeadTasks and PurgeDeadTasks of them all;
- a Consume stream leasing and acking at full credit;
- the janitor's retention purge of every completed task.

Meanwhile a probe client starts a small call (GetTask of one task) every PROBE_GAP
seconds, open loop (it does not wait for the previous one, so a stalled feeder shows in
every probe it delays). Per phase it prints the feeder's worst event-loop lag and its
count of stalls over 50 ms, and the probe calls' p50/p99/max latency. Bounded in time:
each phase by PHASE_TIMEOUT, a store in about a minute. Results also go to
``bench/results/loop_stall.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.cases.feedwork import new_directory, remove_directory
from bench.core import ServerProcess, Skip, load_average, make_payload
from bench.grpc_client import channel_options
from bench.postgres_feeders import DATABASE_PREFIX, connect, dsn_of, settings
from feeder.server.validate import (
    MAX_BATCH,
    MAX_LEASE_TASKS,
    MAX_PAGE_SIZE,
    MAX_SELECTOR_LIMIT,
    MAX_STATS_PAGE,
)
from feedwork.channel import aio_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

STORES = ("memory", "sqlite", "postgres")
MAX_QUEUES = 10_000  # the feeder's default --max-queues
BULK_TASKS = 40_000
HELD_LEASES = 20_000
CONSUMED = 10_000
DEAD_TASKS = 3000
# Dead tasks carry payloads big enough that a page of them with payloads is near the reply
# limit (8 MiB by default); submitted DEAD_SUBMIT at a time to stay under the request limit.
DEAD_PAYLOAD = 8 * 1024
DEAD_SUBMIT = 500
STATS_ROUNDS = 3
NAMED_STATS_CALLS = 10
DEAD_LIST_ROUNDS = 3
# Hostile clients per phase, each on a connection of its own.
CLIENTS = 2
PROBE_GAP = 0.005
IDLE = 2.0
PHASE_TIMEOUT = 60.0
RPC_TIMEOUT = 60.0
LONG_LEASE = 600  # seconds: no lease of the experiment expires while it runs
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "loop_stall.json"
BULK, DEAD, PROBE = "bulk", "dead", "probe"
# Replies of the largest size (a page of dead tasks with payloads) must fit.
HOSTILE_OPTIONS = [
    *channel_options(),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
# The queues the fill creates: with BULK, DEAD and PROBE, exactly MAX_QUEUES.
FILL_QUEUES = MAX_QUEUES - 3


@dataclass
class PhaseResult:
    store: str
    phase: str
    calls: int
    seconds: float
    lag: dict[str, Any]
    probe_ms: dict[str, float | None]
    call_max_ms: float | None
    run: int = 1


class Helper:
    """A helper process and its control lines (`bench.loop_stall_feeder`,
    `bench.loop_stall_probe`): a command out, one line ``COMMAND {json}`` back."""

    def __init__(self, process: ServerProcess) -> None:
        self.process = process

    async def ask(self, command: str) -> dict[str, Any]:
        proc = self.process.proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{command}\n".encode())
        await proc.stdin.drain()
        line = (await asyncio.wait_for(proc.stdout.readline(), PHASE_TIMEOUT)).decode().strip()
        word, _, body = line.partition(" ")
        if word != command:
            raise RuntimeError(f"the helper answered {line!r} to {command}")
        answer: dict[str, Any] = json.loads(body)
        return answer


@dataclass
class Run:
    """One store's run: the feeder, the hostile clients, what the phases left behind."""

    store: str
    feeder: Helper
    probe: Helper
    stubs: list[pb_grpc.FeederStub]
    results: list[PhaseResult] = field(default_factory=list)

    async def phase(
        self, name: str, calls: Sequence[Callable[[pb_grpc.FeederStub], Awaitable[Any]]]
    ) -> None:
        """Runs `calls` on CLIENTS connections (each takes the next call when its last one
        is answered) and records the feeder's loop lag and the probe latency meanwhile."""
        await self._begin()
        pending = list(reversed(calls))
        latencies: list[float] = []

        async def client(stub: pb_grpc.FeederStub) -> None:
            while pending:
                call = pending.pop()
                started = time.perf_counter()
                await call(stub)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with asyncio.timeout(PHASE_TIMEOUT):
            await asyncio.gather(*(client(stub) for stub in self.stubs))
        await self._end(name, len(calls), time.perf_counter() - started, latencies)

    async def idle(self, name: str, seconds: float) -> None:
        await self._begin()
        await asyncio.sleep(seconds)
        await self._end(name, 0, seconds, [])

    async def janitor(self) -> int:
        await self._begin()
        started = time.perf_counter()
        purged = int((await self.feeder.ask("JANITOR"))["purged"])
        seconds = time.perf_counter() - started
        await self._end("janitor-purge", 1, seconds, [seconds])
        return purged

    async def _begin(self) -> None:
        await self.feeder.ask("LAG")
        await self.probe.ask("MARK")

    async def _end(self, name: str, calls: int, seconds: float, latencies: list[float]) -> None:
        # The probe's calls still in flight count in the next phase (see bench.loop_stall_probe).
        probe_ms = await self.probe.ask("MARK")
        lag = await self.feeder.ask("LAG")
        result = PhaseResult(
            self.store,
            name,
            calls,
            seconds,
            lag,
            probe_ms,
            max(latencies) * 1000 if latencies else None,
        )
        self.results.append(result)
        print(_row(result), flush=True)
        for took, what in lag.get("slowest", []):
            print(f"{'':>17}{took:>8.1f} ms  {what}", flush=True)


def _row(r: PhaseResult) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lag = r.lag
    return (
        f"{r.store:<9}{r.phase:<24}{r.calls:>6}{r.seconds:>8.2f}"
        f"{lag.get('worst', 0.0) * 1000:>9.1f}{lag.get('worst_turn_cpu', 0.0) * 1000:>9.1f}"
        f"{lag.get('stalls', 0):>7}"
        f"{ms(r.probe_ms['p50']):>9}{ms(r.probe_ms['p99']):>9}{ms(r.probe_ms['max']):>9}"
        f"{ms(r.call_max_ms):>10}"
    )


HEADER = (
    f"{'store':<9}{'phase':<24}{'calls':>6}{'secs':>8}{'lag ms':>9}{'turn ms':>9}{'>50ms':>7}"
    f"{'probe50':>9}{'probe99':>9}{'probemax':>9}{'call max':>10}"
)


# -- the phases -------------------------------------------------------------------------


def _spec(queue: str, payload: bytes, **fields: Any) -> pb.TaskSpec:
    return pb.TaskSpec(queue=queue, payload=payload, **fields)


def _submit(specs: list[pb.TaskSpec], into: list[str] | None = None) -> Callable[..., Any]:
    async def call(stub: pb_grpc.FeederStub) -> None:
        reply = await stub.Submit(pb.SubmitRequest(tasks=specs), timeout=RPC_TIMEOUT)
        if into is not None:
            into.extend(r.task_id for r in reply.results)

    return call


def _lease(queue: str, worker: str, into: list[str]) -> Callable[..., Any]:
    request = pb.LeaseRequest(queue=queue, max_tasks=MAX_LEASE_TASKS, worker_id=worker)
    request.lease_duration.FromSeconds(LONG_LEASE)

    async def call(stub: pb_grpc.FeederStub) -> None:
        reply = await stub.Lease(request, timeout=RPC_TIMEOUT)
        into.extend(t.lease_token for t in reply.tasks)

    return call


def _ack(tokens: list[str]) -> Callable[..., Any]:
    request = pb.AckRequest(items=[pb.AckItem(lease_token=t) for t in tokens])

    async def call(stub: pb_grpc.FeederStub) -> None:
        await stub.Ack(request, timeout=RPC_TIMEOUT)

    return call


def _nack_terminal(tokens: list[str]) -> Callable[..., Any]:
    request = pb.NackRequest(
        items=[pb.NackItem(lease_token=t, error="bench: dead", terminal=True) for t in tokens]
    )

    async def call(stub: pb_grpc.FeederStub) -> None:
        await stub.Nack(request, timeout=RPC_TIMEOUT)

    return call


async def _all_stats_pages(stub: pb_grpc.FeederStub) -> None:
    token = ""
    while True:
        request = pb.GetStatsRequest(page_size=MAX_STATS_PAGE, page_token=token)
        token = (await stub.GetStats(request, timeout=RPC_TIMEOUT)).next_page_token
        if not token:
            return


async def _all_dead_pages(stub: pb_grpc.FeederStub) -> None:
    token = ""
    while True:
        request = pb.ListDeadTasksRequest(
            queue=DEAD, page_size=MAX_PAGE_SIZE, page_token=token, include_payloads=True
        )
        token = (await stub.ListDeadTasks(request, timeout=RPC_TIMEOUT)).next_page_token
        if not token:
            return


def _chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


async def _consume(stub: pb_grpc.FeederStub) -> None:
    """One Consume stream at full credit, acking every task it is sent, until CONSUMED
    tasks are acked."""
    outgoing: asyncio.Queue[pb.ConsumeRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.ConsumeRequest]:
        while (request := await outgoing.get()) is not None:
            yield request

    start = pb.ConsumeStart(queue=BULK, worker_id="bench-consumer")
    start.lease_duration.FromSeconds(LONG_LEASE)
    credited = MAX_BATCH
    outgoing.put_nowait(pb.ConsumeRequest(start=start, credits=credited))
    call = stub.Consume(requests(), timeout=PHASE_TIMEOUT)
    reports, acked = itertools.count(1), 0
    try:
        async for reply in call:
            acked += len(reply.ack_results)
            if acked >= CONSUMED:
                return
            if reply.tasks:
                more = min(len(reply.tasks), CONSUMED - credited)
                credited += more
                acks = [pb.AckItem(lease_token=t.lease_token) for t in reply.tasks]
                outgoing.put_nowait(
                    pb.ConsumeRequest(report_id=next(reports), acks=acks, credits=more)
                )
        raise RuntimeError(f"the Consume stream ended after {acked} acks")
    finally:
        outgoing.put_nowait(None)
        call.cancel()


async def _drive(run: Run) -> None:
    small, dead_payload = make_payload(), make_payload(DEAD_PAYLOAD)
    await run.idle("idle", IDLE)
    queues = [f"q{i:05d}" for i in range(FILL_QUEUES)]
    await run.phase(
        "submit-1000-new-queues",
        [_submit([_spec(q, small) for q in chunk]) for chunk in _chunks(queues, MAX_BATCH)],
    )
    keys = [f"key-{i}" for i in range(BULK_TASKS)]
    await run.phase(
        "submit-1000",
        [
            _submit([_spec(BULK, small, idempotency_key=k) for k in chunk])
            for chunk in _chunks(keys, MAX_BATCH)
        ],
    )
    await run.phase(
        f"submit-{DEAD_SUBMIT}x{DEAD_PAYLOAD // 1024}KiB",
        [
            _submit([_spec(DEAD, dead_payload, max_attempts=1)] * DEAD_SUBMIT)
            for _ in range(DEAD_TASKS // DEAD_SUBMIT)
        ],
    )
    held: list[str] = []
    await run.phase(
        "lease-1000",
        [_lease(BULK, f"holder-{i}", held) for i in range(HELD_LEASES // MAX_LEASE_TASKS)],
    )
    await _kill_dead(run, "")
    await run.phase("ack-1000", [_ack(chunk) for chunk in _chunks(held, MAX_BATCH)])
    await run.phase("get-stats-all-pages", [_all_stats_pages] * STATS_ROUNDS)
    named = pb.GetStatsRequest(queues=queues[:MAX_BATCH])

    async def named_stats(stub: pb_grpc.FeederStub) -> None:
        await stub.GetStats(named, timeout=RPC_TIMEOUT)

    await run.phase("get-stats-1000-named", [named_stats] * NAMED_STATS_CALLS)
    await run.phase("list-dead-pages", [_all_dead_pages] * DEAD_LIST_ROUNDS)
    selector = pb.DeadTaskSelector(queue=DEAD, limit=MAX_SELECTOR_LIMIT)

    async def redrive(stub: pb_grpc.FeederStub) -> None:
        await stub.RedriveDeadTasks(pb.RedriveDeadTasksRequest(selector=selector))

    async def purge(stub: pb_grpc.FeederStub) -> None:
        await stub.PurgeDeadTasks(pb.PurgeDeadTasksRequest(selector=selector))

    await run.phase("redrive-dead-all", [redrive])
    await _kill_dead(run, " again")
    await run.phase("purge-dead-all", [purge])
    await run.phase("consume-stream", [_consume])
    await run.janitor()
    await run.idle("idle-after", IDLE)


async def _kill_dead(run: Run, label: str) -> None:
    """Leases every task of the DEAD queue and nacks it terminally: DEAD_TASKS dead tasks."""
    tokens: list[str] = []
    calls = -(-DEAD_TASKS // MAX_LEASE_TASKS)
    await run.phase(
        f"lease-1000-{DEAD_PAYLOAD // 1024}KiB{label}",
        [_lease(DEAD, f"killer-{i}", tokens) for i in range(calls)],
    )
    await run.phase(f"nack-1000{label}", [_nack_terminal(c) for c in _chunks(tokens, MAX_BATCH)])


# -- one store --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _database(store: str) -> AsyncIterator[str]:
    """The --db of a fresh database of `store`, removed afterwards."""
    if store == "memory":
        yield ":memory:"
        return
    if store == "sqlite":
        directory = new_directory()
        try:
            yield str(directory / "feedwork.db")
        finally:
            remove_directory(directory)
        return
    await settings()  # raises Skip when PostgreSQL is down
    database = f"{DATABASE_PREFIX}_loop_stall_{os.getpid()}"
    admin = await connect()
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {database}")
    finally:
        await admin.close(timeout=5)
    try:
        yield dsn_of(database)
    finally:
        admin = await connect()
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        finally:
            await admin.close(timeout=5)


async def run_store(store: str, *, trace: bool = False) -> list[PhaseResult]:
    async with _database(store) as db:
        process = await ServerProcess.start(
            "bench.loop_stall_feeder",
            *(["--trace"] if trace else []),
            *("--listen", "127.0.0.1:0", "--db", db, "--log-level", "warning"),
            ready_timeout=60.0,
        )
        prober: ServerProcess | None = None
        channels: list[grpc.aio.Channel] = []
        try:
            target = f"127.0.0.1:{process.port}"
            channels = [aio_channel(target, options=HOSTILE_OPTIONS) for _ in range(CLIENTS)]
            stubs = [pb_grpc.FeederStub(c) for c in channels]
            probe_ids: list[str] = []
            await _submit([_spec(PROBE, make_payload())], probe_ids)(stubs[0])
            # In a process of its own: the hostile clients' own work (building and parsing
            # requests of a thousand items) would otherwise delay the probe calls too.
            prober = await ServerProcess.start("bench.loop_stall_probe", target, probe_ids[0])
            run = Run(store, Helper(process), Helper(prober), stubs)
            await _drive(run)
            errors = int((await run.probe.ask("ERRORS"))["errors"])
            if errors:
                print(f"!!! {store}: {errors} probe calls failed", flush=True)
            return run.results
        finally:
            for channel in channels:
                await channel.close(grace=None)
            if prober is not None:
                await prober.stop()
            await process.stop(grace=30.0)


def _summary(results: Sequence[PhaseResult]) -> None:
    """Per request kind and store, the worst lag and the most CPU one loop turn took (the
    figures the issue asks about): the median over the runs, and with several runs the
    largest turn in brackets."""
    worst: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for r in results:
        runs = worst.setdefault(r.phase.replace(" again", ""), {}).setdefault(r.store, {})
        lag, turn = runs.get(r.run, (0.0, 0.0))
        runs[r.run] = (
            max(lag, r.lag.get("worst", 0.0) * 1000),
            max(turn, r.lag.get("worst_turn_cpu", 0.0) * 1000),
        )
    stores = list(dict.fromkeys(r.store for r in results))
    print("\nper request kind, ms: worst event-loop lag / most CPU one loop turn took")
    print(f"{'phase':<24}" + "".join(f"{s:>22}" for s in stores))
    for kind, by_store in worst.items():
        cells = []
        for store in stores:
            figures = list(by_store.get(store, {}).values())
            if not figures:
                cells.append(f"{'-':>22}")
                continue
            lag = statistics.median(f[0] for f in figures)
            turn = statistics.median(f[1] for f in figures)
            most = f" ({max(f[1] for f in figures):.1f})" if len(figures) > 1 else ""
            cells.append(f"{f'{lag:.1f} / {turn:.1f}{most}':>22}")
        print(f"{kind:<24}" + "".join(cells))


async def _main(args: argparse.Namespace) -> int:
    results: list[PhaseResult] = []
    failed = 0
    print(f"load average at start: {load_average()}", flush=True)
    print(HEADER, flush=True)
    for run, store in itertools.product(range(1, args.repeat + 1), args.stores):
        try:
            for result in await run_store(store, trace=args.trace):
                result.run = run
                results.append(result)
        except Skip as exc:
            print(f"!!! SKIPPED {store}: {exc}", flush=True)
        except Exception as exc:  # one store failing does not hide the others' figures
            failed += 1
            print(f"!!! FAILED {store}: {type(exc).__name__}: {exc}", flush=True)
    _summary(results)
    print(f"load average at end: {load_average()}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "meta": {"python": sys.version, "load_avg": load_average()},
                "results": [r.__dict__ for r in results],
            },
            indent=1,
        )
    )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loop_stall",
        description="How long single hostile requests hold the feeder's event loop, per "
        "request kind and store (see the module docstring).",
    )
    parser.add_argument(
        "--stores", default=",".join(STORES), help="comma-separated: memory,sqlite,postgres"
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time every callback of the feeder's loop and print the slowest of each phase",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of every store (the summary: medians)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = set(args.stores) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
