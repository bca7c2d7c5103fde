"""The performance targets of feedwork, checked against the results of one run.

Every target is a ratio or a bound computed from this run's own figures (peers and floor
measured on the same machine minutes apart), so the verdict does not depend on numbers
from another machine. A target whose inputs are missing (case skipped, scale suite not
run) is reported as "not measured", never as met.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GiB = 1024**3


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    # (value, detail) from the results; value None = not measured.
    measure: Callable[[_Results], tuple[float | None, str]]
    threshold: float
    # "min": value >= threshold; "max": value < threshold (or <= for "max_eq").
    sense: str
    unit: str = ""


class _Results:
    def __init__(self, results: Sequence[dict[str, Any]]) -> None:
        self.results = results

    def get(self, case: str, workload: str) -> dict[str, Any] | None:
        found = [
            r
            for r in self.results
            if r["case"] == case and r["workload"] == workload and r["status"] == "ok"
        ]
        if not found:
            return None
        if found[0].get("kind") == "experiment":
            return found[0]
        ranked = sorted(found, key=lambda r: r.get("tasks_per_s") or 0.0)
        return ranked[(len(ranked) - 1) // 2]  # the median run

    def rate(self, case: str, workload: str) -> float | None:
        r = self.get(case, workload)
        return None if r is None else r.get("tasks_per_s")

    def cpu(self, case: str, workload: str, key: str) -> float | None:
        r = self.get(case, workload)
        value = None if r is None else (r.get("cpu") or {}).get(key)
        return None if value is None else float(value)

    def other_db_share(self, case: str, workload: str) -> float:
        """The share of the database CPU of a phase spent by other databases' backends."""
        r = self.get(case, workload)
        cpu = {} if r is None else (r.get("cpu") or {})
        total, other = cpu.get("db_cpu_s"), (cpu.get("db_cpu_parts_s") or {}).get("other_databases")
        return float(other) / float(total) if total and other else 0.0

    def metric(self, case: str, workload: str, *path: str) -> Any:
        r = self.get(case, workload)
        value: Any = None if r is None else r.get("metrics")
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value


def _ratio(case: str, other: str, workload: str) -> Callable[[_Results], tuple[float | None, str]]:
    def measure(rs: _Results) -> tuple[float | None, str]:
        a, b = rs.rate(case, workload), rs.rate(other, workload)
        if not a or not b:
            shown = [f"{x:,.0f}" if x else "-" for x in (a, b)]
            return None, f"{case} {shown[0]} / {other} {shown[1]} tasks/s (not measured)"
        return a / b, f"{case} {a:,.0f} / {other} {b:,.0f} tasks/s"

    return measure


def _db_cpu_ratio(
    case: str, other: str, workload: str
) -> Callable[[_Results], tuple[float | None, str]]:
    """PostgreSQL CPU per task of `case` over that of `other`, same workload, same run."""

    def measure(rs: _Results) -> tuple[float | None, str]:
        a = rs.cpu(case, workload, "db_cpu_us_per_task")
        b = rs.cpu(other, workload, "db_cpu_us_per_task")
        shown = [f"{x:.1f}" if x is not None else "-" for x in (a, b)]
        detail = f"{case} {shown[0]} / {other} {shown[1]} us of PostgreSQL CPU per task"
        if a is None or not b:
            return None, f"{detail} (not measured)"
        feeder = rs.cpu(case, workload, "server_cpu_us_per_task")
        if feeder is not None:
            detail += f"; feeder CPU {feeder:.1f} us/task"
        shared = [name for name in (case, other) if rs.other_db_share(name, workload) > 0.1]
        if shared:
            detail += f" (PostgreSQL busy with other databases during {', '.join(shared)})"
        return a / b, detail

    return measure


def _rate(case: str, workload: str) -> Callable[[_Results], tuple[float | None, str]]:
    def measure(rs: _Results) -> tuple[float | None, str]:
        value = rs.rate(case, workload)
        return value, f"{case} {workload}"

    return measure


