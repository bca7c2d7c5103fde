"""Smoke test of the in-process feeder fixture: every layer answers over real gRPC."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feeder.core.policy import QueuePolicy
from feeder.store.base import StoreUnavailable
from feedwork.v1 import feeder_pb2 as pb


@pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)
async def test_submit_lease_ack_round_trip(feeder) -> None:
    submitted = await feeder.stub.Submit(
        pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"x", idempotency_key="k")])
    )
    [result] = submitted.results
    assert result.state == pb.TASK_STATE_READY and not result.deduplicated

    leased = await feeder.stub.Lease(
        pb.LeaseRequest(queue="q", max_tasks=10, wait=Duration(seconds=1), worker_id="w1")
    )
    [task] = leased.tasks
    assert (task.task_id, task.payload, task.attempt) == (result.task_id, b"x", 1)

    acked = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=task.lease_token, result=b"done")])
    )
    assert [r.outcome for r in acked.results] == [pb.ACK_OUTCOME_ACKED]

    got = await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))
    assert got.task.state == pb.TASK_STATE_COMPLETED and got.task.result == b"done"
    assert [a.worker_id for a in got.task.history] == ["w1"]

    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert stats.totals.submitted == 1 and stats.totals.completed == 1
    assert [(q.queue, q.completed) for q in stats.queues] == [("q", 1)]


async def test_errors_map_to_status_codes(feeder) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="bad queue")]))
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.details().startswith("tasks[0].queue: ")

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await feeder.stub.GetTask(pb.GetTaskRequest(task_id="12345"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as cancel_missing:
        await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id="12345"))
    assert cancel_missing.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_serving_and_stop_drains_long_polls(feeder) -> None:
    health = health_pb2_grpc.HealthStub(feeder.channel)
    for service in ("", "feedwork.v1.Feeder"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    # A long poll in flight when the shutdown starts returns empty at once.
    waiting = feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=1, wait=Duration(seconds=30)))
    async with asyncio.timeout(5):
        while not feeder.service._waiters.has_waiters("q"):
            await asyncio.sleep(0.01)
    await feeder.server.stop(5)
    assert list((await waiting).tasks) == []


async def test_full_queue_is_resource_exhausted(feeder_factory, feeder_settings) -> None:
    settings = dataclasses.replace(feeder_settings, default_policy=QueuePolicy(max_depth=1))
    feeder = await feeder_factory(settings=settings)
    await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")]))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")]))
    assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_store_unavailable_is_unavailable(feeder, monkeypatch) -> None:
    async def fail(task_id: int) -> None:
        raise StoreUnavailable("disk full")

    monkeypatch.setattr(feeder.service, "get_task", fail)
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await feeder.stub.GetTask(pb.GetTaskRequest(task_id="1"))
    assert unavailable.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "disk full" in unavailable.value.details()


async def test_unexpected_error_is_internal_logged_and_survived(
    feeder, monkeypatch, caplog
) -> None:
    async def fail(queues: object) -> None:
        raise RuntimeError("the secret internals")

    monkeypatch.setattr(feeder.service, "stats", fail)
    with pytest.raises(grpc.aio.AioRpcError) as internal:
        await feeder.stub.GetStats(pb.GetStatsRequest())
    assert internal.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in internal.value.details()
    [record] = [r for r in caplog.records if r.name == "feedwork.feeder.rpc"]
    assert record.exc_info is not None and "GetStats" in record.getMessage()
    monkeypatch.undo()
    assert (await feeder.stub.GetStats(pb.GetStatsRequest())).totals.submitted == 0


async def lease_one(feeder, queue: str = "q") -> pb.LeasedTask:
    reply = await feeder.stub.Lease(pb.LeaseRequest(queue=queue, max_tasks=1, worker_id="w"))
    [task] = reply.tasks
    return task


@pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)
async def test_every_admin_rpc_answers(feeder) -> None:
    specs = [pb.TaskSpec(queue="q", max_attempts=1) for _ in range(3)]
    ids = [r.task_id for r in (await feeder.stub.Submit(pb.SubmitRequest(tasks=specs))).results]

    first = await lease_one(feeder)
    extended = await feeder.stub.Extend(
        pb.ExtendRequest(
            items=[
                pb.ExtendItem(lease_token=first.lease_token, lease_duration=Duration(seconds=90)),
                pb.ExtendItem(lease_token="forged"),
            ]
        )
    )
    ok, forged = extended.results
    assert ok.outcome == pb.EXTEND_OUTCOME_EXTENDED and ok.lease_deadline.seconds > 0
    assert (forged.outcome, forged.task_id) == (pb.EXTEND_OUTCOME_INVALID_TOKEN, "")

    # Both go dead: max_attempts=1, so the first failure is the last.
    for task in (first, await lease_one(feeder)):
        nacked = await feeder.stub.Nack(
            pb.NackRequest(items=[pb.NackItem(lease_token=task.lease_token, error="boom")])
        )
        assert [r.outcome for r in nacked.results] == [pb.NACK_OUTCOME_DEAD]

    page = await feeder.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue="q", page_size=1))
    assert [t.task_id for t in page.tasks] == ids[:1] and page.next_page_token
    page = await feeder.stub.ListDeadTasks(
        pb.ListDeadTasksRequest(queue="q", page_size=1, page_token=page.next_page_token)
    )
    assert [t.task_id for t in page.tasks] == ids[1:2]
    assert page.tasks[0].history[0].error == "boom"

    selector = pb.DeadTaskSelector(queue="q", task_ids=ids[:1])
    redriven = await feeder.stub.RedriveDeadTasks(pb.RedriveDeadTasksRequest(selector=selector))
    assert redriven.redriven == 1
    purged = await feeder.stub.PurgeDeadTasks(
        pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue="q"))
    )
    assert purged.purged == 1

    cancelled = await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=ids[2]))
    assert (cancelled.outcome, cancelled.state) == (
        pb.CANCEL_OUTCOME_CANCELLED,
        pb.TASK_STATE_CANCELLED,
    )
    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=["q"]))
    [q] = stats.queues
    assert (q.ready, q.dead, q.cancelled) == (1, 0, 1)
    assert (q.totals.dead_lettered, q.totals.cancelled, q.totals.failed) == (2, 1, 2)
