"""``python -m bench.loop_stall_feeder FEEDER-OPTIONS...``: the real feeder (the
`FeederServer` of ``python -m feeder``, same options, same full-collection schedule), with
a line protocol on stdin and stdout through which `bench.loop_stall` reads its event-loop
lag probe (`FeederServer.loop_lag`) between the phases of the experiment:

- out ``READY {"port": N}`` once it listens;
- in ``LAG``: out ``LAG {json}``, the probe's window since the last ``LAG`` (samples,
  worst and total lag in seconds, stalls over the threshold), and the most CPU time one
  turn of the loop took meanwhile (``worst_turn_cpu``, see `CallbackTrace`); a new window
  starts;
- in ``JANITOR``: the janitor's retention purge as its loop runs it (`Store.purge_finished`
  of up to `janitor.BATCH` tasks, again while a step purges a full batch), with a
  retention of 0: every completed and cancelled task goes; out ``JANITOR {"purged": N}``.

Every turn of the loop is timed (about a microsecond each). With ``--trace`` (the first
argument) every callback is too, and the ``LAG`` answer also names the slowest of the
window (``slowest``: CPU ms and the callback, for a Task the coroutines it stopped in
next): where a stall came from.

It stops (gracefully, the store flushed) on stdin EOF or SIGTERM, so it cannot outlive the
benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from feeder.__main__ import build_parser
from feeder.config import load_settings
from feeder.server.app import FeederServer
from feeder.server.collector import scheduled_full_collections
from feeder.service.janitor import BATCH

# The slowest few callbacks per window are named with --trace.
TRACE_KEEP = 5


class CallbackTrace:
    """Times every turn of the loop (patches asyncio's BaseEventLoop._run_once, and with
    `describe` Handle._run, process-wide) in CPU time of the loop's thread: how long the
    loop was held, which a loaded machine inflates much less than the wall time (that also
    counts the waits for a core). With `describe`, the slowest callbacks are named."""

    def __init__(self, *, describe: bool) -> None:
        self._describe = describe
        self.worst = 0.0
        self.slowest: list[tuple[float, str]] = []

    def install(self) -> None:
        run = asyncio.events.Handle._run
        run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
        cpu = time.thread_time
        trace = self

        def timed_turn(loop: asyncio.AbstractEventLoop) -> None:
            # A turn runs every callback ready at its start: a timer due meanwhile, or a
            # call that arrived, waits for all of them. (Waiting in select uses no CPU.)
            started = cpu()
            run_once(loop)
            took = cpu() - started
            if took > trace.worst:
                trace.worst = took

        def timed(handle: asyncio.Handle) -> None:
            started = cpu()
            run(handle)
            took = cpu() - started
            if len(trace.slowest) < TRACE_KEEP or took > trace.slowest[-1][0]:
                trace.note(took, handle)

        asyncio.base_events.BaseEventLoop._run_once = timed_turn  # type: ignore[attr-defined]
        if self._describe:
            asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def note(self, took: float, handle: asyncio.Handle) -> None:
        self.slowest.append((took, _describe(handle)))
        self.slowest.sort(reverse=True)
        del self.slowest[TRACE_KEEP:]

    def take(self) -> dict[str, Any]:
        """The window since the last take: the most CPU one turn used (seconds), and with
        --trace the slowest callbacks (ms, what)."""
        window: dict[str, Any] = {"worst_turn_cpu": self.worst}
        if self._describe:
            window["slowest"] = [(round(took * 1000, 2), what) for took, what in self.slowest]
        self.worst, self.slowest = 0.0, []
        return window


def _describe(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro: Any = task.get_coro()
        frames: list[str] = []
        while coro is not None and len(frames) < 8:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is None:
                break
            frames.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        return f"task {task.get_name()} " + " > ".join(frames)
    return repr(handle)[:200]


_trace = CallbackTrace(describe=False)


async def _answer(server: FeederServer, command: str) -> str:
    if command == "LAG":
        return f"LAG {json.dumps(asdict(server.loop_lag.take()) | _trace.take())}"
    if command == "JANITOR":
        purged = 0
        while True:
            step = await server.store.purge_finished(finished_before=time.time(), limit=BATCH)
            purged += step
            if step < BATCH:
                return f"JANITOR {json.dumps({'purged': purged})}"
            await asyncio.sleep(0)
    return f"ERROR unknown command {command!r}"


async def _serve(argv: list[str]) -> None:
    settings = load_settings(vars(build_parser("bench.loop_stall_feeder").parse_args(argv)))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    server = FeederServer(settings)
    port = await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"READY {json.dumps({'port': port})}", flush=True)

    async def commands() -> None:
        while line := await reader.readline():
            print(await _answer(server, line.decode().strip()), flush=True)
        stop.set()  # stdin EOF: the benchmark is gone or done

    try:
        async with scheduled_full_collections():
            reading = asyncio.create_task(commands())
            await stop.wait()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    finally:
        await server.stop(1.0)


def main() -> None:
    global _trace
    argv = sys.argv[1:]
    if argv[:1] == ["--trace"]:
        argv = argv[1:]
        _trace = CallbackTrace(describe=True)
    _trace.install()
    asyncio.run(_serve(argv))


if __name__ == "__main__":
    main()
