"""The worker's options: command line flags, each with a FEEDWORK_* environment variable
as its default, and loading the handler named by "module:function".

Precedence is flag, then environment variable, then built-in default, so a container can
set everything through its environment and a developer can still override one option.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feedwork import credentials, logs
from feedwork.channel import TargetError, check_target
from feedwork.durations import parse_duration
from feedwork.listen import parse_listen
from worker.handlers import Handler

ENV_PREFIX = "FEEDWORK_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TRANSPORTS = ("stream", "unary")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """Everything `python -m worker` needs to start. Picklable, for spawned processes."""

    target: str
    queue: str
    handler: str
    concurrency: int = 1
    processes: int = 1
    lease_duration: float | None = None
    task_timeout: float | None = None
    grace: float = 30.0
    worker_id: str | None = None
    wait: float = 30.0
    ack_batch_size: int = 64
    ack_flush_interval: float = 0.005
    transport: str = "stream"
    ack_ledger: str | None = None
    # Prometheus metrics at http://HOST:PORT/metrics; with --processes N, process i (1 to
    # N) serves on PORT+i-1 (see `metrics_listen_of`).
    metrics_listen: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    # TLS and the API key (feedwork.credentials): flags over FEEDWORK_* variables.
    security: credentials.ClientSecurity = field(default_factory=credentials.ClientSecurity)

    def worker_options(self) -> dict[str, Any]:
        """Keyword arguments for `Worker` (all but the handler and process options)."""
        return {
            "target": self.target,
            "queue": self.queue,
            "concurrency": self.concurrency,
            "lease_duration": self.lease_duration,
            "task_timeout": self.task_timeout,
            "grace": self.grace,
            "worker_id": self.worker_id,
            "wait": self.wait,
            "ack_batch_size": self.ack_batch_size,
            "ack_flush_interval": self.ack_flush_interval,
            "transport": self.transport,
            "ack_ledger": self.ack_ledger,
            "metrics_listen": self.metrics_listen,
            **dataclasses.asdict(self.security),
        }

    def metrics_listen_of(self, index: int) -> str | None:
        """Where worker process `index` (1 to `processes`) serves its metrics: PORT+index-1,
        so that each of N processes has its own port (port 0: each picks a free one)."""
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return f"{host}:{int(port) + index - 1}" if int(port) else self.metrics_listen


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def load_handler(spec: str) -> Handler:
    """The callable named by "package.module:function" (or "module:Class.method"), looked
    up in the current directory first, then on the path."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"handler must look like 'module:function', got {spec!r}")
    # `python -m worker` has the current directory first on sys.path, as `python -m`
    # does; the `feedwork worker` console script would not, and a handler next to the
    # user's code would load with one command and not the other. (Spawned worker
    # processes inherit sys.path, and call this again in the same directory.)
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"handler {spec!r} is not callable")
    handler: Handler = target
    return handler


