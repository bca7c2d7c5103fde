"""OpenTelemetry through a real feeder (feedwork/tracing.py): a producer's active span
travels in the task's headers as a W3C traceparent, and the worker opens a span per
attempt linked to it (an error status for a failed attempt); without a span, or without
OpenTelemetry, nothing is added."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from feedwork import AsyncFeederClient, tracing
from feedwork.types import TaskState
from tests.conftest import RunningFeeder
from worker import Task, Worker

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


async def test_the_worker_opens_a_span_per_attempt_linked_to_the_producers(
    feeder: RunningFeeder, spans: InMemorySpanExporter
) -> None:
    def handler(task: Task) -> bytes:
        # The attempt's span is current in the handler (a sync one, in a thread).
        inner = trace.get_current_span().get_span_context()
        assert inner.is_valid
        if task.payload == b"fail":
            raise ValueError("cannot")
        return b"ok"

    tracer = trace.get_tracer("test")
    async with AsyncFeederClient(feeder.target) as client:
        with tracer.start_as_current_span("checkout") as producer:
            good = await client.submit(b"fine", queue="traced")
            bad = await client.submit(b"fail", queue="traced", max_attempts=1)
        worker = Worker(target=feeder.target, queue="traced", handler=handler, wait=1.0)
        run = asyncio.create_task(worker.run_async())
        try:
            assert (await client.wait(good.task_id, timeout=15)).state == TaskState.COMPLETED
            assert (await client.wait(bad.task_id, timeout=15)).state == TaskState.DEAD
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
    attempts = {
        span.attributes["messaging.message.id"]: span
        for span in spans.get_finished_spans()
        if span.name == "process traced"
    }
    assert set(attempts) == {good.task_id, bad.task_id}
    for span in attempts.values():
        assert span.kind == trace.SpanKind.CONSUMER
        assert [link.context.span_id for link in span.links] == [
            producer.get_span_context().span_id
        ]
        assert span.attributes["messaging.destination.name"] == "traced"
        assert span.attributes["feedwork.attempt"] == 1
    assert attempts[good.task_id].status.status_code == trace.StatusCode.UNSET
    failed = attempts[bad.task_id]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.status.description == "ValueError: cannot"
