"""The Consume stream of feedwork.v1.Feeder through a real grpc.aio server, with raw stubs.

Credits bound what is sent, reports are answered by id, bad input gets a status naming the
field, and a lease from a stream is the same lease as one from Lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from feeder.server.consume import MAX_UNUSED_CREDITS, ConsumeStream
from feeder.server.servicer import status_of
from feeder.server.validate import Limits, ValidationError
from feedwork.v1 import feeder_pb2 as pb

BOTH_STORES = pytest.mark.parametrize("feeder", ["memory", "sqlite", "postgres"], indirect=True)
QUEUE = "q"


async def submit(feeder: Any, count: int, queue: str = QUEUE) -> list[str]:
    specs = [pb.TaskSpec(queue=queue, payload=str(i).encode()) for i in range(count)]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=specs))
    return [r.task_id for r in reply.results]


async def get(feeder: Any, task_id: str) -> pb.Task:
    return (await feeder.stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task


def start(queue: str = QUEUE, credits: int = 0, **fields: Any) -> pb.ConsumeRequest:
    return pb.ConsumeRequest(
        start=pb.ConsumeStart(queue=queue, worker_id="w1", **fields), credits=credits
    )


def answers_a_report(response: pb.ConsumeResponse) -> bool:
    results = [*response.ack_results, *response.nack_results, *response.extend_results]
    return bool(results or response.error_code)


async def read_tasks(call: Any, count: int, within: float = 5.0) -> list[pb.LeasedTask]:
    tasks: list[pb.LeasedTask] = []
    while len(tasks) < count:
        response = await asyncio.wait_for(call.read(), within)
        assert response.tasks, f"expected tasks, got {response}"
        assert not answers_a_report(response), "no report was sent"
        tasks.extend(response.tasks)
    return tasks


async def read_report(call: Any, report_id: int, within: float = 5.0) -> pb.ConsumeResponse:
    """The answer to one report (tasks that come meanwhile are left unread)."""
    while True:
        response = await asyncio.wait_for(call.read(), within)
        if answers_a_report(response):
            assert response.report_id == report_id
            return response


async def expect_error(call: Any, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), 5)
    assert raised.value.code() == code
    assert raised.value.details().startswith(f"{field}:"), raised.value.details()


@BOTH_STORES
async def test_tasks_come_only_against_credits(feeder: Any) -> None:
    await submit(feeder, 10)
    call = feeder.stub.Consume()
    await call.write(start(credits=3))
    first = await read_tasks(call, 3)
    assert len(first) == 3 and [t.attempt for t in first] == [1, 1, 1]
    # No credit left: nothing more is leased, though 7 tasks are ready. (A timed-out read
    # would cancel the call, so the feeder's counts tell instead.)
    await asyncio.sleep(0.3)
    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=[QUEUE]))
    assert (stats.queues[0].leased, stats.queues[0].ready) == (3, 7)
    await call.write(pb.ConsumeRequest(credits=4))
    second = await read_tasks(call, 4)
    assert len({t.task_id for t in first + second}) == 7
    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=[QUEUE]))
    assert (stats.queues[0].leased, stats.queues[0].ready) == (7, 3)
    call.cancel()


@BOTH_STORES
async def test_reports_are_answered_by_id_and_applied(feeder: Any) -> None:
    task_ids = await submit(feeder, 3)
    call = feeder.stub.Consume()
    await call.write(start(credits=3))
    tasks = await read_tasks(call, 3)
    by_id = {t.task_id: t for t in tasks}
    report = pb.ConsumeRequest(
        report_id=41,
        acks=[pb.AckItem(lease_token=by_id[task_ids[0]].lease_token, result=b"ok")],
        nacks=[pb.NackItem(lease_token=by_id[task_ids[1]].lease_token, error="boom")],
        extends=[pb.ExtendItem(lease_token=by_id[task_ids[2]].lease_token)],
    )
    await call.write(report)
    answer = await read_report(call, 41)
    assert [r.outcome for r in answer.ack_results] == [pb.ACK_OUTCOME_ACKED]
    assert [r.outcome for r in answer.nack_results] == [pb.NACK_OUTCOME_RETRYING]
    assert [r.outcome for r in answer.extend_results] == [pb.EXTEND_OUTCOME_EXTENDED]
    assert answer.error_code == 0
    completed = await get(feeder, task_ids[0])
    assert (completed.state, completed.result) == (pb.TASK_STATE_COMPLETED, b"ok")
    assert (await get(feeder, task_ids[1])).history[-1].error == "boom"
    # The same ack again (a retry after a lost answer) is a DUPLICATE, not an error.
    await call.write(pb.ConsumeRequest(report_id=42, acks=report.acks))
    again = await read_report(call, 42)
    assert [r.outcome for r in again.ack_results] == [pb.ACK_OUTCOME_DUPLICATE]
    call.cancel()


async def test_a_task_arrives_as_soon_as_it_is_submitted(feeder: Any) -> None:
    call = feeder.stub.Consume()
    await call.write(start(credits=1))
    await asyncio.sleep(0.2)  # the stream is waiting on the feeder now
    began = time.perf_counter()
    [task_id] = await submit(feeder, 1)
    [task] = await read_tasks(call, 1)
    delay = time.perf_counter() - began
    print(f"submit-to-stream delay: {delay * 1000:.1f} ms")
    assert task.task_id == task_id and delay < 0.5
    call.cancel()


async def test_stream_leases_are_ordinary_leases(feeder: Any) -> None:
    [first, second] = await submit(feeder, 2)
    call = feeder.stub.Consume()
    await call.write(start(credits=2, lease_duration=Duration(seconds=30)))
    tasks = {t.task_id: t for t in await read_tasks(call, 2)}
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    # Closing the stream gave nothing back: both are still leased...
    for task_id in (first, second):
        assert (await get(feeder, task_id)).state == pb.TASK_STATE_LEASED
    # ...and a stream's token is good for the unary Ack.
    reply = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=tasks[first].lease_token)])
    )
    assert [r.outcome for r in reply.results] == [pb.ACK_OUTCOME_ACKED]


async def test_a_malformed_report_is_refused_and_the_stream_goes_on(feeder: Any) -> None:
    [task_id] = await submit(feeder, 1)
    call = feeder.stub.Consume()
    await call.write(start(credits=1))
    [task] = await read_tasks(call, 1)
    bad = pb.ConsumeRequest(
        report_id=7,
        acks=[pb.AckItem(lease_token=task.lease_token)],
        nacks=[
            pb.NackItem(lease_token="t"),
            pb.NackItem(lease_token="t", terminal=True, release=True),
        ],
    )
    await call.write(bad)
    answer = await read_report(call, 7)
    assert answer.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answer.error == pb.REPORT_ERROR_INVALID_ARGUMENT
    assert answer.error_message.startswith("nacks[1].release:")
    assert not answer.ack_results
    # All or nothing: the good item of the refused report was not applied.
    assert (await get(feeder, task_id)).state == pb.TASK_STATE_LEASED
    await call.write(pb.ConsumeRequest(report_id=8, acks=bad.acks[:1]))
    assert [r.outcome for r in (await read_report(call, 8)).ack_results] == [pb.ACK_OUTCOME_ACKED]
    call.cancel()


@BOTH_STORES
async def test_malformed_tokens_in_a_report_are_invalid_token_outcomes(feeder: Any) -> None:
    """As on the unary calls: a token is opaque, so a malformed one is that item's outcome
    and the rest of the report is applied."""
    await submit(feeder, 2)
    call = feeder.stub.Consume()
    await call.write(start(credits=2))
    first, second = await read_tasks(call, 2)
    bad = ["t" * 513, "", "not a token!", "é" * 39]
    await call.write(
        pb.ConsumeRequest(
            report_id=3,
            acks=[pb.AckItem(lease_token=t) for t in [*bad, first.lease_token]],
            nacks=[pb.NackItem(lease_token=t, release=True) for t in [second.lease_token, *bad]],
            extends=[pb.ExtendItem(lease_token=t) for t in bad],
        )
    )
    answer = await read_report(call, 3)
    assert answer.error_code == 0, answer.error_message
    assert [r.outcome for r in answer.ack_results] == [pb.ACK_OUTCOME_INVALID_TOKEN] * len(bad) + [
        pb.ACK_OUTCOME_ACKED
    ]
    assert [r.outcome for r in answer.nack_results] == [pb.NACK_OUTCOME_RELEASED] + [
        pb.NACK_OUTCOME_INVALID_TOKEN
    ] * len(bad)
    assert [r.outcome for r in answer.extend_results] == [pb.EXTEND_OUTCOME_INVALID_TOKEN] * len(
        bad
    )
    assert (await get(feeder, first.task_id)).state == pb.TASK_STATE_COMPLETED
    call.cancel()


@pytest.mark.parametrize(
    ("first", "field"),
    [
        (pb.ConsumeRequest(credits=1), "start"),
        (start(queue="no spaces"), "start.queue"),
        (start(lease_duration=Duration(seconds=0)), "start.lease_duration"),
        (
            pb.ConsumeRequest(start=pb.ConsumeStart(queue=QUEUE, worker_id="w" * 300)),
            "start.worker_id",
        ),
        (start(credits=1001), "credits"),
        (start(credits=-1), "credits"),
    ],
    ids=["no-start", "queue", "lease-duration", "worker-id", "too-many-credits", "negative"],
)
async def test_a_malformed_first_message_ends_the_stream(
    feeder: Any, first: pb.ConsumeRequest, field: str
) -> None:
    call = feeder.stub.Consume()
    await call.write(first)
    await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field)


async def test_start_twice_and_hoarded_credits_end_the_stream(feeder: Any) -> None:
    call = feeder.stub.Consume()
    await call.write(start(credits=1))
    await call.write(start())
    await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "start")

    call = feeder.stub.Consume()
    await call.write(start(credits=1000))
    for _ in range(MAX_UNUSED_CREDITS // 1000):
        await call.write(pb.ConsumeRequest(credits=1000))
    await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "credits")


class _SlowWrites:
    """A stream context whose writes take a while and, like gRPC's, go on when the
    awaiting task is cancelled (the message is already handed to the transport)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.written: list[pb.ConsumeResponse] = []

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    async def write(self, message: pb.ConsumeResponse) -> None:
        await asyncio.shield(self._send(message))

    async def _send(self, message: pb.ConsumeResponse) -> None:
        self.in_flight += 1
        await asyncio.sleep(0.05)
        self.written.append(message)
        self.in_flight -= 1


