"""The real feeder (`python -m feeder`) in a process of its own, on a SQLite file or a
PostgreSQL database.

`FeederProcess.start(directory)` runs ``python -m feeder --listen 127.0.0.1:0 --port-file F
--db D`` with D and F in `directory` (or, with ``db=URL``, D is that PostgreSQL URL and only
F is in `directory`), and returns once the port file appears (its timing is the `startup`
of the result: process start to port file). The feeder cannot outlive the
benchmark: it is started with PR_SET_PDEATHSIG (SIGKILL when the benchmark process dies,
via setpriv), and `stop()` sends SIGTERM (graceful: the store is flushed), then SIGKILL
after a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.core import REPO_ROOT, die_with_parent, subprocess_env
from bench.grpc_client import QUEUE, bench_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

DB_NAME = "feedwork.db"
PORT_FILE = "feeder.port"


def rss_bytes(pid: int) -> int | None:
    """Resident set size (VmRSS of /proc/PID/status), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Startup:
    """Seconds from just before the process was spawned."""

    port_file: float
    first_lease: float | None = None


class FeederProcess:
    def __init__(
        self, proc: asyncio.subprocess.Process, directory: Path, port: int, spawned_at: float
    ) -> None:
        self.proc = proc
        self.directory = directory
        self.port = port
        # time.perf_counter() just before the process was spawned.
        self.spawned_at = spawned_at
        self.startup = Startup(port_file=time.perf_counter() - spawned_at)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def db(self) -> Path:
        """The SQLite file (unless started with a PostgreSQL URL)."""
        return self.directory / DB_NAME

    @classmethod
    async def start(
        cls,
        directory: Path,
        *extra: str,
        ready_timeout: float = 120.0,
        log_level: str = "warning",
        on_spawn: Callable[[int], Awaitable[object]] | None = None,
        db: str | None = None,
    ) -> FeederProcess:
        """Spawns the feeder; returns once its port file exists. `on_spawn(pid)` runs right
        after the spawn (e.g. to attach a profiler to the start-up). `db`: a PostgreSQL URL
        instead of a SQLite file in `directory` (the feeder migrates it at start)."""
        port_file = _prepare(directory)
        t0 = time.perf_counter()
        argv = [
            sys.executable,
            "-m",
            "feeder",
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--db",
            db or str(directory / DB_NAME),
            "--log-level",
            log_level,
            *extra,
        ]
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(argv),
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            if on_spawn is not None:
                await on_spawn(proc.pid)
            async with asyncio.timeout(ready_timeout):
                while True:
                    if proc.returncode is not None:
                        raise RuntimeError(f"feeder exited before listening (rc={proc.returncode})")
                    port = _read_port(port_file)
                    if port:
                        break
                    await asyncio.sleep(0.002)
        except BaseException:
            await _stop(proc, 2.0)
            raise
        return cls(proc, directory, port, t0)

    async def first_lease(self, queue: str = QUEUE, limit: float = 60.0) -> float:
        """Seconds from the spawn until a Lease of one task from `queue` succeeded (the
        task is acked). Sets `startup.first_lease`."""
        async with bench_channel(self.target) as channel:
            stub = pb_grpc.FeederStub(channel)
            request = pb.LeaseRequest(queue=queue, max_tasks=1, worker_id="bench-probe")
            request.wait.FromMilliseconds(1000)
            async with asyncio.timeout(limit):
                while True:
                    try:
                        reply = await stub.Lease(request, timeout=10)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        await asyncio.sleep(0.005)
                        continue
                    if reply.tasks:
                        break
            seconds = time.perf_counter() - self.spawned_at
            token = reply.tasks[0].lease_token
            await stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=token)]), timeout=10)
        self.startup.first_lease = seconds
        return seconds

    def rss(self) -> int | None:
        return rss_bytes(self.pid)

    async def stop(self, grace: float = 30.0) -> int | None:
        return await _stop(self.proc, grace)


def _prepare(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / PORT_FILE
    with contextlib.suppress(FileNotFoundError):
        port_file.unlink()
    return port_file


def _read_port(port_file: Path) -> int | None:
    """The port once the feeder wrote it (it writes the file atomically)."""
    try:
        return int(port_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


async def _stop(proc: asyncio.subprocess.Process, grace: float) -> int | None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode


class FeederClient:
    """Raw grpc.aio stubs for the benchmark's own calls (Submit, GetStats), one channel."""

    def __init__(self, target: str) -> None:
        self.channel = bench_channel(target)
        self.stub = pb_grpc.FeederStub(self.channel)

    async def connect(self, ready_timeout: float = 10.0) -> FeederClient:
        await asyncio.wait_for(self.channel.channel_ready(), ready_timeout)
        return self

    async def submit(self, payloads: list[bytes], queue: str = QUEUE, **spec: Any) -> None:
        request = pb.SubmitRequest(
            tasks=[pb.TaskSpec(queue=queue, payload=p, **spec) for p in payloads]
        )
        await self.stub.Submit(request, timeout=60)

    async def stats(self, queue: str = QUEUE) -> pb.QueueStats | None:
        reply = await self.stub.GetStats(pb.GetStatsRequest(queues=[queue]), timeout=30)
        for q in reply.queues:
            if q.queue == queue:
                return q
        return None

    async def close(self) -> None:
        await self.channel.close(grace=None)


async def preload(
    target: str | Sequence[str],
    n: int,
    payload: bytes,
    *,
    batch: int = 100,
    producers: int = 4,
    queue: str = QUEUE,
) -> None:
    """Submits n tasks in batches with `producers` concurrent clients (own channels);
    given several feeders (of one database), client i submits through feeder i % N."""
    targets = [target] if isinstance(target, str) else list(target)
    clients = [await FeederClient(targets[i % len(targets)]).connect() for i in range(producers)]
    left = [n]

    async def produce(client: FeederClient) -> None:
        while left[0] > 0:
            k = min(batch, left[0])
            left[0] -= k
            await client.submit([payload] * k, queue=queue)

    try:
        await asyncio.gather(*(produce(c) for c in clients))
    finally:
        for client in clients:
            await client.close()
