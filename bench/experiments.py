"""feedwork-only workloads that are not a drain: dispatch latency, the expiry storm, and
the scale suite (cost growth with queue depth, restart recovery, memory) at 1M tasks; the
same questions for three feeders on PostgreSQL are in `bench.experiments_pg`.

Each experiment starts its own feeder(s) (`bench.feeder_process`) on a fresh SQLite
database in a temporary directory, drives it with raw grpc.aio stubs (or the worker SDK
where said), is bounded in time, and returns result dicts with ``kind: "experiment"``
and its figures under ``metrics``. See bench/README.md for what each one measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

from bench.cases.feedwork import new_directory, remove_directory
from bench.core import (
    PAYLOAD_SIZE,
    PhaseProfiler,
    Skip,
    load_average,
    make_payload,
    percentile,
    process_cpu_seconds,
)
from bench.feeder_process import FeederClient, FeederProcess, preload
from bench.grpc_client import QUEUE, bench_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

DISPATCH_TASKS = 2000
DISPATCH_WARMUP = 50
DISPATCH_GAP = 0.002
DISPATCH_WAIT = 30.0
STORM_TASKS = 50_000
STORM_LEASE = 2.0
# Every storm lease is asked to end at the same instant: this long after leasing starts,
# and at least STORM_LEASE after its own grant (so the leases are granted in the first
# STORM_ALIGN - STORM_LEASE seconds, or the deadlines spread; the spread is reported).
STORM_ALIGN = 8.0
STORM_PROBE_TASKS = 20_000
STORM_PROBE_GAP = 0.005
SCALE_TASKS = 1_000_000
COST_SMALL_QUEUE = 1000
COST_SAMPLE = 20_000
COST_BATCH = 64
CONSUMERS = 4


@dataclass
class Options:
    phase_timeout: float = 60.0
    profiler: PhaseProfiler | None = None
    scale_tasks: int = SCALE_TASKS


def _result(case: str, workload: str, tasks: int) -> dict[str, Any]:
    return {
        "kind": "experiment",
        "case": case,
        "workload": workload,
        "tasks": tasks,
        "run": 1,
        "status": "ok",
        "reason": None,
        "metrics": {},
        "load_avg": load_average(),
    }


def _ms(values: Sequence[float]) -> dict[str, float | None]:
    ms = sorted(v * 1000.0 for v in values)
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": ms[-1] if ms else None,
        "mean": sum(ms) / len(ms) if ms else None,
        "count": len(ms),
    }


@contextlib.asynccontextmanager
async def feeder_session(**start: Any) -> AsyncIterator[FeederProcess]:
    directory = new_directory()
    feeder: FeederProcess | None = None
    try:
        feeder = await FeederProcess.start(directory, **start)
        yield feeder
    finally:
        if feeder is not None:
            await feeder.stop()
        remove_directory(directory)


@contextlib.asynccontextmanager
async def profiled(
    options: Options, label: str, pids: Mapping[str, Sequence[int]]
) -> AsyncIterator[None]:
    if options.profiler is None:
        yield
    else:
        async with options.profiler.record(label, pids):
            yield


def _stub(target: str) -> tuple[grpc.aio.Channel, pb_grpc.FeederStub]:
    channel = bench_channel(target)
    return channel, pb_grpc.FeederStub(channel)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _timestamp_seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


# ---------------------------------------------------------------------------------------
# A counted drain: exactly n tasks of a (possibly much longer) queue


async def drain_count(
    target: str, n: int, batch: int, consumers: int = CONSUMERS, queue: str = QUEUE
) -> float:
    """Leases (Lease(max_tasks<=batch)) and acks exactly n tasks with `consumers` raw-stub
    consumers on their own channels; returns the seconds from the start to the last ack.
    Channels connect before the clock starts."""
    channels = [_stub(target) for _ in range(consumers)]
    for channel, _ in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    budget = [n]
    start = asyncio.Event()

    async def consume(index: int, stub: pb_grpc.FeederStub) -> None:
        await start.wait()
        while budget[0] > 0:
            k = min(batch, budget[0])
            budget[0] -= k
            request = pb.LeaseRequest(queue=queue, max_tasks=k, worker_id=f"bench-{index}")
            reply = await stub.Lease(request, timeout=30)
            budget[0] += k - len(reply.tasks)
            if not reply.tasks:
                await asyncio.sleep(0.001)
                continue
            items = [pb.AckItem(lease_token=t.lease_token) for t in reply.tasks]
            await stub.Ack(pb.AckRequest(items=items), timeout=30)

    workers = [asyncio.create_task(consume(i, stub)) for i, (_, stub) in enumerate(channels)]
    try:
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*workers)
        return time.perf_counter() - t0
    finally:
        for w in workers:
            w.cancel()
        for channel, _ in channels:
            await channel.close(grace=None)


# ---------------------------------------------------------------------------------------
# Dispatch latency


def _stamped_payload() -> bytes:
    stamp = struct.pack("<d", time.perf_counter())
    return stamp + make_payload(PAYLOAD_SIZE - len(stamp))


def _stamp_of(payload: bytes) -> float:
    stamp: float = struct.unpack_from("<d", payload)[0]
    return stamp


async def _submit_spaced(
    client: FeederClient, count: int, gap: float, submit_lat: list[float] | None
) -> None:
    for _ in range(count):
        t0 = time.perf_counter()
        await client.submit([_stamped_payload()])
        if submit_lat is not None:
            submit_lat.append(time.perf_counter() - t0)
        await asyncio.sleep(gap)


async def _dispatch_run(
    target: str,
    start_consumers: Callable[
        [list[float], asyncio.Event], Awaitable[Callable[[], Awaitable[None]]]
    ],
    options: Options,
    label: str,
    pids: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """Idle consumers (started by `start_consumers`, which returns their stopper), then
    DISPATCH_WARMUP + DISPATCH_TASKS single-task Submits DISPATCH_GAP apart."""
    latencies: list[float] = []
    all_seen = asyncio.Event()
    stop = await start_consumers(latencies, all_seen)
    client = await FeederClient(target).connect()
    submit_lat: list[float] = []
    try:
        await asyncio.sleep(0.5)  # every consumer is waiting in a long poll
        await _submit_spaced(client, DISPATCH_WARMUP, DISPATCH_GAP, None)
        async with asyncio.timeout(10):
            while len(latencies) < DISPATCH_WARMUP:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        del latencies[:]
        async with profiled(options, label, pids):
            t0 = time.perf_counter()
            await _submit_spaced(client, DISPATCH_TASKS, DISPATCH_GAP, submit_lat)
            async with asyncio.timeout(30):
                while len(latencies) < DISPATCH_TASKS:
                    await asyncio.sleep(0.005)
            seconds = time.perf_counter() - t0
    finally:
        await stop()
        await client.close()
    return {
        "latency_ms": _ms(latencies),
        "submit_call_ms": _ms(submit_lat),
        "seconds": seconds,
        "gap_ms": DISPATCH_GAP * 1000,
        "consumers": CONSUMERS,
    }


def raw_dispatch_consumers(
    targets: Sequence[str],
) -> Callable[[list[float], asyncio.Event], Awaitable[Callable[[], Awaitable[None]]]]:
    """For `_dispatch_run`: one raw-stub consumer per target (a channel each) in a
    Lease(max_tasks=1, wait=30s) loop, acking each task; records receive - stamp."""

    async def start(latencies: list[float], _: asyncio.Event) -> Callable[[], Awaitable[None]]:
        channels = [_stub(target) for target in targets]
        for channel, _unused in channels:
            await asyncio.wait_for(channel.channel_ready(), 10)

        async def consume(index: int, stub: pb_grpc.FeederStub) -> None:
            request = pb.LeaseRequest(
                queue=QUEUE, max_tasks=1, worker_id=f"bench-{index}", wait=_duration(30)
            )
            while True:
                reply = await stub.Lease(request, timeout=DISPATCH_WAIT + 10)
                now = time.perf_counter()
                for task in reply.tasks:
                    latencies.append(now - _stamp_of(task.payload))
                if reply.tasks:
                    items = [pb.AckItem(lease_token=t.lease_token) for t in reply.tasks]
                    await stub.Ack(pb.AckRequest(items=items), timeout=10)

        tasks = [asyncio.create_task(consume(i, s)) for i, (_, s) in enumerate(channels)]

        async def stop() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel, _unused in channels:
                await channel.close(grace=None)

        return stop

    return start


async def dispatch_raw(options: Options) -> list[dict[str, Any]]:
    result = _result("feedwork-raw", "dispatch", DISPATCH_TASKS)
    async with feeder_session() as feeder:
        start = raw_dispatch_consumers([feeder.target] * CONSUMERS)
        pids = {"server": (feeder.pid,), "client": (os.getpid(),)}
        result["metrics"] = await _dispatch_run(
            feeder.target, start, options, "feedwork-raw.dispatch", pids
        )
    result["metrics"]["how"] = (
        f"{CONSUMERS} raw-stub consumers in Lease(max_tasks=1, wait=30s) loops (ack after "
        f"each); one Submit of 1 task every {DISPATCH_GAP * 1000:g} ms after its reply; "
        "latency = consumer receives task - just before its Submit call"
    )
    return [result]


class _StampHandler:
    """An async no-op handler that records receive-time minus the payload's stamp."""

    def __init__(self, latencies: list[float]) -> None:
        self.latencies = latencies

    async def __call__(self, task: Any) -> None:
        self.latencies.append(time.perf_counter() - _stamp_of(task.payload))


