"""Several feeders on one PostgreSQL database, as real grpc.aio servers in this process.

Each feeder has its own store, connection pool, listen connection and maintenance loop,
exactly as separate processes would; only the event loop is shared. (Killing feeder
processes is the fault suite's job: tests/faults.)
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feeder.store.postgres import connector
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import FeederFactory, RunningFeeder
from tests.faults.proxy import ChaosProxy
from tests.integration.test_feeder_rpc import (
    ack,
    cancel,
    extend,
    get,
    lease,
    lease_one,
    nack,
    queue_stats,
    submit_ids,
)

pytestmark = pytest.mark.timeout(60)


async def cluster(factory: FeederFactory, size: int) -> list[RunningFeeder]:
    return [await factory(store_kind="postgres") for _ in range(size)]


async def leader_of(feeders: list[RunningFeeder]) -> RunningFeeder:
    """The feeder that holds the maintenance role (exactly one does, once it settles)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        leading = [f for f in feeders if f.service.leading]
        if len(leading) == 1:
            return leading[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no single leader: {[f.service.leading for f in feeders]}")


async def test_a_task_leased_through_one_feeder_is_settled_through_any_other(
    feeder_factory: FeederFactory,
) -> None:
    a, b, c = await cluster(feeder_factory, 3)
    [first, second, third] = await submit_ids(
        a, pb.TaskSpec(queue="q"), pb.TaskSpec(queue="q"), pb.TaskSpec(queue="q")
    )
    one = await lease_one(b)
    assert one.task_id == first
    # Extended through c, acked through a; a second ack through b is a duplicate.
    [extended] = await extend(c, pb.ExtendItem(lease_token=one.lease_token))
    assert extended.outcome == pb.EXTEND_OUTCOME_EXTENDED
    assert await ack(a, one.lease_token, result=b"done") == [pb.ACK_OUTCOME_ACKED]
    assert await ack(b, one.lease_token) == [pb.ACK_OUTCOME_DUPLICATE]
    task = await get(c, first)
    assert (task.state, task.result) == (pb.TASK_STATE_COMPLETED, b"done")
    # Nacked through another feeder, and a cancel through a third reaches the lease.
    two = await lease_one(c)
    [nacked] = await nack(a, pb.NackItem(lease_token=two.lease_token, release=True))
    assert nacked.outcome == pb.NACK_OUTCOME_RELEASED
    # Released, it is ready again behind the third task.
    three = await lease_one(a)
    assert three.task_id == third
    two = await lease_one(b)
    assert (two.task_id, two.attempt) == (second, 2)
    assert (await cancel(c, second)).outcome == pb.CANCEL_OUTCOME_CANCELLED
    assert await ack(a, two.lease_token) == [pb.ACK_OUTCOME_REJECTED]
    # Every feeder sees the same counts and totals.
    stats = [await queue_stats(f) for f in (a, b, c)]
    assert stats[0] == stats[1] == stats[2]
    assert (stats[0].leased, stats[0].completed, stats[0].cancelled) == (1, 1, 1)
    assert (stats[0].totals.submitted, stats[0].totals.duplicate_acks) == (3, 1)


async def test_a_long_poll_on_one_feeder_wakes_for_a_submit_on_another(
    feeder_factory: FeederFactory,
) -> None:
    a, b = await cluster(feeder_factory, 2)
    for round_ in range(5):
        waiting = asyncio.ensure_future(lease(b, wait=10))
        await asyncio.sleep(0.1)  # b's leaser is waiting
        started = time.monotonic()
        [task_id] = await submit_ids(a, pb.TaskSpec(queue="q", payload=bytes([round_])))
        [task] = await asyncio.wait_for(waiting, 5)
        woke = time.monotonic() - started
        assert task.task_id == task_id
        # Far under the 2 s re-check: the notification woke it.
        assert woke < 1.0, f"woke after {woke:.3f} s"


async def test_a_consume_stream_on_one_feeder_gets_tasks_submitted_on_another(
    feeder_factory: FeederFactory,
) -> None:
    a, b = await cluster(feeder_factory, 2)
    requests: asyncio.Queue[pb.ConsumeRequest] = asyncio.Queue()
    await requests.put(pb.ConsumeRequest(start=pb.ConsumeStart(queue="q"), credits=10))

    async def up():  # type: ignore[no-untyped-def]
        while True:
            yield await requests.get()

    stream = b.stub.Consume(up())
    ids = await submit_ids(a, *(pb.TaskSpec(queue="q") for _ in range(10)))
    got: list[pb.LeasedTask] = []
    async with asyncio.timeout(5):
        async for reply in stream:
            got.extend(reply.tasks)
            if len(got) == 10:
                break
    assert sorted(t.task_id for t in got) == sorted(ids)
    stream.cancel()


async def test_one_feeder_runs_maintenance_and_another_takes_over_when_it_stops(
    feeder_factory: FeederFactory,
) -> None:
    feeders = await cluster(feeder_factory, 3)
    leader = await leader_of(feeders)
    others = [f for f in feeders if f is not leader]
    # Leases of 1 s through a follower, then the leader stops: the next leader requeues
    # each expired lease exactly once.
    await submit_ids(others[0], *(pb.TaskSpec(queue="q") for _ in range(20)))
    leased = await lease(others[0], n=20, duration=1.0)
    assert len(leased) == 20
    await leader.server.stop(0)
    new_leader = await leader_of(others)
    deadline = time.monotonic() + 10
    while (await queue_stats(new_leader)).ready < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stats = await queue_stats(others[1])
    assert (stats.ready, stats.leased, stats.totals.expired) == (20, 0, 20)
    again = await lease(others[1], n=20)
    assert sorted(t.task_id for t in again) == sorted(t.task_id for t in leased)
    assert {t.attempt for t in again} == {2}


async def test_an_expired_lease_is_requeued_promptly_whichever_feeder_leased_it(
    feeder_factory: FeederFactory,
) -> None:
    feeders = await cluster(feeder_factory, 3)
    leader = await leader_of(feeders)
    follower = next(f for f in feeders if f is not leader)
    lateness = []
    for _ in range(3):
        await submit_ids(follower, pb.TaskSpec(queue="q"))
        [task] = await lease(follower, duration=1.0)
        deadline = task.lease_deadline.seconds + task.lease_deadline.nanos / 1e9
        again = await lease(follower, wait=5)
        lateness.append(time.time() - deadline)
        assert [t.task_id for t in again] == [task.task_id]
    # The leader heard of none of these leases; it re-reads the earliest timer every
    # 0.5 s, and the leases last 1 s, so it still wakes at each deadline.
    assert max(lateness) < 0.25, lateness


async def test_while_the_database_is_unreachable_calls_are_unavailable_and_health_follows(
    feeder_factory: FeederFactory,
) -> None:
    dsn = await feeder_factory.postgres_dsn()  # type: ignore[attr-defined]
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with ChaosProxy((host, int(port))) as proxy:
        proxied = dsn.replace(host_port, proxy.target)
        feeder = await feeder_factory(store_kind="postgres", db=proxied)
        other = await feeder_factory(store_kind="postgres")
        health = health_pb2_grpc.HealthStub(feeder.channel)

        async def status() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return int(reply.status)

        try:
            [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            proxy.cut(refuse_for=2.0)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await submit_ids(feeder, pb.TaskSpec(queue="q"))
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "unavailable" in (failed.value.details() or "").lower()
            for _ in range(100):
                if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.02)
            assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
            # The other feeder, with its own path to the database, serves on.
            [other_id] = await submit_ids(other, pb.TaskSpec(queue="q"))
            # Back by itself once the database is reachable again; nothing accepted was lost.
            for _ in range(300):
                if await status() == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.02)
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            leased = await lease(feeder, n=10)
            assert sorted(t.task_id for t in leased) == sorted([task_id, other_id])
        finally:
            await feeder.server.stop(0)  # before its proxy goes


