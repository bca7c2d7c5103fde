"""Authentication, authorization and the audit log, as one gRPC server interceptor around
the feeder's services, which know nothing of it.

Each call to the Feeder service (and to reflection) is authenticated first: an API key in
the `authorization: Bearer KEY` metadata, else the identity of the client's verified
certificate (mTLS). Then the method's rule (`RULES`, the one table of who may do what)
decides: the role it needs, and the queues the request names, each of which the caller's
grants must cover. A caller without credentials, or with unknown ones, is answered
UNAUTHENTICATED; one whose grants do not allow the call, PERMISSION_DENIED, naming the
method and queue. The health service stays open (load balancers and orchestrators probe
it without keys).

What an authorized call may do is then the service's business, with two exceptions
decided from what the request names: CancelTask and GetTask name a task by id, and are
allowed only for the task's queue (looked up before a cancel; for a read, the task read
is checked before it is returned). Ack, Nack and Extend name a lease by its token: the
token is the capability (it was handed only to a caller allowed to lease from its queue,
and cannot be forged), so they need only the worker role.

The caller's identity is put in `feeder.server.identity.CALLER` for the call, so the
service records it with each lease. Without an access list (no auth), every call is
let through as today; the audit log is written all the same.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from feeder.core.quoting import quoted
from feeder.server import audit
from feeder.server.access import AccessList, Grant, Principal, Role
from feeder.server.identity import CALLER
from feeder.server.servicer import MalformedRequest, Received
from feeder.server.validate import ValidationError, task_id
from feedwork.v1 import feeder_pb2 as pb

log = logging.getLogger("feedwork.feeder.auth")

FEEDER = pb.DESCRIPTOR.services_by_name["Feeder"].full_name
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"
ANYONE = "anyone"  # the caller's name in the audit log when the feeder has no auth

QueueLookup = Callable[[int], Awaitable[str | None]]
_ADMIN_ALL = Grant(Role.ADMIN)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one method needs: `role`, and the queues its request names (None in the list:
    every queue); `audited` calls get an audit line whatever their outcome."""

    role: Role | None  # None: any authenticated caller (reflection)
    queues: Callable[[Any], Sequence[str | None]] | None = None
    by_task_id: bool = False
    audited: bool = False


def _submit_queues(request: pb.SubmitRequest) -> list[str | None]:
    return list(dict.fromkeys(spec.queue for spec in request.tasks))


def _named_or_all(queue: str) -> list[str | None]:
    return [queue or None]


RULES: dict[str, Rule] = {
    "Submit": Rule(Role.PRODUCER, _submit_queues),
    "GetTask": Rule(Role.PRODUCER, by_task_id=True),
    "CancelTask": Rule(Role.PRODUCER, by_task_id=True, audited=True),
    "Lease": Rule(Role.WORKER, lambda r: [r.queue]),
    "Consume": Rule(Role.WORKER, lambda r: [r.start.queue]),
    "Ack": Rule(Role.WORKER),
    "Nack": Rule(Role.WORKER),
    "Extend": Rule(Role.WORKER),
    "ListDeadTasks": Rule(Role.ADMIN, lambda r: _named_or_all(r.queue), audited=True),
    "RedriveDeadTasks": Rule(Role.ADMIN, lambda r: _named_or_all(r.selector.queue), audited=True),
    "PurgeDeadTasks": Rule(Role.ADMIN, lambda r: _named_or_all(r.selector.queue), audited=True),
    "GetStats": Rule(Role.ADMIN, lambda r: list(r.queues) or [None]),
    # Queue controls and listings: an operator's. A listing shows other callers' names and
    # (asked to) payloads, so neither a producer nor a worker may list; a worker learns of
    # a pause only as a Lease that returns nothing, a producer not at all.
    "ListQueues": Rule(Role.ADMIN, lambda r: [None]),
    "ListTasks": Rule(Role.ADMIN, lambda r: [r.queue], audited=True),
    "ListWorkers": Rule(Role.ADMIN, lambda r: _named_or_all(r.queue)),
    "PauseQueue": Rule(Role.ADMIN, lambda r: [r.queue], audited=True),
    "ResumeQueue": Rule(Role.ADMIN, lambda r: [r.queue], audited=True),
    "PurgeQueue": Rule(Role.ADMIN, lambda r: [r.queue], audited=True),
    "DeleteQueue": Rule(Role.ADMIN, lambda r: [r.queue], audited=True),
}
REFLECTION = Rule(None)


class Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Authenticator:
    """Who a call comes from, by the access list `access()` returns now (it may be read
    again from its file between calls). `require` False: no auth (everyone is let in)."""

    def __init__(self, access: Callable[[], AccessList] | None, *, mtls: bool = False) -> None:
        self._access = access
        self._mtls = mtls

    @property
    def required(self) -> bool:
        return self._access is not None or self._mtls

    def principal(
        self, metadata: Sequence[tuple[str, str | bytes]] | None, context: Any
    ) -> Principal | None:
        """The caller, or None without auth. Raises `Denied` (UNAUTHENTICATED)."""
        if not self.required:
            return None
        access = self._access() if self._access is not None else None
        key = _bearer(metadata)
        if key is not None:
            principal = access.for_key(key) if access is not None else None
            if principal is None:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, "API key not recognised")
            return principal
        identity = _certificate_identity(context) if self._mtls else None
        if identity is not None:
            if access is None:  # mTLS alone: the client CA is the gate
                return Principal(identity, (_ADMIN_ALL,))
            principal = access.for_certificate(identity)
            if principal is None:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"client certificate {quoted(identity)} has no entry in the access list",
                )
            return principal
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "this feeder requires an API key (metadata 'authorization: Bearer KEY')"
            + (" or a client certificate" if self._mtls else ""),
        )


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps the handlers of the Feeder service and reflection (see the module docstring)."""

    def __init__(
        self,
        authenticator: Authenticator,
        queue_of: QueueLookup,
        *,
        on_denied: Callable[[str, str], None] | None = None,
    ) -> None:
        """`on_denied(method, code)` hears of every call refused here (metrics)."""
        self._auth = authenticator
        self._queue_of = queue_of
        self.on_denied = on_denied

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        service, _, name = method[1:].rpartition("/")
        if service == FEEDER and name in RULES:
            rule = RULES[name]
        elif method.startswith(REFLECTION_PREFIX):
            rule = REFLECTION
        else:
            return handler
        if not self._auth.required and not rule.audited:
            return handler  # nothing to check or write down: no cost
        call = _Call(self, rule, name, details.invocation_metadata)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                call.wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                call.wrap_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Call:
    """One call through the interceptor."""

    def __init__(
        self,
        interceptor: AccessInterceptor,
        rule: Rule,
        method: str,
        metadata: Sequence[tuple[str, str | bytes]] | None,
    ) -> None:
        self.interceptor = interceptor
        self.rule = rule
        self.method = method
        self.metadata = metadata
        self.principal: Principal | None = None

    def wrap_unary(self, inner: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            message = request.message if isinstance(request, Received) else request
            queues = await self._admit(message, context)
            started = time.monotonic()
            token = CALLER.set(self.principal.name if self.principal else "")
            try:
                response = await inner(request, context)
            except BaseException:
                if self.rule.audited:
                    self._audit(message, context, queues, None, started)
                raise
            finally:
                CALLER.reset(token)
            if self.rule.by_task_id and isinstance(response, pb.GetTaskResponse):
                try:  # a read: checked before it is sent
                    self._check(context, [response.task.queue])
                except Denied as denied:
                    self._deny(denied, message, context, [response.task.queue])
                    await context.abort(denied.code, str(denied))
            if self.rule.audited:
                self._audit(message, context, queues, response, started)
            return response

        return behavior

    def wrap_stream(self, inner: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        # An async generator function whatever `inner` is (gRPC tells the two kinds of
        # stream handler apart by the function): one that writes with `context.write`
        # (the Consume stream) is awaited, and this yields nothing.
        async def behavior(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for response in self._stream(inner, requests, context):
                yield response

        return behavior

    async def _stream(
        self, inner: Callable[[Any, Any], Any], requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        first: list[Any] = []
        await self._admit(None, context)  # who it is, before anything is read
        if self.rule.queues is not None:  # Consume: the first message names the queue
            message = await anext(requests, None)
            if message is None:
                return
            first.append(message)
            await self._admit(message, context)
        token = CALLER.set(self.principal.name if self.principal else "")
        try:
            result = inner(_chain(first, requests), context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result
        finally:
            CALLER.reset(token)

    async def _admit(self, message: Any, context: Any) -> list[str | None]:
        """Authenticates and authorizes; the queues the request names. Aborts the call
        (after an audit line) when it is denied."""
        queues: list[str | None] = []
        try:
            if self.principal is None:
                self.principal = self.interceptor._auth.principal(self.metadata, context)
            role = self.rule.role
            if self.principal is not None and role is not None and not self.principal.has(role):
                raise self._forbidden(None)
            if isinstance(message, MalformedRequest) or message is None:
                return queues  # the service answers INVALID_ARGUMENT; nothing is done
            if self.rule.queues is not None:
                queues = list(self.rule.queues(message))
            elif self.method == "CancelTask":  # checked before it changes anything
                queue = await self._task_queue(message.task_id)
                queues = [] if queue is None else [queue]
            self._check(context, queues)
        except Denied as denied:
            self._deny(denied, message, context, queues)
            await context.abort(denied.code, str(denied))
        return queues

    def _check(self, context: Any, queues: Iterable[str | None]) -> None:
        if self.principal is None or self.rule.role is None:
            return
        refused = self.principal.may(self.rule.role, queues)
        if refused is not None:
            raise self._forbidden(refused)

    def _forbidden(self, queue: str | None) -> Denied:
        assert self.principal is not None and self.rule.role is not None
        where = {None: "", "*": " on every queue"}
        on = where[queue] if queue in where else f" on {quoted(queue or '')}"
        return Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{self.principal.describe()} may not call {self.method}{on}: it needs the "
            f"{self.rule.role} role" + ("" if queue is None else " for that queue"),
        )

    async def _task_queue(self, text: str) -> str | None:
        try:
            return await self.interceptor._queue_of(task_id(text))
        except ValidationError:
            return None  # the service answers INVALID_ARGUMENT

    def _deny(self, denied: Denied, message: Any, context: Any, queues: list[str | None]) -> None:
        on_denied = self.interceptor.on_denied
        if on_denied is not None:
            on_denied(self.method, denied.code.name)
        audit.record(
            "denied",
            method=self.method,
            caller=self.principal.name if self.principal else "",
            peer=_peer(context),
            code=denied.code.name,
            reason=str(denied),
            queues=[q or "*" for q in queues],
            task_ids=_task_ids(message),
        )

    def _audit(
        self,
        message: Any,
        context: Any,
        queues: list[str | None],
        response: Any,
        started: float,
    ) -> None:
        code = _code(context) if response is None else grpc.StatusCode.OK
        audit.record(
            "call",
            method=self.method,
            caller=self.principal.name if self.principal else ANYONE,
            peer=_peer(context),
            code=code.name if code is not None else "UNKNOWN",
            queues=[q or "*" for q in queues],
            task_ids=_task_ids(message),
            outcome=_outcome(response),
            ms=round((time.monotonic() - started) * 1000, 3),
        )


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for message in first:
        yield message
    async for message in rest:
        yield message


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            scheme, _, credential = text.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization metadata must be 'Bearer KEY'",
                )
            return credential.strip()
    return None


def _certificate_identity(context: Any) -> str | None:
    """The verified client certificate's subject common name, else its first SAN."""
    auth = context.auth_context()
    for name in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(name)
        if values:
            return bytes(values[0]).decode("utf-8", "replace")
    return None


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # a context of a call already gone
        return ""


