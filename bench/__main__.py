"""python -m bench [--tasks N] [--only CASE,...] [--json PATH]: peer comparison."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from bench import report
from bench.cases import Unavailable, load_cases
from bench.core import (
    CONSUMERS,
    PHASE_TIMEOUT,
    Case,
    Workload,
    run_case,
    skipped_result,
)

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Drain-throughput comparison of feedwork with peer queues.",
    )
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per workload")
    parser.add_argument("--only", help="comma-separated case names (default: all)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument(
        "--batches", default="1,64", help="batch sizes, one drain workload each (default 1,64)"
    )
    parser.add_argument("--consumers", type=int, default=CONSUMERS)
    parser.add_argument(
        "--timeout",
        type=float,
        default=PHASE_TIMEOUT,
        help="bound on each phase (setup+preload, drain, verify) of one workload",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per workload; the table shows the median run and the range",
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error("--batches takes integers, e.g. 1,64")
    if not args.batches or min(args.batches) < 1:
        parser.error("--batches must be positive")
    return args


async def _run(
    cases: list[type[Case] | Unavailable],
    n: int,
    workloads: list[Workload],
    phase_timeout: float,
    repeat: int,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for case in cases:
        if isinstance(case, Unavailable):
            print(f"!!! SKIPPED {case.name}: {case.reason}", flush=True)
            for w in workloads:
                results.append(skipped_result(case, w, n, case.reason))  # type: ignore[arg-type]
            continue
        print(f"--- {case.name}: {case.summary}", flush=True)
        for result in await run_case(case, n, workloads, phase_timeout, repeat):
            results.append(result)
            if result["status"] == "ok":
                run = f" (run {result['run']})" if repeat > 1 else ""
                print(
                    f"    {result['workload']}{run}: {n} tasks drained in "
                    f"{result['seconds']:.3f}s = {result['tasks_per_s']:,.0f} tasks/s",
                    flush=True,
                )
            elif result["status"] != "skipped":
                print(
                    f"!!! {result['status'].upper()} {case.name} {result['workload']}: "
                    f"{result['reason']}",
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cases = load_cases()
    if args.list:
        for case in cases:
            summary = case.reason if isinstance(case, Unavailable) else case.summary
            print(f"{case.name:24} {summary}")
        return 0
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        known = {case.name for case in cases}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return 2
        cases = [case for case in cases if case.name in wanted]

    workloads = [Workload.drain(b, args.consumers) for b in args.batches]
    started = report.now()
    results = asyncio.run(_run(cases, args.tasks, workloads, args.timeout, args.repeat))
    finished = report.now()

    print()
    print(report.table(results))
    options = {
        "tasks": args.tasks,
        "only": args.only,
        "batches": args.batches,
        "consumers": args.consumers,
        "timeout": args.timeout,
        "repeat": args.repeat,
    }
    report.write_json(args.json, report.metadata(options, started, finished), results)
    print(f"\nwrote {args.json} ({(finished - started).total_seconds():.1f}s)")
    return 1 if any(r["status"] in ("error", "timeout") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
