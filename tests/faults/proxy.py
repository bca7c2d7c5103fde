"""A TCP proxy that cuts and stalls connections on command, for the network fault tests.

It runs an asyncio loop in a thread of the test process and listens on 127.0.0.1:

    with ChaosProxy(("127.0.0.1", feeder.port)) as proxy:
        workers = WorkerPool(..., target=proxy.target)
        proxy.cut(refuse_for=1.0)   # reset every connection; refuse new ones for 1 s
        proxy.stall(2.0)            # forward nothing, either way, for 2 s

A cut aborts both sides of every connection (the peers see a reset), which is what a
restarting load balancer or a dropped NAT entry looks like; while refusing, new
connections are accepted and reset at once. A stall keeps connections open but holds all
data (including that of connections opened meanwhile) until it ends, which is what a
congested or partitioned link looks like to TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

CHUNK = 1 << 16
T = TypeVar("T")


class ChaosProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # reset at once while refusing
        self.cuts = 0
        self.stalls = 0
        self.connections_cut = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy")
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing: asyncio.Event | None = None
        self._refuse_until = 0.0
        self._stall_until = 0.0
        # (kind, wall-clock start, seconds) of every fault, for reports.
        self.events: list[tuple[str, float, float]] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        self.port = self._run(self._start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- commands (from the test's thread) -------------------------------------------------

    def cut(self, *, refuse_for: float = 0.0) -> int:
        """Resets every open connection; new ones are reset too for `refuse_for` seconds.
        Returns how many connections were cut."""
        return self._run(self._cut(refuse_for))

    def stall(self, seconds: float) -> None:
        """Stops forwarding in both directions for `seconds` (connections stay open)."""
        self._run(self._stall(seconds))

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    # -- the loop side -----------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(0.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _cut(self, refuse_for: float) -> int:
        self.cuts += 1
        self.events.append(("cut", time.time(), refuse_for))
        self._refuse_until = max(self._refuse_until, time.monotonic() + refuse_for)
        pairs = list(self._pairs)
        for client, upstream in pairs:
            _abort(client)
            _abort(upstream)
        self.connections_cut += len(pairs)
        return len(pairs)

    async def _stall(self, seconds: float) -> None:
        assert self._flowing is not None
        self.stalls += 1
        self.events.append(("stall", time.time(), seconds))
        self._stall_until = max(self._stall_until, time.monotonic() + seconds)
        self._flowing.clear()
        self._spawn(self._resume_later())

    async def _resume_later(self) -> None:
        assert self._flowing is not None
        while (left := self._stall_until - time.monotonic()) > 0:
            await asyncio.sleep(left)
        self._flowing.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked like the proxy's own tasks, so that stopping cancels a connection being
        # accepted too, and its socket is closed on the way out (not left to the garbage
        # collector, which warns of it in whichever test runs then).
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)
            _abort(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._refuse_until:
            self.refused += 1
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            _abort(writer)
            _abort(up_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # One direction ended: end the other too (a half-open gRPC connection is useless).
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()
