"""Errors raised by the feedwork clients.

Every failed RPC surfaces as a `FeedworkError` subclass chosen by its gRPC status code,
carrying that code and the feeder's message (which names the offending field for
INVALID_ARGUMENT, e.g. "tasks[3].queue").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class FieldViolation(NamedTuple):
    """One field of a request the feeder refused, and why (google.rpc.BadRequest)."""

    field: str
    description: str


class FeedworkError(Exception):
    """A request the feeder refused, or could not be reached for."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # INVALID_ARGUMENT: the fields at fault, from the status details (the standard
        # google.rpc.BadRequest, which the feeder sends beside its message).
        self.field_violations = field_violations

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.name}: {self.message}"


class InvalidArgument(FeedworkError):
    """The request was malformed; the message names the field."""


class NotFound(FeedworkError):
    """No such task (never existed, or purged after its retention period)."""


class AlreadyExists(FeedworkError):
    """The feeder reported a conflict with an existing record."""


class ResourceExhausted(FeedworkError):
    """A limit was hit, e.g. a queue at its maximum depth."""


class FailedPrecondition(FeedworkError):
    """The request does not fit the task's current state."""


class Unavailable(FeedworkError):
    """The feeder could not be reached, even after retrying."""


class DeadlineExceeded(FeedworkError):
    """The feeder did not answer in time, even after retrying."""


class Unauthenticated(FeedworkError):
    """The feeder wants credentials: no API key was sent, or it does not know the key (or
    the client certificate). Not retried."""


class PermissionDenied(FeedworkError):
    """The caller's roles do not allow this call on this queue. Not retried."""


class WaitTimeout(FeedworkError, TimeoutError):
    """`wait` gave up before the task settled. Also a builtin `TimeoutError`."""


_BY_CODE: dict[grpc.StatusCode, type[FeedworkError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def error_from_rpc(exc: grpc.RpcError) -> FeedworkError:
    """The `FeedworkError` for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(exc, "code", None)
    details_of = getattr(exc, "details", None)
    code = code_of() if callable(code_of) else None
    message = (details_of() if callable(details_of) else None) or str(exc)
    if not isinstance(code, grpc.StatusCode):
        return FeedworkError(message)
    violations = field_violations(exc)
    return _BY_CODE.get(code, FeedworkError)(message, code=code, field_violations=violations)


def field_violations(exc: Any) -> tuple[FieldViolation, ...]:
    """The google.rpc.BadRequest field violations in a failed call's status details."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        metadata = trailing() if callable(trailing) else None
    except Exception:  # a call that ended before it had trailers
        return ()
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # not ours to judge: the message says the rest
            return ()
        found: list[FieldViolation] = []
        for detail in status.details:
            request = error_details_pb2.BadRequest()
            if detail.Unpack(request):
                found += [FieldViolation(v.field, v.description) for v in request.field_violations]
        return tuple(found)
    return ()


def error_from_status(code_value: int, message: str) -> FeedworkError:
    """The `FeedworkError` for a status sent as a number (a Consume report's `error_code`)."""
    code = next((c for c in grpc.StatusCode if c.value[0] == code_value), None)
    if code is None:
        return FeedworkError(f"status {code_value}: {message}")
    return _BY_CODE.get(code, FeedworkError)(message, code=code)
