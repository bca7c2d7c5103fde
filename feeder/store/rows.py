"""Tasks as table rows, for the SQL backends (SQLite and PostgreSQL share the layout).

The last attempt of a task's history is kept in columns of its own, the earlier ones in
`history` as JSON: most writes (a lease, its ack) change only the last attempt, and most
tasks have only one, so most writes encode no JSON at all. (SQLite databases written before
the split hold the whole history in JSON, with the last_* columns NULL; both read back.)

`last_caller` (and the seventh item of each attempt in the JSON) is who the feeder
authenticated for the lease (see Attempt.caller); rows and attempts written before it
existed have NULL (or no seventh item) and read back as "".

`expired_attempts` holds the task's Task.expired_attempts as text, "1-49,51,60-62" (NULL
when there are none, as for most tasks): the history is trimmed to the newest attempts,
this is kept whole, because the state machine decides late acks from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

from feeder.core.model import EMPTY_HEADERS, Attempt, AttemptOutcome, State, Task

# Every column of a task row, in the order `task_from_row` reads them.
COLUMN_NAMES = (
    "id", "queue", "payload", "headers", "priority", "state", "max_attempts", "created_at",
    "ready_at", "attempt", "failures", "not_before", "lease_deadline", "lease_duration",
    "lease_granted", "idempotency_key", "result", "finished_at", "history", "version",
    "last_attempt", "last_worker", "last_leased_at", "last_ended_at", "last_outcome",
    "last_error", "last_caller", "expired_attempts",
)  # fmt: skip
COLUMNS = ", ".join(COLUMN_NAMES)


def columns_without_payload(empty: str) -> str:
    """COLUMNS with `empty` (the dialect's empty blob literal) read in the payload's place,
    for reads that need no payload."""
    return ", ".join(f"{empty} AS payload" if c == "payload" else c for c in COLUMN_NAMES)


def columns_without_bytes(empty: str) -> str:
    """COLUMNS with neither payload (`empty` in its place) nor result (NULL), for listings
    that show neither."""
    return ", ".join(
        f"{empty} AS payload" if c == "payload" else "NULL AS result" if c == "result" else c
        for c in COLUMN_NAMES
    )


def history_json(history: tuple[Attempt, ...]) -> str | None:
    """The attempts as a JSON array of arrays: exactly what `json.dumps(..., separators=(",",
    ":"))` writes, composed by hand because every lease and ack writes the history again,
    and the generic encoder cost about 10% of the feeder's CPU in a drain."""
    if not history:
        return None
    # Times come from the clock, so they are finite and repr() spells them as json does.
    attempts = [
        f"[{a.attempt:d},{_json_string(a.worker_id)},{a.leased_at!r},"
        f"{'null' if a.ended_at is None else repr(a.ended_at)},{a.outcome:d},"
        f"{_json_string(a.error)},{_json_string(a.caller)}]"
        for a in history
    ]
    return f"[{','.join(attempts)}]"


NO_LAST_ATTEMPT = (None, None, None, None, None, None, None)
_STATES = {state.value: state for state in State}


def history_columns(history: tuple[Attempt, ...]) -> tuple[Any, ...]:
    """(earlier attempts as JSON, then the last attempt's seven columns)."""
    if not history:
        return (None, *NO_LAST_ATTEMPT)
    last = history[-1]
    return (
        history_json(history[:-1]), last.attempt, last.worker_id, last.leased_at,
        last.ended_at, int(last.outcome), last.error, last.caller,
    )  # fmt: skip


def history_from(text: str | None, last: Sequence[Any]) -> tuple[Attempt, ...]:
    """The history from its JSON and the last attempt's seven columns (as history_columns
    writes them); no caller, as written before callers were kept, reads as ""."""
    earlier = (
        tuple(
            Attempt(a[0], a[1], a[2], a[3], AttemptOutcome(a[4]), a[5], a[6] if len(a) > 6 else "")
            for a in json.loads(text)
        )
        if text
        else ()
    )
    attempt, worker, leased_at, ended_at, outcome, error, caller = last
    if outcome is None:
        return earlier
    last_attempt = Attempt(
        attempt, worker, leased_at, ended_at, AttemptOutcome(outcome), error, caller or ""
    )
    return (*earlier, last_attempt)


def task_from_row(row: Sequence[Any]) -> Task:
    """A stored row as a record. Positional, no intermediate objects: a restart builds one
    per pending task, a million of them for a deep queue."""
    history = row[18]
    return Task(
        row[0], row[1], row[2], json.loads(row[3]) if row[3] else EMPTY_HEADERS,
        row[4], _STATES[row[5]], row[6], row[7], row[8], row[9], row[10], row[11], row[12],
        row[13], row[14], row[15], row[16], row[17],
        () if history is None and row[24] is None else history_from(history, row[20:27]),
        row[19], expired_from(row[27]) if row[27] else (),
    )  # fmt: skip


def expired_text(ranges: tuple[tuple[int, int], ...]) -> str | None:
    """Task.expired_attempts as stored: "1-49,51" (None for none)."""
    if not ranges:
        return None
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def expired_from(text: str | None) -> tuple[tuple[int, int], ...]:
    if not text:
        return ()
    ranges = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ranges.append((int(first), int(last or first)))
    return tuple(ranges)


def expired_in(history: Sequence[Attempt]) -> tuple[tuple[int, int], ...]:
    """The ranges of the attempts of `history` that ended by expiry: what a database
    written before expired_attempts existed starts from (attempts its history no longer
    held are not known to have expired, so a late ack of one is rejected)."""
    ranges: list[tuple[int, int]] = []
    for record in history:
        if record.outcome is not AttemptOutcome.EXPIRED:
            continue
        if ranges and ranges[-1][1] == record.attempt - 1:
            ranges[-1] = (ranges[-1][0], record.attempt)
        else:
            ranges.append((record.attempt, record.attempt))
    return tuple(ranges)


def headers_json(task: Task) -> str | None:
    return json.dumps(dict(task.headers)) if task.headers else None