async def dispatch_sdk(options: Options) -> list[dict[str, Any]]:
    from worker import Worker

    result = _result("feedwork-sdk", "dispatch", DISPATCH_TASKS)
    async with feeder_session() as feeder:

        async def start(latencies: list[float], _: asyncio.Event) -> Any:
            workers = [
                Worker(
                    target=feeder.target,
                    queue=QUEUE,
                    handler=_StampHandler(latencies),
                    concurrency=1,
                    worker_id=f"bench-sdk-{i}",
                    grace=0,
                    wait=DISPATCH_WAIT,
                )
                for i in range(CONSUMERS)
            ]
            runs = [asyncio.create_task(w.run_async()) for w in workers]

            async def stop() -> None:
                for w in workers:
                    w.stop(now=True)
                await asyncio.wait(runs, timeout=10)
                for r in runs:
                    r.cancel()

            return stop

        pids = {"server": (feeder.pid,), "client": (os.getpid(),)}
        result["metrics"] = await _dispatch_run(
            feeder.target, start, options, "feedwork-sdk.dispatch", pids
        )
    result["metrics"]["how"] = (
        f"{CONSUMERS} in-process worker.Worker (concurrency 1, wait 30 s), async handler "
        "records its start; otherwise as feedwork-raw dispatch"
    )
    return [result]


