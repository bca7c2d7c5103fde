"""Formatting results: a plain-text table for the terminal, JSON for the record."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.core import REPO_ROOT, load_average

COLUMNS = (
    ("case", "<"),
    ("workload", "<"),
    ("tasks", ">"),
    ("preload s", ">"),
    ("timed s", ">"),
    ("tasks/s", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("cli cpu", ">"),
    ("srv cpu", ">"),
    ("srv us/t", ">"),
    ("db cpu", ">"),
    ("db us/t", ">"),
    ("status", "<"),
)
# A phase whose database CPU is more than this share other databases' backends (someone
# else using the server) gets a note: its db figures overstate the case.
OTHER_DB_NOTE = 0.1


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def summarise(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per (case, workload): the median run by tasks/s, with the range of runs.

    With one run per workload this returns the results unchanged (plus ``runs``). A group
    with any failed run is represented by its first failure.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for result in results:
        key = (result["case"], result["workload"], result["tasks"], result["consumers"])
        groups.setdefault(key, []).append(result)
    rows = []
    for runs in groups.values():
        failed = [r for r in runs if r["status"] != "ok"]
        if failed:
            row = dict(failed[0])
        else:
            ranked = sorted(runs, key=lambda r: r["tasks_per_s"] or 0.0)
            row = dict(ranked[(len(ranked) - 1) // 2])
            row["tasks_per_s_range"] = (ranked[0]["tasks_per_s"], ranked[-1]["tasks_per_s"])
        row["runs"] = len(runs)
        rows.append(row)
    return rows


def _row(result: dict[str, Any]) -> list[str]:
    latency = result.get("latency_ms") or {}
    cycle = latency.get("cycle") or latency.get("submit") or {}
    cpu = result.get("cpu") or {}
    status = result["status"]
    return [
        result["case"],
        result["workload"],
        f"{result['tasks']:,}",
        _num(result.get("preload_seconds"), 2),
        _num(result.get("seconds"), 3),
        _num(result.get("tasks_per_s"), 0),
        _num(cycle.get("p50"), 2),
        _num(cycle.get("p99"), 2),
        _num(cpu.get("client_core_share"), 2),
        _num(cpu.get("server_core_share"), 2),
        _num(cpu.get("server_cpu_us_per_task"), 1),
        _num(cpu.get("db_core_share"), 2),
        _num(cpu.get("db_cpu_us_per_task"), 1),
        status if status == "ok" else status.upper(),
    ]


def table(all_results: Sequence[dict[str, Any]]) -> str:
    """The drain and submit workloads (experiments: see `experiments_table`)."""
    all_results = [r for r in all_results if r.get("kind") != "experiment"]
    results = summarise(all_results)
    repeated = any(r["runs"] > 1 for r in results)
    columns = list(COLUMNS)
    body = [_row(r) for r in results]
    if repeated:
        columns.insert(6, ("min..max tasks/s", ">"))
        for row, r in zip(body, results, strict=True):
            lo, hi = r.get("tasks_per_s_range") or (None, None)
            row.insert(6, "-" if lo is None else f"{lo:,.0f}..{hi:,.0f}")
    rows = [[name for name, _ in columns], *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        cells = [
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(row, columns, widths, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(rows[0]), rule, *(line(r) for r in rows[1:])]
    out.append("")
    out.append(
        "timed s, tasks/s: drain-*: the drain only (consumers start .. every task acked); "
        "submit-*: 4 producers, first call .. last reply."
    )
    if repeated:
        out.append("Repeated runs: each row is the median run by tasks/s (see the JSON for all).")
    out.append(
        "p50/p99 ms: drain: one lease+ack cycle of one consumer (one batch); submit: one call."
    )
    out.append("cli/srv cpu: CPU time during the drain / drain time (1.00 = one core busy).")
    out.append(
        "srv us/t: server CPU per task (feedwork-pg-N: the sum of the N feeders); db cpu, db "
        "us/t: the local PostgreSQL server, all its processes (bench/postgres_cpu.py)."
    )
    notes: list[str] = []
    for r in all_results:
        if r.get("reason"):
            where = r["case"] if r["status"] == "skipped" else f"{r['case']} {r['workload']}"
            if len({x["run"] for x in all_results if x["case"] == r["case"]}) > 1:
                where += f" run {r['run']}"
            note = f"  {where}: {r['reason']}"
            if note not in notes:
                notes.append(note)
    if notes:
        out.append("Problems:")
        out.extend(notes)
    shared = [warning for r in results if (warning := _other_db_note(r))]
    if shared:
        out.append("PostgreSQL used by others meanwhile (db figures overstate these rows):")
        out.extend(shared)
    seen: set[str] = set()
    durability = []
    for r in results:
        info = r.get("info") or {}
        if r["case"] not in seen and info:
            seen.add(r["case"])
            server = info.get("server", "?")
            durability.append(f"  {r['case']}: {server}; {info.get('durability', '?')}")
    if durability:
        out.append("Durability as configured:")
        out.extend(durability)
    return "\n".join(out)


def _other_db_note(result: dict[str, Any]) -> str | None:
    cpu = result.get("cpu") or {}
    total, parts = cpu.get("db_cpu_s"), cpu.get("db_cpu_parts_s") or {}
    other = parts.get("other_databases") or 0.0
    if not total or other <= OTHER_DB_NOTE * total:
        return None
    return (
        f"  {result['case']} {result['workload']}: {other:.3f} of {total:.3f} s of PostgreSQL "
        "CPU in other databases' backends"
    )


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.0f} MB"


def describe(result: dict[str, Any]) -> str:
    """The figures of one experiment result, in one line."""
    m = result.get("metrics") or {}
    w = result["workload"]
    if result["status"] != "ok" or not m:
        return result.get("reason") or "-"
    if w == "dispatch":
        lat, sub = m["latency_ms"], m["submit_call_ms"]
        return (
            f"submit->receive p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max "
            f"{lat['max']:.1f} ms (n={lat['count']}); Submit call p50 {sub['p50']:.2f} ms"
        )
    if w == "expiry-storm":
        probe = m["probe_lease_ms"]
        return (
            f"all READY {m['requeue_seconds']:.2f} s after the deadline (spread "
            f"{m['deadline_spread_ms']:.0f} ms); probe Lease p50 {probe['p50']:.1f} ms, "
            f"p99 {probe['p99']:.1f} ms, max {probe['max']:.1f} ms (n={probe['count']}); "
            f"leasing took {m['leasing_seconds']:.1f} s"
        )
    if w == "expiry":
        late = m["lateness_ms"]
        return (
            f"requeued after its deadline p50 {late['p50']:.0f} ms, p99 {late['p99']:.0f} ms, "
            f"max {late['max']:.0f} ms (n={late['count']}); all READY "
            f"{m['all_ready_after_last_deadline_ms']:.0f} ms after the last deadline "
            f"(deadlines spread over {m['deadline_spread_ms']:.0f} ms)"
        )
    if w.startswith("cost-"):
        return (
            f"{m['per_task_us']:.1f} us/task wall, {m['feeder_cpu_per_task_us']:.1f} us/task "
            f"feeder CPU ({m['drained']:,} drained, {m['queued']:,} queued)"
        )
    if w.startswith("preload-"):
        return f"{m['seconds']:.1f} s = {m['tasks_per_s']:,.0f} tasks/s ({m['how']})"
    if w.startswith("memory-"):
        per = m.get("bytes_per_task")
        return (
            f"RSS empty {_mb(m['rss_empty_bytes'])}, {m['queued']:,} queued "
            f"{_mb(m['rss_queued_bytes'])} ({'-' if per is None else f'{per:,.0f}'} B/task), "
            f"after restart {_mb(m.get('rss_after_recovery_bytes'))}; database "
            f"{_mb(m['db_bytes'])}"
        )
    if w.startswith("recovery-"):
        return (
            f"port file {m['port_file_seconds']:.2f} s, first Lease "
            f"{m['first_lease_seconds']:.2f} s after spawn (graceful stop took "
            f"{m['graceful_stop_seconds']:.2f} s)"
        )
    return ", ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, dict))


def experiments_table(all_results: Sequence[dict[str, Any]]) -> str:
    rows = [r for r in all_results if r.get("kind") == "experiment"]
    if not rows:
        return ""
    head = ("case", "workload", "load", "status", "figures")
    body = [
        (
            r["case"],
            r["workload"],
            "-" if not r.get("load_avg") else f"{r['load_avg'][0]:.2f}",
            r["status"] if r["status"] == "ok" else r["status"].upper(),
            describe(r),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [f"{c:<{w}}" for c, w in zip(row[:4], widths, strict=True)]
        return "  ".join([*cells, row[4]]).rstrip()

    out = [line(head), "  ".join("-" * w for w in [*widths, 7]), *(line(b) for b in body)]
    out.append("load: the 1-minute load average when the workload started (2 cores).")
    return "\n".join(out)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def metadata(args: dict[str, Any], started: datetime, finished: datetime) -> dict[str, Any]:
    return {
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "wall_seconds": (finished - started).total_seconds(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_end": load_average(),
        "git_commit": _git_commit(),
        "args": args,
    }


def now() -> datetime:
    return datetime.now(UTC)


def write_json(
    path: Path,
    meta: dict[str, Any],
    results: Sequence[dict[str, Any]],
    targets: Sequence[dict[str, Any]] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    document = {"meta": meta, "results": list(results), "targets": list(targets or [])}
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
