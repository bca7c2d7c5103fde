"""OpenTelemetry through a real feeder (feedwork/tracing.py): a producer's active span
travels in the task's headers as a W3C traceparent; without a span, or without
OpenTelemetry, nothing is added."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from feedwork import AsyncFeederClient, tracing
from tests.conftest import RunningFeeder

pytestmark = pytest.mark.timeout(60)

# One provider for the whole test process (OpenTelemetry allows setting it once).
EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


async def test_a_producers_span_travels_in_the_headers(
    feeder: RunningFeeder, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    async with AsyncFeederClient(feeder.target) as client:
        with tracer.start_as_current_span("checkout") as span:
            traced = await client.submit(b"", queue="t")
            own = await client.submit(b"", queue="t", headers={"traceparent": "mine"})
        untraced = await client.submit(b"", queue="t")
        headers = (await client.get(traced.task_id)).headers
        context = span.get_span_context()
        assert headers["traceparent"] == (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
        assert (await client.get(own.task_id)).headers["traceparent"] == "mine"
        assert "traceparent" not in (await client.get(untraced.task_id)).headers


async def test_without_opentelemetry_nothing_is_added(
    feeder: RunningFeeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "trace", None)
    monkeypatch.setattr(tracing, "propagate", None)
    assert not tracing.available()
    with trace.get_tracer("test").start_as_current_span("checkout"):
        async with AsyncFeederClient(feeder.target) as client:
            submitted = await client.submit(b"", queue="t", headers={"k": "v"})
            assert (await client.get(submitted.task_id)).headers == {"k": "v"}
    with tracing.task_span(task_id="1", queue="t", attempt=1, headers={}) as span:
        assert span is None
