"""The worker's Prometheus endpoint (`Worker(metrics_listen=...)`) against a real feeder:
what a scrape shows after tasks that succeed, fail, retry, fail for good, time out, are
cancelled while running, or are released at shutdown; tasks in flight; lease extensions;
reconnects and failed calls; the transport in use. Scrapes parse the text exposition
format with prometheus_client's parser, as Prometheus would read it.

(`python -m worker --metrics-listen`, with and without `--processes`, is tested in
test_worker_cli.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from feeder.config import Settings
from feeder.core.policy import QueuePolicy
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import FeederFactory, RunningFeeder
from worker import Fail, Retry, Task, Worker
from worker.metrics import OUTCOMES, MetricsListenError

pytestmark = pytest.mark.timeout(90)

QUEUE = "jobs"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    policy = QueuePolicy(max_attempts=3, backoff_base=0.05, backoff_cap=0.1, lease_duration=30.0)
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        default_policy=policy,
    )


@pytest.fixture(params=["stream", "unary"])
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def scrape(worker: Worker) -> Samples:
    """One scrape of the worker's endpoint, in a thread (the worker runs on this loop)."""
    port = worker.metrics_port
    assert port is not None
    return parse(await asyncio.to_thread(_get, port))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def outcome(samples: Samples, outcome: str) -> float:
    """How many tasks ended with `outcome`."""
    return value(samples, "feedwork_worker_tasks_total", queue=QUEUE, outcome=outcome)


async def scrape_until(
    worker: Worker, condition: Callable[[Samples], bool], within: float = 20.0
) -> Samples:
    deadline = time.monotonic() + within
    while True:
        samples = await scrape(worker)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics not as expected in time: {samples}")
        await asyncio.sleep(0.05)


async def submit(feeder: RunningFeeder, *payloads: bytes, **spec: Any) -> list[str]:
    tasks = [pb.TaskSpec(queue=QUEUE, payload=payload, **spec) for payload in payloads]
    reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=tasks))
    return [result.task_id for result in reply.results]


async def wait_until(condition: Callable[[], object], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(
    target: str, handler: Callable[..., Any], **options: Any
) -> AsyncIterator[Worker]:
    """A worker with metrics on a free port, running on this loop until the block ends."""
    options = {
        "wait": 1.0,
        "grace": 5.0,
        "ack_flush_interval": 0.002,
        "metrics_listen": "127.0.0.1:0",
        **options,
    }
    worker = Worker(target=target, queue=QUEUE, handler=handler, **options)
    run = asyncio.create_task(worker.run_async())
    try:
        await wait_until(lambda: worker.metrics_port is not None or run.done())
        if run.done():
            run.result()
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(run, 30)


# ---------------------------------------------------------------------------------------


async def test_every_outcome_is_counted(feeder: RunningFeeder, transport: str) -> None:
    cancel_started = asyncio.Event()

    async def handler(task: Task) -> bytes:
        kind = task.payload.decode()
        if kind == "boom":
            raise ValueError("boom")
        if kind == "retry" and task.attempt == 1:
            raise Retry("later", after=0.05)
        if kind == "fail":
            raise Fail("never")
        if kind == "slow":
            await asyncio.sleep(30)  # past the time limit
        if kind == "cancel":
            cancel_started.set()
            await asyncio.sleep(30)  # the worker cancels it when the task is cancelled
        return b"done"

    await submit(feeder, b"ok", b"ok", b"ok", b"retry")
    await submit(feeder, b"boom", b"fail", b"slow", max_attempts=1)
    [cancelled] = await submit(feeder, b"cancel")
    # A 1 s lease is extended every ~0.7 s while "slow" runs its 3 s.
    options = {"transport": transport, "lease_duration": 1.0, "task_timeout": 3.0}
    async with running(feeder.target, handler, concurrency=8, **options) as worker:
        await wait_until(cancel_started.is_set)
        await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=cancelled))

        def settled(samples: Samples) -> bool:
            decided = sum(outcome(samples, name) for name in OUTCOMES)
            acks = value(samples, "feedwork_worker_acks_total", queue=QUEUE, outcome="ACKED")
            nacks = sum(
                value(samples, "feedwork_worker_nacks_total", queue=QUEUE, outcome=name)
                for name in ("RETRYING", "DEAD")
            )
            return decided == 9 and acks == 4 and nacks == 4

        samples = await scrape_until(worker, settled)

    assert value(samples, "feedwork_worker_received_tasks_total", queue=QUEUE) == 9
    counts = {name: outcome(samples, name) for name in OUTCOMES}
    assert counts == {
        "succeeded": 4,  # three "ok" and the retried "retry"
        "failed": 1,
        "retry": 1,
        "fail": 1,
        "timeout": 1,
        "abandoned": 1,  # cancelled while it ran
        "released": 0,
    }
    # Every task's time is in the histogram; one ("slow") ran its full 3 s time limit,
    # one ("cancel") until the cancellation reached it.
    buckets = "feedwork_worker_handler_seconds_bucket"
    assert value(samples, "feedwork_worker_handler_seconds_count", queue=QUEUE) == 9
    assert value(samples, buckets, queue=QUEUE, le="+Inf") == 9
    assert value(samples, buckets, queue=QUEUE, le="2.5") == 8
    nacks = "feedwork_worker_nacks_total"
    assert value(samples, nacks, queue=QUEUE, outcome="RETRYING") == 1
    assert value(samples, nacks, queue=QUEUE, outcome="DEAD") == 3  # boom, fail, slow
    extends = "feedwork_worker_extends_total"
    assert value(samples, extends, queue=QUEUE, outcome="EXTENDED") >= 2
    if transport == "unary":
        # Without a stream to push it, the cancellation comes as an Extend outcome.
        assert value(samples, extends, queue=QUEUE, outcome="CANCELLED") == 1
    assert value(samples, "feedwork_worker_in_flight", queue=QUEUE) == 0
    assert value(samples, "feedwork_worker_concurrency", queue=QUEUE) == 8
    assert value(samples, "feedwork_worker_transport_info", transport=transport) == 1
    assert value(samples, "feedwork_worker_reconnects_total") == 0
    assert value(samples, "feedwork_worker_process_resident_memory_bytes") > 0