# ---------------------------------------------------------------------------------------
# Expiry storm


async def expiry_storm(options: Options) -> list[dict[str, Any]]:
    result = _result("feedwork-raw", "expiry-storm", STORM_TASKS)
    metrics: dict[str, Any] = result["metrics"]
    storm_queue, probe_queue = "storm", "probe"
    async with feeder_session() as feeder:
        target = feeder.target
        async with asyncio.timeout(options.phase_timeout * 2):
            await preload(target, STORM_TASKS, make_payload(), batch=1000, queue=storm_queue)
            await preload(target, STORM_PROBE_TASKS, make_payload(), batch=1000, queue=probe_queue)

        # Lease all of them, every lease asked to end at the same instant.
        channels = [_stub(target) for _ in range(CONSUMERS)]
        deadlines: list[float] = []
        t_lease0 = time.time()
        align_at = t_lease0 + STORM_ALIGN

        async def lease_all(index: int, stub: pb_grpc.FeederStub) -> None:
            # A worker_id per call: the feeder caps the unacked leases of one caller (1000
            # by default), and these are never acked.
            for call in itertools.count():
                duration = max(STORM_LEASE, align_at - time.time())
                request = pb.LeaseRequest(
                    queue=storm_queue,
                    max_tasks=1000,
                    worker_id=f"bench-storm-{index}-{call}",
                    lease_duration=_duration(duration),
                )
                reply = await stub.Lease(request, timeout=30)
                if not reply.tasks:
                    return
                deadlines.extend(_timestamp_seconds(t.lease_deadline) for t in reply.tasks)

        try:
            async with asyncio.timeout(options.phase_timeout):
                await asyncio.gather(*(lease_all(i, s) for i, (_, s) in enumerate(channels)))
        finally:
            for channel, _ in channels:
                await channel.close(grace=None)
        metrics["leasing_seconds"] = time.time() - t_lease0
        if len(deadlines) != STORM_TASKS:
            raise RuntimeError(f"leased {len(deadlines)} tasks, not {STORM_TASKS}")
        first, last = min(deadlines), max(deadlines)
        metrics["deadline_spread_ms"] = (last - first) * 1000

        stats = await FeederClient(target).connect()
        probe_channel, probe = _stub(target)
        await asyncio.wait_for(probe_channel.channel_ready(), 10)
        probe_lat: list[tuple[float, float]] = []  # (wall time sent, seconds)
        probe_request = pb.LeaseRequest(queue=probe_queue, max_tasks=1, worker_id="probe")

        async def probe_once() -> None:
            sent = time.time()
            t0 = time.perf_counter()
            reply = await probe.Lease(probe_request, timeout=30)
            probe_lat.append((sent, time.perf_counter() - t0))
            if reply.tasks:
                token = reply.tasks[0].lease_token
                await probe.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=token)]), timeout=30)

        async def probe_loop() -> None:
            # Open loop: a new probe every STORM_PROBE_GAP whether or not the previous one
            # was answered, so a stalled feeder shows up in many samples, not one.
            probes: set[asyncio.Task[None]] = set()
            try:
                while True:
                    task = asyncio.create_task(probe_once())
                    probes.add(task)
                    task.add_done_callback(probes.discard)
                    await asyncio.sleep(STORM_PROBE_GAP)
            finally:
                for task in list(probes):
                    task.cancel()
                await asyncio.gather(*probes, return_exceptions=True)

        # Start probing a second before the first deadline; poll until all are READY.
        await asyncio.sleep(max(0.0, first - 1.0 - time.time()))
        prober = asyncio.create_task(probe_loop())
        cpu0 = process_cpu_seconds(feeder.pid)
        try:
            async with profiled(options, "feedwork-raw.expiry-storm", {"server": (feeder.pid,)}):
                ready_at = None
                async with asyncio.timeout(options.phase_timeout):
                    while True:
                        q = await stats.stats(storm_queue)
                        now = time.time()
                        if q is not None and q.ready >= STORM_TASKS and now >= last:
                            ready_at = now
                            break
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)
        finally:
            prober.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await prober
            cpu1 = process_cpu_seconds(feeder.pid)
            await probe_channel.close(grace=None)
            q = await stats.stats(storm_queue)
            await stats.close()
        window = [s for sent, s in probe_lat if first <= sent <= ready_at]
        before = [s for sent, s in probe_lat if sent < first]
        metrics.update(
            {
                "requeue_seconds": ready_at - last,
                "requeue_from_first_deadline_seconds": ready_at - first,
                "probe_lease_ms": _ms(window),
                "probe_lease_before_ms": _ms(before),
                "expired_total": q.totals.expired if q is not None else None,
                "feeder_cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 else None,
                "how": f"{STORM_TASKS} tasks leased by 4 raw-stub clients (Lease max_tasks "
                f"1000), every lease asked to end at one instant ({STORM_LEASE:g} s or more "
                "after its grant); GetStats polled every 10 ms until all are READY; a probe "
                f"client starts a Lease(1)+Ack of another queue every {STORM_PROBE_GAP * 1000:g}"
                " ms (open loop: not waiting for the previous one) meanwhile",
            }
        )
    return [result]


