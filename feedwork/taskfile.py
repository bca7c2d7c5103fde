"""Task files for `feedwork submit --file`: JSON Lines, one task object per line.

    {"queue": "emails", "payload": "hello", "headers": {"k": "v"}, "priority": 5,
     "delay": 1.5, "max_attempts": 3, "lease_duration": 30, "idempotency_key": "mail-42"}

`payload` is a string (sent as UTF-8) or any other JSON value (sent as compact JSON);
`payload_b64` carries binary payloads instead. `not_before` is an ISO 8601 time with a
zone. Durations are seconds. Blank lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

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
    """A line that is not a valid task; the message names the line number."""


def read_specs(lines: Iterable[str], *, default_queue: str | None = None) -> Iterator[TaskSpec]:
    """Parses task lines lazily; raises `TaskFileError` at the first bad one."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            yield parse_task(text, default_queue=default_queue)
        except ValueError as exc:
            raise TaskFileError(f"line {number}: {exc}") from None


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
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name!r} must be a number of seconds >= 0")
    return float(value)


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
