"""The operator's commands of `feedwork` about whole queues: `queues`, `tasks list`,
`workers`, and `queue pause|resume|purge|delete` (see feedwork.cli for the others)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich.live import Live
from rich.table import Table

from feedwork import render
from feedwork.cli_support import (
    EXIT_OK,
    UsageError,
    check_queue,
    client_of,
    print_json,
    stdout_console,
)
from feedwork.durations import parse_duration
from feedwork.types import QueueStats, TaskState

_STATES = [state.lower() for state in TaskState if state != TaskState.UNSPECIFIED]


def add_commands(commands: Any, client: argparse.ArgumentParser) -> None:
    """Adds the commands to `feedwork`'s subparsers; `client` holds the connection options."""
    queues = commands.add_parser(
        "queues",
        parents=[client],
        help="list queues: running or paused, tasks by state",
        description="Every queue the feeder's database knows, in name order, running or "
        "paused, with its tasks by state (`feedwork stats` has the totals).",
    )
    queues.add_argument("--json", action="store_true", help="print JSON")
    queues.set_defaults(run=_queues)

    top = commands.add_parser(
        "top",
        parents=[client],
        help="a live view of the queues: tasks by state and rates, refreshed every second",
        description="Every queue (or those given), running or paused, its tasks by state, the "
        "oldest ready task's age, and tasks submitted, completed, failed and expired per "
        "second, refreshed until interrupted (Ctrl-C). Not on a terminal, it prints a table "
        "per refresh.",
    )
    top.add_argument(
        "--queue", "-q", action="append", default=[], help="only this queue (repeatable)"
    )
    top.add_argument(
        "--interval", type=parse_duration, default=1.0, metavar="DURATION",
        help="time between refreshes (default: 1s)",
    )  # fmt: skip
    top.add_argument(
        "--iterations", type=int, default=0, metavar="N",
        help="stop after N refreshes (default: until interrupted)",
    )  # fmt: skip
    top.set_defaults(run=_top)

    tasks = commands.add_parser("tasks", help="list the tasks of a queue")
    actions = tasks.add_subparsers(title="actions", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        parents=[client],
        help="list the tasks of a queue, a page at a time",
        description="The tasks of a queue in the order they were submitted, oldest first "
        "(--newest: newest first), in some states or all; a page at a time (the next "
        "page's token goes to standard error).",
    )
    listing.add_argument("--queue", "-q", required=True)
    listing.add_argument(
        "--state",
        "-s",
        action="append",
        default=[],
        type=str.lower,
        choices=_STATES,
        help="only tasks in this state (repeatable; default every state)",
    )
    order = listing.add_mutually_exclusive_group()
    order.add_argument(
        "--oldest", action="store_false", dest="newest", default=False, help="oldest first"
    )
    order.add_argument("--newest", action="store_true", dest="newest", help="newest first")
    listing.add_argument("--payloads", action="store_true", help="with payloads and results")
    listing.add_argument("--page-size", type=int, default=100, metavar="N")
    listing.add_argument("--page-token", default="", metavar="TOKEN")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_tasks_list)

    workers = commands.add_parser(
        "workers",
        parents=[client],
        help="who holds leases, and the streams of a feeder",
        description="The leases held now, by queue, worker and caller, as the database "
        "holds them (every feeder's), and the Consume streams and Lease callers of the "
        "feeder that answered (with several feeders, --target each one for its own).",
    )
    workers.add_argument("--queue", "-q", help="only this queue")
    workers.add_argument("--limit", type=int, default=0, help="at most N rows of each (0: 1000)")
    workers.add_argument("--json", action="store_true", help="print JSON")
    workers.set_defaults(run=_workers)

    queue = commands.add_parser("queue", help="pause, resume, purge or delete a queue")
    controls = queue.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, summary in (
        ("pause", "pause a queue: it takes submits and hands out no task until resumed"),
        ("resume", "resume a paused queue"),
        ("purge", "delete the READY and SCHEDULED tasks of a queue, for good"),
        ("delete", "forget a queue that holds no task (its totals and pause go too)"),
    ):
        control = controls.add_parser(name, parents=[client], help=summary, description=summary)
        control.add_argument("queue", metavar="QUEUE")
        if name == "purge":
            control.add_argument(
                "--yes", action="store_true", help="do not ask for the queue's name to confirm"
            )
        control.add_argument("--json", action="store_true", help="print JSON")
        control.set_defaults(run=_control, action=name)