# ---------------------------------------------------------------------------------------
# Scale: cost growth, recovery, memory


async def _cost_run(
    feeder: FeederProcess, n: int, options: Options, label: str
) -> tuple[float, float | None]:
    """Drains n tasks (batch 64); returns (wall seconds, feeder CPU seconds)."""
    cpu0 = process_cpu_seconds(feeder.pid)
    async with profiled(options, label, {"server": (feeder.pid,)}):
        async with asyncio.timeout(options.phase_timeout):
            seconds = await drain_count(feeder.target, n, COST_BATCH)
    cpu1 = process_cpu_seconds(feeder.pid)
    return seconds, (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None


async def cost_small(options: Options) -> list[dict[str, Any]]:
    """Per-task drain cost with about 1000 tasks queued: rounds of (submit 1000, drain
    them) until COST_SAMPLE tasks are drained; only the drains are timed."""
    result = _result("feedwork-raw", "cost-1k-queued", COST_SAMPLE)
    rounds = COST_SAMPLE // COST_SMALL_QUEUE
    wall = cpu = 0.0
    async with feeder_session() as feeder:
        for r in range(rounds):
            await preload(feeder.target, COST_SMALL_QUEUE, make_payload(), batch=100)
            label = f"feedwork-raw.cost-1k-queued.r{r:02d}"
            seconds, cpu_s = await _cost_run(feeder, COST_SMALL_QUEUE, options, label)
            wall += seconds
            cpu += cpu_s or 0.0
    result["metrics"] = {
        "queued": COST_SMALL_QUEUE,
        "drained": rounds * COST_SMALL_QUEUE,
        "seconds": wall,
        "per_task_us": wall / (rounds * COST_SMALL_QUEUE) * 1e6,
        "feeder_cpu_per_task_us": cpu / (rounds * COST_SMALL_QUEUE) * 1e6,
        "how": f"{rounds} rounds: submit {COST_SMALL_QUEUE} (untimed), drain them with 4 "
        f"raw-stub consumers at batch {COST_BATCH} (timed)",
    }
    return [result]


async def scale(options: Options) -> list[dict[str, Any]]:
    n = options.scale_tasks
    tag = f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"
    preload_r = _result("feedwork-raw", f"preload-{tag}", n)
    memory_r = _result("feedwork", f"memory-{tag}", n)
    cost_r = _result("feedwork-raw", f"cost-{tag}-queued", COST_SAMPLE)
    recovery_r = _result("feedwork", f"recovery-{tag}", n)
    results = [*(await cost_small(options)), preload_r, memory_r, cost_r, recovery_r]
    directory = new_directory()
    try:
        await _scale_phases(options, n, tag, directory, preload_r, memory_r, cost_r, recovery_r)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, TimeoutError) else "timeout"
        for r in (preload_r, memory_r, cost_r, recovery_r):
            if not r["metrics"]:
                r["status"], r["reason"] = "error", reason
    return results


