"""Log output for the feeder and the worker: text for people, or JSON lines for a log
pipeline (`--log-format json`).

A JSON line holds the time (UTC, ISO 8601), level, logger and message, the fields a line
about a task carries (task_id, queue, attempt, and worker_id where the worker logs it,
given with `extra=`), the process name in a worker with several processes, and the
traceback of an exception:

    {"time": "2026-12-04T21:50:01.123Z", "level": "WARNING", "logger": "feedwork.worker",
     "message": "task 42 (attempt 2) failed", "task_id": "42", "queue": "images",
     "attempt": 2, "exception": "Traceback (most recent call last): ..."}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")
# Fields a record may carry (through `extra=`) that a JSON line shows.
FIELDS = ("task_id", "queue", "attempt", "worker_id", "caller")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        line: dict[str, Any] = {
            "time": f"{stamp}.{millis:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.processName not in ("MainProcess", None):
            line["process"] = record.processName
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text", *, text: str | None = None) -> None:
    """Sets up the root logger: `log_format` "text" (the `text` format string, or the
    default) or "json"."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be text or json, got {log_format!r}")
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(text or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    # Like basicConfig always: nothing changes where the root logger has handlers already.
    logging.basicConfig(level=level, handlers=[handler])