def _metric(
    case: str, workload: str, *path: str, scale: float = 1.0, note: str = ""
) -> Callable[[_Results], tuple[float | None, str]]:
    def measure(rs: _Results) -> tuple[float | None, str]:
        value = rs.metric(case, workload, *path)
        return (None if value is None else value * scale), note or f"{case} {workload}"

    return measure


def _cost_growth(rs: _Results) -> tuple[float | None, str]:
    big = rs.get("feedwork-raw", "cost-1m-queued")
    small = rs.metric("feedwork-raw", "cost-1k-queued", "per_task_us")
    if big is None or not small:
        return None, "scale suite with 1M tasks not run (--scale)"
    value = big["metrics"]["per_task_us"]
    cpu_small = rs.metric("feedwork-raw", "cost-1k-queued", "feeder_cpu_per_task_us")
    cpu_big = big["metrics"].get("feeder_cpu_per_task_us")
    cpu = f"; feeder CPU {cpu_big:.1f} vs {cpu_small:.1f} us/task" if cpu_big and cpu_small else ""
    return value / small, (
        f"{big['workload']}: {value:.1f} us/task vs cost-1k-queued {small:.1f} us/task{cpu}"
    )


def _expiry_lateness(rs: _Results) -> tuple[float | None, str]:
    late = rs.metric("feedwork-pg-3", "expiry", "lateness_ms")
    if not late or late.get("max") is None:
        return None, "feedwork-pg-3 expiry (expiry-pg) not run"
    return float(late["max"]), (
        f"feedwork-pg-3 expiry: requeued p50 {late['p50']:.0f}, p99 {late['p99']:.0f}, max "
        f"{late['max']:.0f} ms after the deadline ({late['count']} leases)"
    )


def _scale_metric(
    workload: str, *path: str, scale: float = 1.0
) -> Callable[[_Results], tuple[float | None, str]]:
    """A figure of the scale suite at its default 1M tasks (other sizes do not count)."""

    def measure(rs: _Results) -> tuple[float | None, str]:
        value = rs.metric("feedwork", workload, *path)
        if value is None:
            return None, "scale suite with 1M tasks not run (--scale)"
        return value * scale, f"feedwork {workload}"

    return measure


