"""The `feedwork` command: run a feeder or workers, submit and inspect tasks, run the demo
(the commands about whole queues, `queues`, `tasks`, `workers`, `queue`, are in
feedwork.cli_queues).

Exit codes (the README has the same table; `EXIT_CODES` below is what --help shows):
0 ok; 1 failure (the feeder could not be reached or failed, `status --wait` ended other
than COMPLETED); 2 usage error (a bad option, target or task file, or a request the feeder
refused as INVALID_ARGUMENT); 3 not found (no such task, no such dead task, no such
queue); 4 refused by the task's or the queue's state (`cancel` of a COMPLETED task,
`queue delete` of a queue that holds tasks); 130 interrupted; 141 standard output closed
early (`| head`): output stops, without a message.

Everything printed that comes from a task or the feeder goes through
`feedwork.render.visible`, so it cannot send control sequences to the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from feedwork import __version__, cli_queues, credentials, filesubmit, render
from feedwork.channel import TargetError, check_target
from feedwork.cli_support import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Refusal,
    UsageError,
    check_queue,
    client_of,
    print_json,
    stdout_console,
    unknown_queue,
)
from feedwork.client import DEFAULT_TARGET
from feedwork.durations import SYNTAX as DURATION_SYNTAX
from feedwork.durations import parse_duration
from feedwork.errors import FailedPrecondition, FeedworkError, InvalidArgument, NotFound
from feedwork.listen import parse_listen
from feedwork.taskfile import TaskFileError, read_specs
from feedwork.types import CancelOutcome, TaskSpec, TaskState

EXIT_CODES = (
    "exit codes: 0 ok; 1 failure (feeder unreachable or failing; status --wait ended other "
    "than COMPLETED); 2 usage error (bad option, target or task file; a request the feeder "
    "refused as invalid); 3 not found (task, dead task or queue); 4 refused by the task's "
    "state (cancel of a COMPLETED task) or the queue's (delete of a queue that holds "
    "tasks); 130 interrupted; 141 output closed early (| head)"
)

# Subcommands handed whole to another program's `main(argv)`.
_DELEGATES = {
    "feeder": ("feeder.__main__", "run a feeder (same as `python -m feeder`)"),
    "worker": ("worker.__main__", "run a worker process (same as `python -m worker`)"),
    "db": ("feeder.dbtool", "database status, migrations, SQLite-to-PostgreSQL copy, token keys"),
    "keys": ("feeder.keytool", "make API keys and check access lists"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _DELEGATES:
        return _delegate(args_list[0], args_list[1:])
    try:
        return _run(args_list)
    except BrokenPipeError:
        # The reader went away (`feedwork ... | head`): stop quietly, as `cat` would, and
        # keep Python from complaining when it flushes stdout on the way out.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(args_list: list[str]) -> int:
    args = build_parser().parse_args(args_list)
    try:
        return int(args.run(args))
    except UsageError as exc:
        _complain(exc)
        return EXIT_USAGE
    except TargetError as exc:  # well formed, but none of its names resolves
        _complain(f"--target: {exc}")
        return EXIT_USAGE
    except credentials.CredentialsError as exc:
        _complain(exc)
        return EXIT_USAGE
    except Refusal as exc:
        _complain(exc)
        return exc.code
    except InvalidArgument as exc:  # the feeder's word on the request: a usage error too
        _complain(exc)
        return EXIT_USAGE
    except NotFound as exc:
        _complain(exc)
        return EXIT_NOT_FOUND
    except FailedPrecondition as exc:
        _complain(exc)
        return EXIT_REFUSED
    except FeedworkError as exc:
        _complain(exc)
        return EXIT_FAILURE
    except UnicodeEncodeError as exc:  # an argument that is not text (bytes from argv)
        _complain(f"not UTF-8 text: {exc.object[exc.start : exc.end]!r}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feedwork",
        description="A durable work queue over gRPC: producers submit, workers lease and ack.",
        epilog=f"Durations: {DURATION_SYNTAX}. {EXIT_CODES[0].upper()}{EXIT_CODES[1:]}.",
    )
    parser.add_argument("--version", action="version", version=f"feedwork {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (_, summary) in _DELEGATES.items():
        commands.add_parser(name, help=f"{summary}; see `feedwork {name} --help`")
    client = _client_options()
    _add_submit(commands, client)
    _add_status(commands, client)
    _add_stats(commands, client)
    _add_dead(commands, client)
    _add_cancel(commands, client)
    cli_queues.add_commands(commands, client)
    _add_demo(commands)
    _add_dev_certs(commands)
    _add_dashboard(commands, client)
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
    credentials.add_arguments(options.add_argument_group("TLS and API key"))
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
            '"lease_duration", "idempotency_key"}; durations in seconds or as "1h". Prints '
            "the ids of the tasks created. A file is checked whole first: if any line is "
            "bad, nothing is submitted and every bad line is named. Re-running a file is "
            'safe: a line without an "idempotency_key" gets "line-" and 32 hex digits of '
            'the SHA-256 of its text (then "-2", "-3"... for a second, third identical '
            "line), so tasks an earlier run submitted are reported as deduplicated, not "
            "made again (while the feeder keeps them: 24 h after they finish, by default)."
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
    parser.add_argument(
        "--fresh-keys",
        action="store_true",
        help="with --file: give lines without an idempotency_key a new random key instead "
        "of their line's, so that every run submits them again",
    )
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
        # The argument's bytes as given, even when they are not UTF-8.
        payload=os.fsencode(args.payload or ""),
        headers=_parse_headers(args.header),
        priority=args.priority,
        delay=args.delay,
        max_attempts=args.max_attempts,
        lease_duration=args.lease_duration,
        idempotency_key=args.idempotency_key,
    )
    with client_of(args) as client:
        result = client.submit_many([spec])[0]
    if args.json:
        print_json(render.submit_json(result))
    else:
        print(result.task_id)
    return EXIT_OK


def _submit_file(args: argparse.Namespace) -> int:
    try:
        source = filesubmit.TaskFile(args.file)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    line_keys = not args.fresh_keys
    check = filesubmit.check_file(source, default_queue=args.queue, line_keys=line_keys)
    if check.errors:
        for error in check.errors:
            _complain(f"{source.name}: {error}")
        more = f" (and {check.more_errors} more)" if check.more_errors else ""
        bad = len(check.errors) + check.more_errors
        lines = "a bad line" if bad == 1 else f"{bad} bad lines{more}"
        raise UsageError(f"{source.name}: {lines}: nothing was submitted")
    return _send_file(args, source, total=check.tasks)


def _send_file(args: argparse.Namespace, source: filesubmit.TaskFile, *, total: int) -> int:
    progress = Progress(
        TextColumn("submitting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    submitted = deduplicated = 0
    with client_of(args) as client, progress:
        bar = progress.add_task("submit", total=total)
        line_keys = not args.fresh_keys
        specs = read_specs(source.lines(), default_queue=args.queue, line_keys=line_keys)
        batches = filesubmit.slices(specs)
        while True:
            try:
                batch = next(batches, None)
            except TaskFileError as exc:  # changed since it was checked
                raise UsageError(
                    f"{source.name} changed while being submitted: {exc} ({submitted} tasks "
                    "before it were submitted; run it again: they are not submitted twice)"
                ) from None
            if batch is None:
                break
            try:
                results = client.submit_many([spec for _, spec in batch])
            except FeedworkError as exc:
                raise _stopped(exc, source, [number for number, _ in batch], submitted) from exc
            for result in results:
                deduplicated += result.deduplicated
                if args.json:
                    print_json(render.submit_json(result))
                elif not result.deduplicated:
                    print(result.task_id)
            submitted += len(batch)
            progress.advance(bar, len(batch))
    print(f"submitted {submitted} tasks ({deduplicated} deduplicated)", file=sys.stderr)
    return EXIT_OK


def _stopped(
    error: FeedworkError, source: filesubmit.TaskFile, numbers: list[int], submitted: int
) -> Exception:
    """The error that ends a file's submission half-way, saying what to do about it."""
    line = filesubmit.refused_line(error, numbers)
    where = f"{source.name}: {line}" if line else f"{source.name}: {error}"
    again = (
        f"the {submitted} tasks before it were submitted; run the file again once fixed: "
        "they are not submitted twice"
        if submitted
        else "nothing was submitted"
    )
    message = f"{where} ({again})"
    if isinstance(error, InvalidArgument):
        return UsageError(message)
    return Refusal(message, EXIT_FAILURE)


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
        help="wait for the task to settle (for up to DURATION; default forever)",
    )
    parser.add_argument("--json", action="store_true", help="print the task as JSON")
    parser.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        if args.wait is None:
            task = client.get(args.task_id)
        else:
            task = client.wait(args.task_id, timeout=None if args.wait == math.inf else args.wait)
    if args.json:
        print_json(render.task_json(task))
    else:
        console = stdout_console()
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
    with client_of(args) as client:
        stats = client.stats(args.queue)
    unknown = [name for name in dict.fromkeys(args.queue) if unknown_queue(stats.queue(name))]
    if args.json:
        print_json(render.stats_json(stats))
    else:
        console = stdout_console()
        for table in render.stats_tables(stats):
            console.print(table)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise Refusal(
            f"no queue {names} on the feeder (no task was ever submitted to it)", EXIT_NOT_FOUND
        )
    return EXIT_OK