async def test_in_flight_rises_while_handlers_run_and_falls_back_to_zero(
    feeder: RunningFeeder, transport: str
) -> None:
    gate = threading.Event()

    def blocked(task: Task) -> bytes:
        gate.wait(10)
        return b"done"

    await submit(feeder, *[b"x"] * 5)
    async with running(feeder.target, blocked, concurrency=3, transport=transport) as worker:
        in_flight = "feedwork_worker_in_flight"
        samples = await scrape_until(worker, lambda s: value(s, in_flight, queue=QUEUE) == 3)
        assert value(samples, "feedwork_worker_concurrency", queue=QUEUE) == 3
        assert value(samples, "feedwork_worker_received_tasks_total", queue=QUEUE) == 3
        assert outcome(samples, "succeeded") == 0
        gate.set()
        samples = await scrape_until(worker, lambda s: outcome(s, "succeeded") == 5)
        await scrape_until(worker, lambda s: value(s, in_flight, queue=QUEUE) == 0)
    assert value(samples, "feedwork_worker_received_tasks_total", queue=QUEUE) == 5


async def test_tasks_released_at_shutdown_are_counted(feeder: RunningFeeder) -> None:
    started = threading.Event()

    def stubborn(task: Task) -> None:
        started.set()
        task.cancelled.wait(10)  # runs until the worker gives the task back

    await submit(feeder, b"x")
    async with running(feeder.target, stubborn, grace=0.3) as worker:
        await wait_until(started.is_set)
    # The endpoint closed with the run; the run's metrics are still the worker's.
    assert worker.metrics is not None and worker.metrics_port is None
    samples = parse(generate_latest(worker.metrics.registry).decode())
    assert outcome(samples, "released") == 1
    assert outcome(samples, "succeeded") == 0
    released = value(samples, "feedwork_worker_nacks_total", queue=QUEUE, outcome="RELEASED")
    assert released == 1


async def test_reconnects_and_failed_calls_are_counted(
    feeder_factory: FeederFactory, feeder_settings: Settings, transport: str
) -> None:
    first = await feeder_factory(store_kind="sqlite")
    await submit(first, b"a")
    async with running(first.target, lambda task: b"done", transport=transport) as worker:
        await scrape_until(worker, lambda s: outcome(s, "succeeded") == 1)
        await first.server.stop(0.5)
        failures = "feedwork_worker_connection_failures_total"
        call = "Consume" if transport == "stream" else "Lease"
        await scrape_until(worker, lambda s: value(s, failures, call=call) >= 1)
        settings = dataclasses.replace(feeder_settings, listen=first.target)
        second = await feeder_factory(store_kind="sqlite", settings=settings)
        await submit(second, b"b")
        samples = await scrape_until(worker, lambda s: outcome(s, "succeeded") == 2)
    reconnects = value(samples, "feedwork_worker_reconnects_total")
    if transport == "stream":
        assert reconnects >= 1
    else:
        assert reconnects == 0


async def test_the_transport_falls_back_to_unary_on_a_feeder_without_consume(
    feeder_factory: FeederFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feeder.server.servicer import FeederServicer

    async def unimplemented(self: Any, requests: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    monkeypatch.setattr(FeederServicer, "Consume", unimplemented)
    feeder = await feeder_factory()
    await submit(feeder, b"a")
    async with running(feeder.target, lambda task: b"done", transport="stream") as worker:
        samples = await scrape_until(worker, lambda s: outcome(s, "succeeded") == 1)
    assert value(samples, "feedwork_worker_transport_info", transport="unary") == 1
    assert ("feedwork_worker_transport_info", (("transport", "stream"),)) not in samples


async def test_off_by_default_and_bad_addresses_refused(feeder: RunningFeeder) -> None:
    worker = Worker(target=feeder.target, queue=QUEUE, handler=lambda task: None)
    assert worker.metrics_listen is None and worker.metrics_port is None
    worker.stop()
    await asyncio.wait_for(worker.run_async(), 10)
    assert worker.metrics is None
    for bad in ("9100", "localhost", "host:99999", "::1:9100"):
        with pytest.raises(ValueError, match="metrics_listen: invalid address"):
            Worker(target=feeder.target, queue=QUEUE, handler=print, metrics_listen=bad)


async def test_a_taken_port_fails_the_run_with_a_clear_error(feeder: RunningFeeder) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = Worker(
            target=feeder.target,
            queue=QUEUE,
            handler=print,
            metrics_listen=f"127.0.0.1:{port}",
        )
        with pytest.raises(MetricsListenError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await asyncio.wait_for(worker.run_async(), 10)
