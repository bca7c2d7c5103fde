"""floor: the Python gRPC limit. A logic-free Lease/Ack server in its own process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from bench.core import Case, Consumer, ServerProcess, Workload
from bench.grpc_client import FeederConsumer


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