def _add_cancel(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser("cancel", parents=[client], help="cancel a task")
    parser.add_argument("task_id", metavar="TASK_ID")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=_cancel)


def _cancel(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        result = client.cancel(args.task_id)
    if args.json:
        print_json(render.cancel_json(args.task_id, result))
    else:
        print(f"{render.visible(args.task_id)}: {result.outcome} (now {result.state})")
    if result.outcome == CancelOutcome.ALREADY_COMPLETED:
        # Already cancelled is what was asked (exit 0); completed cannot be undone.
        raise Refusal(f"task {args.task_id} had completed: not cancelled", EXIT_REFUSED)
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
    listing.add_argument(
        "--payloads", action="store_true", help="with payloads and results (with --json)"
    )
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
    with client_of(args) as client:
        page = client.dead_list(
            args.queue,
            page_size=args.page_size,
            page_token=args.page_token,
            include_payloads=args.payloads,
        )
        if not page.tasks and not args.page_token:
            check_queue(client, args.queue)
    if args.json:
        tasks = [render.task_json(task) for task in page.tasks]
        print_json({"tasks": tasks, "next_page_token": page.next_page_token})
        return EXIT_OK
    for task in page.tasks:
        last_error = task.history[-1].error if task.history else ""
        print(f"{task.task_id}\tfailures={task.failures}\t{render.visible(last_error)}")
    if page.next_page_token:
        print(f"next page: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


def _dead_change(args: argparse.Namespace) -> int:
    if args.action == "purge" and not args.yes:
        raise UsageError("purge deletes tasks for good: add --yes")
    verb = "purged" if args.action == "purge" else "redrove"
    with client_of(args) as client:
        change = client.dead_redrive if args.action == "redrive" else client.dead_purge
        count = change(args.queue, task_ids=args.task_id, limit=args.limit)
        print(f"{verb} {count} dead tasks")
        if not count:
            check_queue(client, args.queue)
    missing = len(set(args.task_id)) - count
    if args.task_id and missing > 0:
        # The feeder says how many it changed, not which; any other is not a dead task of
        # this queue (no such task, purged, not dead, or in another queue).
        raise Refusal(
            f"{missing} of the {len(set(args.task_id))} tasks given are not dead tasks of "
            f"queue {args.queue!r} (no such task, not dead, or in another queue)",
            EXIT_NOT_FOUND,
        )
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


def _add_dev_certs(commands: Any) -> None:
    parser = commands.add_parser(
        "dev-certs",
        help="write a development CA, feeder and client certificates (and API keys)",
        description=(
            "Write a CA (ca.pem, ca-key.pem), a feeder certificate (feeder.pem, "
            "feeder-key.pem) for localhost, 127.0.0.1, ::1 and every --host, a client "
            "certificate per --client NAME (client-NAME.pem, client-NAME-key.pem) and, "
            "with --keys, a worker, a producer and an admin API key (worker.key, "
            "producer.key, admin.key) with the auth file granting them (auth.txt). Keys "
            "are written 0600. For development and tests only: the CA's key is kept with "
            "the certificates it signed."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP address of the feeders (repeatable)",
    )
    parser.add_argument(
        "--client", action="append", default=[], metavar="NAME", help="client identity (repeatable)"
    )
    parser.add_argument("--days", type=int, default=365, help="validity (default: %(default)s)")
    parser.add_argument("--keys", action="store_true", help="API keys and auth.txt as well")
    parser.add_argument("--force", action="store_true", help="replace files that exist")
    parser.set_defaults(run=_dev_certs)


def _dev_certs(args: argparse.Namespace) -> int:
    # Imported here, not above: only this command needs cryptography, and every other
    # command would pay for loading it (or fail with it, were it broken).
    from feedwork import devcerts

    if args.days < 1:
        raise UsageError(f"--days must be at least 1, not {args.days}")
    out = Path(args.out)
    try:
        written = devcerts.write_dev_dir(
            out=out,
            hosts=[*devcerts.DEFAULT_HOSTS, *args.host],
            clients=args.client,
            days=args.days,
            api_keys=args.keys,
            force=args.force,
        )
    except (ValueError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise Refusal(f"{exc.filename}: {exc.strerror}", EXIT_FAILURE) from None
    width = max(len(str(item.path)) for item in written)
    for item in written:
        print(f"wrote {item.path!s:<{width}}  {item.mode:04o}  {item.about}")
    print(devcerts.usage(out=out, clients=args.client, api_keys=args.keys))
    return EXIT_OK


def _delegate(name: str, argv: list[str]) -> int:
    module = importlib.import_module(_DELEGATES[name][0])
    entry: Callable[[list[str]], int | None] = module.main
    return int(entry(argv) or 0)


# ---------------------------------------------------------------------------------------
# helpers


def _add_dashboard(commands: Any, client: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "dashboard",
        parents=[client],
        help="serve the web dashboard: queues, tasks, dead letters (docs/OBSERVABILITY.md)",
        description="Serve the web dashboard in front of the feeders of --target until "
        "interrupted. When the feeder asks for API keys, each user logs in with theirs "
        "(or --api-key makes the dashboard act with one key for everyone who reaches it).",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=os.environ.get("FEEDWORK_DASHBOARD_LISTEN", "127.0.0.1:8080"),
        metavar="HOST:PORT",
        help="address to serve on (default: $FEEDWORK_DASHBOARD_LISTEN or %(default)s)",
    )
    parser.add_argument("--https-cert", metavar="PEM", help="serve https with this certificate")
    parser.add_argument("--https-key", metavar="PEM", help="... and its private key")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve in clear text on a non-loopback address (refused otherwise)",
    )
    parser.set_defaults(run=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from feedwork.dashboard import Dashboard, DashboardError

    if bool(args.https_cert) != bool(args.https_key):
        raise Refusal("--https-cert and --https-key go together", EXIT_USAGE)
    try:
        dashboard = Dashboard(
            target=args.target,
            listen=args.listen,
            security=credentials.from_args(args),
            tls_cert=args.https_cert,
            tls_key=args.https_key,
            insecure=args.insecure,
            timeout=args.timeout,
        )
    except (DashboardError, OSError, ssl.SSLError) as exc:
        raise Refusal(str(exc), EXIT_FAILURE) from exc
    print(f"feedwork dashboard at {dashboard.url} (feeders: {args.target})", flush=True)
    try:
        dashboard.serve_forever()
    finally:
        dashboard.close()
    return EXIT_OK


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


def _complain(message: object) -> None:
    # Feeder messages may quote what a client sent: control characters are written out.
    print(f"feedwork: error: {render.visible(str(message))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
