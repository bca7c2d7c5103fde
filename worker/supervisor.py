"""`--processes N`: N worker processes under one parent.

Each child is a fresh interpreter (multiprocessing "spawn": no forked event loops, gRPC
channels or locks) with its own event loop and its own `Worker`. The parent only starts
them, forwards signals, and exits when they have exited.

Signals: the first SIGTERM or SIGINT is forwarded to every child as SIGTERM (graceful
shutdown); a second one kills the children at once. Children ignore SIGINT, because a
Ctrl-C in a terminal reaches the whole process group and the parent already forwards it:
otherwise every child would see two signals and skip its grace period. A child that exits
on its own (crash, fatal error) takes the others down with it, so that a process manager
sees one failed service rather than a silently shrunken one.

Metrics (`--metrics-listen HOST:PORT`): each child serves its own, on PORT for the first,
PORT+1 for the second, and so on (with port 0, each on a free port it logs). One child
that cannot listen (the port is taken) exits, and takes the others down as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from feedwork import logs
from worker.config import WorkerConfig, load_handler
from worker.metrics import MetricsListenError
from worker.runner import Worker

log = logging.getLogger("feedwork.worker")

# How often a child checks that its parent is still alive.
PARENT_CHECK_INTERVAL = 1.0


def configure_logging(level: str, log_format: str = "text") -> None:
    logs.configure(
        level, log_format, text="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s"
    )


def finish(worker: Worker, code: int) -> int:
    """The exit status for a worker process; leaves at once if overrun handlers remain."""
    if worker.handler_threads_running:
        # A sync handler thread that ignored its time limit would keep the interpreter
        # alive at exit (thread pools are joined); its task has been reported already.
        log.warning(
            "%d handler threads still running; exiting without them", worker.handler_threads_running
        )
        logging.shutdown()
        os._exit(code)
    return code


def run_processes(config: WorkerConfig) -> int:
    """Runs `config.processes` children until they exit; returns the parent's exit status."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=child_main, args=(config, index), name=f"worker-{index}")
        for index in range(1, config.processes + 1)
    ]
    signals = _Forwarder(children)
    previous = {signum: signal.signal(signum, signals.handle) for signum in signals.SIGNALS}
    try:
        for child in children:
            child.start()
        log.info(
            "started %d worker processes: %s",
            len(children),
            ", ".join(str(child.pid) for child in children),
        )
        status = _wait_for(children, signals)
        log.info("all worker processes exited; exit status %d", status)
        return status
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_for(children: Sequence[multiprocessing.process.BaseProcess], signals: _Forwarder) -> int:
    status = 0
    running = list(children)
    while running:
        multiprocessing.connection.wait([child.sentinel for child in running])
        for child in [child for child in running if child.exitcode is not None]:
            running.remove(child)
            code = _status_of(child.exitcode)
            if code != 0 and not signals.forwarded:
                log.error(
                    "worker process %s exited with status %d; stopping the others", child.pid, code
                )
            status = status or code
            if not signals.forwarded:
                signals.forward(signal.SIGTERM)
    return 130 if signals.killed else status


def _status_of(exitcode: int | None) -> int:
    if exitcode is None or exitcode >= 0:
        return exitcode or 0
    return 128 - exitcode  # killed by signal N: the shell's 128 + N


class _Forwarder:
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, children: Sequence[multiprocessing.process.BaseProcess]) -> None:
        self._children = children
        self.forwarded = False
        self.killed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.forwarded:
            log.info(
                "received %s: stopping %d worker processes gracefully", name, len(self._children)
            )
            self.forward(signal.SIGTERM)
            return
        if not self.killed:
            log.warning("second signal (%s): killing worker processes now", name)
            self.killed = True
            self.forward(signal.SIGKILL)

    def forward(self, signum: int) -> None:
        self.forwarded = True
        for child in self._children:
            if child.pid is not None and child.exitcode is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    os.kill(child.pid, signum)


def child_main(config: WorkerConfig, index: int) -> None:
    """Entry point of one spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level, config.log_format)
    options = config.worker_options()
    if config.worker_id:
        options["worker_id"] = f"{config.worker_id}-{index}"
    options["metrics_listen"] = config.metrics_listen_of(index)
    worker = Worker(handler=load_handler(config.handler), **options)
    _watch_parent(worker)
    code = 0
    try:
        asyncio.run(_run_child(worker))
    except MetricsListenError as exc:
        log.error("%s", exc)
        code = 1
    except Exception:
        log.exception("worker process failed")
        code = 1
    sys.exit(finish(worker, code))


async def _run_child(worker: Worker) -> None:
    # Repeated SIGTERMs stay graceful here: only the parent decides to kill.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
    await worker.run_async()


def _watch_parent(worker: Worker) -> None:
    # If the parent dies without forwarding a signal (SIGKILL, OOM), nobody would ever
    # stop this child; notice and stop gracefully instead of lingering as an orphan.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_INTERVAL)
        log.warning("parent process %d is gone; stopping", parent)
        worker.stop()

    threading.Thread(target=watch, name="feedwork-parent-watch", daemon=True).start()
