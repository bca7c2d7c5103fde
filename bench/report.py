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

from bench.core import REPO_ROOT

COLUMNS = (
    ("case", "<"),
    ("workload", "<"),
    ("tasks", ">"),
    ("preload s", ">"),
    ("drain s", ">"),
    ("tasks/s", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("cli cpu", ">"),
    ("srv cpu", ">"),
    ("status", "<"),
)


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
    cycle = (result.get("latency_ms") or {}).get("cycle") or {}
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
        status if status == "ok" else status.upper(),
    ]


def table(all_results: Sequence[dict[str, Any]]) -> str:
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
    out.append("drain s, tasks/s: the drain phase only (consumers start .. every task acked).")
    if repeated:
        out.append("Repeated runs: each row is the median run by tasks/s (see the JSON for all).")
    out.append("p50/p99 ms: one lease+ack cycle of one consumer (one batch).")
    out.append("cli/srv cpu: CPU time during the drain / drain time (1.00 = one core busy).")
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
        "git_commit": _git_commit(),
        "args": args,
    }


def now() -> datetime:
    return datetime.now(UTC)


def write_json(path: Path, meta: dict[str, Any], results: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": list(results)}, indent=2) + "\n")
    tmp.replace(path)
