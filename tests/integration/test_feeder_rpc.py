"""Every outcome of the feedwork.v1.Feeder contract, through a real grpc.aio server.

Each test talks to an in-process feeder on an ephemeral port (see tests/conftest.py), on the
memory store and on SQLite. Timing-dependent checks (long-poll wake-up, lease expiry) measure
the real delay, print it (visible with `-s`) and assert a CI-safe bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from feeder.config import Settings
from feeder.core.machine import MAX_HISTORY
from feeder.core.policy import QueuePolicy
from feeder.store.sqlite import SqliteStore
from feedwork import AsyncFeederClient
from feedwork.v1 import feeder_pb2 as pb

BOTH_STORES = pytest.mark.parametrize("feeder", ["memory", "sqlite", "postgres"], indirect=True)

# The default queue policy of every feeder in this module: distinct from the built-in
# defaults so a test can tell which one applied.
DEFAULT_LEASE = 20.0
DEFAULT_MAX_ATTEMPTS = 3
BACKOFF_BASE = 2.0
SMALL_DEPTH = 3
# Tolerance for comparing a time the feeder computed with one this process measured.
SLACK = 0.05


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        default_policy=QueuePolicy(
            max_attempts=DEFAULT_MAX_ATTEMPTS,
            backoff_base=BACKOFF_BASE,
            backoff_cap=60.0,
            lease_duration=DEFAULT_LEASE,
        ),
        queue_policies={"small": QueuePolicy(max_depth=SMALL_DEPTH)},
    )


# -- helpers ------------------------------------------------------------------------------


def secs(value: Timestamp | Duration) -> float:
    return value.seconds + value.nanos / 1e9


def dur(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def stamp(epoch: float) -> Timestamp:
    whole = int(epoch)
    return Timestamp(seconds=whole, nanos=round((epoch - whole) * 1e9))


async def submit(feeder, *specs: pb.TaskSpec) -> list[pb.SubmitResult]:
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=list(specs)))
    assert len(reply.results) == len(specs)
    return list(reply.results)


async def submit_ids(feeder, *specs: pb.TaskSpec) -> list[str]:
    return [r.task_id for r in await submit(feeder, *specs)]


async def lease(
    feeder,
    queue: str = "q",
    *,
    n: int = 1,
    duration: float | None = None,
    wait: float | None = None,
    worker: str = "w",
) -> list[pb.LeasedTask]:
    request = pb.LeaseRequest(queue=queue, max_tasks=n, worker_id=worker)
    if duration is not None:
        request.lease_duration.CopyFrom(dur(duration))
    if wait is not None:
        request.wait.CopyFrom(dur(wait))
    return list((await feeder.stub.Lease(request)).tasks)


async def lease_one(feeder, queue: str = "q", **kwargs) -> pb.LeasedTask:
    [task] = await lease(feeder, queue, **kwargs)
    return task


async def ack(feeder, *tokens: str, result: bytes = b"") -> list[int]:
    items = [pb.AckItem(lease_token=t, result=result) for t in tokens]
    reply = await feeder.stub.Ack(pb.AckRequest(items=items))
    return [r.outcome for r in reply.results]


async def nack(feeder, *items: pb.NackItem) -> list[pb.NackResult]:
    return list((await feeder.stub.Nack(pb.NackRequest(items=list(items)))).results)


async def extend(feeder, *items: pb.ExtendItem) -> list[pb.ExtendResult]:
    return list((await feeder.stub.Extend(pb.ExtendRequest(items=list(items)))).results)


async def get(feeder, task_id: str) -> pb.Task:
    return (await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task


async def cancel(feeder, task_id: str) -> pb.CancelTaskResponse:
    return await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id))


async def queue_stats(feeder, queue: str = "q") -> pb.QueueStats:
    [stats] = (await feeder.stub.GetStats(pb.GetStatsRequest(queues=[queue]))).queues
    assert stats.queue == queue
    return stats


async def dead_ids(feeder, queue: str = "q") -> list[str]:
    page = await feeder.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue=queue))
    return [t.task_id for t in page.tasks]


def waiting(feeder, queue: str) -> int:
    """How many Lease calls are long-polling on `queue` right now."""
    return len(feeder.service._waiters._queues.get(queue, ()))


async def until(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.01)


async def until_waiting(feeder, queue: str, count: int) -> None:
    async def enough() -> bool:
        return waiting(feeder, queue) >= count

    await until(enough)


async def until_state(feeder, task_id: str, state: int, within: float = 5.0) -> pb.Task:
    found: list[pb.Task] = []

    async def reached() -> bool:
        found[:] = [await get(feeder, task_id)]
        return found[0].state == state

    await until(reached, within)
    return found[0]


async def sleep_past(deadline: float, margin: float = 0.1) -> None:
    await asyncio.sleep(max(0.0, deadline - time.time()) + margin)


def outcomes(results) -> list[int]:
    return [r.outcome for r in results]


def tampered(token: str) -> str:
    """The token with one character in the middle changed."""
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


# -- Submit -------------------------------------------------------------------------------


@BOTH_STORES
async def test_submit_returns_ids_and_states_in_request_order(feeder) -> None:
    specs = [
        pb.TaskSpec(queue="q", payload=b"a"),
        pb.TaskSpec(queue="q", payload=b"b", delay=dur(60)),
        pb.TaskSpec(queue="other", payload=b"c"),
        pb.TaskSpec(queue="q", payload=b"d", not_before=Timestamp(seconds=int(time.time()) - 5)),
    ]
    results = await submit(feeder, *specs)
    assert [r.state for r in results] == [
        pb.TASK_STATE_READY,
        pb.TASK_STATE_SCHEDULED,
        pb.TASK_STATE_READY,
        pb.TASK_STATE_READY,  # not_before in the past: ready at once
    ]
    assert not any(r.deduplicated for r in results)
    ids = [int(r.task_id) for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 4
    for result, spec in zip(results, specs, strict=True):
        task = await get(feeder, result.task_id)
        assert (task.queue, task.payload, task.state) == (spec.queue, spec.payload, result.state)
    # A later batch gets later ids.
    [later] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    assert int(later) > ids[-1]


@BOTH_STORES
async def test_submit_batch_with_one_invalid_task_stores_nothing(feeder) -> None:
    batch = [pb.TaskSpec(queue="q"), pb.TaskSpec(queue="q"), pb.TaskSpec(queue="no spaces")]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await feeder.stub.Submit(pb.SubmitRequest(tasks=batch))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("tasks[2].queue: ")

    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert stats.totals.submitted == 0
    assert all(q.ready == 0 for q in stats.queues)
    assert await lease(feeder, n=10) == []
    # The ids a valid batch gets were not used by anything visible.
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    assert (await feeder.stub.GetStats(pb.GetStatsRequest())).totals.submitted == 1
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_READY


@BOTH_STORES
async def test_submit_over_max_depth_is_resource_exhausted_and_stores_nothing(feeder) -> None:
    await submit(feeder, pb.TaskSpec(queue="small"), pb.TaskSpec(queue="small"))
    # Two more would make four pending tasks in "small" (max_depth 3); the "q" task of the
    # same batch is not stored either.
    over = [pb.TaskSpec(queue="q"), pb.TaskSpec(queue="small"), pb.TaskSpec(queue="small")]
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await feeder.stub.Submit(pb.SubmitRequest(tasks=over))
    assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "small" in full.value.details()

    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=["small", "q"]))
    assert [(q.queue, q.ready) for q in stats.queues] == [("small", 2), ("q", 0)]
    assert stats.totals.submitted == 2

    # Exactly at the limit is fine; one more is not.
    await submit(feeder, pb.TaskSpec(queue="small"))
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await submit(feeder, pb.TaskSpec(queue="small"))
    assert again.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # A completed task no longer counts against the depth.
    done = await lease_one(feeder, "small")
    assert await ack(feeder, done.lease_token) == [pb.ACK_OUTCOME_ACKED]
    [result] = await submit(feeder, pb.TaskSpec(queue="small"))
    assert result.state == pb.TASK_STATE_READY
    assert (await queue_stats(feeder, "small")).ready == 3


@BOTH_STORES
async def test_idempotency_key_returns_the_existing_task_and_its_state(feeder) -> None:
    [first] = await submit(feeder, pb.TaskSpec(queue="q", payload=b"1", idempotency_key="k"))
    assert (first.state, first.deduplicated) == (pb.TASK_STATE_READY, False)

    task = await lease_one(feeder)
    again, fresh, same_queue_other_key, other_queue = await submit(
        feeder,
        pb.TaskSpec(queue="q", payload=b"2", idempotency_key="k"),
        pb.TaskSpec(queue="q", payload=b"3"),
        pb.TaskSpec(queue="q", payload=b"4", idempotency_key="k2"),
        pb.TaskSpec(queue="other", payload=b"5", idempotency_key="k"),  # keys are per queue
    )
    assert (again.task_id, again.state, again.deduplicated) == (
        first.task_id,
        pb.TASK_STATE_LEASED,
        True,
    )
    assert not fresh.deduplicated and fresh.task_id != first.task_id
    assert not same_queue_other_key.deduplicated
    assert not other_queue.deduplicated and other_queue.task_id != first.task_id
    assert (await get(feeder, first.task_id)).payload == b"1"  # the duplicate changed nothing

    # A duplicate inside one batch: the second names the first.
    a, b = await submit(
        feeder,
        pb.TaskSpec(queue="q", idempotency_key="batch"),
        pb.TaskSpec(queue="q", idempotency_key="batch"),
    )
    assert (a.deduplicated, b.deduplicated, b.task_id) == (False, True, a.task_id)

    assert await ack(feeder, task.lease_token) == [pb.ACK_OUTCOME_ACKED]
    [done] = await submit(feeder, pb.TaskSpec(queue="q", idempotency_key="k"))
    assert (done.task_id, done.state, done.deduplicated) == (
        first.task_id,
        pb.TASK_STATE_COMPLETED,
        True,
    )
    # Deduplicated submits are not counted.
    assert (await queue_stats(feeder)).totals.submitted == 4


@BOTH_STORES
async def test_delay_and_not_before_schedule_the_task_until_its_time(feeder) -> None:
    before = time.time()
    at = stamp(before + 1.8)
    delayed, timed = await submit(
        feeder,
        pb.TaskSpec(queue="q", payload=b"delay", delay=dur(1.0)),
        pb.TaskSpec(queue="q", payload=b"at", not_before=at),
    )
    after = time.time()
    assert (delayed.state, timed.state) == (pb.TASK_STATE_SCHEDULED, pb.TASK_STATE_SCHEDULED)
    delayed_at = secs((await get(feeder, delayed.task_id)).not_before)
    assert before + 1.0 - SLACK <= delayed_at <= after + 1.0
    # Times are float seconds inside the feeder: equal to well under a microsecond.
    assert secs((await get(feeder, timed.task_id)).not_before) == pytest.approx(secs(at), abs=1e-6)
    assert (await queue_stats(feeder)).scheduled == 2

    assert await lease(feeder, n=10) == []  # nothing is ready yet
    first = await lease_one(feeder, n=10, wait=5)
    assert first.task_id == delayed.task_id
    leased_at = secs((await get(feeder, first.task_id)).history[0].leased_at)
    assert leased_at >= delayed_at
    assert time.time() < secs(at)  # the other one is still scheduled
    assert await lease(feeder, n=10) == []

    second = await lease_one(feeder, n=10, wait=5)
    assert second.task_id == timed.task_id
    leased_at = secs((await get(feeder, second.task_id)).history[0].leased_at)
    assert leased_at >= secs(at)


@BOTH_STORES
async def test_higher_priority_first_and_fifo_within_a_priority(feeder) -> None:
    priorities = [0, 5, -3, 5, 0, 1000, -1000, 5]
    ids = await submit_ids(feeder, *(pb.TaskSpec(queue="q", priority=p) for p in priorities))
    leased = await lease(feeder, n=100)
    expected = sorted(range(len(ids)), key=lambda i: (-priorities[i], i))
    assert [t.task_id for t in leased] == [ids[i] for i in expected]
    assert [t.priority for t in leased] == [1000, 5, 5, 5, 0, 0, -3, -1000]

    # A task made ready again (released) queues behind tasks of its priority that were
    # waiting already.
    for task in leased:
        [released] = await nack(feeder, pb.NackItem(lease_token=task.lease_token, release=True))
        assert released.outcome == pb.NACK_OUTCOME_RELEASED
    [late] = await submit_ids(feeder, pb.TaskSpec(queue="q", priority=5))
    again = await lease(feeder, n=100)
    assert [t.task_id for t in again][:5] == [ids[5], ids[1], ids[3], ids[7], late]


# -- Lease --------------------------------------------------------------------------------


@BOTH_STORES
async def test_lease_honors_max_tasks_and_sets_attempt_and_deadline(feeder) -> None:
    ids = await submit_ids(feeder, *(pb.TaskSpec(queue="q", payload=bytes([i])) for i in range(5)))
    before = time.time()
    first = await lease(feeder, n=3, duration=7, worker="w1")
    after = time.time()
    assert [t.task_id for t in first] == ids[:3]
    assert [t.payload for t in first] == [b"\x00", b"\x01", b"\x02"]
    assert all(t.attempt == 1 and t.queue == "q" for t in first)
    assert all(t.max_attempts == DEFAULT_MAX_ATTEMPTS for t in first)
    assert len({t.lease_token for t in first}) == 3
    for task in first:
        assert before + 7 - SLACK <= secs(task.lease_deadline) <= after + 7 + SLACK

    rest = await lease(feeder, n=3, duration=7)
    assert [t.task_id for t in rest] == ids[3:]
    assert await lease(feeder, n=3) == []
    stats = await queue_stats(feeder)
    assert (stats.ready, stats.leased) == (0, 5)

    got = await get(feeder, ids[0])
    assert got.state == pb.TASK_STATE_LEASED
    assert secs(got.lease_deadline) == pytest.approx(secs(first[0].lease_deadline), abs=1e-6)
    [attempt] = got.history
    assert (attempt.attempt, attempt.worker_id, attempt.outcome) == (
        1,
        "w1",
        pb.ATTEMPT_OUTCOME_RUNNING,
    )
    assert not attempt.HasField("ended_at")


@BOTH_STORES
async def test_lease_duration_defaults_task_then_queue(feeder) -> None:
    own, queue_default, overridden = await submit_ids(
        feeder,
        pb.TaskSpec(queue="q", lease_duration=dur(4)),
        pb.TaskSpec(queue="q"),
        pb.TaskSpec(queue="q", lease_duration=dur(4)),
    )
    before = time.time()
    a, b = await lease(feeder, n=2)
    after = time.time()
    assert (a.task_id, b.task_id) == (own, queue_default)
    assert before + 4 - SLACK <= secs(a.lease_deadline) <= after + 4 + SLACK
    assert before + DEFAULT_LEASE - SLACK <= secs(b.lease_deadline) <= after + DEFAULT_LEASE + SLACK

    before = time.time()
    c = await lease_one(feeder, duration=9)
    after = time.time()
    assert c.task_id == overridden
    assert before + 9 - SLACK <= secs(c.lease_deadline) <= after + 9 + SLACK
    assert secs((await get(feeder, own)).lease_duration) == 4


@BOTH_STORES
async def test_lease_with_zero_wait_returns_at_once(feeder) -> None:
    started = time.monotonic()
    assert await lease(feeder, n=10, wait=0) == []
    assert await lease(feeder, n=10) == []  # unset wait is zero too
    assert time.monotonic() - started < 0.5
    assert waiting(feeder, "q") == 0


@BOTH_STORES
async def test_long_poll_wakes_up_on_submit(feeder) -> None:
    poll = asyncio.ensure_future(lease(feeder, n=10, wait=5))
    await until_waiting(feeder, "q", 1)
    started = time.monotonic()
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q", payload=b"now"))
    tasks = await asyncio.wait_for(poll, 5)
    delay = time.monotonic() - started
    print(f"\nlong-poll wake-up after Submit: {delay * 1000:.1f} ms")
    assert [(t.task_id, t.payload) for t in tasks] == [(task_id, b"now")]
    assert delay < 1.0


@BOTH_STORES
async def test_long_poll_waiters_are_served_in_arrival_order(feeder) -> None:
    polls = []
    for i in range(3):
        # Long enough that no poll gives up before its task comes on a busy machine (a
        # 5 s wait once ran out before the third submit).
        polls.append(asyncio.ensure_future(lease(feeder, wait=30, worker=f"w{i}")))
        await until_waiting(feeder, "q", i + 1)

    served: list[tuple[int, str]] = []
    for _ in range(3):
        [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
        done, _pending = await asyncio.wait(
            [p for p in polls if not p.done()], timeout=3, return_when=asyncio.FIRST_COMPLETED
        )
        [finished] = done
        [task] = finished.result()
        assert task.task_id == task_id
        served.append((polls.index(finished), task_id))
        await asyncio.sleep(0.05)  # nobody else gets served meanwhile
        assert sum(p.done() for p in polls) == len(served)
    assert [who for who, _ in served] == [0, 1, 2]
    for who, task_id in served:
        assert (await get(feeder, task_id)).history[0].worker_id == f"w{who}"


@BOTH_STORES
async def test_a_waiter_woken_as_its_wait_ends_passes_the_turn_on(feeder, monkeypatch) -> None:
    """Regression: a long poll woken in the moment its own wait timed out returned empty
    and swallowed the wake-up, so the next waiter slept on while a task was ready.

    The interleaving is forced: the task is made ready without waking anyone, and the wake
    is delivered exactly while the first waiter handles its timeout."""
    service = feeder.service
    waiters = service._waiters
    first = asyncio.ensure_future(lease(feeder, wait=0.2, worker="first"))
    await until_waiting(feeder, "q", 1)
    second = asyncio.ensure_future(lease(feeder, wait=5, worker="second"))
    await until_waiting(feeder, "q", 2)

    monkeypatch.setattr(waiters, "wake", lambda queue, count: None)
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    monkeypatch.undo()
    discard = waiters.discard

    def woken_while_timing_out(queue: str, turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            waiters.wake_first(queue)  # the submit's wake, a moment too late
        discard(queue, turn)

    monkeypatch.setattr(waiters, "discard", woken_while_timing_out)
    assert await first == []
    # Without the turn passed on, the second waiter would sleep its whole 5 s.
    [task] = await asyncio.wait_for(second, 1.0)
    assert (task.task_id, (await get(feeder, task_id)).history[0].worker_id) == (task_id, "second")


@BOTH_STORES
async def test_long_poll_that_times_out_returns_empty(feeder) -> None:
    await submit(feeder, pb.TaskSpec(queue="elsewhere"))
    started = time.monotonic()
    assert await lease(feeder, n=5, wait=1) == []
    elapsed = time.monotonic() - started
    print(f"\nempty long poll (wait=1s) returned after {elapsed * 1000:.0f} ms")
    assert 0.95 <= elapsed < 2.0
    assert waiting(feeder, "q") == 0


# -- Ack ----------------------------------------------------------------------------------


@BOTH_STORES
async def test_ack_then_duplicate_ack(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder)
    reply = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=task.lease_token, result=b"r1")])
    )
    assert [(r.outcome, r.task_id) for r in reply.results] == [(pb.ACK_OUTCOME_ACKED, task_id)]
    assert await ack(feeder, task.lease_token, result=b"r2") == [pb.ACK_OUTCOME_DUPLICATE]
    # Within one batch, too: the second item sees the first.
    assert await ack(feeder, task.lease_token, task.lease_token) == [
        pb.ACK_OUTCOME_DUPLICATE,
        pb.ACK_OUTCOME_DUPLICATE,
    ]
    got = await get(feeder, task_id)
    assert (got.state, got.result) == (pb.TASK_STATE_COMPLETED, b"r1")
    stats = await queue_stats(feeder)
    assert (stats.completed, stats.leased) == (1, 0)
    assert (stats.totals.completed, stats.totals.duplicate_acks) == (1, 3)

    [other_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    other = await lease_one(feeder)
    assert await ack(feeder, other.lease_token, other.lease_token) == [
        pb.ACK_OUTCOME_ACKED,
        pb.ACK_OUTCOME_DUPLICATE,
    ]
    assert (await feeder.stub.GetStats(pb.GetStatsRequest())).totals.duplicate_acks == 4
    assert (await get(feeder, other_id)).state == pb.TASK_STATE_COMPLETED


@BOTH_STORES
async def test_late_ack_after_redelivery_is_adopted_and_revokes_the_new_lease(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    old = await lease_one(feeder, duration=1, worker="slow")
    new = await lease_one(feeder, wait=5, worker="fast")  # after the old lease expires
    assert (new.task_id, new.attempt) == (task_id, 2)

    assert await ack(feeder, old.lease_token, result=b"late") == [pb.ACK_OUTCOME_ADOPTED]
    [ext] = await extend(feeder, pb.ExtendItem(lease_token=new.lease_token))
    assert (ext.outcome, ext.task_id) == (pb.EXTEND_OUTCOME_COMPLETED, task_id)
    assert not ext.HasField("lease_deadline")
    assert await ack(feeder, new.lease_token, result=b"mine") == [pb.ACK_OUTCOME_DUPLICATE]

    got = await get(feeder, task_id)
    assert (got.state, got.result, got.attempts) == (pb.TASK_STATE_COMPLETED, b"late", 2)
    assert [(a.attempt, a.worker_id, a.outcome) for a in got.history] == [
        (1, "slow", pb.ATTEMPT_OUTCOME_ACKED),
        (2, "fast", pb.ATTEMPT_OUTCOME_REVOKED),
    ]
    assert "adopted" in got.history[0].error
    totals = (await queue_stats(feeder)).totals
    assert (totals.completed, totals.adopted, totals.expired, totals.redelivered) == (1, 1, 1, 1)
    assert totals.duplicate_acks == 1


@BOTH_STORES
async def test_an_ack_of_an_attempt_released_long_ago_is_rejected(feeder) -> None:
    """After more attempts than GetTask lists: the task says how many it leaves out, and
    an attempt that gave the task back still cannot complete it."""
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    first = await lease_one(feeder)
    tokens = [first.lease_token]
    for _ in range(MAX_HISTORY + 2):
        await nack(feeder, pb.NackItem(lease_token=tokens[-1], release=True))
        tokens.append((await lease_one(feeder, wait=5)).lease_token)
    got = await get(feeder, task_id)
    assert (got.attempts, got.attempts_omitted, len(got.history)) == (
        MAX_HISTORY + 3,
        3,
        MAX_HISTORY,
    )
    assert got.history[0].attempt == 4
    assert await ack(feeder, tokens[0], result=b"late") == [pb.ACK_OUTCOME_REJECTED]
    [again] = await nack(feeder, pb.NackItem(lease_token=tokens[0], release=True))
    assert again.outcome == pb.NACK_OUTCOME_DUPLICATE
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_LEASED
    assert await ack(feeder, tokens[-1], result=b"mine") == [pb.ACK_OUTCOME_ACKED]
    assert (await get(feeder, task_id)).result == b"mine"


@BOTH_STORES
async def test_late_ack_while_ready_again_is_adopted_and_not_handed_out(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    old = await lease_one(feeder, duration=1)
    # The reaper returns it to READY right after its deadline.
    got = await until_state(feeder, task_id, pb.TASK_STATE_READY, within=3)
    assert (got.failures, got.history[0].outcome) == (1, pb.ATTEMPT_OUTCOME_EXPIRED)
    assert (await queue_stats(feeder)).ready == 1

    assert await ack(feeder, old.lease_token, result=b"ok") == [pb.ACK_OUTCOME_ADOPTED]
    assert await lease(feeder, n=10) == []
    got = await get(feeder, task_id)
    assert (got.state, got.result, got.attempts) == (pb.TASK_STATE_COMPLETED, b"ok", 1)
    stats = await queue_stats(feeder)
    assert (stats.ready, stats.completed, stats.totals.adopted) == (0, 1, 1)


@BOTH_STORES
async def test_ack_rejected_after_cancel_and_after_own_nack(feeder) -> None:
    cancelled_id, nacked_id, released_id = await submit_ids(
        feeder, *(pb.TaskSpec(queue="q") for _ in range(3))
    )
    a, b, c = await lease(feeder, n=3)
    assert (await cancel(feeder, cancelled_id)).outcome == pb.CANCEL_OUTCOME_CANCELLED
    [failed] = await nack(feeder, pb.NackItem(lease_token=b.lease_token, error="x"))
    assert failed.outcome == pb.NACK_OUTCOME_RETRYING
    [released] = await nack(feeder, pb.NackItem(lease_token=c.lease_token, release=True))
    assert released.outcome == pb.NACK_OUTCOME_RELEASED

    reply = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=t.lease_token) for t in (a, b, c)])
    )
    assert [(r.outcome, r.task_id) for r in reply.results] == [
        (pb.ACK_OUTCOME_REJECTED, cancelled_id),
        (pb.ACK_OUTCOME_REJECTED, nacked_id),
        (pb.ACK_OUTCOME_REJECTED, released_id),
    ]
    assert (await get(feeder, cancelled_id)).state == pb.TASK_STATE_CANCELLED
    assert (await get(feeder, nacked_id)).state == pb.TASK_STATE_SCHEDULED
    assert (await get(feeder, released_id)).state == pb.TASK_STATE_READY
    assert (await queue_stats(feeder)).totals.completed == 0


@BOTH_STORES
async def test_ack_invalid_tokens(feeder, feeder_factory, feeder_settings, tmp_path) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder)

    # Another database (a feeder with another token secret): SQLite for SQLite, else memory.
    other_settings = dataclasses.replace(feeder_settings, db=str(tmp_path / "other.db"))
    kind = "sqlite" if isinstance(feeder.store, SqliteStore) else "memory"
    other = await feeder_factory(store_kind=kind, settings=other_settings)
    [foreign_id] = await submit_ids(other, pb.TaskSpec(queue="q"))
    assert foreign_id == task_id  # same id, different database
    foreign = await lease_one(other)

    bad = ["garbage", tampered(task.lease_token), foreign.lease_token, task.lease_token + "A"]
    reply = await feeder.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=t) for t in bad]))
    assert [(r.outcome, r.task_id) for r in reply.results] == [
        (pb.ACK_OUTCOME_INVALID_TOKEN, "")
    ] * 4
    nacked = await nack(feeder, *(pb.NackItem(lease_token=t) for t in bad))
    assert outcomes(nacked) == [pb.NACK_OUTCOME_INVALID_TOKEN] * 4
    extended = await extend(feeder, *(pb.ExtendItem(lease_token=t) for t in bad))
    assert outcomes(extended) == [pb.EXTEND_OUTCOME_INVALID_TOKEN] * 4

    # Nothing changed; the real tokens still work, each on its own feeder.
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_LEASED
    assert await ack(feeder, task.lease_token) == [pb.ACK_OUTCOME_ACKED]
    assert await ack(other, foreign.lease_token) == [pb.ACK_OUTCOME_ACKED]


@BOTH_STORES
async def test_token_of_a_purged_task_is_not_found(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder)
    [dead] = await nack(feeder, pb.NackItem(lease_token=task.lease_token, terminal=True))
    assert dead.outcome == pb.NACK_OUTCOME_DEAD
    purged = await feeder.stub.PurgeDeadTasks(
        pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue="q"))
    )
    assert purged.purged == 1

    reply = await feeder.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=task.lease_token)]))
    assert [(r.outcome, r.task_id) for r in reply.results] == [(pb.ACK_OUTCOME_NOT_FOUND, task_id)]
    [n] = await nack(feeder, pb.NackItem(lease_token=task.lease_token))
    assert (n.outcome, n.task_id) == (pb.NACK_OUTCOME_NOT_FOUND, task_id)
    [e] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token))
    assert (e.outcome, e.task_id) == (pb.EXTEND_OUTCOME_NOT_FOUND, task_id)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await get(feeder, task_id)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    # The id of a purged task is not handed out again.
    [new_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    assert int(new_id) > int(task_id)


# -- Nack ---------------------------------------------------------------------------------


@BOTH_STORES
async def test_nack_retrying_with_exponential_backoff(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    first = await lease_one(feeder)
    before = time.time()
    [now] = await nack(
        feeder, pb.NackItem(lease_token=first.lease_token, error="e1", retry_after=dur(0))
    )
    after = time.time()
    # retry_after=0: ready again at once.
    assert now.outcome == pb.NACK_OUTCOME_RETRYING
    assert before - SLACK <= secs(now.retry_at) <= after + SLACK
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_READY

    second = await lease_one(feeder)
    assert second.attempt == 2
    before = time.time()
    [backoff] = await nack(feeder, pb.NackItem(lease_token=second.lease_token, error="e2"))
    after = time.time()
    # Failure 2 with base 2 s: a step of 4 s, half fixed and half jitter: 2 to 4 s.
    assert backoff.outcome == pb.NACK_OUTCOME_RETRYING
    assert before + 2 - SLACK <= secs(backoff.retry_at) <= after + 4 + SLACK
    got = await get(feeder, task_id)
    assert (got.state, got.failures, got.attempts) == (pb.TASK_STATE_SCHEDULED, 2, 2)
    assert secs(got.not_before) == pytest.approx(secs(backoff.retry_at), abs=1e-6)
    assert [(a.outcome, a.error) for a in got.history] == [
        (pb.ATTEMPT_OUTCOME_FAILED, "e1"),
        (pb.ATTEMPT_OUTCOME_FAILED, "e2"),
    ]
    assert await lease(feeder) == []
    totals = (await queue_stats(feeder)).totals
    assert (totals.failed, totals.dead_lettered) == (2, 0)


@BOTH_STORES
async def test_nack_retry_after_is_honored(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder)
    before = time.time()
    [result] = await nack(
        feeder, pb.NackItem(lease_token=task.lease_token, error="later", retry_after=dur(1.2))
    )
    after = time.time()
    retry_at = secs(result.retry_at)
    assert result.outcome == pb.NACK_OUTCOME_RETRYING
    assert before + 1.2 - SLACK <= retry_at <= after + 1.2 + SLACK
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_SCHEDULED
    assert await lease(feeder) == []

    again = await lease_one(feeder, wait=5)
    assert (again.task_id, again.attempt) == (task_id, 2)
    assert secs((await get(feeder, task_id)).history[1].leased_at) >= retry_at


@BOTH_STORES
async def test_nack_terminal_and_out_of_attempts_go_dead(feeder) -> None:
    terminal_id, limited_id = await submit_ids(
        feeder, pb.TaskSpec(queue="q"), pb.TaskSpec(queue="q", max_attempts=2)
    )
    a, b = await lease(feeder, n=2)
    assert b.max_attempts == 2
    results = await nack(
        feeder,
        pb.NackItem(lease_token=a.lease_token, error="fatal", terminal=True),
        pb.NackItem(lease_token=b.lease_token, error="try1", retry_after=dur(0)),
    )
    assert [(r.outcome, r.task_id) for r in results] == [
        (pb.NACK_OUTCOME_DEAD, terminal_id),
        (pb.NACK_OUTCOME_RETRYING, limited_id),
    ]
    assert not results[0].HasField("retry_at")
    b2 = await lease_one(feeder)
    assert (b2.task_id, b2.attempt) == (limited_id, 2)
    [last] = await nack(feeder, pb.NackItem(lease_token=b2.lease_token, error="try2"))
    assert last.outcome == pb.NACK_OUTCOME_DEAD

    assert await dead_ids(feeder) == [terminal_id, limited_id]
    got = await get(feeder, limited_id)
    assert (got.state, got.failures, got.attempts) == (pb.TASK_STATE_DEAD, 2, 2)
    assert [a.error for a in got.history] == ["try1", "try2"]
    assert got.HasField("finished_at")
    assert (await get(feeder, terminal_id)).failures == 1
    stats = await queue_stats(feeder)
    assert (stats.dead, stats.totals.dead_lettered, stats.totals.failed) == (2, 2, 3)
    assert await lease(feeder) == []


@BOTH_STORES
async def test_nack_release_gives_the_task_back_without_a_failure(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q", max_attempts=1))
    task = await lease_one(feeder, worker="leaving")
    [result] = await nack(
        feeder, pb.NackItem(lease_token=task.lease_token, error="shutting down", release=True)
    )
    assert (result.outcome, result.task_id) == (pb.NACK_OUTCOME_RELEASED, task_id)
    assert not result.HasField("retry_at")
    got = await get(feeder, task_id)
    assert (got.state, got.failures, got.attempts) == (pb.TASK_STATE_READY, 0, 1)
    assert (got.history[0].outcome, got.history[0].error) == (
        pb.ATTEMPT_OUTCOME_RELEASED,
        "shutting down",
    )

    again = await lease_one(feeder)  # at once, without waiting
    assert (again.task_id, again.attempt) == (task_id, 2)
    assert await ack(feeder, again.lease_token) == [pb.ACK_OUTCOME_ACKED]
    totals = (await queue_stats(feeder)).totals
    assert (totals.failed, totals.redelivered, totals.completed) == (0, 1, 1)


@BOTH_STORES
async def test_nack_duplicate_completed_and_cancelled(feeder) -> None:
    nacked_id, acked_id, cancelled_id = await submit_ids(
        feeder, *(pb.TaskSpec(queue="q") for _ in range(3))
    )
    a, b, c = await lease(feeder, n=3)
    [first] = await nack(feeder, pb.NackItem(lease_token=a.lease_token, error="once"))
    assert first.outcome == pb.NACK_OUTCOME_RETRYING
    assert await ack(feeder, b.lease_token) == [pb.ACK_OUTCOME_ACKED]
    assert (await cancel(feeder, cancelled_id)).outcome == pb.CANCEL_OUTCOME_CANCELLED

    results = await nack(
        feeder,
        pb.NackItem(lease_token=a.lease_token, error="twice"),
        pb.NackItem(lease_token=b.lease_token),
        pb.NackItem(lease_token=c.lease_token),
    )
    assert [(r.outcome, r.task_id) for r in results] == [
        (pb.NACK_OUTCOME_DUPLICATE, nacked_id),
        (pb.NACK_OUTCOME_COMPLETED, acked_id),
        (pb.NACK_OUTCOME_CANCELLED, cancelled_id),
    ]
    got = await get(feeder, nacked_id)
    assert (got.failures, [h.error for h in got.history]) == (1, ["once"])
    assert (await queue_stats(feeder)).totals.failed == 1


@BOTH_STORES
async def test_expired_lease_extend_is_lease_lost_and_nack_is_stale(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder, duration=1)
    await sleep_past(secs(task.lease_deadline))

    [ext] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token))
    assert (ext.outcome, ext.task_id) == (pb.EXTEND_OUTCOME_LEASE_LOST, task_id)
    [stale] = await nack(feeder, pb.NackItem(lease_token=task.lease_token, error="boom"))
    assert (stale.outcome, stale.task_id) == (pb.NACK_OUTCOME_STALE, task_id)

    got = await get(feeder, task_id)
    # The expiry counted one failure; the stale nack only left its error in the history.
    assert (got.state, got.failures) == (pb.TASK_STATE_READY, 1)
    [attempt] = got.history
    assert attempt.outcome == pb.ATTEMPT_OUTCOME_EXPIRED
    assert "boom" in attempt.error
    totals = (await queue_stats(feeder)).totals
    assert (totals.expired, totals.failed) == (1, 0)

    # Superseded by a newer lease: still lost and stale.
    new = await lease_one(feeder)
    assert new.attempt == 2
    [ext] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token))
    assert ext.outcome == pb.EXTEND_OUTCOME_LEASE_LOST
    [stale] = await nack(feeder, pb.NackItem(lease_token=task.lease_token, error="boom"))
    assert stale.outcome == pb.NACK_OUTCOME_STALE
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_LEASED


# -- Extend -------------------------------------------------------------------------------


@BOTH_STORES
async def test_extend_moves_the_deadline(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder, duration=1)
    old_deadline = secs(task.lease_deadline)

    before = time.time()
    [ext] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token, lease_duration=dur(3)))
    after = time.time()
    assert (ext.outcome, ext.task_id) == (pb.EXTEND_OUTCOME_EXTENDED, task_id)
    new_deadline = secs(ext.lease_deadline)
    assert before + 3 - SLACK <= new_deadline <= after + 3 + SLACK
    assert secs((await get(feeder, task_id)).lease_deadline) == pytest.approx(
        new_deadline, abs=1e-6
    )

    await sleep_past(old_deadline, margin=0.3)
    got = await get(feeder, task_id)
    assert (got.state, got.failures) == (pb.TASK_STATE_LEASED, 0)
    assert await lease(feeder) == []

    # Without a duration: the original lease's duration (1 s) from now.
    before = time.time()
    [ext] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token))
    after = time.time()
    assert ext.outcome == pb.EXTEND_OUTCOME_EXTENDED
    assert before + 1 - SLACK <= secs(ext.lease_deadline) <= after + 1 + SLACK
    assert await ack(feeder, task.lease_token) == [pb.ACK_OUTCOME_ACKED]
    assert (await queue_stats(feeder)).totals.expired == 0


@BOTH_STORES
async def test_extend_after_cancel_is_cancelled(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q"))
    task = await lease_one(feeder, worker="w1")
    assert (await cancel(feeder, task_id)).outcome == pb.CANCEL_OUTCOME_CANCELLED
    [ext] = await extend(feeder, pb.ExtendItem(lease_token=task.lease_token))
    assert (ext.outcome, ext.task_id) == (pb.EXTEND_OUTCOME_CANCELLED, task_id)
    got = await get(feeder, task_id)
    assert [(a.outcome, a.worker_id) for a in got.history] == [(pb.ATTEMPT_OUTCOME_REVOKED, "w1")]


# -- expiry -------------------------------------------------------------------------------


@BOTH_STORES
async def test_expiry_is_prompt_counts_failures_and_kills_after_max_attempts(feeder) -> None:
    [task_id] = await submit_ids(feeder, pb.TaskSpec(queue="q", max_attempts=2))
    first = await lease_one(feeder, duration=1, worker="a")
    deadline = secs(first.lease_deadline)

    # A long poll waiting for the queue gets the task as soon as the lease expires.
    second = await lease_one(feeder, wait=5, duration=1, worker="b")
    delay = time.time() - deadline
    print(f"\nlease deadline -> redelivered to a waiting long poll: {delay * 1000:.1f} ms")
    assert (second.task_id, second.attempt) == (task_id, 2)
    assert 0 <= delay < 0.5

    got = await get(feeder, task_id)
    assert (got.state, got.failures) == (pb.TASK_STATE_LEASED, 1)
    # The second expiry is the last allowed failure.
    got = await until_state(feeder, task_id, pb.TASK_STATE_DEAD, within=3)
    assert secs(got.finished_at) >= secs(second.lease_deadline)
    assert (got.failures, got.attempts) == (2, 2)
    assert [(a.worker_id, a.outcome) for a in got.history] == [
        ("a", pb.ATTEMPT_OUTCOME_EXPIRED),
        ("b", pb.ATTEMPT_OUTCOME_EXPIRED),
    ]
    assert await dead_ids(feeder) == [task_id]
    totals = (await queue_stats(feeder)).totals
    assert (totals.expired, totals.redelivered, totals.dead_lettered) == (2, 1, 1)


# -- GetTask ------------------------------------------------------------------------------


@BOTH_STORES
async def test_get_task_reports_the_whole_record(feeder) -> None:
    spec = pb.TaskSpec(
        queue="q",
        payload=b"\x00body",
        headers={"trace": "t-1", "type": "json"},
        priority=7,
        max_attempts=4,
        lease_duration=dur(5),
        idempotency_key="get-1",
    )
    [task_id] = await submit_ids(feeder, spec)
    got = await get(feeder, task_id)
    assert (got.task_id, got.queue, got.payload, dict(got.headers)) == (
        task_id,
        "q",
        b"\x00body",
        {"trace": "t-1", "type": "json"},
    )
    assert (got.priority, got.max_attempts, got.idempotency_key) == (7, 4, "get-1")
    assert (got.state, got.attempts, got.failures, list(got.history)) == (
        pb.TASK_STATE_READY,
        0,
        0,
        [],
    )
    assert secs(got.lease_duration) == 5
    assert abs(secs(got.created_at) - time.time()) < 5
    for unset in ("not_before", "lease_deadline", "finished_at"):
        assert not got.HasField(unset)

    first = await lease_one(feeder, worker="w1")
    await nack(feeder, pb.NackItem(lease_token=first.lease_token, error="e1", retry_after=dur(0)))
    second = await lease_one(feeder, worker="w2")
    running = await get(feeder, task_id)
    assert (running.state, running.attempts, running.failures) == (pb.TASK_STATE_LEASED, 2, 1)
    assert secs(running.lease_deadline) == pytest.approx(secs(second.lease_deadline), abs=1e-6)
    assert running.history[-1].outcome == pb.ATTEMPT_OUTCOME_RUNNING
    assert not running.history[-1].HasField("ended_at")

    assert await ack(feeder, second.lease_token, result=b"the result") == [pb.ACK_OUTCOME_ACKED]
    done = await get(feeder, task_id)
    assert (done.state, done.attempts, done.failures, done.result) == (
        pb.TASK_STATE_COMPLETED,
        2,
        1,
        b"the result",
    )
    assert [(a.attempt, a.worker_id, a.outcome, a.error) for a in done.history] == [
        (1, "w1", pb.ATTEMPT_OUTCOME_FAILED, "e1"),
        (2, "w2", pb.ATTEMPT_OUTCOME_ACKED, ""),
    ]
    created = secs(done.created_at)
    times = [created]
    for attempt in done.history:
        times += [secs(attempt.leased_at), secs(attempt.ended_at)]
    times.append(secs(done.finished_at))
    assert times == sorted(times)
    assert not done.HasField("lease_deadline")


@BOTH_STORES
async def test_get_task_unknown_and_malformed_ids(feeder) -> None:
    await submit(feeder, pb.TaskSpec(queue="q"))
    for unknown in ("999999", "9223372036854775807"):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await get(feeder, unknown)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        assert unknown in missing.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as malformed:
        await get(feeder, "abc")
    assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.details().startswith("task_id: ")


# -- CancelTask ---------------------------------------------------------------------------


@BOTH_STORES
async def test_cancel_outcomes_and_cancelled_tasks_are_never_leased(feeder) -> None:
    ready, scheduled, leased, dead, done, keep = await submit_ids(
        feeder,
        pb.TaskSpec(queue="q", priority=9),
        pb.TaskSpec(queue="q", priority=9, delay=dur(1)),
        pb.TaskSpec(queue="q", priority=8),
        pb.TaskSpec(queue="q", priority=7),
        pb.TaskSpec(queue="q", priority=6),
        pb.TaskSpec(queue="q", priority=0),
    )
    # Cancel the ready one before anything is leased: priority 9 would go first.
    assert await cancel(feeder, ready) == pb.CancelTaskResponse(
        outcome=pb.CANCEL_OUTCOME_CANCELLED, state=pb.TASK_STATE_CANCELLED
    )
    lease_l, lease_d, lease_c = await lease(feeder, n=3)
    assert [t.task_id for t in (lease_l, lease_d, lease_c)] == [leased, dead, done]
    await nack(feeder, pb.NackItem(lease_token=lease_d.lease_token, terminal=True))
    assert await ack(feeder, lease_c.lease_token) == [pb.ACK_OUTCOME_ACKED]

    for task_id in (scheduled, leased, dead):
        reply = await cancel(feeder, task_id)
        assert (reply.outcome, reply.state) == (
            pb.CANCEL_OUTCOME_CANCELLED,
            pb.TASK_STATE_CANCELLED,
        )
    for task_id in (ready, scheduled, leased, dead):
        reply = await cancel(feeder, task_id)
        assert (reply.outcome, reply.state) == (
            pb.CANCEL_OUTCOME_ALREADY_CANCELLED,
            pb.TASK_STATE_CANCELLED,
        )
        assert secs((await get(feeder, task_id)).finished_at) > 0
    reply = await cancel(feeder, done)
    assert (reply.outcome, reply.state) == (
        pb.CANCEL_OUTCOME_ALREADY_COMPLETED,
        pb.TASK_STATE_COMPLETED,
    )
    assert (await get(feeder, leased)).history[0].outcome == pb.ATTEMPT_OUTCOME_REVOKED
    assert await dead_ids(feeder) == []

    # Only `keep` is ever handed out, even after the cancelled scheduled task's time came.
    [only] = await lease(feeder, n=10)
    assert only.task_id == keep
    assert await lease(feeder, n=10, wait=1.5) == []
    assert (await get(feeder, scheduled)).state == pb.TASK_STATE_CANCELLED
    stats = await queue_stats(feeder)
    assert (stats.cancelled, stats.scheduled, stats.ready, stats.leased) == (4, 0, 0, 1)
    assert stats.totals.cancelled == 4

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await cancel(feeder, "424242")
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


# -- dead letters -------------------------------------------------------------------------


async def make_dead(feeder, count: int, queue: str = "q") -> list[str]:
    ids = await submit_ids(feeder, *(pb.TaskSpec(queue=queue) for _ in range(count)))
    leased = await lease(feeder, queue, n=count)
    assert sorted(t.task_id for t in leased) == sorted(ids)
    results = await nack(
        feeder, *(pb.NackItem(lease_token=t.lease_token, error="x", terminal=True) for t in leased)
    )
    assert outcomes(results) == [pb.NACK_OUTCOME_DEAD] * count
    return ids


@BOTH_STORES
async def test_list_dead_tasks_in_pages(feeder) -> None:
    ids = await make_dead(feeder, 5)
    await make_dead(feeder, 1, queue="elsewhere")
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await feeder.stub.ListDeadTasks(
            pb.ListDeadTasksRequest(queue="q", page_size=2, page_token=token)
        )
        pages.append([t.task_id for t in page.tasks])
        assert all(t.state == pb.TASK_STATE_DEAD and t.queue == "q" for t in page.tasks)
        token = page.next_page_token
        if not token:
            break
        assert len(pages) < 5
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    assert await dead_ids(feeder) == ids  # page_size 0: the default (100)
    empty = await feeder.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue="nothing-here"))
    assert (list(empty.tasks), empty.next_page_token) == ([], "")


@BOTH_STORES
async def test_redrive_dead_tasks_by_ids_and_by_queue(feeder) -> None:
    ids = await make_dead(feeder, 5)
    [alive] = await submit_ids(feeder, pb.TaskSpec(queue="q"))

    def selector(**kwargs) -> pb.RedriveDeadTasksRequest:
        return pb.RedriveDeadTasksRequest(selector=pb.DeadTaskSelector(queue="q", **kwargs))

    # Only dead tasks of the queue count: the ready one and a missing id are skipped.
    reply = await feeder.stub.RedriveDeadTasks(selector(task_ids=[ids[3], alive, "999999"]))
    assert reply.redriven == 1
    got = await get(feeder, ids[3])
    assert (got.state, got.failures, got.attempts) == (pb.TASK_STATE_READY, 0, 1)
    assert not got.HasField("finished_at")
    wrong_queue = pb.RedriveDeadTasksRequest(
        selector=pb.DeadTaskSelector(queue="other", task_ids=[ids[0]])
    )
    assert (await feeder.stub.RedriveDeadTasks(wrong_queue)).redriven == 0

    # The whole queue, oldest first, up to `limit`.
    assert (await feeder.stub.RedriveDeadTasks(selector(limit=2))).redriven == 2
    assert await dead_ids(feeder) == [ids[2], ids[4]]
    assert (await feeder.stub.RedriveDeadTasks(selector())).redriven == 2
    assert await dead_ids(feeder) == []
    assert (await feeder.stub.RedriveDeadTasks(selector())).redriven == 0

    leased = await lease(feeder, n=10)
    by_id = {t.task_id: t for t in leased}
    assert set(by_id) == {*ids, alive}
    assert [by_id[i].attempt for i in ids] == [2] * 5  # attempt numbers go on
    assert by_id[alive].attempt == 1
    stats = await queue_stats(feeder)
    assert (stats.dead, stats.leased, stats.totals.dead_lettered) == (0, 6, 5)
    # A fresh failure budget: the queue default (3) failures again before dead.
    [retry] = await nack(feeder, pb.NackItem(lease_token=by_id[ids[0]].lease_token))
    assert retry.outcome == pb.NACK_OUTCOME_RETRYING
    assert (await get(feeder, ids[0])).failures == 1


@BOTH_STORES
async def test_purge_dead_tasks(feeder) -> None:
    ids = await make_dead(feeder, 4)
    [alive] = await submit_ids(feeder, pb.TaskSpec(queue="q"))

    def selector(**kwargs) -> pb.PurgeDeadTasksRequest:
        return pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue="q", **kwargs))

    assert (await feeder.stub.PurgeDeadTasks(selector(task_ids=[ids[1], alive]))).purged == 1
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await get(feeder, ids[1])
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert (await get(feeder, alive)).state == pb.TASK_STATE_READY
    assert await dead_ids(feeder) == [ids[0], ids[2], ids[3]]

    assert (await feeder.stub.PurgeDeadTasks(selector(limit=1))).purged == 1
    assert await dead_ids(feeder) == [ids[2], ids[3]]
    assert (await feeder.stub.PurgeDeadTasks(selector())).purged == 2
    assert (await feeder.stub.PurgeDeadTasks(selector())).purged == 0
    assert await dead_ids(feeder) == []
    stats = await queue_stats(feeder)
    assert (stats.dead, stats.ready, stats.totals.dead_lettered) == (0, 1, 4)


# -- GetStats -----------------------------------------------------------------------------


@BOTH_STORES
async def test_stats_counts_by_state_and_totals(feeder) -> None:
    ids = await submit_ids(
        feeder,
        pb.TaskSpec(queue="a", priority=3),  # completed
        pb.TaskSpec(queue="a", priority=3),  # dead
        pb.TaskSpec(queue="a", priority=3),  # leased
        pb.TaskSpec(queue="a", priority=3),  # cancelled
        pb.TaskSpec(queue="a"),  # ready
        pb.TaskSpec(queue="a"),  # ready
        pb.TaskSpec(queue="a", delay=dur(60)),  # scheduled
        pb.TaskSpec(queue="b"),  # ready
    )
    c, d, leased, _cancelled = await lease(feeder, "a", n=4)
    assert await ack(feeder, c.lease_token, c.lease_token) == [
        pb.ACK_OUTCOME_ACKED,
        pb.ACK_OUTCOME_DUPLICATE,
    ]
    await nack(feeder, pb.NackItem(lease_token=d.lease_token, terminal=True))
    await cancel(feeder, ids[3])
    await asyncio.sleep(0.05)

    reply = await feeder.stub.GetStats(pb.GetStatsRequest())
    by_queue = {q.queue: q for q in reply.queues}
    assert sorted(by_queue) == ["a", "b"]
    a, b = by_queue["a"], by_queue["b"]
    assert (a.scheduled, a.ready, a.leased, a.completed, a.dead, a.cancelled) == (1, 2, 1, 1, 1, 1)
    assert (b.scheduled, b.ready, b.leased, b.completed, b.dead, b.cancelled) == (0, 1, 0, 0, 0, 0)
    assert 0.05 <= secs(a.oldest_ready_age) < 10
    assert 0.05 <= secs(b.oldest_ready_age) < 10
    assert (
        a.totals.submitted,
        a.totals.completed,
        a.totals.expired,
        a.totals.redelivered,
        a.totals.duplicate_acks,
        a.totals.dead_lettered,
        a.totals.failed,
        a.totals.cancelled,
        a.totals.adopted,
    ) == (7, 1, 0, 0, 1, 1, 1, 1, 0)
    assert b.totals == pb.Totals(submitted=1)
    assert reply.totals == pb.Totals(
        submitted=8, completed=1, duplicate_acks=1, dead_lettered=1, failed=1, cancelled=1
    )

    # Only the queues asked for; a queue with nothing ready has no ready age.
    await lease(feeder, "b")
    only = await feeder.stub.GetStats(pb.GetStatsRequest(queues=["b"]))
    assert [q.queue for q in only.queues] == ["b"]
    assert (only.queues[0].leased, secs(only.queues[0].oldest_ready_age)) == (1, 0)
    assert only.totals == pb.Totals(submitted=1)
    assert leased.task_id in ids

    # Asking about a queue nobody used answers zeros and does not make it a known queue.
    [ghost] = (await feeder.stub.GetStats(pb.GetStatsRequest(queues=["ghost"]))).queues
    assert ghost == pb.QueueStats(queue="ghost", oldest_ready_age=Duration(), totals=pb.Totals())
    everything = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert [q.queue for q in everything.queues] == ["a", "b"]


# -- restart ------------------------------------------------------------------------------


async def test_sqlite_restart_keeps_tasks_states_totals_and_tokens(feeder_factory) -> None:
    first = await feeder_factory(store_kind="sqlite")
    held_id, done_id, dead_id, sched_id, ready_id = await submit_ids(
        first,
        pb.TaskSpec(queue="q", priority=4, payload=b"held", idempotency_key="held"),
        pb.TaskSpec(queue="q", priority=3),
        pb.TaskSpec(queue="q", priority=2),
        pb.TaskSpec(queue="q", delay=dur(3600)),
        pb.TaskSpec(queue="q"),
    )
    held, done, dead = await lease(first, n=3, duration=60)
    assert await ack(first, done.lease_token, result=b"res") == [pb.ACK_OUTCOME_ACKED]
    await nack(first, pb.NackItem(lease_token=dead.lease_token, error="bad", terminal=True))
    before = await first.stub.GetStats(pb.GetStatsRequest())
    records = {i: await get(first, i) for i in (held_id, done_id, dead_id, sched_id, ready_id)}
    await first.server.stop(0)

    second = await feeder_factory(store_kind="sqlite")
    after = await second.stub.GetStats(pb.GetStatsRequest())
    # The ready task has waited a little longer; everything else is the same.
    assert secs(after.queues[0].oldest_ready_age) >= secs(before.queues[0].oldest_ready_age) > 0
    for stats in (before, after):
        stats.queues[0].ClearField("oldest_ready_age")
    assert after == before
    assert after.totals == pb.Totals(submitted=5, completed=1, dead_lettered=1, failed=1)
    for task_id, record in records.items():
        assert await get(second, task_id) == record
    assert [records[i].state for i in (held_id, done_id, dead_id, sched_id, ready_id)] == [
        pb.TASK_STATE_LEASED,
        pb.TASK_STATE_COMPLETED,
        pb.TASK_STATE_DEAD,
        pb.TASK_STATE_SCHEDULED,
        pb.TASK_STATE_READY,
    ]

    # A token issued before the restart still acks; a completed one is still a duplicate.
    assert await ack(second, held.lease_token, result=b"after") == [pb.ACK_OUTCOME_ACKED]
    assert await ack(second, done.lease_token) == [pb.ACK_OUTCOME_DUPLICATE]
    assert (await get(second, held_id)).result == b"after"
    # The idempotency key survived; ids are not reused; the ready task is still leasable.
    [dup] = await submit(second, pb.TaskSpec(queue="q", idempotency_key="held"))
    assert (dup.task_id, dup.deduplicated, dup.state) == (held_id, True, pb.TASK_STATE_COMPLETED)
    [new_id] = await submit_ids(second, pb.TaskSpec(queue="q"))
    assert int(new_id) > int(ready_id)
    assert [t.task_id for t in await lease(second, n=10)] == [ready_id, new_id]
    assert await dead_ids(second) == [dead_id]


@BOTH_STORES
async def test_dead_tasks_are_listed_without_payloads_unless_asked_and_pages_fit_the_limit(
    feeder,
) -> None:
    """21 dead tasks of 1 MiB each: 21 MiB, over the 8 MiB message limit. Listed without
    payloads they fit one page; with payloads every page stays under the limit and the
    pages together give every task, whole."""
    payloads = [bytes([i]) * (1024 * 1024 - 1024) for i in range(21)]
    ids: list[str] = []
    for start in range(0, 21, 5):
        ids += await submit_ids(
            feeder, *(pb.TaskSpec(queue="q", payload=p) for p in payloads[start : start + 5])
        )
    for _ in range(0, 21, 7):
        leased = await lease(feeder, "q", n=7)
        await nack(feeder, *(pb.NackItem(lease_token=t.lease_token, terminal=True) for t in leased))
    plain = await feeder.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue="q"))
    assert [t.task_id for t in plain.tasks] == ids and not plain.next_page_token
    assert all(t.payload == b"" for t in plain.tasks)
    listed: dict[str, bytes] = {}
    token, pages = "", 0
    while True:
        page = await feeder.stub.ListDeadTasks(
            pb.ListDeadTasksRequest(queue="q", include_payloads=True, page_token=token)
        )
        pages += 1
        assert 0 < page.ByteSize() < 8 * 1024 * 1024
        listed.update((t.task_id, t.payload) for t in page.tasks)
        token = page.next_page_token
        if not token:
            break
    assert pages >= 3
    assert listed == dict(zip(ids, payloads, strict=True))


@BOTH_STORES
async def test_a_lease_hands_out_no_more_than_fits_one_reply(feeder) -> None:
    """20 tasks of ~1 MB asked for at once: 20 MB would pass the 8 MiB message limit (the
    reply failed, and the leased tasks ran again only after their leases expired). The
    Lease hands out what fits, the next ones get the rest, every payload whole."""
    payloads = [bytes([i]) * 1_000_000 for i in range(20)]
    ids: list[str] = []
    for start in range(0, 20, 5):
        ids += await submit_ids(
            feeder, *(pb.TaskSpec(queue="q", payload=p) for p in payloads[start : start + 5])
        )
    got: list[pb.LeasedTask] = []
    calls = 0
    while len(got) < 20 and calls < 10:
        reply = await feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=20, worker_id="w"))
        assert 0 < len(reply.tasks) < 20
        got += reply.tasks
        calls += 1
    assert [t.task_id for t in got] == ids
    assert [t.payload for t in got] == payloads


@BOTH_STORES
async def test_stats_of_every_queue_come_a_page_at_a_time(feeder) -> None:
    """2,500 queues: GetStats without names gives 1,000 by default and a token for the
    rest (70,000 queues once made one reply too large for everyone), in name order; the
    SDK reads every page."""
    names = [f"q{i:05d}" for i in range(2500)]
    for start in range(0, 2500, 1000):
        await submit_ids(feeder, *(pb.TaskSpec(queue=n) for n in names[start : start + 1000]))
    first = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert [q.queue for q in first.queues] == names[:1000]
    assert first.totals.submitted == 1000 and first.next_page_token
    seen, token = [], ""
    while True:
        page = await feeder.stub.GetStats(pb.GetStatsRequest(page_size=700, page_token=token))
        assert len(page.queues) <= 700
        seen += [q.queue for q in page.queues]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    named = await feeder.stub.GetStats(pb.GetStatsRequest(queues=["q00007", "nope"]))
    assert [(q.queue, q.ready) for q in named.queues] == [("q00007", 1), ("nope", 0)]
    assert not named.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await feeder.stub.GetStats(pb.GetStatsRequest(page_token="not a queue!"))
    assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (bad.value.details() or "")
    async with AsyncFeederClient(feeder.target) as client:
        stats = await client.stats()
    assert [q.queue for q in stats.queues] == names and stats.totals.submitted == 2500


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_a_submit_past_the_pending_bound_is_refused(
    feeder_factory, feeder_settings, store_kind
) -> None:
    """A feeder holding its pending tasks in memory bounds them across queues
    (--max-pending), or a client spreading tasks over many queues could exhaust it."""
    settings = dataclasses.replace(feeder_settings, max_pending=3)
    feeder = await feeder_factory(store_kind=store_kind, settings=settings)
    await submit_ids(feeder, pb.TaskSpec(queue="a"), pb.TaskSpec(queue="b"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_ids(feeder, pb.TaskSpec(queue="c"), pb.TaskSpec(queue="d"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 2 pending tasks (max_pending 3)" in (refused.value.details() or "")
    await submit_ids(feeder, pb.TaskSpec(queue="c"))


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "postgres"])
async def test_a_submit_to_a_new_queue_past_the_queue_limit_is_refused(
    feeder_factory, feeder_settings, store_kind
) -> None:
    """Any Submit made a queue, for ever: 70,000 of them broke GetStats for everyone."""
    settings = dataclasses.replace(feeder_settings, max_queues=2)
    feeder = await feeder_factory(store_kind=store_kind, settings=settings)
    await submit_ids(feeder, pb.TaskSpec(queue="a"), pb.TaskSpec(queue="b"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_ids(feeder, pb.TaskSpec(queue="a"), pb.TaskSpec(queue="c"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert '"c" would be a new queue past the limit' in (refused.value.details() or "")
    await submit_ids(feeder, pb.TaskSpec(queue="b"))
    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert [(q.queue, q.ready) for q in stats.queues] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "postgres"])
async def test_a_queue_left_without_tasks_is_forgotten_and_frees_its_place(
    feeder_factory, feeder_settings, store_kind
) -> None:
    """Once the janitor has purged a queue's last task, GetStats no longer lists the queue
    and a new queue may take its place under --max-queues."""
    settings = dataclasses.replace(feeder_settings, max_queues=2)
    feeder = await feeder_factory(store_kind=store_kind, settings=settings)
    (task_id,) = await submit_ids(feeder, pb.TaskSpec(queue="a"))
    await submit_ids(feeder, pb.TaskSpec(queue="b"))
    await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=task_id))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await submit_ids(feeder, pb.TaskSpec(queue="c"))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    sweep = await feeder.service.janitor.run_once(time.time() + settings.retention + 60)
    assert (sweep.purged, sweep.forgotten) == (1, 1)
    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert [(q.queue, q.ready) for q in stats.queues] == [("b", 1)]
    assert stats.totals.submitted == 1  # the totals of "a" went with it
    await submit_ids(feeder, pb.TaskSpec(queue="c"))
    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert [(q.queue, q.ready) for q in stats.queues] == [("b", 1), ("c", 1)]
