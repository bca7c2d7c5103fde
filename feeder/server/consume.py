"""One Consume stream: credits and reports come up, leased tasks and report results go down.

The stream is a long-lived form of Lease, Ack, Nack and Extend; it decides nothing of its
own. Two loops run per stream:

- the reader takes each message as it comes: credits are added at once (so the lease loop
  can use them while a report is being decided), a report is decided in its own task so a
  slow commit never holds up the next message;
- the lease loop leases while credits are left, as one long-polling Lease would, and sends
  what it gets; a task is never sent without a credit, so a worker never holds more than it
  asked for. The stream is one consumer for the cap on unacked leases: at its cap it waits,
  credits kept, until one of its leases ends (`feeder.service.consumers`).

A task leased on the stream and cancelled meanwhile (through any feeder) goes down in
`cancelled_task_ids` of the next message, at once.

Replies go down one at a time (gRPC allows one write in progress per stream), in the order
they are ready; tasks and a report answer ready in the same loop turn share one message.
A caller that sends reports and does not read the answers is not read from either once
MAX_UNANSWERED_REPORTS of its reports wait for their answer to go out (backpressure): its
answers would otherwise pile up in the feeder without bound. Reading resumes as the answers
drain; HTTP/2 flow control holds the caller's writes meanwhile.
The stream ends when the caller closes its side (reports still being decided are answered
first), when the caller goes away, or when the feeder drains for shutdown (UNAVAILABLE,
after the reports already received are answered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from feeder.server import convert, validate
from feeder.server.validate import Limits, ValidationError
from feeder.service.consumers import Consumer
from feeder.service.tasks import TaskService
from feedwork.v1 import feeder_pb2 as pb

log = logging.getLogger("feedwork.feeder.rpc")

MAX_CREDITS_PER_MESSAGE = 1000
MAX_UNUSED_CREDITS = 10_000
MAX_REPORT_ITEMS = 1000
# Reports of one stream taken but not answered yet (being decided, or their answer waiting
# to be written): past this, the stream is not read until answers have gone out. A worker
# keeps a few in flight; a report and its answer take up to a few hundred KB.
MAX_UNANSWERED_REPORTS = 32
# One long poll of the lease loop. It is repeated for as long as credits are left, so this
# only bounds how long a waiter stays queued before it queues again.
LEASE_WAIT = 30.0
# How long a stream that ends with an error waits for a message already on its way.
WRITE_GRACE = 5.0


# The stream's initial metadata: the feeder accepted it (a client resets its backoff).
ACCEPTED = (("feedwork-consume", "accepted"),)


class StreamClosed(Exception):
    """The feeder ends the stream (it is shutting down): the caller should reconnect."""


@dataclass(frozen=True, slots=True)
class _Items:
    """A report's items in the shape the unary validators take (`request.items`)."""

    items: Any


@dataclass(frozen=True, slots=True)
class ConsumeStart:
    queue: str
    lease_duration: float | None
    worker_id: str
    max_unacked: int | None = None


def consume_start(request: pb.ConsumeRequest) -> ConsumeStart:
    """The first message's `start`, checked like a LeaseRequest's fields."""
    if not request.HasField("start"):
        raise ValidationError("start", "is required in the first message of a Consume stream")
    start = request.start
    as_lease = pb.LeaseRequest(
        queue=start.queue, max_tasks=1, worker_id=start.worker_id, max_unacked=start.max_unacked
    )
    if start.HasField("lease_duration"):
        as_lease.lease_duration.CopyFrom(start.lease_duration)
    try:
        query = validate.lease_query(as_lease)
    except ValidationError as exc:
        raise ValidationError(f"start.{exc.field}", exc.message) from None
    return ConsumeStart(query.queue, query.lease_duration, query.worker_id, query.max_unacked)


