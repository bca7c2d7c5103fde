"""``python -m bench.loop_stall_probe TARGET TASK_ID``: the probe client of
`bench.loop_stall`, in a process of its own so that the hostile clients' work does not
delay it: a GetTask of TASK_ID every PROBE_GAP seconds, open loop (it does not wait for
the previous call, so a stalled feeder shows in every call it delays).

Line protocol: out ``READY {"port": 0}`` once connected; in ``MARK``, out ``MARK {json}``:
p50, p99 and max latency (ms) and the count of the calls that finished since the last
``MARK`` (a call that spans a mark counts at the one after it ends); in ``ERRORS``, out
``ERRORS {"errors": N}``, failed calls so far. Exits on stdin EOF or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import grpc

from bench.core import latency_summary
from bench.grpc_client import bench_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

PROBE_GAP = 0.005
RPC_TIMEOUT = 60.0


class ProbeClient:
    """GetTask of one task every PROBE_GAP seconds, open loop."""

    def __init__(self, target: str, task_id: str) -> None:
        self._channel = bench_channel(target)
        self._stub = pb_grpc.FeederStub(self._channel)
        self._request = pb.GetTaskRequest(task_id=task_id)
        self._latencies: list[float] = []
        self._running: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.errors = 0

    async def start(self) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), 10)
        self._ticker = asyncio.create_task(self._tick())

    def mark(self) -> dict[str, float | None]:
        """The latencies (ms) of the calls that finished since the last mark."""
        done, self._latencies = self._latencies, []
        return latency_summary(done)

    async def _tick(self) -> None:
        next_at = time.perf_counter()
        while True:
            call = asyncio.create_task(self._one())
            self._running.add(call)
            call.add_done_callback(self._running.discard)
            next_at += PROBE_GAP
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def _one(self) -> None:
        started = time.perf_counter()
        try:
            await self._stub.GetTask(self._request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError:
            self.errors += 1
            return
        self._latencies.append(time.perf_counter() - started)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for call in list(self._running):
            call.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._channel.close(grace=None)


async def _serve(target: str, task_id: str) -> None:
    probe = ProbeClient(target, task_id)
    await probe.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopping = asyncio.current_task()
    assert stopping is not None
    loop.add_signal_handler(signal.SIGTERM, stopping.cancel)
    print(f"READY {json.dumps({'port': 0})}", flush=True)
    try:
        while line := await reader.readline():
            command = line.decode().strip()
            if command == "MARK":
                print(f"MARK {json.dumps(probe.mark())}", flush=True)
            elif command == "ERRORS":
                print(f"ERRORS {json.dumps({'errors': probe.errors})}", flush=True)
            else:
                print(f"ERROR unknown command {command!r}", flush=True)
    except asyncio.CancelledError:
        pass
    finally:
        await probe.stop()


def main() -> None:
    asyncio.run(_serve(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
