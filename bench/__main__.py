"""python -m bench [--tasks N] [--only NAME,...] [--scale] [--json PATH]: feedwork and its
peers. Cases (drain and submit workloads) run first, then the feedwork experiments
(dispatch latency, expiry storm; the 1M-task scale suite with --scale), then the targets
are checked against this run's figures."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from bench import report, targets
from bench.cases import Unavailable, load_cases
from bench.core import (
    CONSUMERS,
    PHASE_TIMEOUT,
    SUBMIT_BATCH,
    Case,
    PhaseProfiler,
    Workload,
    load_average,
    run_case,
    skipped_result,
)
from bench.experiments import EXPERIMENTS, SCALE_TASKS, Experiment, Options, run_experiment

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
SCALE_HINT = (
    "The 1M-task scale suite (cost growth, recovery, memory; 1-3 min) is opt-in:\n"
    "  .venv/bin/python -m bench --only scale        # just the scale suite\n"
    "  .venv/bin/python -m bench --scale             # everything"
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="feedwork against its peer queues: drain and submit throughput, plus "
        "feedwork's dispatch latency, expiry storm and (opt-in) 1M-task scale suite.",
    )
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per workload")
    parser.add_argument("--only", help="comma-separated case and/or experiment names (see --list)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument(
        "--batches", default="1,64", help="batch sizes, one drain workload each (default 1,64)"
    )
    parser.add_argument("--consumers", type=int, default=CONSUMERS)
    parser.add_argument(
        "--submit-batch",
        type=int,
        default=SUBMIT_BATCH,
        help="tasks per call of the submit workload (4 producers; 0: no submit workload)",
    )
    parser.add_argument(
        "--scale", action="store_true", help="also run the opt-in 1M-task scale suite"
    )
    parser.add_argument(
        "--scale-tasks", type=int, default=SCALE_TASKS, help="tasks queued by the scale suite"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles (raw collapsed stacks) of every timed phase into DIR; "
        "summarise with python -m bench.profiling DIR/FILE",
    )
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
    parser.add_argument("--list", action="store_true", help="list cases and experiments")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.scale_tasks < 20000:
        parser.error("--scale-tasks must be at least 20000")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error("--batches takes integers, e.g. 1,64")
    if not args.batches or min(args.batches) < 1:
        parser.error("--batches must be positive")
    return args


async def _run_cases(
    cases: list[type[Case] | Unavailable],
    n: int,
    workloads: list[Workload],
    phase_timeout: float,
    repeat: int,
    profiler: PhaseProfiler | None,
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for case in cases:
        if isinstance(case, Unavailable):
            print(f"!!! SKIPPED {case.name}: {case.reason}", flush=True)
            for w in workloads:
                results.append(skipped_result(case, w, n, case.reason))  # type: ignore[arg-type]
    available = [case for case in cases if not isinstance(case, Unavailable)]
    # Repeats go round all cases (run 1 of every case, then run 2, ...), not one case three
    # times in a row: a shared machine that slows down for a minute then weighs on every
    # case alike, and the ratios taken from the medians stay fair.
    for run in range(1, repeat + 1):
        for case in available:
            label = f" (run {run} of {repeat})" if repeat > 1 else ""
            print(f"--- {case.name}{label}: {case.summary}", flush=True)
            for result in await run_case(case, n, workloads, phase_timeout, 1, profiler):
                result["run"] = run
                results.append(result)
                _print_result(case.name, n, result, repeat)
    return results


def _print_result(case: str, n: int, result: dict[str, Any], repeat: int) -> None:
    if result["status"] == "ok":
        run = f" (run {result['run']})" if repeat > 1 else ""
        load = result["load_avg"][0] if result["load_avg"] else "?"
        print(
            f"    {result['workload']}{run}: {n} tasks in {result['seconds']:.3f}s = "
            f"{result['tasks_per_s']:,.0f} tasks/s (load {load})",
            flush=True,
        )
    elif result["status"] != "skipped":
        print(
            f"!!! {result['status'].upper()} {case} {result['workload']}: {result['reason']}",
            flush=True,
        )


async def _run_experiments(experiments: list[Experiment], options: Options) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for experiment in experiments:
        print(f"--- {experiment.name}: {experiment.summary}", flush=True)
        for result in await run_experiment(experiment, options):
            results.append(result)
            if result["status"] == "ok":
                print(f"    {result['case']} {result['workload']}: {report.describe(result)}")
            else:
                print(
                    f"!!! {result['status'].upper()} {result['case']} {result['workload']}: "
                    f"{result['reason']}",
                    flush=True,
                )
    return results


async def _run_all(
    args: argparse.Namespace,
    cases: list[type[Case] | Unavailable],
    experiments: list[Experiment],
    workloads: list[Workload],
    profiler: PhaseProfiler | None,
) -> list[dict[str, Any]]:
    results = await _run_cases(cases, args.tasks, workloads, args.timeout, args.repeat, profiler)
    options = Options(phase_timeout=args.timeout, profiler=profiler, scale_tasks=args.scale_tasks)
    results.extend(await _run_experiments(experiments, options))
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cases = load_cases()
    if args.list:
        for case in cases:
            summary = case.reason if isinstance(case, Unavailable) else case.summary
            print(f"{case.name:24} {summary}")
        for experiment in EXPERIMENTS:
            print(f"{experiment.name:24} {experiment.summary}")
        return 0
    experiments = [e for e in EXPERIMENTS if not e.opt_in or args.scale]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        known = {case.name for case in cases} | {e.name for e in EXPERIMENTS}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            print(f"unknown name(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return 2
        cases = [case for case in cases if case.name in wanted]
        experiments = [e for e in EXPERIMENTS if e.name in wanted or (e.opt_in and args.scale)]

    workloads = [Workload.drain(b, args.consumers) for b in args.batches]
    if args.submit_batch > 0:
        workloads.append(Workload.submit(args.submit_batch, args.consumers))
    profiler: PhaseProfiler | None = None
    if args.profile is not None:
        from bench.profiling import PySpyProfiler

        profiler = PySpyProfiler(args.profile)
    load_start = load_average()
    print(f"load average at start: {load_start}", flush=True)
    started = report.now()
    results = asyncio.run(_run_all(args, cases, experiments, workloads, profiler))
    finished = report.now()

    verdicts = targets.evaluate(results)
    if any(r.get("kind") != "experiment" for r in results):
        print()
        print(report.table(results))
    extra = report.experiments_table(results)
    if extra:
        print()
        print(extra)
    print()
    print(targets.table(verdicts))
    options = {
        "tasks": args.tasks,
        "only": args.only,
        "batches": args.batches,
        "consumers": args.consumers,
        "submit_batch": args.submit_batch,
        "scale": args.scale,
        "scale_tasks": args.scale_tasks,
        "experiments": [e.name for e in experiments],
        "profile": str(args.profile) if args.profile else None,
        "timeout": args.timeout,
        "repeat": args.repeat,
    }
    meta = report.metadata(options, started, finished)
    meta["load_avg_start"] = load_start
    report.write_json(args.json, meta, results, verdicts)
    print(f"\nwrote {args.json} ({(finished - started).total_seconds():.1f}s)")
    print(f"load average: {load_start} at start, {meta['load_avg_end']} at the end")
    if not any(e.opt_in for e in experiments):
        print(SCALE_HINT)
    return 1 if any(r["status"] in ("error", "timeout") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
