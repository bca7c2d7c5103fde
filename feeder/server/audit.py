"""The audit log: one JSON line per administrative or destructive call, and per denied call.

Its own logger, `feedwork.audit`, which does not pass its records on to the feeder's log:
it writes JSON lines to standard error (by default) or to the file `--audit-log` names,
opened for appending and made 0600. A line holds when, which call, who (the caller's
identity, "" without auth, and its address), which queue and task ids, and the outcome
(the status code, and what the call did: tasks cancelled, redriven, purged). Never a
payload, a result, a key or a token.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

LOGGER_NAME = "feedwork.audit"
log = logging.getLogger(LOGGER_NAME)
FILE_MODE = 0o600


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, Any] = getattr(record, "audit", {})
        return json.dumps(
            {"time": _timestamp(record.created), **fields}, separators=(",", ":"), default=str
        )


def configure(destination: str = "-") -> logging.Handler:
    """Sends audit lines to `destination`: "-" for standard error, else a file path.
    Replaces the handler an earlier call added; returns the new one."""
    if destination == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask, and for a file made before
        finally:
            os.close(fd)
        handler = logging.FileHandler(destination, mode="a", encoding="utf-8")
    handler.setFormatter(_JsonLines())
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def record(event: str, **fields: Any) -> None:
    """One audit line: `event` ("call" or "denied") and `fields`, empty ones left out."""
    if log.isEnabledFor(logging.INFO):
        kept = {key: value for key, value in fields.items() if value not in (None, "", [], ())}
        log.info(event, extra={"audit": {"event": event, **kept}})


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
