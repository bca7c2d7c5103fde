"""A feedwork.v1.Feeder consumer over grpc.aio, shared by every gRPC case (floor, feedwork)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
from google.protobuf import duration_pb2

from bench.core import Consumer
from feedwork.channel import aio_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

QUEUE = "bench"
RPC_TIMEOUT = 10.0


def channel_options() -> list[tuple[str, int]]:
    # Every consumer gets its own TCP connection (gRPC would otherwise share one subchannel
    # between channels with equal arguments), like separate worker processes would.
    return [("grpc.use_local_subchannel_pool", 1)]


def bench_channel(target: str) -> grpc.aio.Channel:
    """A channel of its own to `target`, made by the clients' one channel factory (so the
    bench runs with TLS and a key when FEEDWORK_TLS_CA, FEEDWORK_API_KEY... say so)."""
    return aio_channel(target, options=channel_options())


class FeederConsumer(Consumer):
    """Lease(max_tasks=batch) then Ack of every leased token, on a channel of its own."""

    def __init__(
        self,
        target: str,
        index: int,
        batch: int,
        queue: str = QUEUE,
        wait: float = 0.0,
        lease_duration: float | None = None,
    ) -> None:
        self.channel = bench_channel(target)
        self.stub = pb_grpc.FeederStub(self.channel)
        self.request = pb.LeaseRequest(queue=queue, max_tasks=batch, worker_id=f"bench-{index}")
        if wait > 0:
            self.request.wait.CopyFrom(duration_pb2.Duration(nanos=int(wait * 1e9)))
        if lease_duration is not None:
            self.request.lease_duration.CopyFrom(duration_pb2.Duration(seconds=int(lease_duration)))
        # Ack outcomes other than ACKED (counted, so a case's verify can report them).
        self.not_acked = 0

    async def connect(self, ready_timeout: float = 10.0) -> FeederConsumer:
        await asyncio.wait_for(self.channel.channel_ready(), ready_timeout)
        return self

    async def lease(self) -> Sequence[pb.LeasedTask]:
        response = await self.stub.Lease(self.request, timeout=RPC_TIMEOUT)
        return response.tasks

    async def ack(self, items: Sequence[pb.LeasedTask]) -> None:
        request = pb.AckRequest(items=[pb.AckItem(lease_token=t.lease_token) for t in items])
        response = await self.stub.Ack(request, timeout=RPC_TIMEOUT)
        acked = pb.ACK_OUTCOME_ACKED
        for result in response.results:
            if result.outcome != acked:
                self.not_acked += 1

    async def close(self) -> None:
        await self.channel.close(grace=None)
