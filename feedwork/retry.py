"""The retry policy shared by every feedwork client: which failures are worth another try,
and how long to wait between tries.

Producers (`feedwork.client`) and workers (`worker`) both retry transient gRPC failures
with exponential backoff and full jitter, so that many clients cut off by the same feeder
restart do not all come back in the same instant. Everything else fails at once: a
malformed request stays malformed however often it is sent.
"""

from __future__ import annotations

from typing import Any

import grpc
import tenacity

# Status codes that say "the same request may well succeed later": the feeder is down,
# restarting or overloaded (UNAVAILABLE, also used by the feeder for a database it cannot
# reach and for calls past its bound on work in flight), the reply did not come in time
# (DEADLINE_EXCEEDED), or the call was dropped on the way (CANCELLED: gRPC cancels calls
# a server has not picked up past its backlog, and a stopping feeder cancels calls still
# running after its grace period; this client never cancels its own calls, and a closed
# channel fails the next try with an error that is not retried). RESOURCE_EXHAUSTED is
# deliberately not here: from the feeder it means a queue is full, which a producer should
# hear about, and from gRPC itself a message that is too large, which no retry fixes.
# Retrying a request whose reply was lost is safe because every feedwork write is
# idempotent (Submit through idempotency keys, Ack/Nack/Extend through lease tokens).
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# The first backoff step and the largest single wait, in seconds. A feeder restart takes a
# second or two; waiting much longer than a few seconds between tries only adds latency.
INITIAL_WAIT = 0.1
MAX_WAIT = 5.0


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code carried by `exc` (a failed call or a `FeedworkError`), if any."""
    code = getattr(exc, "code", None)
    if callable(code):  # grpc.RpcError and grpc.aio.AioRpcError expose code() as a method
        try:
            code = code()
        except Exception:  # a bare RpcError raised by hand has no status
            return None
    return code if isinstance(code, grpc.StatusCode) else None


def is_transient(exc: BaseException) -> bool:
    """True when `exc` is a failed call that may succeed if simply sent again."""
    return status_code(exc) in TRANSIENT_CODES


def _options(max_delay: float | None, kw: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "retry": tenacity.retry_if_exception(is_transient),
        # Full jitter ("random exponential"): each wait is uniform in [0, min(cap, 0.1 * 2^n)].
        "wait": tenacity.wait_random_exponential(multiplier=INITIAL_WAIT, max=MAX_WAIT),
        # stop_before_delay rather than stop_after_delay: never start a sleep that would end
        # past the budget, so the whole call is bounded by max_delay plus one try.
        "stop": (
            tenacity.stop_never if max_delay is None else tenacity.stop_before_delay(max_delay)
        ),
        # Callers see the last real error (an RpcError), not tenacity's RetryError.
        "reraise": True,
    }
    options.update(kw)
    return options


def async_retrying(*, max_delay: float | None = 30.0, **kw: Any) -> tenacity.AsyncRetrying:
    """An `AsyncRetrying` that retries transient failures for up to `max_delay` seconds in
    all (`None`: forever). Keyword arguments override the defaults (e.g. `before_sleep`)."""
    return tenacity.AsyncRetrying(**_options(max_delay, kw))


def sync_retrying(*, max_delay: float | None = 30.0, **kw: Any) -> tenacity.Retrying:
    """The blocking twin of `async_retrying`, for the synchronous client."""
    return tenacity.Retrying(**_options(max_delay, kw))
