"""The "floor" server: feedwork.v1.Feeder with only Lease and Ack, and no logic at all.

Run as ``python -m bench.cases.floor_server --tasks N`` (the floor case does this). It
builds N LeasedTask messages up front, listens on 127.0.0.1 (ephemeral port), prints
``READY {"port": ...}`` and serves until SIGTERM/SIGINT, --max-seconds, or (with
--watch-stdin) EOF on stdin, i.e. the benchmark went away.

Lease pops up to max_tasks prebuilt messages from a deque (an empty reply when it is
empty; `wait` is ignored). Ack answers ACKED for every item without looking at it (the
real feeder also sets AckResult.task_id, a few more bytes per item). Submit stores
nothing and answers one SubmitResult (a fresh task id, READY) per task: the floor of a
Submit call, parsing and replying only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import signal
import struct
import sys
import time

import grpc

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

_TOKEN_BODY = struct.Struct(">BQI")  # same shape as feeder.core.tokens: version, id, attempt


def build_tasks(n: int, payload: bytes, queue: str) -> collections.deque[pb.LeasedTask]:
    tag = os.urandom(16)
    deadline = int(time.time()) + 3600
    tasks: collections.deque[pb.LeasedTask] = collections.deque()
    for task_id in range(1, n + 1):
        raw = _TOKEN_BODY.pack(1, task_id, 1) + tag
        token = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        task = pb.LeasedTask(
            task_id=str(task_id),
            queue=queue,
            payload=payload,
            attempt=1,
            lease_token=token,
            max_attempts=3,
        )
        task.lease_deadline.seconds = deadline
        tasks.append(task)
    return tasks


class FloorFeeder(pb_grpc.FeederServicer):
    def __init__(self, tasks: collections.deque[pb.LeasedTask]) -> None:
        self.tasks = tasks
        self.next_id = 1

    async def Submit(self, request: pb.SubmitRequest, context: object) -> pb.SubmitResponse:
        first, self.next_id = self.next_id, self.next_id + len(request.tasks)
        ready = pb.TASK_STATE_READY
        return pb.SubmitResponse(
            results=[
                pb.SubmitResult(task_id=str(first + i), state=ready)
                for i in range(len(request.tasks))
            ]
        )

    async def Lease(self, request: pb.LeaseRequest, context: object) -> pb.LeaseResponse:
        tasks = self.tasks
        k = min(request.max_tasks, len(tasks))
        return pb.LeaseResponse(tasks=[tasks.popleft() for _ in range(k)])

    async def Ack(self, request: pb.AckRequest, context: object) -> pb.AckResponse:
        acked = pb.AckResult(outcome=pb.ACK_OUTCOME_ACKED)
        return pb.AckResponse(results=[acked] * len(request.items))


async def _stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def serve(
    n: int, payload_size: int, queue: str, max_seconds: float, watch_stdin: bool
) -> None:
    from bench.core import make_payload

    t0 = time.perf_counter()
    tasks = build_tasks(n, make_payload(payload_size), queue)
    build_seconds = time.perf_counter() - t0

    server = grpc.aio.server()
    pb_grpc.add_FeederServicer_to_server(FloorFeeder(tasks), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    eof = asyncio.create_task(_stdin_eof()) if watch_stdin else None
    if eof is not None:
        eof.add_done_callback(lambda _: stop.set())

    ready = {"port": port, "pid": os.getpid(), "build_seconds": build_seconds}
    print("READY " + json.dumps(ready), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    if eof is not None:
        eof.cancel()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--queue", default="bench")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin reaches EOF (parent gone)"
    )
    args = parser.parse_args()
    asyncio.run(
        serve(args.tasks, args.payload_size, args.queue, args.max_seconds, args.watch_stdin)
    )


if __name__ == "__main__":
    main()
