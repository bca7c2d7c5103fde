"""floor: the Python gRPC limit. A logic-free Lease/Ack server in its own process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from bench.core import Case, Consumer, Producer, ServerProcess, Workload
from bench.grpc_client import FeederConsumer, bench_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc


class FloorProducer(Producer):
    """Submit(tasks=[TaskSpec(queue, payload)] * b) on a channel of its own."""

    def __init__(self, target: str) -> None:
        self.channel = bench_channel(target)
        self.stub = pb_grpc.FeederStub(self.channel)
        self.submitted = 0

    async def submit(self, payloads: Sequence[bytes]) -> None:
        request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue="bench", payload=p) for p in payloads])
        reply = await self.stub.Submit(request, timeout=30)
        self.submitted += len(reply.results)

    async def close(self) -> None:
        await self.channel.close(grace=None)


class FloorCase(Case):
    name = "floor"
    summary = "grpc.aio Lease/Ack with no logic (deque of prebuilt LeasedTask), own process"

    def __init__(self) -> None:
        self.server: ServerProcess | None = None
        self.consumers: list[FeederConsumer] = []
        self.n = 0
        self.payload_size = 0

    async def info(self) -> dict[str, Any]:
        return {
            "server": f"grpcio {grpc.__version__} (bench.cases.floor_server process)",
            "client": f"grpcio {grpc.__version__}",
            "durability": "none (in-memory deque, no logic)",
        }

    async def setup(self, n: int, workload: Workload) -> None:
        self.n = n
        self.payload_size = workload.payload_size
        self.consumers = []
        self.producers: list[FloorProducer] = []
        if workload.kind == "submit":
            self.server = await ServerProcess.start(
                "bench.cases.floor_server", "--tasks", "0", "--watch-stdin"
            )

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        assert self.server is not None
        producer = FloorProducer(f"127.0.0.1:{self.server.port}")
        await producer.channel.channel_ready()
        self.producers.append(producer)
        return producer

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        return {"replied": sum(p.submitted for p in self.producers)}

    async def preload(self, n: int, payload: bytes) -> None:
        # There is no Submit: the server builds its N tasks at startup, so "preload" is the
        # process start plus building the messages and is not comparable to other cases.
        self.server = await ServerProcess.start(
            "bench.cases.floor_server",
            "--tasks",
            str(n),
            "--payload-size",
            str(len(payload)),
            "--watch-stdin",
        )

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        assert self.server is not None
        consumer = FeederConsumer(f"127.0.0.1:{self.server.port}", index, workload.batch)
        self.consumers.append(consumer)
        return await consumer.connect()

    def server_pids(self) -> Sequence[int]:
        return () if self.server is None else (self.server.proc.pid,)

    async def verify(self, n: int) -> dict[str, Any]:
        return {"not_acked": sum(c.not_acked for c in self.consumers)}

    async def teardown(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