async def _scale_phases(
    options: Options,
    n: int,
    tag: str,
    directory: Path,
    preload_r: dict[str, Any],
    memory_r: dict[str, Any],
    cost_r: dict[str, Any],
    recovery_r: dict[str, Any],
) -> None:
    feeder: FeederProcess | None = None
    try:
        feeder = await FeederProcess.start(directory)
        client = await FeederClient(feeder.target).connect()
        await client.stats()
        await asyncio.sleep(0.5)
        rss_empty = feeder.rss()
        t0 = time.perf_counter()
        async with asyncio.timeout(max(600.0, options.phase_timeout)):
            await preload(feeder.target, n, make_payload(), batch=1000, producers=CONSUMERS)
        seconds = time.perf_counter() - t0
        preload_r["load_avg"] = load_average()
        preload_r["metrics"] = {
            "seconds": seconds,
            "tasks_per_s": n / seconds,
            "how": "Submit batches of 1000 from 4 raw-stub producers",
        }
        q = await client.stats()
        await client.close()
        await asyncio.sleep(1.0)
        rss_full = feeder.rss()
        memory_r["load_avg"] = load_average()
        memory_r["metrics"] = {
            "queued": q.ready if q is not None else None,
            "rss_empty_bytes": rss_empty,
            "rss_queued_bytes": rss_full,
            "bytes_per_task": (rss_full - rss_empty) / n if rss_full and rss_empty else None,
            "db_bytes": _db_size(feeder.db),
        }

        # Restart: recovery of the whole database.
        t_stop = time.perf_counter()
        await feeder.stop(grace=120)
        stop_seconds = time.perf_counter() - t_stop
        feeder = None

        async def attach(pid: int) -> None:
            if options.profiler is not None:
                label = f"feedwork.recovery-{tag}.server"
                recordings.append(await options.profiler.start(label, pid))

        recordings: list[Any] = []
        try:
            feeder = await FeederProcess.start(directory, ready_timeout=300, on_spawn=attach)
            await feeder.first_lease(limit=120)
        finally:
            for handle in recordings:
                assert options.profiler is not None
                await options.profiler.stop(handle)
        recovery_r["load_avg"] = load_average()
        recovery_r["metrics"] = {
            "port_file_seconds": feeder.startup.port_file,
            "first_lease_seconds": feeder.startup.first_lease,
            "graceful_stop_seconds": stop_seconds,
            "rss_after_recovery_bytes": feeder.rss(),
            "how": "SIGTERM the feeder holding the queue, start a new one on the same file; "
            "seconds from the spawn to the port file, and to a Lease(1) that got a task",
        }
        memory_r["metrics"]["rss_after_recovery_bytes"] = feeder.rss()

        # Cost with the deep queue: drain the first COST_SAMPLE tasks.
        await asyncio.sleep(0.5)
        wall, cpu_s = await _cost_run(
            feeder, COST_SAMPLE, options, f"feedwork-raw.cost-{tag}-queued"
        )
        cost_r["load_avg"] = load_average()
        cost_r["metrics"] = {
            "queued": n - 1,
            "drained": COST_SAMPLE,
            "seconds": wall,
            "per_task_us": wall / COST_SAMPLE * 1e6,
            "feeder_cpu_per_task_us": (cpu_s or 0.0) / COST_SAMPLE * 1e6,
            "how": f"the first {COST_SAMPLE} tasks of the recovered queue, 4 raw-stub "
            f"consumers at batch {COST_BATCH}",
        }
    finally:
        if feeder is not None:
            await feeder.stop(grace=60)
        remove_directory(directory)


