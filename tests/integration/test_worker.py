"""The worker against a real feeder served in-process (see tests/conftest.py).

Each test runs `Worker.run_async()` as a task on the test's own event loop, next to the
feeder; sync handlers run in the worker's threads. Feeder policies are short (fast
backoff, few attempts) so that retries and dead letters happen within a second or two.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from feeder.config import Settings
from feeder.core.policy import QueuePolicy
from feedwork.v1 import feeder_pb2 as pb
from worker import Fail, Retry, Task, Worker, WorkerCounters
from worker.acker import Acker
from worker.connection import ConnectionMonitor
from worker.handlers import Invoker
from worker.heartbeater import Heartbeater
from worker.jobs import Jobs
from worker.leaser import Slots

QUEUE = "jobs"


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    policy = QueuePolicy(max_attempts=3, backoff_base=0.05, backoff_cap=0.1, lease_duration=30.0)
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        default_policy=policy,
    )


async def submit(feeder: Any, *payloads: bytes, **spec: Any) -> list[str]:
    tasks = [pb.TaskSpec(queue=QUEUE, payload=payload, **spec) for payload in payloads]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=tasks))
    return [result.task_id for result in reply.results]


async def get_task(feeder: Any, task_id: str) -> pb.Task:
    reply = await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))
    return reply.task


async def wait_until(condition: Callable[[], Any], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def wait_for_states(feeder: Any, task_ids: list[str], *states: int) -> list[pb.Task]:
    deadline = time.monotonic() + 15
    while True:
        tasks = [await get_task(feeder, task_id) for task_id in task_ids]
        if all(task.state in states for task in tasks):
            return tasks
        if time.monotonic() > deadline:
            raise AssertionError(f"tasks not in {states}: {[t.state for t in tasks]}")
        await asyncio.sleep(0.05)


# Every test runs on both transports: the Consume stream (the default) and unary calls.
_transport = "stream"


@pytest.fixture(autouse=True, params=["stream", "unary"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    global _transport
    _transport = request.param
    yield request.param
    _transport = "stream"


@contextlib.asynccontextmanager
async def running(
    target: str, handler: Callable[..., Any], **options: Any
) -> AsyncIterator[Worker]:
    """A worker running on this loop; stopped (gracefully) when the block ends."""
    options = {
        "wait": 1.0,
        "grace": 5.0,
        "ack_flush_interval": 0.002,
        "transport": _transport,
        **options,
    }
    worker = Worker(target=target, queue=QUEUE, handler=handler, **options)
    run = asyncio.create_task(worker.run_async())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


# ---------------------------------------------------------------------------------------
# Results


def resize(task: Task) -> bytes:
    if task.payload == b"bad":
        raise ValueError("cannot resize 'bad'")
    return b"resized:" + task.payload


async def async_resize(task: Task) -> str:
    await asyncio.sleep(0.01)
    if task.payload == b"bad":
        raise ValueError("cannot resize 'bad'")
    return "resized:" + task.payload.decode()


@pytest.mark.parametrize("handler", [resize, async_resize], ids=["sync", "async"])
async def test_success_is_acked_and_failure_nacked(feeder: Any, handler: Any) -> None:
    ok = await submit(feeder, b"a", b"b", b"c")
    [bad] = await submit(feeder, b"bad", max_attempts=1)
    async with running(feeder.target, handler, concurrency=4) as worker:
        completed = await wait_for_states(feeder, ok, pb.TASK_STATE_COMPLETED)
        [dead] = await wait_for_states(feeder, [bad], pb.TASK_STATE_DEAD)
        await wait_until(lambda: worker.counters.done == 3)
    assert sorted(task.result for task in completed) == [b"resized:a", b"resized:b", b"resized:c"]
    assert all(task.attempts == 1 for task in completed)
    assert dead.history[-1].outcome == pb.ATTEMPT_OUTCOME_FAILED
    # The exception first, then its traceback down to the handler's raise.
    error = dead.history[-1].error
    assert error.startswith("ValueError: cannot resize 'bad'\nTraceback (most recent call last):")
    assert 'raise ValueError("cannot resize' in error
    assert error.endswith("ValueError: cannot resize 'bad'")
    assert (worker.counters.failed, worker.counters.dead) == (1, 1)


async def test_retry_until_dead_letter(feeder: Any) -> None:
    attempts: list[int] = []

    def flaky(task: Task) -> None:
        attempts.append(task.attempt)
        raise Retry("backend busy", after=0.05) from ConnectionError("refused")

    [task_id] = await submit(feeder, b"x")
    async with running(feeder.target, flaky) as worker:
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_DEAD)
    assert attempts == [1, 2, 3]
    assert (task.failures, worker.counters.failed, worker.counters.dead) == (3, 3, 1)
    assert [attempt.error for attempt in task.history] == [
        "Retry: backend busy (caused by ConnectionError: refused)"
    ] * 3


async def test_fail_is_terminal(feeder: Any) -> None:
    def reject(task: Task) -> None:
        raise Fail("malformed payload")

    [task_id] = await submit(feeder, b"x")
    async with running(feeder.target, reject):
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_DEAD)
    assert task.attempts == 1
    assert task.history[-1].error == "Fail: malformed payload"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_task_timeout_nacks(feeder: Any, kind: str) -> None:
    seen = threading.Event()

    def slow(task: Task) -> bytes:
        seen.wait(5)  # released by the test once the timeout has been reported
        return b"too late"

    async def slow_async(task: Task) -> bytes:
        await asyncio.sleep(30)
        return b"too late"

    [task_id] = await submit(feeder, b"x", max_attempts=1)
    handler = slow if kind == "sync" else slow_async
    async with running(feeder.target, handler, task_timeout=0.3) as worker:
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_DEAD)
        seen.set()
    assert task.history[-1].error == "TimeoutError: task exceeded its time limit of 0.3 s"
    assert (worker.counters.failed, worker.counters.done) == (1, 0)


# ---------------------------------------------------------------------------------------
# Leases


async def test_lease_is_extended_while_the_handler_runs(feeder: Any) -> None:
    def long_job(task: Task) -> bytes:
        time.sleep(3.0)  # three times the lease duration
        return b"finished"

    [task_id] = await submit(feeder, b"x")
    async with running(feeder.target, long_job, lease_duration=1.0):
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_COMPLETED)
    assert (task.attempts, task.result) == (1, b"finished")
    assert [attempt.outcome for attempt in task.history] == [pb.ATTEMPT_OUTCOME_ACKED]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_cancelled_task_stops_its_handler(feeder: Any, kind: str) -> None:
    started = threading.Event()
    told: list[str | None] = []

    def watchful(task: Task) -> bytes:
        started.set()
        task.cancelled.wait(10)
        told.append(task.cancel_reason)
        return b"ignored"

    async def watchful_async(task: Task) -> bytes:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            told.append(task.cancel_reason)
            raise
        return b"ignored"

    [task_id] = await submit(feeder, b"x")
    handler = watchful if kind == "sync" else watchful_async
    async with running(feeder.target, handler, lease_duration=1.0) as worker:
        await wait_until(started.is_set)
        await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id))
        await wait_until(lambda: told)
        await wait_until(lambda: worker.in_flight == 0)
    assert told == ["cancelled"]
    assert worker.counters.lease_lost == 1 and worker.counters.done == 0
    task = await get_task(feeder, task_id)
    assert task.state == pb.TASK_STATE_CANCELLED and task.result == b""


async def test_leases_only_as_many_tasks_as_free_slots(feeder: Any) -> None:
    release = threading.Event()

    def blocked(task: Task) -> None:
        release.wait(10)

    task_ids = await submit(feeder, *[b"x"] * 5)
    async with running(feeder.target, blocked, concurrency=2) as worker:
        await wait_until(lambda: worker.counters.leased == 2)
        await asyncio.sleep(0.3)
        states = [task.state for task in [await get_task(feeder, t) for t in task_ids]]
        assert sorted(states).count(pb.TASK_STATE_LEASED) == 2
        assert states.count(pb.TASK_STATE_READY) == 3
        release.set()
        await wait_for_states(feeder, task_ids, pb.TASK_STATE_COMPLETED)


# ---------------------------------------------------------------------------------------
# Shutdown


async def test_shutdown_lets_in_flight_tasks_finish(feeder: Any) -> None:
    started = threading.Event()

    def short(task: Task) -> bytes:
        started.set()
        time.sleep(0.5)
        return b"done"

    [task_id] = await submit(feeder, b"x")
    async with running(feeder.target, short, grace=5.0) as worker:
        await wait_until(started.is_set)
    # The block's exit stopped the worker; the task finished within the grace period.
    task = await get_task(feeder, task_id)
    assert (task.state, task.result) == (pb.TASK_STATE_COMPLETED, b"done")
    assert worker.counters.released == 0


async def test_shutdown_releases_tasks_still_running_after_grace(feeder: Any) -> None:
    running_now = threading.Event()

    def stubborn(task: Task) -> bytes:
        running_now.set()
        task.cancelled.wait(10)
        return b"never reported"

    [task_id] = await submit(feeder, b"x")
    async with running(feeder.target, stubborn, grace=0.3) as first:
        await wait_until(running_now.is_set)
    assert first.counters.released == 1
    task = await get_task(feeder, task_id)
    assert task.state == pb.TASK_STATE_READY  # not waiting for its 30 s lease to expire
    assert (task.failures, task.history[-1].outcome) == (0, pb.ATTEMPT_OUTCOME_RELEASED)

    async with running(feeder.target, resize) as second:
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_COMPLETED)
    assert (task.attempts, task.result, second.counters.done) == (2, b"resized:x", 1)


async def test_stop_now_skips_the_grace_period(feeder: Any) -> None:
    running_now = threading.Event()

    def stubborn(task: Task) -> None:
        running_now.set()
        task.cancelled.wait(10)

    [task_id] = await submit(feeder, b"x")
    worker = Worker(target=feeder.target, queue=QUEUE, handler=stubborn, grace=60, wait=1)
    run = asyncio.create_task(worker.run_async())
    await wait_until(running_now.is_set)
    began = time.monotonic()
    worker.stop(now=True)
    await asyncio.wait_for(run, 10)
    assert time.monotonic() - began < 5
    assert (await get_task(feeder, task_id)).state == pb.TASK_STATE_READY


async def test_tasks_leased_while_stopping_are_released_unstarted(feeder: Any) -> None:
    # The race this covers: a Lease reply that lands after shutdown began. The worker's
    # parts are assembled by hand so that the reply can be handed over at that moment.
    [task_id] = await submit(feeder, b"x")
    reply = await feeder.stub.Lease(pb.LeaseRequest(queue=QUEUE, max_tasks=1, worker_id="w"))
    monitor = ConnectionMonitor(target=feeder.target)
    acker = Acker(stub=feeder.stub, monitor=monitor)
    heartbeater = Heartbeater(
        stub=feeder.stub, monitor=monitor, on_lost=lambda *_: None, lease_duration=None
    )
    calls: list[Task] = []
    invoker = Invoker(handler=calls.append, concurrency=1, task_timeout=None)
    slots, counters = Slots(1), WorkerCounters()
    jobs = Jobs(
        invoker=invoker,
        acker=acker,
        heartbeater=heartbeater,
        slots=slots,
        counters=counters,
        lease_duration=None,
        task_timeout=None,
    )
    acker.start()
    await slots.reserve_free()  # as the leaser does before its call
    jobs.stopping = True
    jobs.on_leased(list(reply.tasks), time.monotonic())
    assert await acker.close(time_limit=5) == []
    invoker.shutdown()
    assert calls == [] and slots.busy == 0 and len(heartbeater) == 0
    assert (counters.leased, counters.released) == (1, 1)
    task = await get_task(feeder, task_id)
    assert (task.state, task.failures) == (pb.TASK_STATE_READY, 0)
    assert task.history[-1].outcome == pb.ATTEMPT_OUTCOME_RELEASED


# ---------------------------------------------------------------------------------------
# Connection


async def test_worker_reconnects_after_feeder_restart_without_losing_acks(
    feeder_factory: Any, feeder_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="feedwork.worker")
    first = await feeder_factory(store_kind="sqlite")
    started = threading.Event()
    gate = threading.Event()

    def gated(task: Task) -> bytes:
        started.set()
        gate.wait(10)  # finishes only while the feeder is down
        return b"done:" + task.payload

    task_ids = await submit(first, *[str(i).encode() for i in range(6)])
    async with running(first.target, gated, concurrency=2) as worker:
        await wait_until(started.is_set)
        await first.server.stop(0.5)
        gate.set()  # two acks now wait for the feeder to come back
        await asyncio.sleep(1.0)
        settings = dataclasses.replace(feeder_settings, listen=first.target)
        second = await feeder_factory(store_kind="sqlite", settings=settings)
        tasks = await wait_for_states(second, task_ids, pb.TASK_STATE_COMPLETED)
        await wait_until(lambda: worker.counters.done == 6)
    assert sorted(task.result for task in tasks) == [f"done:{i}".encode() for i in range(6)]
    # No ack was lost: no task had to be delivered a second time.
    assert [task.attempts for task in tasks] == [1] * 6
    messages = [record.getMessage() for record in caplog.records]
    assert sum("connection to feeder" in m and "lost" in m for m in messages) == 1
    assert sum("restored" in m for m in messages) == 1


async def test_worker_waits_for_a_feeder_that_is_not_up_yet(
    feeder_factory: Any,
    feeder_settings: Settings,
    unused_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="feedwork.worker")
    target = f"127.0.0.1:{unused_tcp_port}"
    async with running(target, resize) as worker:
        await asyncio.sleep(1.0)  # a few failed Lease calls
        settings = dataclasses.replace(feeder_settings, listen=target)
        feeder = await feeder_factory(settings=settings)
        [task_id] = await submit(feeder, b"late")
        [task] = await wait_for_states(feeder, [task_id], pb.TASK_STATE_COMPLETED)
    assert task.result == b"resized:late" and worker.counters.done == 1
    messages = [record.getMessage() for record in caplog.records]
    assert sum("not reachable" in m for m in messages) == 1
    assert any(m.startswith(f"connected to feeder {target} after") for m in messages)


async def test_stop_before_run_returns_at_once(feeder: Any) -> None:
    worker = Worker(target=feeder.target, queue=QUEUE, handler=resize)
    worker.stop()
    await asyncio.wait_for(worker.run_async(), 10)
    assert worker.counters.leased == 0


async def test_worker_uses_unary_calls_on_a_feeder_without_consume(
    feeder_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from feeder.server.servicer import FeederServicer

    async def unimplemented(self: Any, requests: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    monkeypatch.setattr(FeederServicer, "Consume", unimplemented)
    feeder = await feeder_factory()
    task_ids = await submit(feeder, b"a", b"b")
    caplog.set_level(logging.WARNING, logger="feedwork.worker")
    async with running(feeder.target, resize, transport="stream") as worker:
        tasks = await wait_for_states(feeder, task_ids, pb.TASK_STATE_COMPLETED)
    assert sorted(t.result for t in tasks) == [b"resized:a", b"resized:b"]
    assert worker.counters.done == 2
    assert any("does not offer Consume" in r.getMessage() for r in caplog.records)


async def test_more_slots_than_a_stream_may_hold_as_credits(feeder: Any) -> None:
    """A stream may hold at most 10,000 unused credits; a bigger worker still runs."""

    async def quick(task: Task) -> bytes:
        return task.payload

    task_ids = await submit(feeder, *[str(i).encode() for i in range(30)])
    async with running(feeder.target, quick, concurrency=10_050) as worker:
        tasks = await wait_for_states(feeder, task_ids, pb.TASK_STATE_COMPLETED)
        await wait_until(lambda: worker.counters.done == 30)
    assert sorted(t.result for t in tasks) == sorted(str(i).encode() for i in range(30))


async def test_the_ack_ledger_records_every_answered_ack_with_its_result(
    feeder: Any, tmp_path: Path
) -> None:
    """`ack_ledger`: a JSON line per ack the feeder answered, with the result sent, so an
    audit can hold the feeder to each completion it acknowledged."""
    path = tmp_path / "acks.jsonl"
    task_ids = await submit(feeder, b"a", b"b", b"c")

    def handler(task: Task) -> bytes:
        return b"done " + task.payload

    async with running(feeder.target, handler, ack_ledger=str(path), worker_id="w7"):
        await wait_for_states(feeder, task_ids, pb.TASK_STATE_COMPLETED)
        await wait_until(lambda: path.exists() and len(path.read_text().splitlines()) == 3)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_task = {line["task_id"]: line for line in lines}
    assert set(by_task) == set(task_ids)
    for task_id in task_ids:
        task = await get_task(feeder, task_id)
        line = by_task[task_id]
        assert (line["attempt"], line["outcome"], line["worker_id"]) == (1, "ACKED", "w7")
        assert base64.b64decode(line["result"]) == task.result == b"done " + task.payload
