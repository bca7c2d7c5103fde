"""feedwork.logs: JSON lines carry the task's fields and the traceback."""

from __future__ import annotations

import json
import logging

import pytest

from feedwork import logs


def record(**extra: object) -> logging.LogRecord:
    try:
        raise ValueError("bad payload")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "feedwork.worker", logging.WARNING, __file__, 1, "task %s failed", ("7",), exc_info
    )
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_has_the_task_fields_and_the_traceback() -> None:
    line = json.loads(logs.JsonFormatter().format(record(task_id="7", queue="q", attempt=2)))
    assert line["message"] == "task 7 failed"
    assert (line["level"], line["logger"]) == ("WARNING", "feedwork.worker")
    assert (line["task_id"], line["queue"], line["attempt"]) == ("7", "q", 2)
    assert line["time"].endswith("Z") and len(line["time"]) == 24
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: bad payload")
    assert "worker_id" not in line


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text or json"):
        logs.configure("INFO", "xml")


def test_a_stored_traceback_is_bounded_and_keeps_the_frames_nearest_the_failure() -> None:
    from worker.handlers import MAX_ERROR_CHARS, describe_with_traceback

    # Two functions in turn: Python folds a run of identical frames, not these.
    def ping(n: int) -> None:
        if n == 0:
            raise ValueError("at the bottom")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n - 1)

    try:
        ping(200)
    except ValueError as exc:
        text = describe_with_traceback(exc)
    assert len(text) <= MAX_ERROR_CHARS
    assert text.startswith("ValueError: at the bottom\n...\n")
    assert text.endswith('raise ValueError("at the bottom")\nValueError: at the bottom')
