"""feedwork-node: the Node.js SDK's workers (clients/node) draining the real feeder.

As `feedwork-sdk`, with the consumers in Node.js: one ``node bench/cases/node_worker.js``
process holding 4 `Worker`s of clients/node/dist (the compiled SDK; `make node-sdk`, i.e.
``cd clients/node && npm ci && npm run build``), each on its own Consume stream, a no-op
handler that returns a 2-byte result, concurrency = the batch, default ack batching (64,
5 ms). The feeder, its fresh SQLite database and the preload (raw-stub Submits) are those
of the other feedwork cases. The Node process starts during the preload (outside the
clock) and waits for ``GO`` on stdin; the clock runs from ``GO`` (so it includes the
workers' connects, as feedwork-sdk's includes theirs) until the feeder's GetStats shows
all N completed. `cli cpu` is the Node process's CPU. Drains only.

`dispatch-node` (an experiment, `bench.experiments`): `dispatch` with the same process
holding 4 workers at concurrency 1; latency to the handler's start.

Without ``node`` (>= 20) on PATH, or without clients/node/dist, both are SKIPPED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cases.feedwork import SDK_WORKERS, _FeederCase, wait_completed
from bench.core import REPO_ROOT, Consumer, DrainState, ServerProcess, Skip, Workload
from bench.experiments import (
    CONSUMERS,
    DISPATCH_TASKS,
    Options,
    _dispatch_run,
    _result,
    feeder_session,
)
from bench.feeder_process import FeederClient
from bench.grpc_client import QUEUE

NODE_SCRIPT = Path(__file__).resolve().with_name("node_worker.js")
NODE_SDK_DIR = REPO_ROOT / "clients" / "node"
NODE_SDK = NODE_SDK_DIR / "dist" / "index.js"
BUILD_HINT = "build the Node SDK with `make node-sdk` (cd clients/node && npm ci && npm run build)"
MIN_NODE_MAJOR = 20
# Bounds on the Node process: its own lifetime, and its graceful stop at teardown.
NODE_MAX_SECONDS = 600
NODE_STOP_GRACE = 10.0
COMMAND_TIMEOUT = 10.0


def find_node() -> tuple[str, str]:
    """The node binary and its version; raises Skip when Node.js or the built SDK is
    missing (the runner prints the loud SKIPPED line with the reason)."""
    node = shutil.which("node")
    if node is None:
        raise Skip(f"node is not on PATH (Node.js >= {MIN_NODE_MAJOR}); then {BUILD_HINT}")
    if not NODE_SDK.is_file():
        raise Skip(f"{NODE_SDK.relative_to(REPO_ROOT)} is missing: {BUILD_HINT}")
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise Skip(f"{node} --version failed: {exc}") from exc
    version = out.stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError as exc:
        raise Skip(f"{node} --version said {version!r}") from exc
    if major < MIN_NODE_MAJOR:
        raise Skip(f"{node} is Node.js {version}; the Node SDK needs >= {MIN_NODE_MAJOR}")
    return node, version


def _package_version(directory: Path) -> str:
    try:
        version = json.loads((directory / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return "?"
    return str(version)


def node_client_info(version: str) -> str:
    grpc_js = _package_version(NODE_SDK_DIR / "node_modules" / "@grpc" / "grpc-js")
    return (
        f"Node.js {version}, @feedwork/client {_package_version(NODE_SDK_DIR)} "
        f"(clients/node/dist, @grpc/grpc-js {grpc_js})"
    )


class NodeWorkers:
    """One node_worker.js process: `workers` Node SDK workers, held until :meth:`go`.

    Reads the process's stdout: ``L seconds`` lines (dispatch mode) go to `latencies`,
    ``STATS``/``DONE`` carry the workers' summed counters, ``FAILED`` (a worker's run()
    failed) and the end of stdout (the process exited) end :meth:`wait_failed`."""

    def __init__(self, process: ServerProcess, latencies: list[float] | None) -> None:
        self.process = process
        self.latencies = latencies
        self.failure: str | None = None
        self.counters_at_exit: dict[str, int] | None = None
        self._failed = asyncio.Event()
        self._stats: asyncio.Queue[dict[str, int]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        node: str,
        target: str,
        *,
        workers: int,
        concurrency: int,
        mode: str = "drain",
        worker_id: str = "bench-node",
        latencies: list[float] | None = None,
    ) -> NodeWorkers:
        argv = [
            node,
            str(NODE_SCRIPT),
            "--sdk",
            str(NODE_SDK),
            "--target",
            target,
            "--queue",
            QUEUE,
            "--workers",
            str(workers),
            "--concurrency",
            str(concurrency),
            "--mode",
            mode,
            "--grace",
            "0",
            "--worker-id",
            worker_id,
            "--max-seconds",
            str(NODE_MAX_SECONDS),
        ]
        process = await ServerProcess.spawn(argv, "node_worker.js")
        return cls(process, latencies)

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    async def _read(self) -> None:
        stdout = self.process.proc.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                kind, _, rest = line.decode(errors="replace").strip().partition(" ")
                if kind == "L" and self.latencies is not None:
                    self.latencies.append(float(rest))
                elif kind == "STATS":
                    self._stats.put_nowait(json.loads(rest))
                elif kind == "DONE":
                    self.counters_at_exit = json.loads(rest)
                elif kind == "FAILED":
                    self.failure = self.failure or rest
                    self._failed.set()
        finally:
            self._failed.set()

    async def _send(self, command: bytes) -> None:
        stdin = self.process.proc.stdin
        assert stdin is not None
        stdin.write(command + b"\n")
        await stdin.drain()

    async def go(self) -> None:
        await self._send(b"GO")

    async def stats(self) -> dict[str, int]:
        """The workers' counters (summed): leased, succeeded, acked, ..."""
        await self._send(b"STATS")
        return await asyncio.wait_for(self._stats.get(), COMMAND_TIMEOUT)

    async def wait_failed(self) -> str:
        """Returns once a worker failed or the process's stdout ended; says which."""
        await self._failed.wait()
        if self.failure is not None:
            return f"a Node worker failed: {self.failure}"
        return f"the node process exited (rc={self.process.proc.returncode})"

    async def stop(self) -> None:
        """EOF on its stdin: the workers stop gracefully and the process exits (SIGKILL
        after NODE_STOP_GRACE)."""
        try:
            await self.process.stop(grace=NODE_STOP_GRACE, terminate=False)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader.cancel()


