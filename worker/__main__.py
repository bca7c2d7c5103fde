"""`python -m worker`: run a feedwork worker from the command line (see --help)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from feedwork.channel import TargetError, resolve_target
from feedwork.credentials import CredentialsError
from feedwork.errors import FeedworkError
from worker.config import WorkerConfig, load_handler, parse_config
from worker.handlers import Handler
from worker.metrics import MetricsListenError
from worker.runner import Worker
from worker.supervisor import configure_logging, finish, run_processes

log = logging.getLogger("feedwork.worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the worker(s); returns the exit status: 0 after a graceful stop, 1 when the
    worker failed, 2 for a handler that cannot be loaded, a --target whose feeder names
    do not resolve, or TLS or key options that cannot work (130: second signal)."""
    config = parse_config(argv)
    configure_logging(config.log_level, config.log_format)
    try:
        # Loaded here even with --processes, so a typo fails once, before any child starts.
        handler = load_handler(config.handler)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        log.error("cannot load handler %r: %s", config.handler, exc)
        return 2
    try:
        resolve_target(config.target)  # the same: names that do not resolve fail once, here
    except TargetError as exc:
        log.error("--target: %s", exc)
        return 2
    try:
        config.security.check(config.target)
    except CredentialsError as exc:
        log.error("%s", exc)
        return 2
    if config.processes > 1:
        return run_processes(config)
    return _run_one(config, handler)


def _run_one(config: WorkerConfig, handler: Handler) -> int:
    worker = Worker(handler=handler, **config.worker_options())
    try:
        worker.run(handle_signals=True)
    except FeedworkError:  # the feeder refused to lease; the worker logged why
        return finish(worker, 1)
    except MetricsListenError as exc:  # e.g. the port is taken
        log.error("%s", exc)
        return finish(worker, 1)
    except Exception:
        log.exception("worker failed")
        return finish(worker, 1)
    return finish(worker, 0)


if __name__ == "__main__":
    sys.exit(main())
