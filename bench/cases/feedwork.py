"""feedwork itself: the real feeder process (`python -m feeder`) on its durable SQLite store.

Every workload gets a fresh feeder on a fresh database in a temporary directory
(``--listen 127.0.0.1:0 --port-file F --db D``, default ``--sync full``). The preload is
Submit batches of 100 tasks from 4 concurrent clients (raw grpc.aio stubs, no idempotency
keys). Three ways to drain it:

- feedwork-raw: the runner's 4 consumers on raw grpc.aio stubs (`bench.grpc_client`):
  Lease(max_tasks=b) then one Ack of every leased token, as for the floor case.
- feedwork-sdk: the worker SDK, `worker.Worker`, 4 instances in the benchmark process
  (`run_async`; their 4 channels have equal arguments, so gRPC gives them one TCP
  connection), an async no-op handler, concurrency b (64 for batch 64, 1 for batch 1:
  the worker leases as many tasks as it has free slots, so that is its batch), default
  ack batching (64 per Ack, 5 ms flush interval). The clock runs from starting the
  workers until the feeder's GetStats shows all N completed (polled every 2 ms near the
  end, up to 50 ms apart before), so it includes the channel connect.
- feedwork-sdk-procs: the same as 4 `python -m worker` processes (held at the starting
  line by `bench.cases.sdk_worker` so that the interpreter start is not timed; their
  start is in `preload s`). Client CPU is the sum of the 4 worker processes. Batched
  drains only.

Submit workloads: feedwork-raw submits with raw stubs (no idempotency keys);
feedwork-sdk with the producer SDK, `AsyncFeederClient.submit_many`, which gives every
task a generated idempotency key (stored and indexed by the feeder).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.core import (
    REPO_ROOT,
    Case,
    Consumer,
    DrainState,
    Producer,
    ServerProcess,
    Workload,
)
from bench.feeder_process import FeederClient, FeederProcess, preload
from bench.grpc_client import QUEUE, FeederConsumer

PRELOAD_BATCH = 100
PRELOAD_PRODUCERS = 4
STATS_POLL = 0.002
STATS_POLL_MAX = 0.05
SDK_WORKERS = 4


def _git_describe() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "feeder", "worker", "feedwork"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    changed = [line[3:] for line in dirty.stdout.splitlines() if line[3:]]
    return out.stdout.strip() + (f" + uncommitted {', '.join(changed)}" if changed else "")


def new_directory() -> Path:
    return Path(tempfile.mkdtemp(prefix="feedwork-bench-"))


def remove_directory(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class RawProducer(Producer):
    def __init__(self, client: FeederClient) -> None:
        self.client = client

    async def submit(self, payloads: Sequence[bytes]) -> None:
        await self.client.submit(list(payloads))

    async def close(self) -> None:
        await self.client.close()


class _FeederCase(Case):
    """A fresh feeder per workload; preload through Submit; verify through GetStats."""

    # The feeder's --sync mode; None: its default (full).
    sync: str | None = None

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.feeder: FeederProcess | None = None
        self.consumers: list[FeederConsumer] = []

    async def info(self) -> dict[str, Any]:
        durability = (
            "SQLite WAL, synchronous=NORMAL (--sync normal): group commit, durable against a "
            "process crash, no fsync per commit"
            if self.sync == "normal"
            else "SQLite WAL, synchronous=FULL (feeder default): group commit, one fsync per "
            "commit before its replies, durable against power loss"
        )
        return {
            "server": f"feedwork {_git_describe()} (python -m feeder, grpcio {grpc.__version__})",
            "client": f"grpcio {grpc.__version__}",
            "durability": durability,
        }

    @property
    def target(self) -> str:
        assert self.feeder is not None
        return self.feeder.target

    async def setup(self, n: int, workload: Workload) -> None:
        self.consumers = []
        self.directory = new_directory()
        extra = ("--sync", self.sync) if self.sync else ()
        self.feeder = await FeederProcess.start(self.directory, *extra)

    async def preload(self, n: int, payload: bytes) -> None:
        await preload(self.target, n, payload, batch=PRELOAD_BATCH, producers=PRELOAD_PRODUCERS)

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        return RawProducer(await FeederClient(self.target).connect())

    async def _stats(self) -> dict[str, int]:
        client = await FeederClient(self.target).connect()
        try:
            q = await client.stats()
        finally:
            await client.close()
        if q is None:
            return {}
        return {
            "ready": q.ready,
            "leased": q.leased,
            "scheduled": q.scheduled,
            "completed": q.completed,
            "dead": q.dead,
            "expired": q.totals.expired,
            "duplicate_acks": q.totals.duplicate_acks,
        }

    async def verify(self, n: int) -> dict[str, Any]:
        stats = await self._stats()
        if stats.get("completed") != n or stats.get("ready") or stats.get("leased"):
            raise RuntimeError(f"feeder stats after the drain: {stats}")
        return {**stats, "not_acked": sum(c.not_acked for c in self.consumers)}

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        stats = await self._stats()
        if stats.get("ready") != n:
            raise RuntimeError(f"feeder holds {stats.get('ready')} ready tasks, not {n}")
        return stats

    def server_pids(self) -> Sequence[int]:
        return () if self.feeder is None else (self.feeder.pid,)

    async def teardown(self) -> None:
        if self.feeder is not None:
            feeder, self.feeder = self.feeder, None
            await feeder.stop()
        remove_directory(self.directory)
        self.directory = None


class FeedworkRawCase(_FeederCase):
    name = "feedwork-raw"
    summary = "python -m feeder (SQLite), raw grpc.aio stubs: Lease(max_tasks=b) + Ack"

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        consumer = FeederConsumer(self.target, index, workload.batch)
        self.consumers.append(consumer)
        return await consumer.connect()


class FeedworkRawNormalCase(FeedworkRawCase):
    name = "feedwork-raw-normal"
    summary = "feedwork-raw with --sync normal (no fsync per commit): the cost of the default"
    sync = "normal"


async def wait_completed(client: FeederClient, n: int) -> int:
    """Polls GetStats until the queue shows n completed tasks; returns the count.

    Every 2 ms near the end, less often before (a quarter of the time left at the rate so
    far, at most 50 ms): a few dozen calls per second, not a load on the feeder."""
    t0 = time.perf_counter()
    while True:
        stats = await client.stats()
        done = 0 if stats is None else stats.completed
        if done >= n:
            return done
        elapsed = time.perf_counter() - t0
        left = (n - done) * elapsed / done if done else 1.0
        await asyncio.sleep(min(STATS_POLL_MAX, max(STATS_POLL, left / 4)))


class SdkProducer(Producer):
    """The producer SDK: `AsyncFeederClient.submit_many` of b `TaskSpec`s (one Submit; the
    client gives each task a generated idempotency key, which the feeder stores)."""

    def __init__(self, target: str) -> None:
        from feedwork import AsyncFeederClient

        self.client = AsyncFeederClient(target)

    async def submit(self, payloads: Sequence[bytes]) -> None:
        from feedwork import TaskSpec

        await self.client.submit_many([TaskSpec(queue=QUEUE, payload=p) for p in payloads])

    async def close(self) -> None:
        await self.client.close()


class FeedworkSdkCase(_FeederCase):
    name = "feedwork-sdk"
    summary = (
        "python -m feeder (SQLite), 4 worker.Worker in-process (Consume streams), async no-op "
        "handler; submit: AsyncFeederClient.submit_many"
    )
    drives_drain = True
    transport = "stream"

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        return SdkProducer(self.target)

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        raise NotImplementedError  # drives its own drain

    async def drain(self, n: int, workload: Workload, state: DrainState) -> float:
        from bench.cases.sdk_handlers import noop
        from worker import Worker

        workers = [
            Worker(
                target=self.target,
                queue=QUEUE,
                handler=noop,
                concurrency=workload.batch,
                worker_id=f"bench-sdk-{i}",
                grace=0,
                transport=self.transport,
            )
            for i in range(SDK_WORKERS)
        ]
        stats = await FeederClient(self.target).connect()
        runs: list[asyncio.Task[None]] = []
        try:
            t0 = time.perf_counter()
            runs = [asyncio.create_task(w.run_async()) for w in workers]
            waiter = asyncio.create_task(wait_completed(stats, n))
            await asyncio.wait([waiter, *runs], return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                failed = next(r for r in runs if r.done())
                raise RuntimeError(f"a worker stopped early: {failed.exception()!r}")
            seconds = time.perf_counter() - t0
            state.acked = waiter.result()
        finally:
            for w in workers:
                w.stop(now=True)
            if runs:
                with contextlib.suppress(Exception):
                    await asyncio.wait(runs, timeout=10)
                for r in runs:
                    r.cancel()
            await stats.close()
        state.leased = sum(w.counters.leased for w in workers)
        state.leases = 0
        return seconds


class FeedworkSdkUnaryCase(FeedworkSdkCase):
    name = "feedwork-sdk-unary"
    summary = "feedwork-sdk with transport='unary': Lease, Ack and Nack calls instead of streams"
    transport = "unary"

    @classmethod
    def supports(cls, workload: Workload) -> bool:
        return workload.kind == "drain"


class FeedworkSdkProcsCase(_FeederCase):
    name = "feedwork-sdk-procs"
    summary = (
        "python -m feeder (SQLite), 4 python -m worker processes, async no-op handler "
        "(batched drains only)"
    )
    drives_drain = True

    @classmethod
    def supports(cls, workload: Workload) -> bool:
        # Batch 1 through the SDK is feedwork-sdk's row; this one would add half a minute.
        return workload.kind == "drain" and workload.batch > 1

    def __init__(self) -> None:
        super().__init__()
        self.workers: list[ServerProcess] = []
        self.batch = 1

    async def setup(self, n: int, workload: Workload) -> None:
        await super().setup(n, workload)
        self.batch = workload.batch
        self.workers = []

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        raise NotImplementedError  # drives its own drain

    async def preload(self, n: int, payload: bytes) -> None:
        await super().preload(n, payload)
        # The worker processes start here (outside the clock) and wait for GO.
        for i in range(SDK_WORKERS):
            self.workers.append(
                await ServerProcess.start(
                    "bench.cases.sdk_worker",
                    "--target",
                    self.target,
                    "--queue",
                    QUEUE,
                    "--handler",
                    "bench.cases.sdk_handlers:noop",
                    "--concurrency",
                    str(self.batch),
                    "--grace",
                    "0",
                    "--worker-id",
                    f"bench-sdk-proc-{i}",
                    "--log-level",
                    "WARNING",
                )
            )

    def client_pids(self) -> Sequence[int]:
        return tuple(w.proc.pid for w in self.workers)

    async def drain(self, n: int, workload: Workload, state: DrainState) -> float:
        stats = await FeederClient(self.target).connect()
        try:
            t0 = time.perf_counter()
            for w in self.workers:
                assert w.proc.stdin is not None
                w.proc.stdin.write(b"GO\n")
            await asyncio.gather(*(w.proc.stdin.drain() for w in self.workers))  # type: ignore[union-attr]
            state.acked = await wait_completed(stats, n)
            seconds = time.perf_counter() - t0
        finally:
            await stats.close()
        state.leased = state.acked  # counted by the worker processes, not visible here
        return seconds

    async def teardown(self) -> None:
        workers, self.workers = self.workers, []
        # EOF on their stdin stops them gracefully (one SIGTERM; a second would be "now").
        await asyncio.gather(
            *(w.stop(grace=10, terminate=False) for w in workers), return_exceptions=True
        )
        await super().teardown()