TARGETS: tuple[Target, ...] = (
    Target(
        "sdk-b64-vs-redis",
        "drain b64 via the worker SDK (no-op handler) >= Redis Streams",
        _ratio("feedwork-sdk", "redis-streams", "drain-b64"),
        1.0,
        "min",
        "x",
    ),
    Target(
        "sdk-b64-vs-jetstream",
        "drain b64 via the worker SDK >= 5x NATS JetStream",
        _ratio("feedwork-sdk", "nats-jetstream", "drain-b64"),
        5.0,
        "min",
        "x",
    ),
    Target(
        "sdk-b64-vs-floor",
        "drain b64 via the worker SDK >= 40% of the floor",
        _ratio("feedwork-sdk", "floor", "drain-b64"),
        0.4,
        "min",
        "x",
    ),
    Target(
        "raw-b1-vs-floor",
        "unbatched drain (Lease 1 + Ack 1, raw stubs) >= 80% of the floor",
        _ratio("feedwork-raw", "floor", "drain-b1"),
        0.8,
        "min",
        "x",
    ),
    Target(
        "submit-b100",
        "submit at batch 100 >= 50,000 tasks/s",
        _rate("feedwork-raw", "submit-b100"),
        50_000,
        "min",
        "tasks/s",
    ),
    Target(
        "dispatch-p50",
        "dispatch latency with idle workers p50 < 2 ms",
        _metric("feedwork-raw", "dispatch", "latency_ms", "p50"),
        2.0,
        "max",
        "ms",
    ),
    Target(
        "dispatch-p99",
        "dispatch latency with idle workers p99 < 10 ms",
        _metric("feedwork-raw", "dispatch", "latency_ms", "p99"),
        10.0,
        "max",
        "ms",
    ),
    Target(
        "cost-growth",
        "per-task drain cost at 1M queued within 1.25x of 1k queued",
        _cost_growth,
        1.25,
        "max_eq",
        "x",
    ),
    Target(
        "recovery-1m",
        "restart recovery of a 1M-task database < 10 s (spawn to first Lease)",
        _scale_metric("recovery-1m", "first_lease_seconds"),
        10.0,
        "max",
        "s",
    ),
    Target(
        "memory-1m",
        "feeder RSS with 1M queued < 1.5 GiB",
        _scale_metric("memory-1m", "rss_queued_bytes", scale=1 / GiB),
        1.5,
        "max",
        "GiB",
    ),
    Target(
        "expiry-requeue",
        "expiry storm: all 50,000 READY again within 2 s of the deadline",
        _metric("feedwork-raw", "expiry-storm", "requeue_seconds"),
        2.0,
        "max_eq",
        "s",
    ),
    Target(
        "expiry-probe-p99",
        "expiry storm: probe Lease p99 < 50 ms meanwhile",
        _metric("feedwork-raw", "expiry-storm", "probe_lease_ms", "p99"),
        50.0,
        "max",
        "ms",
    ),
    Target(
        "pg-db-cpu-b64",
        "PostgreSQL CPU per task, 1 feeder on PostgreSQL, drain b64 <= 1.5x bare SKIP LOCKED",
        _db_cpu_ratio("feedwork-pg-1", "postgres-skip-locked", "drain-b64"),
        1.5,
        "max_eq",
        "x",
    ),
    Target(
        "pg-db-cpu-submit",
        "PostgreSQL CPU per task, 1 feeder on PostgreSQL, submit b100 <= 1.5x bare INSERTs",
        _db_cpu_ratio("feedwork-pg-1", "postgres-skip-locked", "submit-b100"),
        1.5,
        "max_eq",
        "x",
    ),
    Target(
        "pg-dispatch-p50",
        "3 feeders on PostgreSQL: submit on one to a long poll on another p50 < 5 ms",
        _metric("feedwork-pg-3", "dispatch", "latency_ms", "p50"),
        5.0,
        "max",
        "ms",
    ),
    Target(
        "pg-dispatch-p99",
        "3 feeders on PostgreSQL: submit on one to a long poll on another p99 < 25 ms",
        _metric("feedwork-pg-3", "dispatch", "latency_ms", "p99"),
        25.0,
        "max",
        "ms",
    ),
    Target(
        "pg-expiry-requeue",
        "3 feeders on PostgreSQL: every expired lease requeued within 250 ms of its deadline",
        _expiry_lateness,
        250.0,
        "max_eq",
        "ms",
    ),
)


def evaluate(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rs = _Results(results)
    verdicts = []
    for target in TARGETS:
        value, detail = target.measure(rs)
        met: bool | None
        if value is None:
            met = None
        elif target.sense == "min":
            met = value >= target.threshold
        elif target.sense == "max_eq":
            met = value <= target.threshold
        else:
            met = value < target.threshold
        verdicts.append(
            {
                "id": target.id,
                "target": target.text,
                "value": value,
                "threshold": target.threshold,
                "unit": target.unit,
                "met": met,
                "detail": detail,
            }
        )
    return verdicts


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "tasks/s":
        return f"{value:,.0f} tasks/s"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def table(verdicts: Sequence[dict[str, Any]]) -> str:
    rows = [("target", "value", "needed", "verdict")]
    for v in verdicts:
        sense = ">=" if v["id"] in _MIN_IDS else ("<=" if v["id"] in _MAX_EQ_IDS else "<")
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[v["met"]]
        rows.append(
            (v["target"], _fmt(v["value"], v["unit"]), f"{sense} {_fmt(v['threshold'], v['unit'])}",
             verdict)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    out = ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    out.extend(f"  {v['id']}: {v['detail']}" for v in verdicts)
    return "\n".join(out)


_MIN_IDS = {t.id for t in TARGETS if t.sense == "min"}
_MAX_EQ_IDS = {t.id for t in TARGETS if t.sense == "max_eq"}
