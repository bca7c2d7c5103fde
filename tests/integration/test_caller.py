"""Who took each lease, through a real grpc.aio server: the identity an auth interceptor sets
(feeder.server.identity.CALLER) is recorded with every lease handed out by Lease and by
Consume, beside the worker's own worker_id, and GetTask (and the Python client) shows it.
Without auth nothing sets it: the caller is "".

The interceptor here stands in for the real one: it takes the identity from the call's
metadata without checking it, and sets CALLER around the handler as the real one does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from feeder.core.policy import QueuePolicy
from feeder.server.identity import CALLER, current_caller
from feeder.server.servicer import FeederServicer, add_to_server
from feeder.service import TaskService
from feeder.store.base import Store
from feeder.store.memory import MemoryStore
from feeder.store.sqlite import SqliteStore
from feedwork import AsyncFeederClient
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc

pytestmark = pytest.mark.timeout(30)

# The metadata key this test's interceptor takes the caller from.
CALLER_KEY = "test-caller"


class CallerFromMetadata(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets CALLER around each handler, to the call's `test-caller` metadata."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        caller = dict(details.invocation_metadata or ()).get(CALLER_KEY, "")
        if handler is None or not caller:
            return handler
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_as(caller, handler.unary_unary))
        return handler._replace(stream_stream=_as(caller, handler.stream_stream))


def _as(caller: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = CALLER.set(caller)
        try:
            return await behavior(request, context)
        finally:
            CALLER.reset(token)

    return handle


@dataclass
class Feeder:
    target: str
    stub: feeder_pb2_grpc.FeederStub


@pytest.fixture(params=["memory", "sqlite"])
async def feeder(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Feeder]:
    store: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "f.db")
    service = TaskService(store=store, policies=lambda queue: QueuePolicy())
    await service.start()
    server = grpc.aio.server(interceptors=[CallerFromMetadata()])
    add_to_server(FeederServicer(service), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    try:
        yield Feeder(target, feeder_pb2_grpc.FeederStub(channel))  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await server.stop(0)
        await service.stop()


def as_caller(caller: str) -> tuple[tuple[str, str], ...]:
    return ((CALLER_KEY, caller),)


async def submit(feeder: Feeder, count: int) -> list[str]:
    specs = [pb.TaskSpec(queue="q", payload=b"%d" % i) for i in range(count)]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=specs))
    return [r.task_id for r in reply.results]


async def history(feeder: Feeder, task_id: str) -> list[tuple[str, str]]:
    reply = await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))
    return [(a.worker_id, a.caller) for a in reply.task.history]


async def test_a_lease_records_the_caller_beside_the_worker_id(feeder: Feeder) -> None:
    first, second = await submit(feeder, 2)
    request = pb.LeaseRequest(queue="q", max_tasks=1, worker_id="w-unary")
    (leased,) = (await feeder.stub.Lease(request, metadata=as_caller("key-a"))).tasks
    assert leased.task_id == first
    assert await history(feeder, first) == [("w-unary", "key-a")]
    # Without auth no one sets the caller: only the worker's own name is recorded.
    (anonymous,) = (await feeder.stub.Lease(request)).tasks
    assert anonymous.task_id == second
    assert await history(feeder, second) == [("w-unary", "")]
    # The caller stays with its attempt when the attempt ends, and the client shows it.
    ack = pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)])
    await feeder.stub.Ack(ack, metadata=as_caller("someone-else"))
    async with AsyncFeederClient(feeder.target) as client:
        task = await client.get(first)
    assert [(a.worker_id, a.caller, a.outcome) for a in task.history] == [
        ("w-unary", "key-a", "ACKED")
    ]


async def test_a_consume_stream_records_its_caller_with_every_lease(feeder: Feeder) -> None:
    task_ids = await submit(feeder, 3)
    call = feeder.stub.Consume(metadata=as_caller("cert:worker-7"))
    start = pb.ConsumeStart(queue="q", worker_id="w-stream")
    await call.write(pb.ConsumeRequest(start=start, credits=3))
    received: list[pb.LeasedTask] = []
    while len(received) < 3:
        received.extend((await asyncio.wait_for(call.read(), 5)).tasks)
    call.cancel()
    assert sorted(t.task_id for t in received) == sorted(task_ids)
    for task_id in task_ids:
        assert await history(feeder, task_id) == [("w-stream", "cert:worker-7")]


def test_the_caller_is_empty_where_nothing_set_it() -> None:
    assert current_caller() == ""
    token = CALLER.set("key-a")
    try:
        assert current_caller() == "key-a"
    finally:
        CALLER.reset(token)
    assert current_caller() == ""
