"""What the commands of `feedwork` (feedwork.cli, feedwork.cli_queues) share: exit codes,
the errors that choose them, the client built from the connection options, and output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console

from feedwork import credentials
from feedwork.client import FeederClient
from feedwork.types import QueueStats

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program killed by it


class UsageError(Exception):
    """Bad input that argparse could not catch; exits with code 2."""


class Refusal(Exception):
    """The command was understood and could not be done; exits with `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def client_of(args: argparse.Namespace) -> FeederClient:
    """The client the connection options of a command (`--target`, TLS, key) describe."""
    return FeederClient(
        args.target,
        timeout=args.timeout,
        max_retry_delay=args.retry_for,
        **{name: getattr(args, name) for name in credentials.OPTION_NAMES},
    )


def unknown_queue(queue: QueueStats) -> bool:
    """True for the stats the feeder gives of a queue it does not know: all zero, totals
    included (a queue that ever had a task has submitted > 0)."""
    return queue == QueueStats(queue=queue.queue)


def check_queue(client: FeederClient, queue: str) -> None:
    """Raises a not-found `Refusal` for a queue the feeder does not know (a typo)."""
    if unknown_queue(client.stats([queue]).queue(queue)):
        raise Refusal(
            f"no queue {queue!r} on the feeder (no task was ever submitted to it)", EXIT_NOT_FOUND
        )


class _Console(Console):
    def on_broken_pipe(self) -> None:
        raise BrokenPipeError  # to `main`, which ends quietly (Rich would exit 1)


def stdout_console() -> Console:
    """Rich output for stdout; wide when it is a file or pipe, where nothing wraps it."""
    return _Console(width=None if sys.stdout.isatty() else 160)


def print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record, separators=(",", ":")))
