"""Queue controls and listings through a real grpc.aio feeder, on every store: ListQueues,
ListTasks, ListWorkers, PauseQueue and ResumeQueue (a paused queue takes submits and hands
out nothing, through Lease and Consume alike, on every feeder of a PostgreSQL database and
across restarts), PurgeQueue and DeleteQueue. (Malformed requests: test_feeder_validation;
who may call them: test_access.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import grpc
import pytest

from feeder.config import Settings
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import ALL_STORES, FeederFactory, RunningFeeder
from tests.integration.test_consume import read_tasks, start
from tests.integration.test_feeder_rpc import (
    ack,
    dur,
    extend,
    get,
    lease,
    nack,
    queue_stats,
    submit_ids,
)

pytestmark = pytest.mark.timeout(60)


def specs(queue: str, count: int, **fields: Any) -> list[pb.TaskSpec]:
    return [
        pb.TaskSpec(queue=queue, payload=f"{queue}-{n}".encode(), **fields) for n in range(count)
    ]


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def pause(feeder: RunningFeeder, queue: str = "q") -> bool:
    return (await feeder.stub.PauseQueue(pb.PauseQueueRequest(queue=queue))).changed


async def resume(feeder: RunningFeeder, queue: str = "q") -> bool:
    return (await feeder.stub.ResumeQueue(pb.ResumeQueueRequest(queue=queue))).changed


async def queues(feeder: RunningFeeder, page_size: int = 0) -> list[pb.QueueInfo]:
    """Every queue, page by page."""
    found: list[pb.QueueInfo] = []
    token = ""
    while True:
        page = await feeder.stub.ListQueues(
            pb.ListQueuesRequest(page_size=page_size, page_token=token)
        )
        found += page.queues
        if not page.next_page_token:
            return found
        token = page.next_page_token


# -- listings -----------------------------------------------------------------------------


@ALL_STORES
async def test_list_queues_in_pages_with_their_pauses_and_counts(feeder: RunningFeeder) -> None:
    await submit_ids(feeder, *specs("b", 2), *specs("a", 1), *specs("d", 3), *specs("c", 1))
    await lease(feeder, "d")
    assert await pause(feeder, "b")
    listed = await queues(feeder, page_size=3)
    assert [(q.queue, q.paused) for q in listed] == [
        ("a", False),
        ("b", True),
        ("c", False),
        ("d", False),
    ]
    b, d = listed[1], listed[3]
    assert b.paused_at.seconds > 0 and not listed[0].HasField("paused_at")
    assert (b.stats.queue, b.stats.ready, b.stats.totals.submitted) == ("b", 2, 2)
    assert (d.stats.ready, d.stats.leased) == (2, 1)
    stats = await queue_stats(feeder, "d")
    for entry in (stats, d.stats):  # an age: it grows between the two calls
        entry.ClearField("oldest_ready_age")
    assert d.stats == stats
    first = await feeder.stub.ListQueues(pb.ListQueuesRequest(page_size=2))
    assert [q.queue for q in first.queues] == ["a", "b"] and first.next_page_token == "b"


@ALL_STORES
async def test_list_tasks_by_state_in_either_order_without_payloads(
    feeder: RunningFeeder,
) -> None:
    ready = await submit_ids(feeder, *specs("q", 3))
    [later] = await submit_ids(feeder, pb.TaskSpec(queue="q", delay=dur(3600)))
    [leased] = await lease(feeder)
    await submit_ids(feeder, *specs("other", 2))

    async def listing(**fields: Any) -> pb.ListTasksResponse:
        return await feeder.stub.ListTasks(pb.ListTasksRequest(queue="q", **fields))

    every = await listing()
    assert [t.task_id for t in every.tasks] == [*ready, later]
    assert all(t.payload == b"" and t.queue == "q" for t in every.tasks)
    assert [t.state for t in every.tasks][:2] == [pb.TASK_STATE_LEASED, pb.TASK_STATE_READY]
    newest = await listing(newest_first=True, page_size=2)
    assert [t.task_id for t in newest.tasks] == [later, ready[2]]
    rest = await listing(newest_first=True, page_size=2, page_token=newest.next_page_token)
    assert [t.task_id for t in rest.tasks] == [ready[1], leased.task_id]
    assert rest.next_page_token == ""
    waiting = await listing(states=[pb.TASK_STATE_READY, pb.TASK_STATE_SCHEDULED])
    assert [t.task_id for t in waiting.tasks] == [ready[1], ready[2], later]
    with_payloads = await listing(states=[pb.TASK_STATE_LEASED], include_payloads=True)
    assert [(t.task_id, t.payload) for t in with_payloads.tasks] == [(leased.task_id, b"q-0")]
    assert (await feeder.stub.ListTasks(pb.ListTasksRequest(queue="nothing"))).tasks == []


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "postgres"])
async def test_a_page_of_tasks_with_payloads_stays_under_the_message_limit(
    feeder_factory: FeederFactory, feeder_settings: Settings, store_kind: str
) -> None:
    # Replies of at most ~300 KiB: a page of payloads is cut well before page_size.
    limit = 320 * 1024
    settings = dataclasses.replace(feeder_settings, max_message_bytes=limit)
    feeder = await feeder_factory(store_kind=store_kind, settings=settings)
    ids = [
        (await submit_ids(feeder, pb.TaskSpec(queue="big", payload=b"x" * 100_000)))[0]
        for _ in range(5)
    ]
    token, seen, pages = "", [], 0
    while True:
        page = await feeder.stub.ListTasks(
            pb.ListTasksRequest(queue="big", include_payloads=True, page_token=token)
        )
        assert 0 < len(page.tasks) <= 3 and page.ByteSize() < limit
        seen += [t.task_id for t in page.tasks]
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert seen == ids and pages >= 2


@ALL_STORES
async def test_list_workers_shows_lease_holders_and_this_feeders_consumers(
    feeder: RunningFeeder,
) -> None:
    await submit_ids(feeder, *specs("q", 4), *specs("other", 1))
    stream = feeder.stub.Consume()
    await stream.write(start(credits=2))  # worker "w1"
    await read_tasks(stream, 2)
    idle = feeder.stub.Consume()
    await idle.write(pb.ConsumeRequest(start=pb.ConsumeStart(queue="idle", worker_id="w9")))
    await lease(feeder, "q", worker="u1")
    await lease(feeder, "other", worker="u1")
    while len(feeder.service.consumers()) < 3:  # the idle stream is served
        await asyncio.sleep(0.01)
    before = time.time()

    reply = await feeder.stub.ListWorkers(pb.ListWorkersRequest())
    assert [(h.queue, h.worker_id, h.caller, h.leases) for h in reply.lease_holders] == [
        ("other", "u1", "", 1),
        ("q", "u1", "", 1),
        ("q", "w1", "", 2),
    ]
    assert all(h.oldest_leased_at.seconds <= before for h in reply.lease_holders)
    consumers = [(c.kind, c.worker_id, list(c.queues), c.leases) for c in reply.consumers]
    assert consumers == [
        (pb.CONSUMER_KIND_STREAM, "w1", ["q"], 2),
        (pb.CONSUMER_KIND_STREAM, "w9", ["idle"], 0),
        (pb.CONSUMER_KIND_LEASE, "u1", ["other", "q"], 2),
    ]
    assert reply.consumers[0].peer.startswith("ipv4:127.0.0.1:")
    assert reply.feeder.endswith(f":{feeder.server.port}") and not reply.truncated

    only = await feeder.stub.ListWorkers(pb.ListWorkersRequest(queue="other"))
    assert [h.worker_id for h in only.lease_holders] == ["u1"]
    assert [c.worker_id for c in only.consumers] == ["u1"]
    cut = await feeder.stub.ListWorkers(pb.ListWorkersRequest(limit=1))
    assert len(cut.lease_holders) == len(cut.consumers) == 1 and cut.truncated
    stream.cancel()
    idle.cancel()


# -- pause and resume ---------------------------------------------------------------------


@ALL_STORES
async def test_a_paused_queue_takes_submits_and_hands_out_nothing(feeder: RunningFeeder) -> None:
    first, second = await submit_ids(feeder, *specs("q", 2))
    [held] = await lease(feeder, duration=30)
    assert held.task_id == first
    assert await pause(feeder) is True
    assert await pause(feeder) is False
    [third] = await submit_ids(feeder, pb.TaskSpec(queue="q"))  # submits go on
    assert await lease(feeder, n=10) == []
    assert await lease(feeder, n=10, wait=0.3) == []
    # The lease out before the pause runs on.
    [extended] = await extend(feeder, pb.ExtendItem(lease_token=held.lease_token))
    assert extended.outcome == pb.EXTEND_OUTCOME_EXTENDED
    assert await ack(feeder, held.lease_token) == [pb.ACK_OUTCOME_ACKED]
    stats = await queue_stats(feeder)
    assert (stats.ready, stats.completed) == (2, 1)
    # Other queues are not paused.
    await submit_ids(feeder, pb.TaskSpec(queue="other"))
    assert len(await lease(feeder, "other")) == 1

    assert await resume(feeder) is True
    assert await resume(feeder) is False
    assert [t.task_id for t in await lease(feeder, n=10)] == [second, third]


@ALL_STORES
async def test_resuming_wakes_a_waiting_lease_and_a_consume_stream(feeder: RunningFeeder) -> None:
    ids = await submit_ids(feeder, *specs("q", 3))
    await pause(feeder)
    stream = feeder.stub.Consume()
    await stream.write(start(credits=2))
    first_message = asyncio.ensure_future(stream.read())
    polling = asyncio.ensure_future(lease(feeder, n=1, wait=20, worker="poller"))
    await asyncio.sleep(0.5)
    assert not polling.done() and not first_message.done()  # nothing while paused
    began = time.monotonic()
    await resume(feeder)
    [polled] = await asyncio.wait_for(polling, 5)
    streamed = list((await asyncio.wait_for(first_message, 5)).tasks)
    if len(streamed) < 2:
        streamed += await read_tasks(stream, 2 - len(streamed))
    took = time.monotonic() - began
    print(f"woken {took * 1000:.0f} ms after the resume")
    assert took < 2.0
    assert sorted([polled.task_id, *(t.task_id for t in streamed)]) == sorted(ids)
    stream.cancel()


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
async def test_a_pause_survives_a_restart(feeder_factory: FeederFactory, store_kind: str) -> None:
    feeder = await feeder_factory(store_kind=store_kind)
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    await pause(feeder)
    await feeder.server.stop(0)
    again = await feeder_factory(store_kind=store_kind)
    assert await lease(again) == []
    [info] = (await again.stub.ListQueues(pb.ListQueuesRequest())).queues
    assert info.paused
    await resume(again)
    assert [t.task_id for t in await lease(again)] == [task_id]


async def test_a_pause_through_one_postgres_feeder_holds_on_another(
    feeder_factory: FeederFactory,
) -> None:
    a = await feeder_factory(store_kind="postgres")
    b = await feeder_factory(store_kind="postgres")
    ids = await submit_ids(a, *specs("q", 3))
    assert await pause(a)
    assert await lease(b, n=10) == []
    stream = b.stub.Consume()
    await stream.write(start(credits=2))
    first_message = asyncio.ensure_future(stream.read())
    polling = asyncio.ensure_future(lease(b, n=1, wait=20, worker="poller"))
    await asyncio.sleep(0.5)
    assert not polling.done() and not first_message.done()
    [info] = (await b.stub.ListQueues(pb.ListQueuesRequest())).queues
    assert info.paused
    began = time.monotonic()
    assert await resume(a)  # through the other feeder: b hears of it
    [polled] = await asyncio.wait_for(polling, 10)
    streamed = list((await asyncio.wait_for(first_message, 10)).tasks)
    if len(streamed) < 2:
        streamed += await read_tasks(stream, 2 - len(streamed), within=10)
    print(f"woken on the other feeder {(time.monotonic() - began) * 1000:.0f} ms after")
    assert sorted([polled.task_id, *(t.task_id for t in streamed)]) == sorted(ids)
    # Leases are the database's, seen through either feeder; consumers are b's own.
    for feeder in (a, b):
        workers = await feeder.stub.ListWorkers(pb.ListWorkersRequest(queue="q"))
        assert [(h.worker_id, h.leases) for h in workers.lease_holders] == [
            ("poller", 1),
            ("w1", 2),
        ]
    assert (await a.stub.ListWorkers(pb.ListWorkersRequest())).consumers == []
    mine = (await b.stub.ListWorkers(pb.ListWorkersRequest())).consumers
    assert [(c.kind, c.worker_id, c.leases) for c in mine] == [
        (pb.CONSUMER_KIND_STREAM, "w1", 2),
        (pb.CONSUMER_KIND_LEASE, "poller", 1),
    ]
    stream.cancel()


# -- purge and delete ---------------------------------------------------------------------


@ALL_STORES
async def test_purge_deletes_waiting_tasks_and_counts_them(feeder: RunningFeeder) -> None:
    ready = await submit_ids(feeder, *specs("q", 3))
    [later] = await submit_ids(feeder, pb.TaskSpec(queue="q", delay=dur(3600)))
    [held] = await lease(feeder)
    [dead] = await lease(feeder)
    await nack(feeder, pb.NackItem(lease_token=dead.lease_token, terminal=True))
    [other] = await submit_ids(feeder, pb.TaskSpec(queue="other"))

    unconfirmed = feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue="q", confirm="other"))
    assert await code_of(unconfirmed) == grpc.StatusCode.INVALID_ARGUMENT
    reply = await feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue="q", confirm="q"))
    assert reply.purged == 2  # the third ready one and the scheduled one
    for task_id in (ready[2], later):
        assert await code_of(feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))) == (
            grpc.StatusCode.NOT_FOUND
        )
    assert (await get(feeder, held.task_id)).state == pb.TASK_STATE_LEASED
    assert (await get(feeder, dead.task_id)).state == pb.TASK_STATE_DEAD
    assert (await get(feeder, other)).state == pb.TASK_STATE_READY
    stats = await queue_stats(feeder)
    assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (0, 0, 1, 1)
    assert stats.totals.purged == 2 and stats.totals.submitted == 4
    overall = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert overall.totals.purged == 2
    again = await feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue="q", confirm="q"))
    assert again.purged == 0
    missing = feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue="nothing", confirm="nothing"))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND


@ALL_STORES
async def test_delete_forgets_only_a_queue_without_tasks(feeder: RunningFeeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    await submit_ids(feeder, pb.TaskSpec(queue="kept"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await feeder.stub.DeleteQueue(pb.DeleteQueueRequest(queue="q"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'queue "q" holds 1 tasks (1 ready)' in refused.value.details()
    await pause(feeder)
    await feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue="q", confirm="q"))
    await feeder.stub.DeleteQueue(pb.DeleteQueueRequest(queue="q"))  # paused, empty
    assert [q.queue for q in await queues(feeder)] == ["kept"]
    missing = feeder.stub.DeleteQueue(pb.DeleteQueueRequest(queue="q"))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND
    for control in (pause, resume):
        assert await code_of(control(feeder, "q")) == grpc.StatusCode.NOT_FOUND
    # Made anew by a submit: no pause, totals from zero.
    [again] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    assert again != task_id
    assert (await queue_stats(feeder)).totals.submitted == 1
    assert [t.task_id for t in await lease(feeder)] == [again]