def _top(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be more than 0")
    console = stdout_console()
    wanted = set(args.queue)
    previous: dict[str, tuple[float, QueueStats]] = {}
    refreshes = 0

    def view() -> Table:
        nonlocal previous
        with_rates: dict[str, dict[str, float]] = {}
        queues = [q for q in client.list_queues() if not wanted or q.queue in wanted]
        now = time.monotonic()
        for info in queues:
            before = previous.get(info.queue)
            if before is not None and now > before[0]:
                elapsed = now - before[0]
                with_rates[info.queue] = {
                    name: max(0, getattr(info.stats.totals, name) - getattr(before[1].totals, name))
                    / elapsed
                    for name, _ in render.TOP_RATES
                }
        previous = {info.queue: (now, info.stats) for info in queues}
        stamp = time.strftime("%H:%M:%S")
        return render.top_table(queues, with_rates, title=f"feedwork top · {args.target} · {stamp}")

    with client_of(args) as client:
        if console.is_terminal:
            with Live(view(), console=console, auto_refresh=False) as live:
                while not args.iterations or refreshes < args.iterations - 1:
                    time.sleep(args.interval)
                    live.update(view(), refresh=True)
                    refreshes += 1
        else:
            console.print(view())
            while not args.iterations or refreshes < args.iterations - 1:
                time.sleep(args.interval)
                console.print(view())
                refreshes += 1
    return EXIT_OK


def _queues(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        queues = client.list_queues()
    if args.json:
        print_json(render.queues_json(queues))
    else:
        stdout_console().print(render.queues_table(queues))
    return EXIT_OK


def _tasks_list(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        page = client.list_tasks(
            args.queue,
            states=args.state or None,
            newest_first=args.newest,
            include_payloads=args.payloads,
            page_size=args.page_size,
            page_token=args.page_token,
        )
        if not page.tasks and not args.page_token:
            check_queue(client, args.queue)
    if args.json:
        tasks = [render.task_json(task) for task in page.tasks]
        print_json({"tasks": tasks, "next_page_token": page.next_page_token})
    else:
        stdout_console().print(render.tasks_table(page, payloads=args.payloads))
    if page.next_page_token:
        print(f"next page: --page-token {page.next_page_token}", file=sys.stderr)
    return EXIT_OK


def _workers(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        workers = client.list_workers(args.queue, limit=args.limit)
    if args.json:
        print_json(render.workers_json(workers))
    else:
        console = stdout_console()
        for table in render.workers_tables(workers):
            console.print(table)
        if workers.truncated:
            print("lists cut at --limit; raise it to see more", file=sys.stderr)
    return EXIT_OK


def _control(args: argparse.Namespace) -> int:
    queue, action = args.queue, args.action
    if action == "purge" and not args.yes:
        _confirm_purge(queue)
    record: dict[str, Any] = {"queue": queue}
    with client_of(args) as client:
        if action == "pause":
            record["changed"] = client.pause_queue(queue)
            said = "paused" if record["changed"] else "was paused already"
        elif action == "resume":
            record["changed"] = client.resume_queue(queue)
            said = "resumed" if record["changed"] else "was not paused"
        elif action == "purge":
            record["purged"] = client.purge_queue(queue, confirm=queue)
            said = f"purged: {record['purged']} tasks deleted"
        else:
            client.delete_queue(queue)
            record["deleted"] = True
            said = "deleted"
    if args.json:
        print_json(record)
    else:
        print(f"queue {render.visible(repr(queue))} {said}")
    return EXIT_OK


def _confirm_purge(queue: str) -> None:
    """Asks for the queue's name again at a terminal; raises UsageError otherwise."""
    if not sys.stdin.isatty():
        raise UsageError("purge deletes tasks for good: add --yes (or run it at a terminal)")
    print(
        f"This deletes the READY and SCHEDULED tasks of queue {render.visible(repr(queue))}"
        " for good. Type the queue's name to go on: ",
        end="",
        file=sys.stderr,
        flush=True,
    )
    if sys.stdin.readline().strip() != queue:
        raise UsageError("not confirmed: nothing was purged")
