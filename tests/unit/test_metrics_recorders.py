"""feedwork.metrics: the histogram's buckets are Prometheus's (cumulative, `le` inclusive),
and label values are bounded (a client making up queue names cannot grow them)."""

from __future__ import annotations

from feedwork import metrics
from feedwork.metrics import Counts, Histogram, Labeled


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.1, 1.0))
    histogram.observe(0.1)  # on a bound: counts in that bucket (le = less or equal)
    histogram.observe_all([0.05, 0.5, 3.0])
    buckets, total = histogram.snapshot()
    assert buckets == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert total == 0.1 + 0.05 + 0.5 + 3.0


def test_label_values_are_bounded() -> None:
    labeled = Labeled(Histogram)
    for i in range(metrics.MAX_SERIES + 50):
        labeled.get(f"q{i}").observe(1.0)
    assert len(labeled.values) == metrics.MAX_SERIES + 1
    assert labeled.values[metrics.OTHER].snapshot()[0][-1] == ("+Inf", 50)
    counts = Counts()
    for i in range(metrics.MAX_SERIES + 10):
        counts.add((f"q{i}", "x"))
    assert len(counts.values) == metrics.MAX_SERIES + 1
    assert counts.values[(metrics.OTHER, metrics.OTHER)] == 10
