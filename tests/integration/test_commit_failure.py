"""A SQLite feeder whose commits fail as on a full disk (an injected SQLITE_FULL at COMMIT,
tests/faults/enospc.py): every write answers UNAVAILABLE "the database is full", nothing
it was told is lost or half-applied, health is NOT_SERVING while commits fail, and once the
disk has room again the feeder recovers by itself: health SERVING (a probe write finds out
even when no client writes), and the same calls succeed. With sync normal (commits on the
event loop) and full (commits in a thread)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feeder.config import Settings
from feeder.server.app import FEEDER_SERVICE, FeederServer
from feeder.store.sqlite import PROBE_INTERVAL
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.enospc import FullDisk, SqliteStoreOnAFillingDisk

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclasses.dataclass
class Feeder:
    disk: FullDisk
    stub: feeder_pb2_grpc.FeederStub
    health: health_pb2_grpc.HealthStub
    server: FeederServer

    async def status(self, service: str = "") -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return (await self.health.Check(request, timeout=5)).status  # type: ignore[no-any-return]

    async def becomes(self, status: int, *, within: float) -> float:
        """Waits until both health services report `status`; returns how long that took."""
        began = time.monotonic()
        while True:
            if await self.status() == status and await self.status(FEEDER_SERVICE) == status:
                return time.monotonic() - began
            assert time.monotonic() - began < within, (
                f"health is not {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
                f" after {within} s"
            )
            await asyncio.sleep(0.02)


@pytest.fixture(params=["normal", "full"])
async def feeder(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Feeder]:
    settings = Settings(listen="127.0.0.1:0", db=str(tmp_path / "f.db"), shutdown_grace=1.0)
    disk = FullDisk()
    server = FeederServer(
        settings, store=SqliteStoreOnAFillingDisk(settings.db, disk=disk, sync=request.param)
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Feeder(
            disk, feeder_pb2_grpc.FeederStub(channel), health_pb2_grpc.HealthStub(channel), server
        )
    disk.full = False
    await server.stop(0)


async def submit(feeder: Feeder, n: int, queue: str = "q") -> list[str]:
    specs = [pb.TaskSpec(queue=queue, payload=b"%d" % i) for i in range(n)]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=specs), timeout=5)
    return [r.task_id for r in reply.results]


async def get(feeder: Feeder, task_id: str) -> pb.Task:
    return (await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)).task


async def test_health_follows_failing_commits_and_nothing_is_half_applied(feeder: Feeder) -> None:
    stored = await submit(feeder, 4)
    leased = (
        await feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=2, worker_id="w"), timeout=5)
    ).tasks
    assert await feeder.status() == SERVING

    feeder.disk.full = True
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit(feeder, 1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is full" in (refused.value.details() or "")
    await feeder.becomes(NOT_SERVING, within=2)
    # An ack that cannot commit is not applied: its task stays leased, its lease valid.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await feeder.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased[0].lease_token)]))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await get(feeder, leased[0].task_id)).state == pb.TASK_STATE_LEASED
    # Reads go on, and the committed tasks are intact.
    assert [(await get(feeder, t)).task_id for t in stored] == stored
    # Still full a while later (the probe writes fail too): still NOT_SERVING.
    await asyncio.sleep(PROBE_INTERVAL * 1.5)
    assert await feeder.status() == NOT_SERVING
    refused_commits = feeder.disk.refused
    assert refused_commits >= 3, "no probe write was tried"

    # Room again: with no client writing at all, health comes back by itself.
    feeder.disk.full = False
    waited = await feeder.becomes(SERVING, within=PROBE_INTERVAL * 3)
    assert waited <= PROBE_INTERVAL * 2.5
    reply = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=leased[0].lease_token, result=b"r")])
    )
    assert reply.results[0].outcome == pb.ACK_OUTCOME_ACKED
    task = await get(feeder, leased[0].task_id)
    assert task.state == pb.TASK_STATE_COMPLETED and task.result == b"r"
    assert len(await submit(feeder, 3)) == 3


async def test_a_client_write_that_succeeds_turns_health_serving(feeder: Feeder) -> None:
    await submit(feeder, 1)
    feeder.disk.full = True
    with pytest.raises(grpc.aio.AioRpcError):
        await submit(feeder, 1)
    await feeder.becomes(NOT_SERVING, within=2)
    feeder.disk.full = False
    assert len(await submit(feeder, 1)) == 1  # before any probe is due
    await feeder.becomes(SERVING, within=PROBE_INTERVAL / 2)