class ConsumeStream:
    """Serves one Consume call: `await run(requests)`."""

    def __init__(
        self,
        *,
        service: TaskService,
        limits: Limits,
        context: grpc.aio.ServicerContext,
        status_of: Callable[[BaseException], tuple[grpc.StatusCode, str]],
        caller: str = "",
    ) -> None:
        """`caller`: the identity the feeder authenticated for the stream ("" without
        auth), recorded with every lease sent down it."""
        self._service = service
        self._caller = caller
        self._limits = limits
        self._context = context
        self._status_of = status_of
        self._credits = 0
        self._credited = asyncio.Event()
        self._reports: set[asyncio.Task[None]] = set()
        # What goes down next: tasks and report answers ready in one loop turn leave in one
        # message (most often a batch of tasks with the answer to the acks that freed room
        # for them).
        self._outbox_tasks = pb.ConsumeResponse()  # only its tasks
        self._outbox_answers: deque[pb.ConsumeResponse] = deque()
        self._writer: asyncio.Task[None] | None = None
        # Who holds the leases sent down this stream (the cap on unacked leases), and where
        # the cancellation of one of them is heard: it goes down in the next message. Made
        # when the first message says who the stream is.
        self._consumer: Consumer | None = None
        # Reports taken and not answered yet (see MAX_UNANSWERED_REPORTS).
        self.unanswered = 0
        self._answers_drained = asyncio.Event()

    async def run(self, requests: AsyncIterator[Any]) -> None:
        first = await anext(requests, None)
        if first is None:
            return  # closed before it started
        start = consume_start(_parsed(first))
        self._take(first, first=True)
        if self._service.draining:
            raise StreamClosed("the feeder is shutting down; reconnect")
        # Tells the caller its stream is accepted (before any task is ready): one that
        # breaks later was working, and is reopened without the backoff growing.
        await self._context.send_initial_metadata(ACCEPTED)
        # Closed in the `finally` below, whatever happens from here.
        self._consumer = self._service.stream_consumer(
            self._cancelled,
            queue=start.queue,
            worker_id=start.worker_id,
            caller=self._caller,
            peer=_peer(self._context),
        )
        leasing = asyncio.create_task(self._lease_loop(start), name="feedwork-consume-lease")
        reading = asyncio.create_task(self._read_loop(requests), name="feedwork-consume-read")
        try:
            await asyncio.wait({leasing, reading}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                reading.result()  # a malformed message ends the stream with its error
                leasing.cancel()  # the caller closed its side: it wants no more tasks
            else:
                # The lease loop ended first: the feeder is draining (or it failed).
                reading.cancel()
                await self._answer_reports()
                if self._writer is not None:
                    await self._writer
                leasing.result()
                raise StreamClosed("the feeder is shutting down; reconnect")
            await self._answer_reports()
            if self._writer is not None:
                await self._writer
        finally:
            # On the way out with an error, reports still being decided are dropped with
            # the stream (the caller sends them again; acks are idempotent).
            pending = [leasing, reading, *self._reports]
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._consumer is not None:
                self._service.close_consumer(self._consumer)
            await self._stop_writing()

    async def _stop_writing(self) -> None:
        """Lets a message already on its way finish, and sends nothing more. The stream's
        status cannot go out while a message does (gRPC refuses a second send), and
        cancelling the writer would not take that message back."""
        self._outbox_tasks = pb.ConsumeResponse()
        self._outbox_answers.clear()
        writer = self._writer
        if writer is None or writer.done():
            return
        await asyncio.wait({writer}, timeout=WRITE_GRACE)
        writer.cancel()  # a caller that stopped reading: its deadline ends the call
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer

    async def _read_loop(self, requests: AsyncIterator[Any]) -> None:
        async for request in requests:
            self._take(request, first=False)
            while self.unanswered >= MAX_UNANSWERED_REPORTS:
                self._answers_drained.clear()
                await self._answers_drained.wait()

    def _take(self, request: Any, *, first: bool) -> None:
        request = _parsed(request)
        if not first and request.HasField("start"):
            raise ValidationError("start", "is only allowed in the first message")
        credits = request.credits
        if not 0 <= credits <= MAX_CREDITS_PER_MESSAGE:
            raise ValidationError("credits", f"must be between 0 and {MAX_CREDITS_PER_MESSAGE}")
        if self._credits + credits > MAX_UNUSED_CREDITS:
            raise ValidationError(
                "credits", f"more than {MAX_UNUSED_CREDITS} unused credits on one stream"
            )
        if credits:
            self._credits += credits
            self._credited.set()
        if request.acks or request.nacks or request.extends:
            self.unanswered += 1
            report = asyncio.create_task(self._answer(request))
            self._reports.add(report)
            report.add_done_callback(self._reports.discard)

    async def _answer_reports(self) -> None:
        while self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)

    async def _lease_loop(self, start: ConsumeStart) -> None:
        service = self._service
        consumer = self._consumer
        assert consumer is not None
        while not service.draining:
            if self._credits <= 0:
                self._credited.clear()
                await self._credited.wait()
                continue
            grants = await service.lease(
                start.queue,
                max_tasks=min(self._credits, validate.MAX_LEASE_TASKS),
                lease_duration=start.lease_duration,
                wait=LEASE_WAIT,
                worker_id=start.worker_id,
                caller=self._caller,
                consumer=consumer,
                max_unacked=start.max_unacked,
            )
            if grants:
                self._credits -= len(grants)
                convert.add_leased_tasks(self._outbox_tasks.tasks, grants)
                self._post()

    async def _answer(self, request: pb.ConsumeRequest) -> None:
        response = pb.ConsumeResponse(report_id=request.report_id)
        try:
            await self._decide(request, response)
        except Exception as exc:  # refused as a whole: the unary calls' status
            code, message = self._status_of(exc)
            response = pb.ConsumeResponse(
                report_id=request.report_id,
                error_code=code.value[0],
                error_message=message,
                error=_report_error(code),
            )
        self._outbox_answers.append(response)
        self._post()

    async def _decide(self, request: pb.ConsumeRequest, response: pb.ConsumeResponse) -> None:
        # Everything is validated before anything is applied: a report is all or nothing,
        # like a unary request.
        acks = _renamed("acks", validate.ack_items, _Items(request.acks), limits=self._limits)
        nacks = _renamed("nacks", validate.nack_items, _Items(request.nacks))
        extends = _renamed("extends", validate.extend_items, _Items(request.extends))
        service = self._service
        if acks:
            results = await service.ack(acks)
            convert.add_ack_results(response.ack_results, results)
        if nacks:
            nack_results = await service.nack(nacks)
            response.nack_results.extend(map(convert.nack_result_pb, nack_results))
        if extends:
            extend_results = await service.extend(extends)
            response.extend_results.extend(map(convert.extend_result_pb, extend_results))

    def _cancelled(self, task_id: int) -> None:
        self._outbox_tasks.cancelled_task_ids.append(str(task_id))
        self._post()

    def _post(self) -> None:
        """Makes sure the writer runs; it starts next loop turn, so whatever else is ready
        in this one goes in the same message."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_out(), name="feedwork-consume-write")

    async def _write_out(self) -> None:
        # One message per report answer, with every task waiting added to the first; gRPC
        # allows one write in progress per stream, so this task is the only writer.
        # Cancellations ride with the tasks.
        answers = self._outbox_answers
        while self._outbox_tasks.tasks or self._outbox_tasks.cancelled_task_ids or answers:
            tasks = self._outbox_tasks
            answered = 1 if answers else 0
            if not tasks.tasks and not tasks.cancelled_task_ids:
                message = answers.popleft()
            else:
                self._outbox_tasks = pb.ConsumeResponse()
                message = tasks
                if answers:  # one of the two is copied into the other: the smaller
                    answer = answers.popleft()
                    if len(tasks.tasks) >= len(answer.ack_results):
                        tasks.MergeFrom(answer)
                    else:
                        answer.tasks.extend(tasks.tasks)
                        answer.cancelled_task_ids.extend(tasks.cancelled_task_ids)
                        message = answer
            try:
                await self._context.write(message)
            except Exception:  # the call ended: the stream's own status says why
                self._outbox_tasks = pb.ConsumeResponse()
                answers.clear()
                return
            if answered:
                self.unanswered -= answered
                if self.unanswered < MAX_UNANSWERED_REPORTS:
                    self._answers_drained.set()


def _renamed(field: str, parse: Callable[..., list[Any]], items: _Items, **kwargs: Any) -> Any:
    """Runs a unary validator on a report's items; errors name the stream's field
    (`acks[2].lease_token`, not `items[2].lease_token`). No items: nothing to check."""
    if not items.items:
        return []
    try:
        return parse(items, **kwargs)
    except ValidationError as exc:
        raise ValidationError(exc.field.replace("items", field, 1), exc.message) from None


def _parsed(request: Any) -> pb.ConsumeRequest:
    if isinstance(request, pb.ConsumeRequest):
        return request
    raise ValidationError("request", "is not a valid feedwork.v1.ConsumeRequest message")


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # a call already gone
        return ""


def _report_error(code: grpc.StatusCode) -> pb.ReportError:
    """`ReportError` of a status (its values are the status codes' numbers)."""
    number: int = code.value[0]
    if number in pb.ReportError.values():
        return pb.ReportError.ValueType(number)  # type: ignore[return-value]
    return pb.REPORT_ERROR_INTERNAL