def _code(context: Any) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def _task_ids(message: Any) -> list[str]:
    if isinstance(message, pb.CancelTaskRequest | pb.GetTaskRequest):
        return [message.task_id[:64]]
    if isinstance(message, pb.RedriveDeadTasksRequest | pb.PurgeDeadTasksRequest):
        return [task[:64] for task in message.selector.task_ids[:100]]
    return []


def _outcome(response: Any) -> str:
    if isinstance(response, pb.CancelTaskResponse):
        return pb.CancelOutcome.Name(response.outcome)
    if isinstance(response, pb.RedriveDeadTasksResponse):
        return f"redriven {response.redriven}"
    if isinstance(response, pb.PurgeDeadTasksResponse):
        return f"purged {response.purged}"
    if isinstance(response, pb.ListDeadTasksResponse | pb.ListTasksResponse):
        return f"listed {len(response.tasks)}"
    if isinstance(response, pb.PauseQueueResponse):
        return "paused" if response.changed else "paused already"
    if isinstance(response, pb.ResumeQueueResponse):
        return "resumed" if response.changed else "not paused"
    if isinstance(response, pb.PurgeQueueResponse):
        return f"purged {response.purged}"
    if isinstance(response, pb.DeleteQueueResponse):
        return "deleted"
    return ""
