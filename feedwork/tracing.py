"""OpenTelemetry, when it is installed: the trace of whoever submitted a task reaches the
worker that runs it, through the task's headers.

- A producer injects the current trace context (W3C `traceparent`, and `tracestate` and
  `baggage` if set, through the globally configured propagator) into the headers of every
  task it submits while a span is active. Headers the caller set are kept as given.
- A worker opens a span per attempt, `process QUEUE` (kind CONSUMER), linked to the
  producer's span context from the headers, with the task's id, queue and attempt as
  attributes; a failure is recorded on it as an exception and an error status.

Without the `opentelemetry-api` package (`pip install 'feedwork[otel]'`) both do nothing
and cost nothing; with the API but no SDK configured, spans are the API's no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional dependency is absent
    propagate = trace = None  # type: ignore[assignment]

TRACER_NAME = "feedwork"


def available() -> bool:
    return trace is not None


def current_headers() -> dict[str, str]:
    """The headers that carry the current trace context (`traceparent`, ...), or none
    when no span is active or OpenTelemetry is absent."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def failed(span: Any, error: str) -> None:
    """Marks a failed attempt's span (the worker turns a handler's exception into a nack
    with this error text, so the exception never leaves the span's block)."""
    if span is not None and trace is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error.split("\n", 1)[0]))
        span.add_event("exception", {"exception.message": error})


@contextlib.contextmanager
def task_span(
    *, task_id: str, queue: str, attempt: int, headers: Mapping[str, str]
) -> Iterator[Any]:
    """A span around one attempt of a task, linked to its producer's span (if the headers
    carry one). Yields the span (None without OpenTelemetry)."""
    if trace is None:
        yield None
        return
    links = []
    producer = trace.get_current_span(propagate.extract(dict(headers))).get_span_context()
    if producer.is_valid:
        links.append(trace.Link(producer))
    tracer = trace.get_tracer(TRACER_NAME)
    attributes: dict[str, str | int] = {
        "messaging.system": "feedwork",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": task_id,
        "feedwork.attempt": attempt,
    }
    with tracer.start_as_current_span(
        f"process {queue}",
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        yield span
