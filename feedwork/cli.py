"""The `feedwork` command: run a feeder or workers, submit and inspect tasks, run the demo.

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 not found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from feedwork import render
from feedwork.channel import TargetError, check_target
from feedwork.client import DEFAULT_TARGET, FeederClient
from feedwork.durations import SYNTAX as DURATION_SYNTAX
from feedwork.durations import parse_duration
from feedwork.errors import FeedworkError, NotFound
from feedwork.taskfile import TaskFileError, read_specs
from feedwork.types import TaskSpec, TaskState

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

# Subcommands handed whole to another program's `main(argv)`.
_DELEGATES = {
    "feeder": ("feeder.__main__", "run a feeder (same as `python -m feeder`)"),
    "worker": ("worker.__main__", "run a worker process (same as `python -m worker`)"),
    "db": ("feeder.dbtool", "database status, migrations, and SQLite-to-PostgreSQL copy"),
}

# Submit reads and sends files in slices of this many tasks (one Submit RPC each).
_FILE_SLICE = 1000


class UsageError(Exception):
    """Bad input that argparse could not catch; exits with code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATES:
        return _delegate(args_list[0], args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return int(args.run(args))
    except UsageError as exc:
        _complain(exc)
        return EXIT_USAGE
    except TargetError as exc:  # well formed, but none of its names resolves
        _complain(f"--target: {exc}")
        return EXIT_USAGE
    except NotFound as exc:
        _complain(exc)
        return EXIT_NOT_FOUND
    except FeedworkError as exc:
        _complain(exc)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedwork",
        description="A durable work queue over gRPC: producers submit, workers lease and ack.",
        epilog=f"Durations: {DURATION_SYNTAX}. Exit codes: 0 ok, 1 failure, 2 usage error, "
        "3 not found.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (_, summary) in _DELEGATES.items():
        commands.add_parser(name, help=f"{summary}; see `feedwork {name} --help`")
    client = _client_options()
    _add_submit(commands, client)
    _add_status(commands, client)
    _add_stats(commands, client)
    _add_dead(commands, client)
    _add_cancel(commands, client)
    _add_demo(commands)
    return parser


def _client_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection")
    group.add_argument(
        "--target",
        type=_target_option,
        default=os.environ.get("FEEDWORK_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT[,HOST:PORT...]",
        help="feeder address, or several to spread over and fail over between; a DNS name "
        "with several addresses or a gRPC URI (dns:///..., ipv4:..., unix:...) also "
        "works (default: $FEEDWORK_TARGET or %(default)s)",
    )
    group.add_argument(
        "--timeout",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="deadline of each RPC (default: %(default)s)",
    )
    group.add_argument(
        "--retry-for",
        type=_duration,
        default=5.0,
        metavar="DURATION",
        help="keep retrying transient failures this long (default: %(default)s)",
    )
    return options


# ---------------------------------------------------------------------------------------
# submit


def _add_submit(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "submit",
        parents=[client],
        help="submit a task, or a JSON Lines file of tasks",
        description=(
            "Submit one task (PAYLOAD, with --queue), or every task of a JSON Lines file: "
            'one object per line, {"queue", "payload" (string or JSON) or "payload_b64", '
            '"headers", "priority", "delay", "not_before", "max_attempts", '
            '"lease_duration", "idempotency_key"}. Prints the task ids.'
        ),
    )
    parser.add_argument("payload", nargs="?", help="task payload (UTF-8 text)")
    parser.add_argument("--file", "-f", metavar="PATH", help="JSON Lines tasks; '-' for stdin")
    parser.add_argument("--queue", "-q", help="queue (required without --file; a file default)")
    parser.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="header (repeatable)",
    )
    parser.add_argument("--priority", type=int, default=0, help="-1000..1000, higher first")
    parser.add_argument(
        "--delay", type=_duration, metavar="DURATION", help="run no sooner than this from now"
    )
    parser.add_argument("--max-attempts", type=int, metavar="N")
    parser.add_argument("--lease-duration", type=_duration, metavar="DURATION")
    parser.add_argument("--idempotency-key", metavar="KEY")
    parser.add_argument("--json", action="store_true", help="one JSON object per task")
    parser.set_defaults(run=_submit)


def _submit(args: argparse.Namespace) -> int:
    if args.file is not None:
        if args.payload is not None:
            raise UsageError("give a PAYLOAD or --file, not both")
        return _submit_file(args)
    if not args.queue:
        raise UsageError("--queue is required")
    spec = TaskSpec(
        queue=args.queue,
        payload=(args.payload or "").encode(),
        headers=_parse_headers(args.header),
        priority=args.priority,
        delay=args.delay,
        max_attempts=args.max_attempts,
        lease_duration=args.lease_duration,
        idempotency_key=args.idempotency_key,
    )
    with _client(args) as client:
        result = client.submit_many([spec])[0]
    if args.json:
        _print_json(render.submit_json(result))
    else:
        print(result.task_id)
    return EXIT_OK


def _submit_file(args: argparse.Namespace) -> int:
    if args.file == "-":
        return _submit_lines(args, sys.stdin, total=None)
    try:
        with open(args.file, encoding="utf-8") as handle:
            total = sum(1 for line in handle if line.strip() and not line.startswith("#"))
            handle.seek(0)
            return _submit_lines(args, handle, total=total)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None


def _submit_lines(args: argparse.Namespace, lines: TextIO, *, total: int | None) -> int:
    submitted = deduplicated = 0
    progress = Progress(
        TextColumn("submitting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with _client(args) as client, progress:
        bar = progress.add_task("submit", total=total)
        try:
            for specs in _slices(read_specs(lines, default_queue=args.queue), _FILE_SLICE):
                for result in client.submit_many(specs):
                    deduplicated += result.deduplicated
                    if args.json:
                        _print_json(render.submit_json(result))
                    elif not result.deduplicated:
                        print(result.task_id)
                submitted += len(specs)
                progress.advance(bar, len(specs))
        except TaskFileError as exc:
            _complain(f"{args.file}: {exc} ({submitted} tasks before it were submitted)")
            return EXIT_USAGE
    print(f"submitted {submitted} tasks ({deduplicated} deduplicated)", file=sys.stderr)
    return EXIT_OK


def _slices(specs: Iterable[TaskSpec], size: int) -> Iterable[list[TaskSpec]]:
    batch: list[TaskSpec] = []
    for spec in specs:
        batch.append(spec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _parse_headers(pairs: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--header wants KEY=VALUE, got {pair!r}")
        headers[key] = value
    return headers


# ---------------------------------------------------------------------------------------
# status, stats, cancel


def _add_status(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "status",
        parents=[client],
        help="show one task and its attempt history",
        description=(
            "Show one task. With --wait, wait until it is COMPLETED, DEAD or CANCELLED "
            "and exit 0 only if it COMPLETED (1 otherwise, or on timeout)."
        ),
    )
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument(
        "--wait",
        nargs="?",
        type=_duration,
        const=math.inf,
        metavar="DURATION",
        help="wait for the task to settle (for up to SECONDS; default forever)",
    )
    parser.add_argument("--json", action="store_true", help="print the task as JSON")
    parser.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.wait is None:
            task = client.get(args.task_id)
        else:
            task = client.wait(args.task_id, timeout=None if args.wait == math.inf else args.wait)
    if args.json:
        _print_json(render.task_json(task))
    else:
        console = _stdout_console()
        for table in render.task_tables(task):
            if table is not None:
                console.print(table)
    if args.wait is not None and task.state != TaskState.COMPLETED:
        return EXIT_FAILURE
    return EXIT_OK


def _add_stats(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("stats", parents=[client], help="counts and totals per queue")
    parser.add_argument(
        "--queue", "-q", action="append", default=[], help="only this queue (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_stats)


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats(args.queue)
    if args.json:
        _print_json(render.stats_json(stats))
    else:
        console = _stdout_console()
        for table in render.stats_tables(stats):
            console.print(table)
    return EXIT_OK


def _add_cancel(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("cancel", parents=[client], help="cancel a task")
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.cancel(args.task_id)
    if args.json:
        _print_json(render.cancel_json(args.task_id, result))
    else:
        print(f"{args.task_id}: {result.outcome} (now {result.state})")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# dead letters


def _add_dead(commands: Any, client: argparse.ArgumentParser) -> None:
    dead = commands.add_parser("dead", help="list, redrive or purge dead tasks")
    actions = dead.add_subparsers(title="actions", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[client], help="list dead tasks, oldest first")
    listing.add_argument("queue", metavar="QUEUE")
    listing.add_argument("--page-size", type=int, default=100, metavar="N")
    listing.add_argument("--page-token", default="", metavar="TOKEN")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_dead_list)

    for name, verb in (("redrive", "put back to READY"), ("purge", "delete for good")):
        action = actions.add_parser(name, parents=[client], help=f"{verb} dead tasks")
        action.add_argument("queue", metavar="QUEUE")
        action.add_argument(
            "--task-id", action="append", default=[], metavar="ID", help="only this task"
        )
        action.add_argument("--limit", type=int, default=0, help="at most N (0: 1000)")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="really delete")
        action.set_defaults(run=_dead_change, action=name)


def _dead_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.dead_list(args.queue, page_size=args.page_size, page_token=args.page_token)
    if args.json:
        tasks = [render.task_json(task) for task in page.tasks]
        _print_json({"tasks": tasks, "next_page_token": page.next_page_token})
        return EXIT_OK
    for task in page.tasks:
        last_error = task.history[-1].error if task.history else ""
        print(f"{task.task_id}\tfailures={task.failures}\t{last_error}")
    if page.next_page_token:
        print(f"next page: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


def _dead_change(args: argparse.Namespace) -> int:
    if args.action == "purge" and not args.yes:
        raise UsageError("purge deletes tasks for good: add --yes")
    with _client(args) as client:
        change = client.dead_redrive if args.action == "redrive" else client.dead_purge
        count = change(args.queue, task_ids=args.task_id, limit=args.limit)
    print(f"{'purged' if args.action == 'purge' else 'redrove'} {count} dead tasks")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# demo and delegation


def _add_demo(commands: Any) -> None:
    from feedwork import demo

    parser = commands.add_parser(
        "demo",
        help="run a feeder and workers locally and show that every task completes once",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(parser)
    parser.set_defaults(run=demo.run)


def _delegate(name: str, argv: list[str]) -> int:
    module = importlib.import_module(_DELEGATES[name][0])
    entry: Callable[[list[str]], int | None] = module.main
    return int(entry(argv) or 0)


# ---------------------------------------------------------------------------------------
# helpers


def _client(args: argparse.Namespace) -> FeederClient:
    return FeederClient(args.target, timeout=args.timeout, max_retry_delay=args.retry_for)


def _target_option(text: str) -> str:
    """argparse type of --target: checked before anything connects (exit 2 if bad)."""
    try:
        return check_target(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    """argparse type of every duration option: feedwork's one syntax (30, 2.5, 500ms, 1h)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stdout_console() -> Console:
    """Rich output for stdout; wide when it is a file or pipe, where nothing wraps it."""
    return Console(width=None if sys.stdout.isatty() else 160)


def _print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(",", ":")))


def _complain(message: object) -> None:
    print(f"feedwork: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
