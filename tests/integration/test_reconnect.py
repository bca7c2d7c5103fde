"""How soon clients come back after a feeder restart: every time as soon as the first time.

A worker's Consume stream waits for gRPC to reconnect while no feeder answers, and its
backoff starts afresh once a feeder has accepted a stream, so the eighth restart is
survived as quickly as the first. (The restarts here come as soon as the stream is
accepted: a stream that broke before bringing anything or lasting a second did not count
as working, and the backoff grew from restart to restart.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from pathlib import Path

from feeder.config import Settings
from feeder.server.app import FeederServer
from worker import Task, Worker

RESTARTS = 8
DOWN_FOR = 0.5
# A fresh worker finds a feeder that is back within this long (gRPC's reconnect backoff
# starts at 250 ms). Before, the waits grew with each restart to 5 s.
BACK_WITHIN = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def noop(task: Task) -> None:
    return None


def accepted(worker: Worker) -> bool:
    parts = worker._parts
    return parts is not None and parts.stream is not None and parts.stream._accepted


async def test_a_worker_reconnects_as_fast_after_many_restarts(tmp_path: Path) -> None:
    settings = Settings(
        listen=f"127.0.0.1:{free_port()}", db=str(tmp_path / "feedwork.db"), shutdown_grace=0.2
    )
    server = FeederServer(settings)
    await server.start()
    worker = Worker(target=server.address, queue="q", handler=noop)
    running = asyncio.create_task(worker.run_async())
    delays = []
    try:
        for _ in range(RESTARTS):
            began = time.monotonic()
            # Up to the moment the worker knows its stream was accepted, and no longer:
            # it broke before bringing anything (no task is ready) or lasting a second.
            while not accepted(worker):
                assert time.monotonic() - began < 10, "the worker never opened its stream"
                await asyncio.sleep(0.005)
            await server.stop(0.2)
            await asyncio.sleep(DOWN_FOR)
            server = FeederServer(dataclasses.replace(settings))
            await server.start()
            began = time.monotonic()
            while not server.servicer.streams:
                await asyncio.sleep(0.01)
                if time.monotonic() - began > 10:
                    break
            delays.append(round(time.monotonic() - began, 2))
        assert max(delays) < BACK_WITHIN, delays
    finally:
        worker.stop(now=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        await server.stop(0)
