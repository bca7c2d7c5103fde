"""What one Consume stream may hold in the feeder: answers a caller does not read.

A caller that sends reports and never reads the answers must not grow the feeder: the
stream stops being read once MAX_UNANSWERED_REPORTS answers wait (backpressure), and
carries on when the caller reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from feeder.server.consume import MAX_UNANSWERED_REPORTS, ConsumeStream
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.integration.test_consume import read_tasks, start, submit

REPORTS = 200
ITEMS = 1000


def queued_answers(stream: ConsumeStream) -> int:
    """Reports the stream took and has not answered on the wire: being decided, or their
    answer waiting to be written."""
    return len(stream._reports) + len(stream._outbox_answers)


async def test_a_caller_that_never_reads_its_answers_is_not_read_either(feeder: Any) -> None:
    # Without BDP probing the caller's receive window stays at 64 KiB, so the feeder's
    # writes block after a few answers (each ~14 KB: 1000 NOT_FOUND results).
    channel = grpc.aio.insecure_channel(feeder.target, options=[("grpc.http2.bdp_probe", 0)])
    stub = feeder_pb2_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
    codec = feeder.service._codec
    acks = [pb.AckItem(lease_token=codec.issue(10**9 + i, 1)) for i in range(ITEMS)]
    call = stub.Consume()
    await call.write(start())
    sent = 0

    async def send_reports() -> None:
        nonlocal sent
        for report_id in range(1, REPORTS + 1):
            await call.write(pb.ConsumeRequest(report_id=report_id, acks=acks))
            sent = report_id

    while not feeder.server.servicer.streams:
        await asyncio.sleep(0.01)
    (stream,) = feeder.server.servicer.streams
    sending = asyncio.create_task(send_reports())
    most = 0
    last_sent, steady = -1, 0
    # Until the caller's writes stop going through (none for 2 s) or all went.
    while not sending.done() and steady < 20 and most <= MAX_UNANSWERED_REPORTS:
        await asyncio.sleep(0.1)
        most = max(most, queued_answers(stream))
        last_sent, steady = sent, steady + 1 if sent == last_sent else 0
    assert most <= MAX_UNANSWERED_REPORTS, f"{most} answers queued in the feeder"
    assert not sending.done(), "every report was taken, though no answer was read"

    # The caller reads: the feeder reads on, every report is answered, in order.
    answered = []
    while len(answered) < REPORTS:
        response = await asyncio.wait_for(call.read(), 10)
        assert [r.outcome for r in response.ack_results] == [pb.ACK_OUTCOME_NOT_FOUND] * ITEMS
        answered.append(response.report_id)
        most = max(most, queued_answers(stream))
    await sending
    assert answered == list(range(1, REPORTS + 1))
    assert most <= MAX_UNANSWERED_REPORTS
    # And it still leases.
    await submit(feeder, 1)
    await call.write(pb.ConsumeRequest(credits=1))
    assert len(await read_tasks(call, 1)) == 1
    call.cancel()
    await channel.close()