def _db_size(db: Path) -> int:
    return sum(
        p.stat().st_size for p in db.parent.iterdir() if p.name.startswith(db.name) and p.is_file()
    )


# ---------------------------------------------------------------------------------------
# The registry


async def _dispatch_node(options: Options) -> list[dict[str, Any]]:
    from bench.cases.feedwork_node import dispatch_node

    return await dispatch_node(options)


async def _dispatch_pg(options: Options) -> list[dict[str, Any]]:
    # bench.experiments_pg builds on this module's helpers: imported when run, not here.
    from bench.experiments_pg import dispatch_pg

    return await dispatch_pg(options)


async def _expiry_pg(options: Options) -> list[dict[str, Any]]:
    from bench.experiments_pg import expiry_pg

    return await expiry_pg(options)


@dataclass(frozen=True)
class Experiment:
    name: str
    summary: str
    run: Callable[[Options], Awaitable[list[dict[str, Any]]]]
    # Opt-in (the scale suite): not part of the default run.
    opt_in: bool = False
    # The workloads it reports, for results of a failed run.
    reports: tuple[tuple[str, str], ...] = ()


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "dispatch",
        "idle long-polling consumers, single-task Submits 2 ms apart: submit-to-receive "
        "latency (raw stubs)",
        dispatch_raw,
        reports=(("feedwork-raw", "dispatch"),),
    ),
    Experiment(
        "dispatch-sdk",
        "the same with 4 in-process worker.Worker (latency to the handler's start)",
        dispatch_sdk,
        reports=(("feedwork-sdk", "dispatch"),),
    ),
    Experiment(
        "dispatch-node",
        "the same with 4 Worker of the Node.js SDK in one node process (latency to the "
        "handler's start)",
        _dispatch_node,
        reports=(("feedwork-node", "dispatch"),),
    ),
    Experiment(
        "expiry-storm",
        "50,000 leases expiring at one instant: time until all are READY, probe Lease "
        "latency meanwhile",
        expiry_storm,
        reports=(("feedwork-raw", "expiry-storm"),),
    ),
    Experiment(
        "dispatch-pg",
        "3 feeders on one PostgreSQL database: Submit on feeder A to a long poll on B or C "
        "(raw stubs)",
        _dispatch_pg,
        reports=(("feedwork-pg-3", "dispatch"),),
    ),
    Experiment(
        "expiry-pg",
        "3 feeders on one PostgreSQL database: 300 leases of 2 s leased through all of "
        "them, how late after its deadline each is requeued",
        _expiry_pg,
        reports=(("feedwork-pg-3", "expiry"),),
    ),
    Experiment(
        "scale",
        "1M tasks queued: per-task drain cost vs 1k queued, restart recovery, feeder RSS "
        "(opt-in: --scale)",
        scale,
        opt_in=True,
        reports=(("feedwork", "scale"),),
    ),
)


async def run_experiment(experiment: Experiment, options: Options) -> list[dict[str, Any]]:
    """Runs one experiment; never raises (a failure is an error result, a missing peer
    server such as PostgreSQL a skipped one, as for a case)."""
    bound = 1800.0 if experiment.opt_in else max(120.0, 4 * options.phase_timeout)
    try:
        async with asyncio.timeout(bound):
            return await experiment.run(options)
    except Skip as exc:
        return _failed(experiment, "skipped", str(exc))
    except Exception as exc:
        status = "timeout" if isinstance(exc, TimeoutError) else "error"
        reason = f"{type(exc).__name__}: {exc}" if status == "error" else f"not done in {bound:g}s"
        return _failed(experiment, status, reason)


def _failed(experiment: Experiment, status: str, reason: str) -> list[dict[str, Any]]:
    results = []
    for case, workload in experiment.reports or (("feedwork", experiment.name),):
        r = _result(case, workload, 0)
        r["status"], r["reason"] = status, reason
        results.append(r)
    return results
