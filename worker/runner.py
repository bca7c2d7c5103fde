"""The `Worker`: wires the leaser, jobs, heartbeater and acker together around one event
loop, and runs them from start to graceful shutdown.

Shutdown, in order: stop leasing (tasks that still arrive are released unstarted); give
in-flight tasks up to `grace` seconds; release the rest (Nack with release=true) so that
another worker gets them at once; flush every pending ack and nack; only then stop the
heartbeater, so that no lease lapses while its report is on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Unpack

import grpc

from feedwork.channel import aio_channel, check_target, names_one_address, resolve_target
from feedwork.credentials import ClientSecurity, SecurityOptions
from feedwork.listen import parse_listen
from feedwork.metrics import MetricsEndpoint
from feedwork.v1 import feeder_pb2_grpc
from worker.acker import MAX_BATCH_SIZE, Acker
from worker.config import default_worker_id
from worker.connection import ConnectionMonitor
from worker.handlers import Handler, Invoker
from worker.heartbeater import Heartbeater
from worker.jobs import MAX_LEASE, MIN_LEASE, Jobs, WorkerCounters
from worker.leaser import Leaser, Slots
from worker.metrics import MetricsListenError, WorkerMetrics
from worker.receipts import AckLedger
from worker.stream import ConsumeStream, StreamUnsupported

log = logging.getLogger("feedwork.worker")

# The longest long poll the feeder accepts.
MAX_WAIT = 60.0
# A call made while a channel connects goes over whichever connection comes up first
# (round_robin picks among the connections that are up: grpc/grpc#26118), so every worker
# of a fleet started together would open its long-lived stream on the same feeder. With
# several feeders, leasing first waits up to FIRST_CONNECT_WAIT for one connection, then
# CONNECT_SETTLE for the others; each stream then goes to a feeder picked at random.
FIRST_CONNECT_WAIT = 0.5
CONNECT_SETTLE = 0.1

__all__ = ["Worker", "WorkerCounters"]


@dataclass(slots=True)
class _Parts:
    """Everything one `run_async` builds; none of it outlives the run."""

    monitor: ConnectionMonitor
    invoker: Invoker
    acker: Acker
    heartbeater: Heartbeater
    leaser: Leaser
    stream: ConsumeStream | None
    jobs: Jobs
    metrics: WorkerMetrics | None
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    stop_now: asyncio.Event = field(default_factory=asyncio.Event)


class Worker:
    """Leases tasks from one queue of a feeder and runs `handler` on each.

    `target` names one feeder or several (HOST:PORT,HOST:PORT,..., a DNS name with several
    addresses, or a gRPC URI; see `feedwork.channel`): the worker's Consume stream or Lease
    calls go to feeders that are up, and when one dies the worker carries on with another,
    its acks included (feeders on one database take each other's lease tokens).

    `run()` blocks until the worker is stopped by SIGTERM/SIGINT or `stop()`; `run_async()`
    does the same inside a running event loop. `counters` tells what it has done.

    `metrics_listen="127.0.0.1:9100"` serves Prometheus metrics at /metrics on that
    address while the worker runs (port 0: any free one, then see `metrics_port`); they
    are counts and the queue's name, served without authentication or TLS, so keep them
    on loopback or a network you trust. See docs/OBSERVABILITY.md.
    """

    def __init__(
        self,
        *,
        target: str,
        queue: str,
        handler: Handler,
        concurrency: int = 1,
        lease_duration: float | None = None,
        task_timeout: float | None = None,
        grace: float = 30.0,
        worker_id: str | None = None,
        wait: float = 30.0,
        ack_batch_size: int = 64,
        ack_flush_interval: float = 0.005,
        flush_timeout: float = 10.0,
        transport: str = "stream",
        ack_ledger: str | None = None,
        metrics_listen: str | None = None,
        **security: Unpack[SecurityOptions],
    ) -> None:
        """`ack_ledger`: a file to append a JSON line to for every ack the feeder answers
        (see `worker.receipts`), for audits of completions from the worker's side."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_duration is not None and not MIN_LEASE <= lease_duration <= MAX_LEASE:
            raise ValueError("lease_duration must be between 1 s and 12 h")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError("task_timeout must be positive")
        if not 0 <= wait <= MAX_WAIT:
            raise ValueError(f"wait must be between 0 and {MAX_WAIT:g} s")
        if transport not in ("stream", "unary"):
            raise ValueError("transport must be 'stream' or 'unary'")
        if not 1 <= ack_batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"ack_batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if metrics_listen is not None:
            try:
                metrics_listen = parse_listen(metrics_listen)
            except ValueError as exc:
                raise ValueError(f"metrics_listen: {exc}") from None
        self.target = check_target(target)
        # TLS and the API key (keyword arguments, else FEEDWORK_* variables); files are
        # read again at each reconnect, so a replaced key file is picked up.
        self.security = ClientSecurity.from_env(**security)
        self.security.check(self.target)
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.lease_duration = lease_duration
        self.task_timeout = task_timeout
        self.grace = grace
        self.worker_id = worker_id or default_worker_id()
        self.wait = wait
        self.ack_batch_size = ack_batch_size
        self.ack_flush_interval = ack_flush_interval
        # How long shutdown keeps retrying acks and nacks the feeder has not taken yet.
        self.flush_timeout = flush_timeout
        # "stream": one Consume stream carries leases and reports (falls back to "unary",
        # Lease/Ack/Nack calls, on a feeder without Consume).
        self.transport = transport
        self.ack_ledger = ack_ledger
        # Prometheus metrics at http://HOST:PORT/metrics while running (None: off).
        self.metrics_listen = metrics_listen
        self.counters = WorkerCounters()
        # The current run's metrics (with metrics_listen), and where they are served.
        self.metrics: WorkerMetrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._parts: _Parts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early_stop: bool | None = None  # stop() called before the loop ran

    def run(self, *, handle_signals: bool = True) -> None:
        """Runs until stopped. With `handle_signals` (main thread only), SIGTERM and SIGINT
        stop gracefully and a second signal exits the process at once with status 130."""
        asyncio.run(self.run_async(handle_signals=handle_signals))

    async def run_async(self, *, handle_signals: bool = False) -> None:
        """Runs on the current event loop until stopped. Raises `feedwork.errors.FeedworkError`
        if the feeder refuses to lease for good (e.g. an invalid queue name), and
        `feedwork.channel.TargetError` if none of the target's feeder names resolves."""
        self._parts = None  # a stop() until the new parts exist is kept in _early_stop
        self._loop = asyncio.get_running_loop()
        self.counters = WorkerCounters()
        # Names in a list are looked up once, here, off the loop (it may be an app's).
        resolved = await asyncio.to_thread(resolve_target, self.target)
        metrics = self.metrics = self._serve_metrics()
        ledger = None
        try:
            if self.ack_ledger:
                ledger = AckLedger(self.ack_ledger, worker_id=self.worker_id)
            async with aio_channel(resolved, security=self.security) as channel:
                stub = feeder_pb2_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
                parts = self._parts = self._build(stub, ledger, metrics)
                if self._early_stop is not None:
                    self._request_stop(now=self._early_stop)
                    self._early_stop = None
                with self._signal_handlers(handle_signals):
                    await self._serve(parts, channel)
        finally:
            if ledger is not None:
                ledger.close()
            endpoint, self._metrics_endpoint = self._metrics_endpoint, None
            if endpoint is not None:  # shutdown() waits up to half a second: off the loop
                await asyncio.to_thread(endpoint.close)

    def stop(self, *, now: bool = False) -> None:
        """Asks the worker to stop; safe from any thread and idempotent. Leasing stops at
        once; in-flight tasks get `grace` seconds (none with `now=True`), then are released."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._early_stop = now or bool(self._early_stop)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
            loop.call_soon_threadsafe(self._request_stop, now)

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics are served on while the worker runs (with port 0 in
        `metrics_listen`, the one picked), else None."""
        endpoint = self._metrics_endpoint
        return endpoint.port if endpoint is not None else None

    def _serve_metrics(self) -> WorkerMetrics | None:
        if self.metrics_listen is None:
            return None
        metrics = WorkerMetrics(queue=self.queue, concurrency=self.concurrency)
        metrics.transport = self.transport
        try:
            endpoint = MetricsEndpoint(self.metrics_listen, metrics.registry)
        except OSError as exc:
            raise MetricsListenError(
                f"cannot serve metrics on {self.metrics_listen}: {exc}"
            ) from exc
        self._metrics_endpoint = endpoint
        host = self.metrics_listen.rsplit(":", 1)[0]
        log.info("metrics at http://%s:%d/metrics", host, endpoint.port)
        return metrics

    @property
    def in_flight(self) -> int:
        """Tasks whose handlers are running and whose outcome is not decided yet."""
        return len(self._parts.jobs.unsettled()) if self._parts is not None else 0

    @property
    def handler_threads_running(self) -> int:
        """Sync handler calls still running (after `run` returns: ones that overran)."""
        return self._parts.invoker.threads_running if self._parts is not None else 0

    def _build(
        self, stub: Any, ack_ledger: AckLedger | None, metrics: WorkerMetrics | None
    ) -> _Parts:
        monitor = ConnectionMonitor(target=self.target, metrics=metrics)
        slots = Slots(self.concurrency)
        invoker = Invoker(
            handler=self.handler, concurrency=self.concurrency, task_timeout=self.task_timeout
        )
        stream = None
        if self.transport == "stream":
            stream = ConsumeStream(
                stub=stub,
                monitor=monitor,
                slots=slots,
                queue=self.queue,
                worker_id=self.worker_id,
                lease_duration=self.lease_duration,
                on_leased=lambda tasks, sent_at: jobs.on_leased(tasks, sent_at),
                on_cancelled=lambda task_ids: jobs.on_cancelled(task_ids),
                metrics=metrics,
            )
        acker = Acker(
            stub=stub,
            monitor=monitor,
            batch_size=self.ack_batch_size,
            flush_interval=self.ack_flush_interval,
            stream=stream,
        )
        heartbeater = Heartbeater(
            stub=stub,
            monitor=monitor,
            on_lost=lambda token, outcome: jobs.on_lost(token, outcome),
            lease_duration=self.lease_duration,
            metrics=metrics,
        )
        jobs = Jobs(
            invoker=invoker,
            acker=acker,
            heartbeater=heartbeater,
            slots=slots,
            counters=self.counters,
            lease_duration=self.lease_duration,
            task_timeout=self.task_timeout,
            ack_ledger=ack_ledger,
            metrics=metrics,
        )
        if metrics is not None:
            metrics.running = lambda: jobs.running
        leaser = Leaser(
            stub=stub,
            monitor=monitor,
            slots=slots,
            queue=self.queue,
            worker_id=self.worker_id,
            lease_duration=self.lease_duration,
            wait=self.wait,
            on_leased=jobs.on_leased,
        )
        return _Parts(
            monitor=monitor,
            invoker=invoker,
            acker=acker,
            heartbeater=heartbeater,
            leaser=leaser,
            stream=stream,
            jobs=jobs,
            metrics=metrics,
        )

    async def _serve(self, parts: _Parts, channel: grpc.aio.Channel) -> None:
        log.info(
            "worker %s started: queue %r on %s, concurrency %d, %s handler %s",
            self.worker_id, self.queue, self.target, self.concurrency,
            "async" if parts.invoker.is_async else "sync", _name_of(self.handler),
        )  # fmt: skip
        parts.acker.start()
        parts.heartbeater.start()
        connecting = asyncio.create_task(_announce_ready(channel, parts.monitor))
        leasing = asyncio.create_task(
            _lease(parts, channel, settle=not names_one_address(self.target)),
            name="feedwork-leaser",
        )
        stopping = asyncio.create_task(parts.stop_requested.wait())
        try:
            await asyncio.wait({leasing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            parts.stop_now.set()  # cancelled from outside: shut down without a grace period
            raise
        finally:
            connecting.cancel()
            stopping.cancel()
            parts.jobs.stopping = True
            fatal = await _stop_task(leasing)
            await self._shut_down(parts, hurry=fatal is not None)
        if fatal is not None:
            raise fatal

    async def _shut_down(self, parts: _Parts, *, hurry: bool) -> None:
        unsettled = parts.jobs.unsettled()
        grace = 0.0 if hurry or parts.stop_now.is_set() else self.grace
        log.info(
            "shutting down: leasing stopped; %d tasks in flight get up to %g s to finish",
            len(unsettled), grace,
        )  # fmt: skip
        if unsettled and grace > 0:
            await _wait_settled(unsettled, parts.stop_now, grace)
        parts.jobs.release_unsettled()
        undelivered = await parts.acker.close(time_limit=self.flush_timeout)
        if undelivered:
            log.error(
                "%d acks/nacks could not be delivered before exit (tasks %s); those tasks "
                "will be delivered again when their leases expire",
                len(undelivered), ", ".join(undelivered[:20]),
            )  # fmt: skip
        await parts.heartbeater.stop()
        parts.jobs.cancel_all()
        parts.invoker.shutdown()
        log.info("worker %s stopped: %s", self.worker_id, self.counters.as_dict())

    def _request_stop(self, now: bool) -> None:
        parts = self._parts
        if parts is None:  # still starting up: applied as soon as the parts exist
            self._early_stop = now or bool(self._early_stop)
            return
        if now:
            parts.stop_now.set()
        parts.stop_requested.set()

    @contextlib.contextmanager
    def _signal_handlers(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        parts = self._parts
        name = signal.Signals(signum).name
        if parts is not None and parts.stop_requested.is_set():
            log.warning("second signal (%s): exiting now, without waiting for tasks", name)
            logging.shutdown()  # flush what was logged; os._exit skips that
            os._exit(130)
        log.info("received %s: shutting down gracefully (signal again to exit at once)", name)
        self._request_stop(now=False)


async def _lease(parts: _Parts, channel: grpc.aio.Channel, *, settle: bool) -> None:
    """Leases until cancelled: over the Consume stream, or with Lease calls."""
    if settle:
        # Not up within the wait: lease anyway, the calls retry until a feeder is.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), FIRST_CONNECT_WAIT)
            await asyncio.sleep(CONNECT_SETTLE)
    if parts.stream is not None:
        try:
            await parts.stream.run()
            return
        except StreamUnsupported:
            log.warning("the feeder does not offer Consume streams; leasing with Lease calls")
            if parts.metrics is not None:
                parts.metrics.transport = "unary"
    await parts.leaser.run()


async def _wait_settled(
    unsettled: list[asyncio.Future[None]], stop_now: asyncio.Event, grace: float
) -> None:
    """Waits until every job is settled, `grace` runs out, or a stop(now=True) comes."""
    hurry = asyncio.create_task(stop_now.wait())
    try:
        pending: set[asyncio.Future[Any]] = set(unsettled)
        deadline = asyncio.get_running_loop().time() + grace
        while pending and not hurry.done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            _, pending = await asyncio.wait(
                pending | {hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending.discard(hurry)
    finally:
        hurry.cancel()


async def _stop_task(task: asyncio.Task[None]) -> BaseException | None:
    """Cancels `task` if still running; returns the error it ended with, if any."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return None
    except Exception as exc:
        log.error("leasing failed, shutting down: %s", exc)
        return exc
    return None


async def _announce_ready(channel: grpc.aio.Channel, monitor: ConnectionMonitor) -> None:
    # The first Lease may wait on the feeder for a long time; say "connected" as soon as
    # the channel is, not when the first reply comes.
    await channel.channel_ready()
    monitor.succeeded()


def _name_of(handler: Handler) -> str:
    module = getattr(handler, "__module__", None) or "?"
    return f"{module}:{getattr(handler, '__qualname__', type(handler).__name__)}"
