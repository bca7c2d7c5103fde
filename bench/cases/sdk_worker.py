"""`python -m worker`, held at the starting line: ``python -m bench.cases.sdk_worker ARGS``.

Imports the worker (and the handler module) first, prints ``READY {"pid": ...}``, waits for
a ``GO`` line on stdin, and only then runs ``worker.__main__.main(ARGS)``, so that the
interpreter start and imports stay outside a timed drain. Afterwards EOF on stdin (the
benchmark closed the pipe or went away) sends this process SIGTERM, a graceful stop; it
also exits after --max-seconds.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import bench.cases.sdk_handlers  # noqa: F401 - imported before GO, like the worker
from worker.__main__ import main as worker_main

MAX_SECONDS = 600.0


def _read_line() -> bytes:
    # Raw reads of fd 0 (not sys.stdin): a daemon thread blocked in a buffered read would
    # hold its lock at interpreter shutdown.
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        line += chunk
    return line


def _on_eof() -> None:
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def _deadline() -> None:
    os._exit(3)


def run(argv: list[str]) -> int:
    print("READY " + json.dumps({"pid": os.getpid(), "port": 0}), flush=True)
    if _read_line().strip() != b"GO":
        return 0
    threading.Thread(target=_on_eof, daemon=True).start()
    timer = threading.Timer(MAX_SECONDS, _deadline)
    timer.daemon = True
    timer.start()
    return worker_main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
