"""The cap on unacked leases per consumer (like JetStream's MaxAckPending): a Consume stream
or a Lease caller (worker_id) holding `max_unacked_per_consumer` leases gets no more tasks
until acks, nacks or expiries free room; a client may ask for a lower cap."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from feeder.config import Settings, load_settings
from feeder.service import tasks as service_tasks
from feedwork.v1 import feeder_pb2 as pb
from tests.integration.test_consume import expect_error, read_tasks, start, submit

CAP = 3
QUEUE = "q"


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        max_unacked_per_consumer=CAP,
    )


async def counts(feeder: Any) -> tuple[int, int]:
    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=[QUEUE]))
    return stats.queues[0].leased, stats.queues[0].ready


async def lease(
    feeder: Any, worker_id: str, *, wait: float = 0.0, **fields: Any
) -> list[pb.LeasedTask]:
    request = pb.LeaseRequest(queue=QUEUE, max_tasks=100, worker_id=worker_id, **fields)
    request.wait.FromNanoseconds(int(wait * 1e9))
    return list((await feeder.stub.Lease(request)).tasks)


async def ack(feeder: Any, *tasks: pb.LeasedTask) -> None:
    items = [pb.AckItem(lease_token=t.lease_token) for t in tasks]
    reply = await feeder.stub.Ack(pb.AckRequest(items=items))
    assert {r.outcome for r in reply.results} == {pb.ACK_OUTCOME_ACKED}


@pytest.mark.parametrize("feeder", ["memory", "sqlite", "postgres"], indirect=True)
async def test_a_stream_at_its_cap_keeps_its_credits_until_a_lease_ends(feeder: Any) -> None:
    await submit(feeder, 10)
    call = feeder.stub.Consume()
    await call.write(start(credits=10))
    held = await read_tasks(call, CAP)
    await asyncio.sleep(0.3)  # nothing more comes: 7 credits left, 7 tasks ready
    assert await counts(feeder) == (CAP, 7)
    # An ack frees one slot, a nack another: two more tasks come, on the credits kept.
    await call.write(
        pb.ConsumeRequest(
            report_id=1,
            acks=[pb.AckItem(lease_token=held[0].lease_token)],
            nacks=[pb.NackItem(lease_token=held[1].lease_token, release=True)],
        )
    )
    more: list[pb.LeasedTask] = []
    while len(more) < 2:
        response = await asyncio.wait_for(call.read(), 5)
        more.extend(response.tasks)
    await asyncio.sleep(0.3)
    assert len(more) == 2
    assert await counts(feeder) == (CAP, 6)  # one acked, one released and back
    # Another stream has a cap of its own.
    other = feeder.stub.Consume()
    await other.write(start(credits=10))
    assert len(await read_tasks(other, CAP)) == CAP
    call.cancel()
    other.cancel()


async def test_a_stream_may_ask_for_a_lower_cap_not_a_higher_one(feeder: Any) -> None:
    await submit(feeder, 10)
    low = feeder.stub.Consume()
    await low.write(start(credits=10, max_unacked=2))
    assert len(await read_tasks(low, 2)) == 2
    high = feeder.stub.Consume()
    await high.write(start(credits=10, max_unacked=50))
    assert len(await read_tasks(high, CAP)) == CAP
    await asyncio.sleep(0.3)
    assert await counts(feeder) == (2 + CAP, 10 - 2 - CAP)
    low.cancel()
    high.cancel()


@pytest.mark.parametrize("feeder", ["memory", "sqlite", "postgres"], indirect=True)
async def test_a_lease_caller_at_its_cap_gets_nothing_until_a_lease_ends(feeder: Any) -> None:
    await submit(feeder, 10)
    first = await lease(feeder, "w1")
    assert len(first) == CAP
    assert await lease(feeder, "w1") == []
    # Another worker_id is another caller.
    assert len(await lease(feeder, "w2")) == CAP
    # A long poll at the cap returns as soon as an ack frees a slot, with one task.
    waiting = asyncio.create_task(lease(feeder, "w1", wait=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    began = time.monotonic()
    await ack(feeder, first[0])
    assert len(await waiting) == 1
    assert time.monotonic() - began < 1.0
    assert await lease(feeder, "w1") == []


async def test_a_lease_caller_may_ask_for_a_lower_cap(feeder: Any) -> None:
    await submit(feeder, 10)
    assert len(await lease(feeder, "w1", max_unacked=1)) == 1
    assert await lease(feeder, "w1", max_unacked=1) == []
    assert len(await lease(feeder, "w1")) == CAP - 1


async def test_expired_leases_free_their_slots(feeder: Any) -> None:
    await submit(feeder, 10)
    assert len(await lease(feeder, "w1", lease_duration=Duration(seconds=1))) == CAP
    assert await lease(feeder, "w1") == []
    # Once the leases expire (the reaper requeues them), the caller gets tasks again.
    assert len(await lease(feeder, "w1", wait=5)) == CAP


async def test_a_negative_cap_is_refused_naming_the_field(feeder: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await lease(feeder, "w1", max_unacked=-1)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith("max_unacked:")
    call = feeder.stub.Consume()
    await call.write(start(credits=1, max_unacked=-1))
    await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "start.max_unacked")


async def test_acks_through_another_feeder_free_the_slots_too(
    feeder_factory: Any, feeder_settings: Settings
) -> None:
    # On one database, a lease taken through feeder A and acked through feeder B: A does
    # not hear of the ack, and finds it when it re-reads the caller's leases.
    a = await feeder_factory(store_kind="postgres")
    b = await feeder_factory(store_kind="postgres")
    await submit(a, 10)
    held = await lease(a, "w1")
    assert len(held) == CAP
    call = a.stub.Consume()
    await call.write(start(credits=10))
    streamed = await read_tasks(call, CAP)
    await ack(b, held[0])
    await ack(b, streamed[0])  # the stream's lease, acked through B too
    began = time.monotonic()
    assert len(await lease(a, "w1", wait=5)) == 1
    response = await asyncio.wait_for(call.read(), 5)
    assert len(response.tasks) == 1
    assert time.monotonic() - began < 3.0
    call.cancel()


def test_the_cap_is_a_setting() -> None:
    assert Settings().max_unacked_per_consumer == 1000
    flags = load_settings({"max_unacked_per_consumer": "50"}, env={})
    assert flags.max_unacked_per_consumer == 50
    env = load_settings({}, env={"FEEDWORK_MAX_UNACKED_PER_CONSUMER": "7"})
    assert env.max_unacked_per_consumer == 7
    with pytest.raises(ValueError, match="max-unacked-per-consumer"):
        load_settings({"max_unacked_per_consumer": "0"}, env={})


async def test_ends_heard_of_nowhere_leave_no_trace(
    feeder_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leases of a caller below its cap, acked through another feeder: the feeder that
    # granted them forgets them at its next periodic re-read (every RECHECK_EVERY s).
    monkeypatch.setattr(service_tasks, "RECHECK_EVERY", 0.0)
    a = await feeder_factory(store_kind="postgres")
    b = await feeder_factory(store_kind="postgres")
    await submit(a, 10)
    held = await lease(a, "gone")
    await ack(b, *held)
    assert a.service._consumers.holders == CAP
    await lease(a, "another", max_unacked=1)  # any lease may start the re-read
    began = time.monotonic()
    while a.service._consumers.holders > 1 and time.monotonic() - began < 5:
        await asyncio.sleep(0.05)
    assert a.service._consumers.holders == 1  # only the new caller's lease
    assert set(a.service._consumers._callers) == {"another"}