def parse_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> WorkerConfig:
    """Parses flags over environment variables; exits with a usage message on bad input."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    for name in ("queue", "handler"):
        if not getattr(args, name):
            parser.error(f"--{name} is required (or set {_env_name(name)})")
    if args.metrics_listen is not None and args.processes > 1:
        port = int(args.metrics_listen.rpartition(":")[2])
        if port and port + args.processes - 1 > 65535:
            parser.error(
                f"--metrics-listen {args.metrics_listen} with --processes {args.processes}:"
                f" the processes serve on ports {port} to {port + args.processes - 1},"
                " past 65535"
            )
    values = vars(args)
    security = credentials.from_args(args, environ)
    for name in credentials.OPTION_NAMES:
        del values[name]
    return WorkerConfig(**values, security=security)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Run a feedwork worker: lease tasks from a feeder queue, run the handler "
        "on each, and ack or nack the result. SIGTERM or SIGINT stops it gracefully (in-flight "
        "tasks get --grace seconds to finish, the rest are given back); a second signal "
        "exits at once (status 130).",
        epilog="Every option can also be set with the environment variable shown for it; a "
        "flag on the command line wins.",
    )
    for option in _OPTIONS:
        option.add_to(parser, environ)
    credentials.add_arguments(parser.add_argument_group("TLS and API key"))
    return parser


def _target(text: str) -> str:
    # Checked here, so a malformed target is a usage error (exit 2) and not a failed run.
    try:
        return check_target(text)
    except TargetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> str:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    """A duration >= 0 in feedwork's one syntax (so one FEEDWORK_* environment can serve
    the feeder and the workers)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _poll_seconds(text: str) -> float:
    value = _seconds(text)
    if value > 60:
        raise argparse.ArgumentTypeError(f"must be at most 60 s, got {text}")
    return value


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    kind: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    def add_to(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        env = _env_name(self.name)
        default = self.default
        raw = environ.get(env)
        if raw:
            try:
                default = self.kind(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}={raw!r}: {exc}")
            if self.choices is not None and default not in self.choices:
                parser.error(f"{env}={raw!r}: choose from {', '.join(self.choices)}")
        shown = "none" if default is None else default
        parser.add_argument(
            f"--{self.name}",
            type=self.kind,
            default=default,
            choices=self.choices,
            help=f"{self.help} [env {env}; now: {shown}]",
        )


_OPTIONS = (
    _Option(
        "target",
        _target,
        "localhost:50051",
        "feeder address, host:port; or several, host:port,host:port,..., to spread over and "
        "fail over between (a DNS name with several addresses or a gRPC URI also works)",
    ),
    _Option("queue", str, None, "queue to take tasks from (required)"),
    _Option(
        "handler",
        str,
        None,
        "handler to run, as 'package.module:function', looked up in the current directory "
        "first (required)",
    ),
    _Option("concurrency", _positive_int, 1, "tasks run at once per process"),
    _Option("processes", _positive_int, 1, "worker processes, each with its own event loop"),
    _Option(
        "lease-duration",
        _positive_seconds,
        None,
        "seconds (or 30s, 2m...) per lease and per extension (default: the task's or queue's own)",
    ),
    _Option(
        "task-timeout",
        _positive_seconds,
        None,
        "seconds a task may run before it is failed (default: no limit)",
    ),
    _Option(
        "grace",
        _seconds,
        30.0,
        "seconds in-flight tasks get to finish on shutdown before they are released",
    ),
    _Option("worker-id", str, None, "name recorded in each attempt (default: hostname-pid)"),
    _Option(
        "wait",
        _poll_seconds,
        30.0,
        "seconds one Lease call waits on the feeder when no task is ready (0 to 60)",
    ),
    _Option("ack-batch-size", _positive_int, 64, "acks or nacks sent together at most (1-1000)"),
    _Option(
        "ack-flush-interval",
        _seconds,
        0.005,
        "seconds a report may wait for others to share its batch (e.g. 5ms)",
    ),
    _Option(
        "transport",
        str.lower,
        "stream",
        "stream: lease and report over one Consume stream (the fast path); unary: Lease, "
        "Ack and Nack calls (for proxies that cannot carry streams)",
        TRANSPORTS,
    ),
    _Option(
        "ack-ledger",
        str,
        None,
        "append a JSON line per ack the feeder answered (task, attempt, outcome, result) "
        "to this file: completions as the worker saw them, for audits",
    ),
    _Option(
        "metrics-listen",
        _listen,
        None,
        "serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9100 (port 0: "
        "any free port, logged); with --processes N, process i serves on PORT+i-1. Counts "
        "and the queue name only, with no authentication: keep it on loopback or a trusted "
        "network (default: off)",
    ),
    _Option("log-level", str.upper, "INFO", "logging level", LOG_LEVELS),
    _Option(
        "log-format",
        str.lower,
        "text",
        "text, or json: one JSON object a line, with task_id, queue and attempt on lines "
        "about a task",
        logs.FORMATS,
    ),
)
