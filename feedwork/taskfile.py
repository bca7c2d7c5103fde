"""Task files for `feedwork submit --file`: JSON Lines, one task object per line.

    {"queue": "emails", "payload": "hello", "headers": {"k": "v"}, "priority": 5,
     "delay": 1.5, "max_attempts": 3, "lease_duration": 30, "idempotency_key": "mail-42"}

`payload` is a string (sent as UTF-8) or any other JSON value (sent as compact JSON);
`payload_b64` carries binary payloads instead. `not_before` is an ISO 8601 time with a
zone. Durations are seconds, or strings as on the command line ("500ms", "1h"). Blank
lines and lines starting with `#` are skipped.

Re-running a file is safe: a line without an `idempotency_key` gets one derived from its
text (see `LineKeys`), so the tasks a run already submitted are found again (reported as
deduplicated) instead of being created twice, for as long as the feeder retains them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from feedwork import _wire
from feedwork.durations import SYNTAX, parse_duration
from feedwork.types import TaskSpec

FIELDS = frozenset(
    {
        "queue",
        "payload",
        "payload_b64",
        "headers",
        "priority",
        "delay",
        "not_before",
        "max_attempts",
        "lease_duration",
        "idempotency_key",
    }
)


class TaskFileError(ValueError):
    """A line that is not a valid task; `str()` starts with "line N: "."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


KEY_PREFIX = "line-"


class LineKeys:
    """Idempotency keys for the lines of one file that bring none: `line-` and the first
    128 bits of the SHA-256 of the line's text (without its leading and trailing
    whitespace), in hex, then `-2`, `-3`... for the second, third line of the same text.

    A line keeps its key when other lines are fixed, added or removed, so re-running a
    file submits only what is not there yet; identical lines stay separate tasks.
    """

    def __init__(self) -> None:
        self._seen: Counter[bytes] = Counter()

    def key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode()).digest()[:16]
        self._seen[digest] += 1
        count = self._seen[digest]
        return f"{KEY_PREFIX}{digest.hex()}" + (f"-{count}" if count > 1 else "")


def read_specs(
    lines: Iterable[bytes], *, default_queue: str | None = None, line_keys: bool = True
) -> Iterator[tuple[int, TaskSpec]]:
    """(line number, task) of each task line, lazily; raises the `TaskFileError` of the
    first bad line."""
    for number, task in parse_lines(lines, default_queue=default_queue, line_keys=line_keys):
        if isinstance(task, TaskFileError):
            raise task
        yield number, task


def parse_lines(
    lines: Iterable[bytes], *, default_queue: str | None = None, line_keys: bool = True
) -> Iterator[tuple[int, TaskSpec | TaskFileError]]:
    """(line number, task or what is wrong with it) of each line but blank and `#` ones.

    A line must be UTF-8 text holding a task object (see `parse_task`) within the bounds
    of feeder.proto (see `check_task`). With `line_keys`, a task without an idempotency
    key gets its line's (see `LineKeys`).
    """
    keys = LineKeys()
    for number, raw in enumerate(lines, start=1):
        try:
            text = _text(raw, first=number == 1)
            if not text or text.startswith("#"):
                continue
            spec = parse_task(text, default_queue=default_queue)
            check_task(spec)
        except ValueError as exc:
            yield number, TaskFileError(number, str(exc))
            continue
        if line_keys and spec.idempotency_key is None:
            spec = replace(spec, idempotency_key=keys.key(text))
        yield number, spec


def _text(raw: bytes, *, first: bool) -> str:
    if first:
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
    try:
        return raw.decode().strip()
    except UnicodeDecodeError as exc:
        bad = f"byte {exc.start + 1} is {raw[exc.start]:#04x}"
        raise ValueError(f"not UTF-8 text ({bad})") from None


def check_task(spec: TaskSpec) -> None:
    """Raises `ValueError` naming the field when the feeder would refuse `spec` by the
    bounds of feeder.proto (queue name, priority, headers, durations...), checked by the
    feeder's own validation. Limits an operator may change (payload size) are left to
    the feeder."""
    # The feeder's rules, not a copy of them; imported here, where a file is read.
    from feeder.server import validate

    message = _wire.task_spec_to_pb(spec, idempotency_key=spec.idempotency_key or "")
    limits = validate.Limits(max_payload_bytes=2**62, max_result_bytes=2**62)
    try:
        validate.task_spec(message, "task", limits=limits, now=time.time())
    except validate.ValidationError as exc:
        raise ValueError(f"{exc.field.removeprefix('task.')}: {exc.message}") from None


def parse_task(text: str, *, default_queue: str | None = None) -> TaskSpec:
    """One task from one JSON object; raises `ValueError` naming the bad field."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(record) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    queue = record.get("queue", default_queue)
    if not isinstance(queue, str) or not queue:
        raise ValueError("'queue' is required (a string), or pass --queue")
    return TaskSpec(
        queue=queue,
        payload=_payload(record),
        headers=_headers(record.get("headers")),
        priority=_integer(record, "priority") or 0,
        delay=_seconds(record, "delay"),
        not_before=_time(record, "not_before"),
        max_attempts=_integer(record, "max_attempts"),
        lease_duration=_seconds(record, "lease_duration"),
        idempotency_key=_string(record, "idempotency_key"),
    )


def _payload(record: dict[str, Any]) -> bytes:
    if "payload" in record and "payload_b64" in record:
        raise ValueError("give 'payload' or 'payload_b64', not both")
    if "payload_b64" in record:
        encoded = record["payload_b64"]
        if not isinstance(encoded, str):
            raise ValueError("'payload_b64' must be a base64 string")
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("'payload_b64' is not valid base64") from None
    payload = record.get("payload", "")
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _headers(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValueError("'headers' must be an object of strings")
    return value


def _integer(record: dict[str, Any], name: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name!r} must be an integer")
    return value


def _seconds(record: dict[str, Any], name: str) -> float | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        return parse_duration(value)  # a number of seconds, or "1h" as on the command line
    except ValueError:
        raise ValueError(f"{name!r} must be seconds >= 0 or a duration ({SYNTAX})") from None


def _time(record: dict[str, Any], name: str) -> datetime | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValueError(f"{name!r} must be an ISO 8601 time with a zone")
    return moment


def _string(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string")
    return value