async def test_a_stream_ending_with_an_error_waits_for_the_message_on_its_way(
    feeder: Any,
) -> None:
    """Regression: a malformed message arriving while an answer was being written ended
    the stream at once, and gRPC refused its error status (a second send while one was
    in progress): the caller got no status and waited out its deadline. Found by the
    fault fuzz (`make chaos`)."""
    context = _SlowWrites()
    stream = ConsumeStream(
        service=feeder.service, limits=Limits(), context=context, status_of=status_of
    )

    async def requests() -> Any:
        yield start()
        yield pb.ConsumeRequest(report_id=1, acks=[pb.AckItem(lease_token="not-a-token")])
        await asyncio.sleep(0.02)  # the answer is on its way now
        yield start()

    with pytest.raises(ValidationError, match="start"):
        await stream.run(requests())
    assert context.in_flight == 0
    assert [m.report_id for m in context.written] == [1]


async def test_garbage_bytes_are_invalid_argument(feeder: Any) -> None:
    consume = feeder.channel.stream_stream("/feedwork.v1.Feeder/Consume")
    call = consume()
    await call.write(b"\xff\xff\xff")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), 5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ConsumeRequest" in raised.value.details()


async def test_shutdown_answers_reports_then_ends_with_unavailable(feeder: Any) -> None:
    await submit(feeder, 1)
    call = feeder.stub.Consume()
    await call.write(start(credits=2))
    [task] = await read_tasks(call, 1)
    await call.write(
        pb.ConsumeRequest(report_id=1, acks=[pb.AckItem(lease_token=task.lease_token)])
    )
    answer = await read_report(call, 1)
    assert [r.outcome for r in answer.ack_results] == [pb.ACK_OUTCOME_ACKED]
    began = time.perf_counter()
    stopping = asyncio.create_task(feeder.server.stop(5.0))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await asyncio.wait_for(call.read(), 5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    await stopping
    # The stream did not hold the shutdown for the grace period.
    assert time.perf_counter() - began < 2.0
