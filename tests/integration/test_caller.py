"""Who took each lease, through a real feeder: the identity its auth interceptor puts in
feeder.server.identity.CALLER (the name of the API key the call presented) is recorded
with every lease handed out by Lease and by Consume, beside the worker's own worker_id,
and GetTask (and the Python client) shows it. Without auth nothing sets it: "".
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path

import pytest

from feeder.config import Settings
from feeder.server.identity import CALLER, current_caller
from feedwork import AsyncFeederClient
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import ALL_STORES, FeederFactory, RunningFeeder

pytestmark = pytest.mark.timeout(60)

# Two worker keys under their names in the access list, and an admin key to look.
KEYS = {
    "batch-workers": "fwk_b0000001_batch-secret",
    "edge-workers": "fwk_e0000001_edge-secret",
    "ops": "fwk_o0000001_ops-secret",
}
GRANTS = {"batch-workers": "worker:q", "edge-workers": "worker:q", "ops": "admin"}


def access_text() -> str:
    return "\n".join(
        f"{name} sha256:{hashlib.sha256(key.encode()).hexdigest()} {GRANTS[name]}"
        for name, key in KEYS.items()
    )


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        auth=access_text(),
    )


def key(name: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {KEYS[name]}")]


async def submit(feeder: RunningFeeder, count: int) -> list[str]:
    specs = [pb.TaskSpec(queue="q", payload=b"%d" % i) for i in range(count)]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=specs), metadata=key("ops"))
    return [r.task_id for r in reply.results]


async def history(feeder: RunningFeeder, task_id: str) -> list[tuple[str, str]]:
    request = pb.GetTaskRequest(task_id=task_id)
    reply = await feeder.stub.GetTask(request, metadata=key("ops"))
    return [(a.worker_id, a.caller) for a in reply.task.history]


@ALL_STORES
async def test_a_lease_records_the_key_that_took_it_beside_the_worker_id(
    feeder: RunningFeeder,
) -> None:
    first, second = await submit(feeder, 2)
    # Both keys' workers call themselves "w": only the caller tells them apart.
    request = pb.LeaseRequest(queue="q", max_tasks=1, worker_id="w")
    (leased,) = (await feeder.stub.Lease(request, metadata=key("batch-workers"))).tasks
    (other,) = (await feeder.stub.Lease(request, metadata=key("edge-workers"))).tasks
    assert (leased.task_id, other.task_id) == (first, second)
    assert await history(feeder, first) == [("w", "batch-workers")]
    assert await history(feeder, second) == [("w", "edge-workers")]
    # The caller stays with its attempt when it ends (whoever ends it), and the client
    # shows it.
    ack = pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)])
    await feeder.stub.Ack(ack, metadata=key("ops"))
    async with AsyncFeederClient(feeder.target, api_key=KEYS["ops"]) as client:
        task = await client.get(first)
    assert [(a.worker_id, a.caller, a.outcome) for a in task.history] == [
        ("w", "batch-workers", "ACKED")
    ]


@ALL_STORES
async def test_a_consume_stream_records_its_key_with_every_lease(feeder: RunningFeeder) -> None:
    task_ids = await submit(feeder, 3)
    call = feeder.stub.Consume(metadata=key("edge-workers"))
    start = pb.ConsumeStart(queue="q", worker_id="w-stream")
    await call.write(pb.ConsumeRequest(start=start, credits=3))
    received: list[pb.LeasedTask] = []
    while len(received) < 3:
        received.extend((await asyncio.wait_for(call.read(), 5)).tasks)
    call.cancel()
    assert sorted(t.task_id for t in received) == sorted(task_ids)
    for task_id in task_ids:
        assert await history(feeder, task_id) == [("w-stream", "edge-workers")]


async def test_without_auth_only_the_worker_id_is_recorded(
    feeder_factory: FeederFactory, feeder_settings: Settings
) -> None:
    feeder = await feeder_factory(settings=dataclasses.replace(feeder_settings, auth=None))
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")] * 2))
    first, second = (r.task_id for r in reply.results)
    request = pb.LeaseRequest(queue="q", max_tasks=1, worker_id="w")
    await feeder.stub.Lease(request)
    call = feeder.stub.Consume()
    await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(queue="q", worker_id="s"), credits=1))
    await asyncio.wait_for(call.read(), 5)
    call.cancel()
    for task_id, worker in ((first, "w"), (second, "s")):
        task = (await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task
        assert [(a.worker_id, a.caller) for a in task.history] == [(worker, "")]


def test_the_caller_is_empty_where_nothing_set_it() -> None:
    assert current_caller() == ""
    token = CALLER.set("batch-workers")
    try:
        assert current_caller() == "batch-workers"
    finally:
        CALLER.reset(token)
    assert current_caller() == ""


async def test_the_unacked_cap_is_each_callers_own_whatever_worker_id_it_claims(
    feeder: RunningFeeder,
) -> None:
    await submit(feeder, 3)
    request = pb.LeaseRequest(queue="q", max_tasks=2, worker_id="w", max_unacked=1)
    first = await feeder.stub.Lease(request, metadata=key("batch-workers"))
    again = await feeder.stub.Lease(request, metadata=key("batch-workers"))
    # Another key claiming the same worker_id has a cap of its own.
    other = await feeder.stub.Lease(request, metadata=key("edge-workers"))
    assert (len(first.tasks), len(again.tasks), len(other.tasks)) == (1, 0, 1)
