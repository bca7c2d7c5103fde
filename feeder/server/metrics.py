"""The feeder's Prometheus metrics (`--metrics-listen HOST:PORT`, path /metrics).

Two kinds, documented in docs/OBSERVABILITY.md:

- **The queues**, as every feeder of the database left them (read from the store when
  Prometheus scrapes, like GetStats): tasks by state, the oldest ready task's age, and the
  running totals (submitted, completed, expired, ...). Several feeders on one database all
  report the same values: aggregate them with max(), not sum().
- **This feeder's work**: tasks leased, ack, nack and extend outcomes, the wait from ready
  to leased and the run from lease to completing ack (histograms per queue), RPCs by
  method and status with their latency, open Consume streams, consumers holding leases,
  the event loop's lag, the process's CPU and memory. Sum these over feeders.

Recording costs a few tenths of a microsecond per task (see `feedwork.metrics`); nothing
is read from the store until a scrape asks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from feeder.config import Settings
from feeder.core.machine import Event
from feeder.core.model import AckOutcome, ExtendOutcome, NackOutcome, State, Task
from feeder.server.access import Role
from feeder.server.auth import Authenticator, Denied
from feeder.service.loop_lag import LoopLagProbe
from feeder.service.observer import Observer
from feeder.service.tasks import TaskService
from feeder.store.base import QueueCounts
from feedwork import metrics
from feedwork.metrics import Collector, Counts, Guard, Histogram, Labeled

log = logging.getLogger("feedwork.feeder")

# A scrape waits this long for the queue counts, then reports without them.
SCRAPE_TIMEOUT = 5.0
# Queues a scrape reports (the largest databases have more: GetStats pages through them).
MAX_QUEUES = metrics.MAX_SERIES
_COMPLETING = (AckOutcome.ACKED, AckOutcome.ADOPTED)
_STATES = tuple(State)


class FeederMetrics(Observer):
    """Records what the service and the servicer report; `registry` serves it."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        loop_lag: LoopLagProbe | None = None,
        streams: Callable[[], int] = lambda: 0,
    ) -> None:
        self._service: TaskService | None = None
        self._clock = clock
        self._loop_lag = loop_lag
        self._streams = streams
        self._loop: asyncio.AbstractEventLoop | None = None
        self.leased_tasks = Counts()
        self.dispatch = Labeled(Histogram)  # by queue: ready -> leased
        self.run_time = Labeled(Histogram)  # by queue: leased -> completing ack
        self.acks: Counter[AckOutcome] = Counter()
        self.nacks: Counter[NackOutcome] = Counter()
        self.extends: Counter[ExtendOutcome] = Counter()
        self.rpcs = Counts()  # (method, code)
        self.rpc_time = Labeled(Histogram)  # by method
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="feedwork", registry=self.registry)
        self.registry.register(Collector(self._collect))

    def bind(self, service: TaskService, loop: asyncio.AbstractEventLoop) -> None:
        """The service to read, and the loop it runs on: scrapes (another thread) read the
        store there."""
        self._service, self._loop = service, loop

    # -- recording (on the event loop) ------------------------------------------------

    def leased(self, queue: str, tasks: Sequence[Task], now: float) -> None:
        self.leased_tasks.add((queue,), len(tasks))
        self.dispatch.get(queue).observe_all([max(0.0, now - task.ready_at) for task in tasks])

    def acked(self, decided: Sequence[tuple[AckOutcome, Task | None]], now: float) -> None:
        acks = self.acks
        for outcome, task in decided:
            acks[outcome] += 1
            if outcome in _COMPLETING and task is not None and task.history:
                leased_at = task.history[-1].leased_at
                self.run_time.get(task.queue).observe(max(0.0, now - leased_at))

    def nacked(self, decided: Sequence[tuple[NackOutcome, Task | None]]) -> None:
        nacks = self.nacks
        for outcome, _ in decided:
            nacks[outcome] += 1

    def extended(self, outcomes: Sequence[ExtendOutcome]) -> None:
        extends = self.extends
        for outcome in outcomes:
            extends[outcome] += 1

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """One unary call ended with `code` (OK, INVALID_ARGUMENT, ...) after `seconds`."""
        self.rpcs.add((method, code))
        self.rpc_time.get(method).observe(seconds)

    def denied(self, method: str, code: str) -> None:
        """A call was refused before the service saw it (UNAUTHENTICATED, PERMISSION_DENIED)."""
        self.rpcs.add((method, code))

    # -- scraping (in the endpoint's thread) ------------------------------------------

    async def _read(self) -> tuple[list[QueueCounts] | None, tuple[int, int, int]]:
        """On the loop: the queue counts (None if the store cannot say) and this
        feeder's (streams, consumers, leases)."""
        service = self._service
        assert service is not None
        local = (self._streams(), *service.lease_counts())
        try:
            counts = await service.stats(None, limit=MAX_QUEUES)
        except Exception as exc:  # the store is down: say so, report the rest
            log.warning("metrics: cannot read the queue counts: %s", exc)
            return None, local
        return counts, local

    def _collect(self) -> Iterator[Metric]:
        loop, service = self._loop, self._service
        if loop is None or service is None or loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._read(), loop)
        try:
            counts, (streams, holders, leases) = future.result(SCRAPE_TIMEOUT)
        except FutureTimeout:
            future.cancel()
            log.warning("metrics: the feeder did not answer within %gs", SCRAPE_TIMEOUT)
            return
        up = GaugeMetricFamily(
            "feedwork_store_up", "1 when this scrape could read the queue counts from the store"
        )
        up.add_metric([], 1.0 if counts is not None else 0.0)
        yield up
        if counts is not None:
            yield from self._queue_families(counts)
        yield from self._work_families()
        for name, documentation, value in (
            ("feedwork_consume_streams", "Consume streams open on this feeder", streams),
            ("feedwork_consumers", "Streams and Lease callers holding leases here", holders),
            ("feedwork_leases_held", "Leases those consumers hold", leases),
            ("feedwork_draining", "1 while this feeder is stopping", int(service.draining)),
        ):
            gauge = GaugeMetricFamily(name, documentation)
            gauge.add_metric([], value)
            yield gauge

    def _queue_families(self, counts: list[QueueCounts]) -> Iterator[Metric]:
        now = self._clock()
        tasks = GaugeMetricFamily(
            "feedwork_queue_tasks", "Tasks of the queue by state", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "feedwork_queue_oldest_ready_age_seconds",
            "How long the queue's oldest ready task has waited (0 when none is ready)",
            labels=["queue"],
        )
        events = CounterMetricFamily(
            "feedwork_queue_events",
            "The queue's running totals (submitted, completed, expired, redelivered, "
            "duplicate_acks, dead_lettered, adopted, failed, cancelled)",
            labels=["queue", "event"],
        )
        for queue in counts:
            for state in _STATES:
                tasks.add_metric([queue.queue, state.name.lower()], queue.by_state.get(state, 0))
            age = 0.0 if queue.oldest_ready_at is None else max(0.0, now - queue.oldest_ready_at)
            oldest.add_metric([queue.queue], age)
            for event in Event:
                events.add_metric([queue.queue, event.value], queue.totals.get(event, 0))
        yield from (tasks, oldest, events)

    def _work_families(self) -> Iterator[Metric]:
        yield metrics.counter_family(
            "feedwork_leased_tasks", "Tasks this feeder leased", ["queue"], self.leased_tasks
        )
        yield metrics.histogram_family(
            "feedwork_dispatch_latency_seconds",
            "From a task's becoming ready to its lease, on this feeder",
            "queue",
            self.dispatch,
        )
        yield metrics.histogram_family(
            "feedwork_task_run_seconds",
            "From a task's lease to its completing ack (ACKED or ADOPTED)",
            "queue",
            self.run_time,
        )
        for name, documentation, outcomes in (
            ("feedwork_acks", "Acks by outcome", self.acks),
            ("feedwork_nacks", "Nacks by outcome", self.nacks),
            ("feedwork_extends", "Lease extensions by outcome", self.extends),
        ):
            family = CounterMetricFamily(name, documentation, labels=["outcome"])
            for outcome, count in list(outcomes.items()):
                family.add_metric([outcome.name], count)
            yield family
        yield metrics.counter_family(
            "feedwork_rpcs", "Unary calls by method and status code", ["method", "code"], self.rpcs
        )
        yield metrics.histogram_family(
            "feedwork_rpc_duration_seconds", "Unary call latency", "method", self.rpc_time
        )
        if self._loop_lag is not None:
            lag = GaugeMetricFamily(
                "feedwork_event_loop_lag_seconds",
                "The worst lag of the feeder's event loop over the probe's last window",
            )
            lag.add_metric([], self._loop_lag.window.worst)
            yield lag


def endpoint_guard(authenticator: Authenticator) -> Guard | None:
    """With an access list, /metrics needs an API key with the admin role on every queue
    (the metrics name every queue); without, it is open like the gRPC port."""
    if not authenticator.required:
        return None

    def guard(header: str | None) -> tuple[str, str] | None:
        if header is None:
            return (
                "401 Unauthorized",
                "the metrics need an admin API key: 'Authorization: Bearer KEY'",
            )
        try:
            principal = authenticator.principal([("authorization", header)], None)
        except Denied as denied:
            return "401 Unauthorized", str(denied)
        if principal is None or principal.may(Role.ADMIN, [None]) is not None:
            name = principal.name if principal is not None else "anonymous"
            return (
                "403 Forbidden",
                f"{name} may not read the metrics: that needs the admin role on every queue",
            )
        return None

    return guard


def endpoint_tls(settings: Settings) -> ssl.SSLContext | None:
    """The feeder's certificate for /metrics too (read once, at start), and its client CA."""
    if not (settings.tls_cert and settings.tls_key):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