class FeedworkNodeCase(_FeederCase):
    name = "feedwork-node"
    summary = (
        "python -m feeder (SQLite), 4 Worker of the Node.js SDK (clients/node) in one node "
        "process (Consume streams), no-op handler; drains only"
    )
    drives_drain = True

    @classmethod
    def supports(cls, workload: Workload) -> bool:
        return workload.kind == "drain"

    def __init__(self) -> None:
        super().__init__()
        self.node: str | None = None
        self.node_version = "?"
        self.workers: NodeWorkers | None = None
        self.batch = 1

    async def check(self) -> None:
        self.node, self.node_version = find_node()

    async def info(self) -> dict[str, Any]:
        return {**await super().info(), "client": node_client_info(self.node_version)}

    async def setup(self, n: int, workload: Workload) -> None:
        await super().setup(n, workload)
        self.batch = workload.batch
        self.workers = None

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        raise NotImplementedError  # drives its own drain

    async def preload(self, n: int, payload: bytes) -> None:
        await super().preload(n, payload)
        # The node process starts here (outside the clock) and waits for GO.
        assert self.node is not None
        self.workers = await NodeWorkers.start(
            self.node, self.target, workers=SDK_WORKERS, concurrency=self.batch
        )

    def client_pids(self) -> Sequence[int]:
        return () if self.workers is None else (self.workers.pid,)

    async def drain(self, n: int, workload: Workload, state: DrainState) -> float:
        workers = self.workers
        assert workers is not None
        stats = await FeederClient(self.target).connect()
        waiter: asyncio.Task[int] | None = None
        failed = asyncio.create_task(workers.wait_failed())
        try:
            t0 = time.perf_counter()
            await workers.go()
            waiter = asyncio.create_task(wait_completed(stats, n))
            await asyncio.wait([waiter, failed], return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                raise RuntimeError(f"the Node workers stopped early: {failed.result()}")
            seconds = time.perf_counter() - t0
            state.acked = waiter.result()
        finally:
            for task in (waiter, failed):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (waiter, failed) if t), return_exceptions=True)
            await stats.close()
        # Outside the clock (the CPU snapshot after the drain includes this one line).
        state.leased = (await workers.stats())["leased"]
        state.leases = 0
        return seconds

    async def teardown(self) -> None:
        workers, self.workers = self.workers, None
        try:
            if workers is not None:
                await workers.stop()
        finally:
            await super().teardown()


async def dispatch_node(options: Options) -> list[dict[str, Any]]:
    """The `dispatch` experiment with the Node SDK: one node process holding 4 workers at
    concurrency 1 (Consume streams); latency to the handler's start (``L`` lines)."""
    node, version = find_node()
    result = _result(FeedworkNodeCase.name, "dispatch", DISPATCH_TASKS)
    async with feeder_session() as feeder:

        async def start(latencies: list[float], _: asyncio.Event) -> Any:
            workers = await NodeWorkers.start(
                node,
                feeder.target,
                workers=CONSUMERS,
                concurrency=1,
                mode="dispatch",
                worker_id="bench-node-dispatch",
                latencies=latencies,
            )
            try:
                await workers.go()
            except BaseException:
                await workers.stop()
                raise
            return workers.stop

        # py-spy cannot sample the node process: the feeder only.
        pids = {"server": (feeder.pid,)}
        result["metrics"] = await _dispatch_run(
            feeder.target, start, options, "feedwork-node.dispatch", pids
        )
    result["metrics"]["how"] = (
        f"{CONSUMERS} Worker of the Node.js SDK in one node process (concurrency 1, Consume "
        "streams), the handler records its start; otherwise as feedwork-raw dispatch"
    )
    result["info"] = {"client": node_client_info(version)}
    return [result]
