"""Prometheus metrics for the feeder and the worker: cheap recorders for the hot paths,
and the HTTP endpoint that serves them (`--metrics-listen`).

The recorders are plain numbers updated on the event loop (no lock, no label lookup per
observation): a histogram observation is a `bisect` and two additions, about 0.2 us, where
prometheus_client's own `Histogram` takes a lock and walks its buckets. A `Collector` turns
them into metric families when Prometheus scrapes, in the endpoint's thread: it copies each
list whole (one C call under the GIL), so a scrape never sees a bucket count older than
the total it is reported with by more than the observations of that instant.

The endpoint is prometheus_client's WSGI app in a thread of its own, behind an optional
guard (the feeder asks for an API key when it has an access list) and optional TLS.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger("feedwork.metrics")

# Seconds: from a millisecond to ten minutes (dispatch waits, handler runs, RPCs).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Label values kept per metric (queues, methods); past this, new ones count as OTHER, so a
# client that makes up queue names cannot grow the feeder's memory or the scrape.
MAX_SERIES = 1000
OTHER = "_other"


class Histogram:
    """Counts of observations per bucket, their sum and number."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def observe_all(self, values: Iterable[float]) -> None:
        bounds, counts, total = self.bounds, self.counts, 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.total += total

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (le, count) buckets as Prometheus wants them, and the sum."""
        counts, total = list(self.counts), self.total
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
        return buckets, total


class Labeled:
    """Values by label value (a queue, a method, an outcome), at most MAX_SERIES of them."""

    __slots__ = ("_make", "values")

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self.values: dict[str, Any] = {}

    def get(self, label: str) -> Any:
        value = self.values.get(label)
        if value is None:
            if len(self.values) >= MAX_SERIES:
                label = OTHER
                value = self.values.get(label)
            if value is None:
                value = self.values[label] = self._make()
        return value


class Counts:
    """Counters by label tuple, at most MAX_SERIES of them."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...], amount: int = 1) -> None:
        values = self.values
        if labels not in values and len(values) >= MAX_SERIES:
            labels = (OTHER,) * len(labels)
        values[labels] = values.get(labels, 0) + amount


def counter_family(
    name: str, documentation: str, label_names: Sequence[str], counts: Counts
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=label_names)
    for labels, value in list(counts.values.items()):
        family.add_metric(labels, value)
    return family


def histogram_family(
    name: str, documentation: str, label_name: str, histograms: Labeled
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=[label_name])
    for label, histogram in list(histograms.values.items()):
        buckets, total = histogram.snapshot()
        family.add_metric([label], buckets, total)
    return family


class Collector:
    """Adapts a function that yields metric families to prometheus_client's registry."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()

    def describe(self) -> list[Metric]:
        return []  # unknown until collected: the registry then does not check names


# -- the endpoint -----------------------------------------------------------------------

# Answers a request for the endpoint: None to serve it, else (status, message) to refuse.
Guard = Callable[[str | None], tuple[str, str] | None]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


class MetricsEndpoint:
    """`/metrics` of `registry` on HOST:PORT (port 0: any free one; `port` says which),
    served by a daemon thread until `close()`."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        *,
        guard: Guard | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        app = make_wsgi_app(registry)

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: the metrics are at /metrics\n"]
            refusal = guard(environ.get("HTTP_AUTHORIZATION")) if guard is not None else None
            if refusal is not None:
                status, message = refusal
                headers = [("Content-Type", "text/plain")]
                if status.startswith("401"):
                    headers.append(("WWW-Authenticate", 'Bearer realm="feedwork"'))
                start_response(status, headers)
                return [message.encode() + b"\n"]
            return app(environ, start_response)

        self._httpd = make_server(
            host,
            int(port),
            guarded,
            server_class=_Server6 if ":" in host else _Server,  # an IPv6 address
            handler_class=_QuietHandler,
        )
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port: int = self._httpd.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="feedwork-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
