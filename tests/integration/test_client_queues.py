"""The SDK's queue controls and listings (both clients) against a real feeder: what the
calls return as `feedwork.types` records, and the errors they raise."""

from __future__ import annotations

import asyncio

import pytest

from feedwork import (
    AsyncFeederClient,
    ConsumerKind,
    FailedPrecondition,
    FeederClient,
    InvalidArgument,
    NotFound,
    TaskSpec,
    TaskState,
)
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import RunningFeeder


async def test_async_client_controls_and_lists_queues(feeder: RunningFeeder) -> None:
    async with AsyncFeederClient(feeder.target) as client:
        made = await client.submit_many(
            [TaskSpec("b", payload=b"p1"), TaskSpec("b", payload=b"p2"), TaskSpec("a")]
        )
        assert await client.pause_queue("b") is True
        assert await client.pause_queue("b") is False
        queues = await client.list_queues(page_size=1)  # every page
        assert [(q.queue, q.paused, q.stats.ready) for q in queues] == [
            ("a", False, 1),
            ("b", True, 2),
        ]
        assert queues[1].paused_at is not None and queues[0].paused_at is None

        page = await client.list_tasks("b", states=[TaskState.READY, "scheduled"])
        assert [t.task_id for t in page.tasks] == [r.task_id for r in made[:2]]
        assert [t.payload for t in page.tasks] == [b"", b""]
        newest = await client.list_tasks("b", newest_first=True, include_payloads=True, page_size=1)
        assert [t.payload for t in newest.tasks] == [b"p2"] and newest.next_page_token
        with pytest.raises(ValueError):
            await client.list_tasks("b", states=["waiting"])

        assert await client.resume_queue("b") is True
        with pytest.raises(InvalidArgument) as unconfirmed:
            await client.purge_queue("b", confirm="a")
        assert unconfirmed.value.field_violations[0].field == "confirm"
        assert await client.purge_queue("b", confirm="b") == 2
        await client.delete_queue("b")
        with pytest.raises(NotFound):
            await client.delete_queue("b")
        with pytest.raises(FailedPrecondition):
            await client.delete_queue("a")
        stats = await client.stats(["a"])
        assert stats.totals.purged == 0


async def test_sync_client_lists_workers_and_purges(feeder: RunningFeeder) -> None:
    await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")] * 3))
    await feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=1, worker_id="w7"))

    def operate() -> tuple[object, ...]:
        with FeederClient(feeder.target) as client:
            workers = client.list_workers("q")
            purged = client.purge_queue("q", confirm="q")
            paused = client.pause_queue("q"), client.resume_queue("q")
            return workers, purged, paused, client.stats(["q"]).totals.purged

    workers, purged, paused, total = await asyncio.to_thread(operate)
    [holder] = workers.lease_holders  # type: ignore[attr-defined]
    assert (holder.queue, holder.worker_id, holder.leases) == ("q", "w7", 1)
    [consumer] = workers.consumers  # type: ignore[attr-defined]
    assert (consumer.kind, consumer.worker_id, consumer.queues) == (
        ConsumerKind.LEASE,
        "w7",
        ("q",),
    )
    assert workers.feeder.endswith(f":{feeder.server.port}")  # type: ignore[attr-defined]
    assert (purged, paused, total) == (2, (True, True), 2)