async def test_a_database_that_stops_answering_turns_health_not_serving(
    feeder_factory: FeederFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent cut (no reset, nothing closed: what a partition looks like) is found by
    the listen connection's check, not only a connection that drops."""
    monkeypatch.setattr(connector, "LISTEN_CHECK", 0.3)
    monkeypatch.setattr(connector, "LISTEN_CHECK_TIMEOUT", 0.5)
    dsn = await feeder_factory.postgres_dsn()  # type: ignore[attr-defined]
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with ChaosProxy((host, int(port))) as proxy:
        feeder = await feeder_factory(
            store_kind="postgres", db=dsn.replace(host_port, proxy.target)
        )
        health = health_pb2_grpc.HealthStub(feeder.channel)

        async def status() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return int(reply.status)

        async def becomes(wanted: int, within: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < within:
                if await status() == wanted:
                    return time.monotonic() - started
                await asyncio.sleep(0.02)
            raise AssertionError(f"health not {wanted} within {within} s")

        try:
            [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            # Holds every byte, both ways, for 8 s; closes nothing. Found within 0.8 s
            # (check every 0.3 s, answer within 0.5 s), more on a busy machine.
            proxy.stall(8.0)
            await becomes(health_pb2.HealthCheckResponse.NOT_SERVING, within=7.0)
            await becomes(health_pb2.HealthCheckResponse.SERVING, within=30.0)
            [leased] = await lease(feeder, n=10)
            assert leased.task_id == task_id
        finally:
            await feeder.server.stop(0)  # before its proxy goes


async def test_a_feeder_decides_right_from_a_record_of_its_own_that_is_out_of_date(
    feeder_factory: FeederFactory,
) -> None:
    """A feeder remembers the tasks it leased (to ack them without a read). Another feeder
    may have changed one since: its answers must still be those of the current record."""
    a, b = await cluster(feeder_factory, 2)
    [task_id] = await submit_ids(a, pb.TaskSpec(queue="q"))
    first = await lease_one(a, duration=60.0)  # a remembers attempt 1, leased
    # Released through b, and leased again through b: a has heard of neither.
    [released] = await nack(b, pb.NackItem(lease_token=first.lease_token, release=True))
    assert released.outcome == pb.NACK_OUTCOME_RELEASED
    second = await lease_one(b, duration=60.0)
    assert (second.task_id, second.attempt) == (task_id, 2)
    # Through a, whose record still says attempt 1 is leased: attempt 2 is a valid lease,
    # not an unknown token (an answer that changes nothing is not taken from an old
    # record), and it extends and acks as it would on b.
    [extended] = await extend(a, pb.ExtendItem(lease_token=second.lease_token))
    assert extended.outcome == pb.EXTEND_OUTCOME_EXTENDED
    # The released first attempt cannot ack any more (a's record says it could).
    assert await ack(a, first.lease_token) == [pb.ACK_OUTCOME_REJECTED]
    assert await ack(a, second.lease_token, result=b"two") == [pb.ACK_OUTCOME_ACKED]
    assert await ack(b, second.lease_token) == [pb.ACK_OUTCOME_DUPLICATE]
    task = await get(b, task_id)
    assert (task.state, task.result, task.attempts) == (pb.TASK_STATE_COMPLETED, b"two", 2)


async def test_writes_failing_on_a_full_disk_turn_health_not_serving_until_one_succeeds(
    feeder_factory: FeederFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL reachable but its disk full (SQLSTATE 53100): every write fails, so the
    feeder must not say SERVING, though its listen connection is fine. A probe write every
    second finds out when space is back, with no client traffic."""
    import asyncpg

    monkeypatch.setattr(connector, "WRITE_PROBE_EVERY", 0.1)
    feeder = await feeder_factory(store_kind="postgres")
    store = feeder.server.store
    health = health_pb2_grpc.HealthStub(feeder.channel)
    full = True

    async def status() -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        return int(reply.status)

    real_insert = store._insert  # type: ignore[attr-defined]
    real_probe = connector._write_probe

    async def insert(*args: object, **kwargs: object) -> object:
        if full:
            raise asyncpg.exceptions.DiskFullError("could not extend file: No space left")
        return await real_insert(*args, **kwargs)

    async def probe(conn: object) -> None:
        if full:
            raise asyncpg.exceptions.DiskFullError("could not extend file: No space left")
        await real_probe(conn)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_insert", insert)
    monkeypatch.setattr(connector, "_write_probe", probe)
    assert await status() == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await submit_ids(feeder, pb.TaskSpec(queue="q"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(100):
        if await status() == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        await asyncio.sleep(0.02)
    assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    await asyncio.sleep(0.5)  # probes keep failing: still NOT_SERVING
    assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
    full = False  # space is back
    for _ in range(200):
        if await status() == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.02)
    assert await status() == health_pb2.HealthCheckResponse.SERVING
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    [leased] = await lease(feeder, n=1)
    assert leased.task_id == task_id
