"""A cancelled task's lease holder hears of it at once on its Consume stream (not at its
next Extend, ~20 s later with the default lease), through whichever feeder of the database
the cancel was sent to, and the worker stops its handler."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from feedwork.v1 import feeder_pb2 as pb
from tests.integration.test_consume import read_tasks, start, submit
from worker import Task, Worker

QUEUE = "q"
# Well under the default lease's first extension (2/3 of 30 s): only a push is this quick.
PUSH_WITHIN = 1.0


async def cancel(feeder: Any, task_id: str) -> None:
    reply = await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id))
    assert reply.outcome == pb.CANCEL_OUTCOME_CANCELLED


async def pushed_cancellations(call: Any) -> list[str]:
    while True:
        response = await asyncio.wait_for(call.read(), PUSH_WITHIN)
        if response.cancelled_task_ids:
            return list(response.cancelled_task_ids)


@pytest.mark.parametrize("feeder", ["memory", "sqlite", "postgres"], indirect=True)
async def test_the_stream_holding_the_lease_is_told_at_once(feeder: Any) -> None:
    await submit(feeder, 2)
    holder = feeder.stub.Consume()
    await holder.write(start(credits=2))
    tasks = await read_tasks(holder, 2)
    began = time.monotonic()
    await cancel(feeder, tasks[1].task_id)
    assert await pushed_cancellations(holder) == [tasks[1].task_id]
    assert time.monotonic() - began < PUSH_WITHIN
    holder.cancel()


async def test_two_feeders_the_cancel_reaches_the_stream_of_the_other(feeder_factory: Any) -> None:
    a = await feeder_factory(store_kind="postgres")
    b = await feeder_factory(store_kind="postgres")
    await submit(a, 1)
    holder = b.stub.Consume()
    await holder.write(start(credits=1))
    (task,) = await read_tasks(holder, 1)
    began = time.monotonic()
    await cancel(a, task.task_id)
    assert await pushed_cancellations(holder) == [task.task_id]
    assert time.monotonic() - began < PUSH_WITHIN
    holder.cancel()


class Blocking:
    """A handler that runs until cancelled, noting when it heard it was."""

    def __init__(self) -> None:
        self.started: asyncio.Event | None = None
        self.stopped_at: float | None = None
        self.reason: str | None = None

    async def __call__(self, task: Task) -> bytes:
        assert self.started is not None
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.stopped_at = time.monotonic()
            self.reason = task.cancel_reason
            raise
        return b"finished"


async def run_until_cancelled(producer: Any, worker_target: str) -> Blocking:
    handler = Blocking()
    handler.started = asyncio.Event()
    (task_id,) = await submit(producer, 1)
    worker = Worker(target=worker_target, queue=QUEUE, handler=handler, grace=0.5)
    running = asyncio.create_task(worker.run_async())
    try:
        await asyncio.wait_for(handler.started.wait(), 10)
        began = time.monotonic()
        await cancel(producer, task_id)
        deadline = began + 5
        while handler.stopped_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert handler.stopped_at is not None, "the handler was never cancelled"
        assert handler.stopped_at - began < PUSH_WITHIN
        assert handler.reason == "cancelled"
        assert worker.counters.lease_lost == 1
    finally:
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
    return handler


@pytest.mark.parametrize("feeder", ["sqlite"], indirect=True)
async def test_the_worker_stops_the_handler_within_a_second(feeder: Any) -> None:
    await run_until_cancelled(feeder, feeder.target)


async def test_two_feeders_the_worker_on_the_other_stops_the_handler(feeder_factory: Any) -> None:
    a = await feeder_factory(store_kind="postgres")
    b = await feeder_factory(store_kind="postgres")
    await run_until_cancelled(a, b.target)
