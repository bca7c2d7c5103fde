"""The Feeder gRPC service: validate, call `TaskService`, convert. Nothing else.

Domain errors become status codes in one place (`_rpc`); anything unexpected is logged with
its traceback and answered with a generic INTERNAL, so a bug fails one call, not the feeder.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from feeder.core.machine import Event
from feeder.core.model import TaskSpec
from feeder.server import convert, validate
from feeder.server.admission import Admission, Overloaded
from feeder.server.consume import ConsumeStream, StreamClosed
from feeder.server.identity import current_caller
from feeder.server.validate import Limits, ValidationError
from feeder.service.queues import QueueNotEmpty, QueueNotFound
from feeder.service.tasks import TaskService
from feeder.service.turns import SLICE, in_slices, next_turn
from feeder.store.base import (
    QueueCounts,
    QueueFull,
    StoreUnavailable,
    TaskPage,
    TooManyPending,
    TooManyQueues,
)
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc

log = logging.getLogger("feedwork.feeder.rpc")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Whole tasks (payload, result, history) converted per loop turn in ListDeadTasks and
# ListTasks: up to ~20 us each with payloads of 8 KiB (a page's bytes are bounded by the
# reply limit).
TASKS_PER_TURN = 128

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
Method = Callable[["FeederServicer", RequestT, grpc.aio.ServicerContext], Awaitable[ResponseT]]


class RpcRecorder(Protocol):
    def rpc(self, method: str, code: str, seconds: float) -> None: ...


class NotFound(Exception):
    """The task named by the request does not exist."""


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """What a request body that does not parse as the method's request message becomes
    (see `add_to_server`), so that `_rpc` answers INVALID_ARGUMENT like for any other
    malformed request. (gRPC alone would answer UNKNOWN and log a traceback per call.)"""

    type_name: str


@dataclass(frozen=True, slots=True)
class Received:
    """A unary request as parsed, with its size on the wire, which admission counts:
    `ByteSize()` would serialize the message again to learn it (4-15 ms on the event loop
    for a Submit of 4 MB)."""

    message: Any
    size: int


def status_of(exc: BaseException, *, method: str = "Consume") -> tuple[grpc.StatusCode, str]:
    """The status a domain error is answered with (the one place errors are mapped)."""
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, NotFound | QueueNotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, QueueNotEmpty):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, QueueFull | TooManyQueues | TooManyPending):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, StreamClosed | Overloaded):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StoreUnavailable):
        log.warning("%s: store unavailable: %s", method, exc)
        return grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}"
    log.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the feeder's log)"


def status_details(exc: BaseException) -> tuple[tuple[str, bytes], ...]:
    """The standard status details (`grpc-status-details-bin`: a google.rpc.Status) of an
    error: for INVALID_ARGUMENT, a google.rpc.BadRequest naming the field, which a program
    in any language can read without parsing the message."""
    if not isinstance(exc, ValidationError):
        return ()
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=exc.field, description=exc.message
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=str(exc), details=[detail]
    )
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def _items(request: Any) -> int:
    """The work a request asks for, in items (see `feeder.server.admission`)."""
    if isinstance(request, pb.SubmitRequest):
        return max(1, len(request.tasks))
    if isinstance(request, pb.AckRequest | pb.NackRequest | pb.ExtendRequest):
        return max(1, len(request.items))
    return 1


def _rpc(method: Method[RequestT, ResponseT]) -> Method[RequestT, ResponseT]:
    # A long-polling Lease waits idle; what it claims is bounded by its max_tasks.
    name = method.__name__
    admitted = name != "Lease"
    new_work = name == "Submit"

    @functools.wraps(method)
    async def handle(
        self: FeederServicer, request: RequestT, context: grpc.aio.ServicerContext
    ) -> ResponseT:
        recorder = self.metrics
        if recorder is None:
            return await answer(self, request, context)
        began = time.perf_counter()
        code = "OK"
        try:
            return await answer(self, request, context)
        except grpc.aio.AbortError:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
            raise
        except BaseException:  # cancelled: the client went away, or the feeder stops
            code = "CANCELLED"
            raise
        finally:
            recorder.rpc(name, code, time.perf_counter() - began)

    async def answer(
        self: FeederServicer, request: RequestT, context: grpc.aio.ServicerContext
    ) -> ResponseT:
        size: int | None = None
        received: Any = request
        if isinstance(received, Received):
            request, size = received.message, received.size
        try:
            if isinstance(request, MalformedRequest):
                raise ValidationError("request", f"is not a valid {request.type_name} message")
            admission = self._admission
            if not admitted or admission is None:
                return await method(self, request, context)
            if size is None:  # called directly, not through add_to_server
                size = request.ByteSize()  # type: ignore[attr-defined]
            items = _items(request)
            admission.enter(items, size, time.monotonic(), new_work=new_work)
            try:
                return await method(self, request, context)
            finally:
                admission.leave(items, size)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, details = status_of(exc, method=method.__name__)
            trailers = status_details(exc)
        await context.abort(code, details, trailing_metadata=trailers)
        raise AssertionError("context.abort returned")  # it raises; this tells mypy

    return handle


class FeederServicer(feeder_pb2_grpc.FeederServicer):
    """feedwork.v1.Feeder over a `TaskService`."""

    def __init__(
        self,
        service: TaskService,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        admission: Admission | None = None,
    ) -> None:
        """`admission`: the bound on work in flight (None: no bound)."""
        self._service = service
        self._limits = limits or Limits()
        self._admission = admission
        # Turns Submit's relative delays into times and ages the oldest ready task in
        # GetStats; the same clock the service runs on.
        self._clock = clock
        # The Consume streams being served (for tests and diagnostics).
        self.streams: set[ConsumeStream] = set()
        # Records each unary call's status and latency (set by the server with metrics on).
        self.metrics: RpcRecorder | None = None
        # What ListWorkers calls this feeder (the server adds its port once it listens).
        self.name = socket.gethostname()

    @_rpc
    async def Submit(
        self, request: pb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponse:
        # Validated and answered a slice at a time (a thousand tasks take 2-5 ms each way):
        # the loop serves other calls in between. The submit itself stays all or nothing.
        validate.submit_size(request)
        now = self._clock()
        specs: list[TaskSpec] = []
        async for part in in_slices(request.tasks):
            specs += validate.task_specs(part, first=len(specs), limits=self._limits, now=now)
        if len(specs) > SLICE:
            await next_turn()  # the submit's own turn is not added to the last slice's
        submitted = await self._service.submit(specs)
        reply = pb.SubmitResponse()
        async for done in in_slices(submitted):
            convert.add_submit_results(reply.results, done)
        return reply

    @_rpc
    async def Lease(
        self, request: pb.LeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaseResponse:
        query = validate.lease_query(request)
        grants = await self._service.lease(
            query.queue,
            max_tasks=query.max_tasks,
            lease_duration=query.lease_duration,
            wait=query.wait,
            worker_id=query.worker_id,
            caller=current_caller(),
            max_unacked=query.max_unacked,
        )
        reply = pb.LeaseResponse()
        async for part in in_slices(grants):
            convert.add_leased_tasks(reply.tasks, part)
        return reply

    async def Consume(
        self, requests: AsyncIterator[pb.ConsumeRequest], context: grpc.aio.ServicerContext
    ) -> None:
        stream = ConsumeStream(
            service=self._service,
            limits=self._limits,
            context=context,
            status_of=status_of,
            caller=current_caller(),
        )
        self.streams.add(stream)
        try:
            await stream.run(requests)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, details = status_of(exc, method="Consume")
            await context.abort(code, details, trailing_metadata=status_details(exc))
        finally:
            self.streams.discard(stream)

    @_rpc
    async def Ack(
        self, request: pb.AckRequest, context: grpc.aio.ServicerContext
    ) -> pb.AckResponse:
        results = await self._service.ack(validate.ack_items(request, limits=self._limits))
        reply = pb.AckResponse()
        async for part in in_slices(results):
            convert.add_ack_results(reply.results, part)
        return reply

    @_rpc
    async def Nack(
        self, request: pb.NackRequest, context: grpc.aio.ServicerContext
    ) -> pb.NackResponse:
        results = await self._service.nack(validate.nack_items(request))
        reply = pb.NackResponse()
        async for part in in_slices(results):
            reply.results.extend(map(convert.nack_result_pb, part))
        return reply

    @_rpc
    async def Extend(
        self, request: pb.ExtendRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExtendResponse:
        results = await self._service.extend(validate.extend_items(request))
        reply = pb.ExtendResponse()
        async for part in in_slices(results):
            reply.results.extend(map(convert.extend_result_pb, part))
        return reply

    @_rpc
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResponse:
        task_id = validate.task_id(request.task_id)
        task = await self._service.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id} not found")
        return pb.GetTaskResponse(task=convert.task_pb(task))

    @_rpc
    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTaskResponse:
        task_id = validate.task_id(request.task_id)
        cancelled = await self._service.cancel(task_id)
        if cancelled is None:
            raise NotFound(f"task {task_id} not found")
        outcome, state = cancelled
        return pb.CancelTaskResponse(outcome=convert.enum_pb(outcome), state=convert.enum_pb(state))

    @_rpc
    async def ListDeadTasks(
        self, request: pb.ListDeadTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadTasksResponse:
        listing = validate.dead_listing(request)
        page = await self._service.list_dead(
            listing.queue, page_size=listing.page_size, after_id=listing.after_id
        )
        reply = pb.ListDeadTasksResponse()
        reply.next_page_token = await self._add_tasks(
            reply.tasks, page, payloads=listing.include_payloads
        )
        return reply

    async def _add_tasks(self, field: Any, page: TaskPage, *, payloads: bool) -> str:
        """Appends the page's tasks to a reply's `tasks` while the reply stays under the
        message limit; returns the token of the page after the last task added."""
        size, next_after_id = 0, page.next_after_id
        for position, task in enumerate(page.tasks):
            if position and not position % TASKS_PER_TURN:
                await next_turn()
            message = convert.task_pb(task, payloads=payloads)
            # The task's bytes plus its field tag and length (at most 6 bytes).
            cost = message.ByteSize() + 6
            if field and size + cost > self._limits.max_reply_bytes:
                next_after_id = int(field[-1].task_id)  # the rest on the next page
                break
            field.append(message)
            size += cost
        return validate.page_token(next_after_id)

    @_rpc
    async def RedriveDeadTasks(
        self, request: pb.RedriveDeadTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.RedriveDeadTasksResponse:
        selection = validate.dead_selection(request.selector)
        redriven = await self._service.redrive(
            selection.queue, task_ids=selection.task_ids, limit=selection.limit
        )
        return pb.RedriveDeadTasksResponse(redriven=redriven)

    @_rpc
    async def PurgeDeadTasks(
        self, request: pb.PurgeDeadTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeDeadTasksResponse:
        selection = validate.dead_selection(request.selector)
        purged = await self._service.purge_dead(
            selection.queue, task_ids=selection.task_ids, limit=selection.limit
        )
        return pb.PurgeDeadTasksResponse(purged=purged)

    @_rpc
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        listing = validate.stats_listing(request)
        if listing.queues is not None:
            return await self._stats_reply(await self._service.stats(listing.queues))
        # One more than the page: whether there is a next page.
        counts = await self._service.stats(None, after=listing.after, limit=listing.page_size + 1)
        reply = await self._stats_reply(counts[: listing.page_size])
        if len(counts) > listing.page_size:
            reply.next_page_token = counts[listing.page_size - 1].queue
        return reply

    @_rpc
    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListQueuesResponse:
        listing = validate.queue_page(request)
        # One more than the page: whether there is a next page.
        counts = await self._service.stats(None, after=listing.after, limit=listing.page_size + 1)
        reply, now = pb.ListQueuesResponse(), self._clock()
        async for part in in_slices(counts[: listing.page_size]):
            reply.queues.extend(convert.queue_info_pb(c, now=now) for c in part)
        if len(counts) > listing.page_size:
            reply.next_page_token = counts[listing.page_size - 1].queue
        return reply

    @_rpc
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        listing = validate.task_listing(request)
        page = await self._service.queues.list_tasks(listing)
        reply = pb.ListTasksResponse()
        reply.next_page_token = await self._add_tasks(reply.tasks, page, payloads=listing.payloads)
        return reply

    @_rpc
    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkersResponse:
        queue, limit = validate.workers_query(request)
        # One more than the limit: whether the list was cut.
        holders = await self._service.queues.lease_holders(queue, limit=limit + 1)
        consumers = self._service.consumers(queue)
        reply = pb.ListWorkersResponse(
            feeder=self.name, truncated=len(holders) > limit or len(consumers) > limit
        )
        async for part in in_slices(holders[:limit]):
            reply.lease_holders.extend(map(convert.lease_holder_pb, part))
        async for view in in_slices(consumers[:limit]):
            reply.consumers.extend(map(convert.consumer_pb, view))
        return reply

    @_rpc
    async def PauseQueue(
        self, request: pb.PauseQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseQueueResponse:
        queue = validate.queue_name(request.queue, "queue")
        return pb.PauseQueueResponse(changed=await self._service.queues.pause(queue))

    @_rpc
    async def ResumeQueue(
        self, request: pb.ResumeQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeQueueResponse:
        queue = validate.queue_name(request.queue, "queue")
        return pb.ResumeQueueResponse(changed=await self._service.queues.resume(queue))

    @_rpc
    async def PurgeQueue(
        self, request: pb.PurgeQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeQueueResponse:
        queue = validate.purge_confirmation(request)
        return pb.PurgeQueueResponse(purged=await self._service.queues.purge(queue))

    @_rpc
    async def DeleteQueue(
        self, request: pb.DeleteQueueRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteQueueResponse:
        await self._service.queues.delete(validate.queue_name(request.queue, "queue"))
        return pb.DeleteQueueResponse()

    async def _stats_reply(self, counts: list[QueueCounts]) -> pb.GetStatsResponse:
        # A page of 10,000 queues takes ~80 ms to convert: a slice per loop turn.
        reply, now = pb.GetStatsResponse(), self._clock()
        overall: Counter[Event] = Counter()
        async for part in in_slices(counts):
            convert.add_queue_stats(reply.queues, part, now=now, overall=overall)
        reply.totals.CopyFrom(convert.totals_pb(overall.items()))
        return reply


def add_to_server(servicer: FeederServicer, server: grpc.aio.Server) -> None:
    """Registers `servicer` as the generated `add_FeederServicer_to_server` does, except that
    each request is parsed by `_lenient`: undecodable bytes reach the servicer as a
    `MalformedRequest` instead of failing inside gRPC, and a unary request comes
    `Received`, with its size."""
    service = pb.DESCRIPTOR.services_by_name["Feeder"]
    handlers = {}
    for method in service.methods:
        make_handler = (
            grpc.stream_stream_rpc_method_handler
            if method.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(
                getattr(pb, method.input_type.name), sized=not method.client_streaming
            ),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)


def _lenient(message_type: Any, *, sized: bool = False) -> Callable[[bytes], Any]:
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        try:
            message = message_type.FromString(data)
        except DecodeError:
            return MalformedRequest(name)
        return Received(message, len(data)) if sized else message

    return parse
