"""python -m tests.soak: the soak (`make soak`). See tests/soak/__init__.py."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from feeder.config import Settings
from feedwork.durations import parse_duration
from tests.soak.run import JANITOR_INTERVAL, WARMUP_MARGIN, run
from tests.soak.verdict import Rules

DEFAULT_MINUTES = 30.0
# The feeder's own default: finished tasks and their keys are kept for the whole run, as a
# user's feeder keeps them a day; memory must stay flat all the same (they stay on disk).
DEFAULT_RETENTION = Settings().retention
# With a retention longer than the run (nothing purged), the warm-up only covers the start.
WARMUP_WITHOUT_PURGES = 180.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak",
        description="Steady load on a real feeder for a while; its RSS must stay flat and "
        "every task must complete. Exit status 1 otherwise.",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=float(os.environ.get("SOAK_MINUTES") or DEFAULT_MINUTES),
        help=f"duration of the load [env SOAK_MINUTES; default {DEFAULT_MINUTES:g}]",
    )
    parser.add_argument(
        "--retention",
        type=parse_duration,
        help="the feeder's --retention [default: the feeder's, 24h; e.g. 2m to have the"
        " janitor purge during the run]",
    )
    parser.add_argument(
        "--warmup",
        type=parse_duration,
        help="time from the start that is not judged [default: retention + 60s when the"
        " retention is short, so that purges have settled, else 3m; at most half the run]",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="tasks/s, all producers")
    parser.add_argument("--producers", type=int, default=2, help="producer threads")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks at once per worker")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds per sample")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="postgres: a new database on FEEDWORK_TEST_POSTGRES (default: the local"
        " server), dropped at the end",
    )
    parser.add_argument(
        "--feeder-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the feeder, e.g. --feeder-arg=--payload-memory"
        " --feeder-arg=16MiB (repeat)",
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds for the queue to empty"
    )
    rules = Rules(warmup=0)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=rules.tolerance,
        help="last quarter's RSS peak over the first's, as a fraction [%(default)s]",
    )
    parser.add_argument(
        "--tolerance-mib",
        type=float,
        default=rules.tolerance_floor / 2**20,
        help="... or in MiB, whichever is larger [%(default)s]",
    )
    parser.add_argument(
        "--max-slope", type=float, default=rules.max_slope, help="MiB/h [%(default)s]"
    )
    parser.add_argument(
        "--max-rss-mib",
        type=float,
        help="also fail if the feeder's RSS passes this after the warm-up [no ceiling]",
    )
    parser.add_argument("--out", help="directory for the CSV, logs, database [a new temp dir]")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and ledgers (not only CSV, logs)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or min(args.producers, args.workers) < 1:
        parser.error("--minutes, --rate, --producers and --workers must be positive")
    args.seconds = args.minutes * 60
    if args.retention is None:
        args.retention = DEFAULT_RETENTION
    if args.warmup is None:
        settled = args.retention + JANITOR_INTERVAL + WARMUP_MARGIN
        if settled > args.seconds / 2:
            settled = WARMUP_WITHOUT_PURGES
        args.warmup = min(settled, args.seconds / 2)
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM as Ctrl-C: the feeder and workers are stopped on the way out either way.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("soak: interrupted; its processes are stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
