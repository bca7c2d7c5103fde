"""The worker's Prometheus metrics (`metrics_listen=` / `--metrics-listen HOST:PORT`, path
/metrics), documented in docs/OBSERVABILITY.md ("Worker metrics").

Per worker process: tasks received, tasks by outcome and how long their handlers ran,
tasks in flight and the slots, ack, nack and extend outcomes as the feeder answered them,
Consume stream reconnects and failed calls, the transport in use, and the process's CPU
and memory. The
names start with `feedwork_worker_`, so a Prometheus that scrapes feeders and workers
never mixes the two.

Recording is plain numbers updated on the worker's event loop, as in the feeder (see
`feedwork.metrics`): an int added to, a dict entry bumped, a histogram bisected; nothing
is locked and no label is looked up beyond a dict get. A scrape (in the endpoint's thread)
copies them and builds the families. What the endpoint shows is counts, durations and the
queue's name: no payload, result, error text, task id, worker id or address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from feedwork.metrics import Collector, Histogram
from feedwork.v1 import feeder_pb2 as pb

# How a task's attempt ended: the `outcome` label of feedwork_worker_tasks_total.
OUTCOMES = (
    "succeeded",  # the handler returned a result (acked)
    "failed",  # it raised (any exception but Retry and Fail), or returned a wrong type
    "retry",  # it raised Retry
    "fail",  # it raised Fail (terminal)
    "timeout",  # it ran past --task-timeout
    "abandoned",  # the lease was lost or the task cancelled while it ran
    "released",  # still running when shutdown's grace ran out: given back
)
# The outcome of a report the feeder refused for good (an error instead of an outcome).
ERROR = -1


class MetricsListenError(OSError):
    """The metrics endpoint cannot listen where it was asked to (address in use, ...)."""


class WorkerMetrics:
    """Recorders for one `Worker.run`, and the `registry` that reports them.

    The worker's parts bump the fields directly; `running` (a function) and `transport`
    are read when Prometheus scrapes."""

    def __init__(self, *, queue: str, concurrency: int) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.received = 0  # tasks leased to this worker
        self.tasks: dict[str, int] = dict.fromkeys(OUTCOMES, 0)  # by outcome
        self.handler_time = Histogram()  # from a task's arrival to its outcome, any outcome
        # By the feeder's outcome (an AckOutcome, NackOutcome, ExtendOutcome value, or ERROR).
        self.acks: dict[int, int] = {}
        self.nacks: dict[int, int] = {}
        self.extends: dict[int, int] = {}
        self.failures: dict[str, int] = {}  # by call (Consume, Lease, Ack, Nack, Extend)
        self.reconnects = 0  # Consume streams opened after the first
        self.transport = "stream"
        self.running: Callable[[], int] = lambda: 0  # tasks whose handlers run now
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="feedwork_worker", registry=self.registry)
        self.registry.register(Collector(self._collect))

    def ended(self, outcome: str, seconds: float) -> None:
        """A task's attempt ended with `outcome` (OUTCOMES) after `seconds`."""
        self.tasks[outcome] += 1
        self.handler_time.observe(seconds)

    # -- scraping (in the endpoint's thread) ------------------------------------------

    def _collect(self) -> Iterator[Metric]:
        queue = [self.queue]
        received = CounterMetricFamily(
            "feedwork_worker_received_tasks",
            "Tasks leased to this worker (over its Consume stream or Lease calls)",
            labels=["queue"],
        )
        received.add_metric(queue, self.received)
        yield received
        tasks = CounterMetricFamily(
            "feedwork_worker_tasks",
            "Tasks whose attempt ended here, by outcome: succeeded, failed, retry, fail, "
            "timeout, abandoned (lease lost or task cancelled), released (shutdown)",
            labels=["queue", "outcome"],
        )
        for outcome, count in list(self.tasks.items()):
            tasks.add_metric([self.queue, outcome], count)
        yield tasks
        handler_time = HistogramMetricFamily(
            "feedwork_worker_handler_seconds",
            "From a task's arrival to its outcome (whichever), in seconds",
            labels=["queue"],
        )
        buckets, total = self.handler_time.snapshot()
        handler_time.add_metric(queue, buckets, total)
        yield handler_time
        for name, documentation, value in (
            (
                "feedwork_worker_in_flight",
                "Tasks whose handlers are running now (a handler past its time limit included)",
                self.running(),
            ),
            (
                "feedwork_worker_concurrency",
                "Tasks this worker runs at once at most (its slots)",
                self.concurrency,
            ),
        ):
            gauge = GaugeMetricFamily(name, documentation, labels=["queue"])
            gauge.add_metric(queue, value)
            yield gauge
        yield _outcomes(
            "feedwork_worker_acks",
            "Acks answered by the feeder, by outcome (ERROR: refused for good)",
            self.queue,
            self.acks,
            pb.AckOutcome.Name,
            "ACK_OUTCOME_",
        )
        yield _outcomes(
            "feedwork_worker_nacks",
            "Nacks (failures and releases) answered by the feeder, by outcome "
            "(ERROR: refused for good)",
            self.queue,
            self.nacks,
            pb.NackOutcome.Name,
            "NACK_OUTCOME_",
        )
        yield _outcomes(
            "feedwork_worker_extends",
            "Lease extensions answered by the feeder, by outcome",
            self.queue,
            self.extends,
            pb.ExtendOutcome.Name,
            "EXTEND_OUTCOME_",
        )
        reconnects = CounterMetricFamily(
            "feedwork_worker_reconnects",
            "Consume streams opened after the first (a stream broke, or opening one failed)",
        )
        reconnects.add_metric([], self.reconnects)
        yield reconnects
        failures = CounterMetricFamily(
            "feedwork_worker_connection_failures",
            "Calls to the feeder that failed and are retried (unreachable, down, overloaded), "
            "by call",
            labels=["call"],
        )
        for call, count in list(self.failures.items()):
            failures.add_metric([call], count)
        yield failures
        transport = GaugeMetricFamily(
            "feedwork_worker_transport_info",
            "1 for the transport in use: stream (Consume) or unary (Lease, Ack, Nack)",
            labels=["transport"],
        )
        transport.add_metric([self.transport], 1)
        yield transport


def _outcomes(
    name: str,
    documentation: str,
    queue: str,
    counts: Mapping[int, int],
    names: Callable[[int], str],
    prefix: str,
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["queue", "outcome"])
    for outcome, count in list(counts.items()):
        family.add_metric([queue, _name(names, prefix, outcome)], count)
    return family


def _name(names: Callable[[int], str], prefix: str, value: int) -> str:
    """ACKED for ACK_OUTCOME_ACKED, and so on."""
    if value == ERROR:
        return "ERROR"
    try:
        return names(value).removeprefix(prefix)
    except ValueError:  # a value a newer feeder knows and this worker does not
        return str(value)
