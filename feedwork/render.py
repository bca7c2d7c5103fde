"""How the CLI shows records: JSON-ready dicts for `--json`, rich tables for people.

Every string that comes from a task (payload, headers, key, queue, worker id, error) goes
through `visible` and into a `rich.text.Text`, never into markup: a payload holding
`[/bold]` or `[link=...]`, or a terminal escape sequence, is shown as the text it is.
(`--json` output is JSON, where json.dumps already escapes control characters.)
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from feedwork.types import (
    CancelResult,
    ConsumerKind,
    QueueInfo,
    QueueStats,
    Stats,
    SubmitResult,
    TaskInfo,
    TaskPage,
    Totals,
    Workers,
)

# Columns of the stats tables: (field, title).
_COUNT_COLUMNS = (
    ("scheduled", "scheduled"),
    ("ready", "ready"),
    ("leased", "leased"),
    ("completed", "completed"),
    ("dead", "dead"),
    ("cancelled", "cancelled"),
)
_TOTAL_COLUMNS = (
    ("submitted", "submitted"),
    ("completed", "completed"),
    ("expired", "expired"),
    ("redelivered", "redelivered"),
    ("duplicate_acks", "dup acks"),
    ("adopted", "adopted"),
    ("failed", "failed"),
    ("dead_lettered", "dead-lettered"),
    ("purged", "purged"),
)


# C0 and C1 controls and DEL (ESC and CSI start terminal sequences), Unicode line and
# paragraph separators, and the bidirectional marks and overrides that reorder what a
# terminal shows ("Trojan Source").
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def visible(text: str) -> str:
    """`text` with control characters written out (`\\n`, `\\x1b`, `\\u202e`), so that
    printing it cannot move the cursor, change colours, make links or reorder the line."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _cell(value: object) -> Text:
    """A table cell holding `value` as plain text: no markup, no control characters."""
    return Text(visible(str(value)))


def submit_json(result: SubmitResult) -> dict[str, Any]:
    return {"task_id": result.task_id, "state": result.state, "deduplicated": result.deduplicated}


def cancel_json(task_id: str, result: CancelResult) -> dict[str, Any]:
    return {"task_id": task_id, "outcome": result.outcome, "state": result.state}


def task_json(task: TaskInfo) -> dict[str, Any]:
    """The task as JSON: bytes as text when they are UTF-8, else as `<name>_b64`."""
    record: dict[str, Any] = {
        "task_id": task.task_id,
        "queue": task.queue,
        "state": task.state,
        "priority": task.priority,
        "attempts": task.attempts,
        "failures": task.failures,
        "max_attempts": task.max_attempts,
        "headers": dict(task.headers),
        "idempotency_key": task.idempotency_key,
        "created_at": _time(task.created_at),
        "finished_at": _time(task.finished_at),
        "not_before": _time(task.not_before),
        "lease_deadline": _time(task.lease_deadline),
        "lease_duration": _seconds(task.lease_duration),
    }
    record.update(_bytes("payload", task.payload))
    record.update(_bytes("result", task.result))
    record["history"] = [
        {
            "attempt": attempt.attempt,
            "worker_id": attempt.worker_id,
            "caller": attempt.caller,
            "leased_at": _time(attempt.leased_at),
            "ended_at": _time(attempt.ended_at),
            "outcome": attempt.outcome,
            "error": attempt.error,
        }
        for attempt in task.history
    ]
    return record


def stats_json(stats: Stats) -> dict[str, Any]:
    return {
        "queues": [_queue_json(queue) for queue in stats.queues],
        "totals": _totals_json(stats.totals),
    }


def task_tables(task: TaskInfo) -> tuple[Table, Table | None]:
    """A field table of the task, and a table of its attempts (None when it has none)."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    for name, value in task_json(task).items():
        if name != "history" and value not in (None, "", {}):
            fields.add_row(name, _cell(value))
    if not task.history:
        return fields, None
    attempts = Table(title="history")
    # Who the feeder authenticated for each lease: no column when it runs without auth.
    callers = any(attempt.caller for attempt in task.history)
    for column in ("attempt", "worker", "caller", "leased at", "ended at", "outcome", "error"):
        if column != "caller" or callers:
            attempts.add_column(column)
    for attempt in task.history:
        attempts.add_row(
            str(attempt.attempt),
            _cell(attempt.worker_id),
            *((_cell(attempt.caller),) if callers else ()),
            _time(attempt.leased_at) or "",
            _time(attempt.ended_at) or "",
            attempt.outcome,
            _cell(attempt.error),
        )
    return fields, attempts


def stats_tables(stats: Stats) -> tuple[Table, Table]:
    """Two tables, to fit a terminal: tasks per state now, and totals since the start."""
    counts = Table(title="tasks now", title_justify="left", box=box.SIMPLE_HEAD)
    totals = Table(title="totals since the start", title_justify="left", box=box.SIMPLE_HEAD)
    for table, columns in ((counts, _COUNT_COLUMNS), (totals, _TOTAL_COLUMNS)):
        table.add_column("queue")
        for _, title in columns:
            table.add_column(title, justify="right")
    counts.add_column("oldest ready", justify="right")
    for queue in stats.queues:
        counts.add_row(
            _cell(queue.queue),
            *(str(getattr(queue, name)) for name, _ in _COUNT_COLUMNS),
            f"{queue.oldest_ready_age.total_seconds():.1f}s",
        )
        totals.add_row(
            _cell(queue.queue), *(str(getattr(queue.totals, n)) for n, _ in _TOTAL_COLUMNS)
        )
    if len(stats.queues) != 1:
        sums = (sum(getattr(queue, name) for queue in stats.queues) for name, _ in _COUNT_COLUMNS)
        counts.add_section()
        counts.add_row("all", *map(str, sums), "", style="bold")
        totals.add_section()
        totals.add_row(
            "all", *(str(getattr(stats.totals, n)) for n, _ in _TOTAL_COLUMNS), style="bold"
        )
    return counts, totals


def _queue_json(queue: QueueStats) -> dict[str, Any]:
    return {
        "queue": queue.queue,
        "scheduled": queue.scheduled,
        "ready": queue.ready,
        "leased": queue.leased,
        "completed": queue.completed,
        "dead": queue.dead,
        "cancelled": queue.cancelled,
        "oldest_ready_age": queue.oldest_ready_age.total_seconds(),
        "totals": _totals_json(queue.totals),
    }


def _totals_json(totals: Totals) -> dict[str, int]:
    return {
        "submitted": totals.submitted,
        "completed": totals.completed,
        "expired": totals.expired,
        "redelivered": totals.redelivered,
        "duplicate_acks": totals.duplicate_acks,
        "dead_lettered": totals.dead_lettered,
        "adopted": totals.adopted,
        "failed": totals.failed,
        "cancelled": totals.cancelled,
        "purged": totals.purged,
    }


# -- queues, task listings, workers -----------------------------------------------------------


def queues_json(queues: list[QueueInfo]) -> dict[str, Any]:
    return {
        "queues": [
            {"paused": q.paused, "paused_at": _time(q.paused_at), **_queue_json(q.stats)}
            for q in queues
        ]
    }


def queues_table(queues: list[QueueInfo]) -> Table:
    """One row per queue: running or paused (since when), its tasks by state now."""
    table = Table(title="queues", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("queue")
    table.add_column("state")
    for _, title in _COUNT_COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("oldest ready", justify="right")
    for q in queues:
        state = f"paused since {_short_time(q.paused_at)}" if q.paused else "running"
        table.add_row(
            _cell(q.queue),
            Text(state, style="bold yellow" if q.paused else ""),
            *(str(getattr(q.stats, name)) for name, _ in _COUNT_COLUMNS),
            f"{q.stats.oldest_ready_age.total_seconds():.1f}s",
        )
    return table


# The rates `feedwork top` shows: per second, from two readings of the running totals.
TOP_RATES = (
    ("submitted", "in/s"),
    ("completed", "done/s"),
    ("failed", "failed/s"),
    ("expired", "expired/s"),
)


def top_table(queues: list[QueueInfo], rates: dict[str, dict[str, float]], *, title: str) -> Table:
    """`feedwork top`'s view: each queue's state, tasks by state now and its rates."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("queue")
    table.add_column("state")
    for _, heading in _COUNT_COLUMNS:
        table.add_column(heading, justify="right")
    table.add_column("oldest ready", justify="right")
    for _, heading in TOP_RATES:
        table.add_column(heading, justify="right")
    for q in queues:
        rate = rates.get(q.queue, {})
        table.add_row(
            _cell(q.queue),
            Text("paused", style="bold yellow") if q.paused else Text("running"),
            *(str(getattr(q.stats, name)) for name, _ in _COUNT_COLUMNS),
            f"{q.stats.oldest_ready_age.total_seconds():.1f}s",
            *(f"{rate[name]:.1f}" if name in rate else "-" for name, _ in TOP_RATES),
        )
    return table


def tasks_table(page: TaskPage, *, payloads: bool = False) -> Table:
    """One row per task: id, state, priority, attempts, when made, the last attempt's
    worker and error (and the payload, shortened, when asked for)."""
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("task", "state", "priority", "attempts", "created", "worker", "last error"):
        table.add_column(column, justify="right" if column in ("priority", "attempts") else "left")
    if payloads:
        table.add_column("payload")
    for task in page.tasks:
        last = task.history[-1] if task.history else None
        row: list[Text | str] = [
            _cell(task.task_id),
            task.state,
            str(task.priority),
            f"{task.attempts}/{task.max_attempts}",
            _short_time(task.created_at),
            _cell(last.worker_id if last else ""),
            _cell(_shortened(last.error if last else "")),
        ]
        if payloads:
            row.append(_cell(_shortened(task.payload.decode(errors="replace"))))
        table.add_row(*row)
    return table


def workers_json(workers: Workers) -> dict[str, Any]:
    return {
        "feeder": workers.feeder,
        "lease_holders": [
            {
                "queue": h.queue,
                "worker_id": h.worker_id,
                "caller": h.caller,
                "leases": h.leases,
                "oldest_leased_at": _time(h.oldest_leased_at),
                "newest_leased_at": _time(h.newest_leased_at),
            }
            for h in workers.lease_holders
        ],
        "consumers": [
            {
                "kind": c.kind,
                "worker_id": c.worker_id,
                "caller": c.caller,
                "queues": list(c.queues),
                "since": _time(c.since),
                "leases": c.leases,
                "peer": c.peer,
            }
            for c in workers.consumers
        ],
        "truncated": workers.truncated,
    }


def workers_tables(workers: Workers) -> tuple[Table, Table]:
    """The leases the database holds, by worker (every feeder's), and the streams and
    Lease callers of the feeder that answered. A caller column only with auth."""
    callers = any(h.caller for h in workers.lease_holders) or any(
        c.caller for c in workers.consumers
    )
    leases = Table(title="leases held (every feeder's)", title_justify="left", box=box.SIMPLE_HEAD)
    consumers = Table(
        title=f"consumers of feeder {visible(workers.feeder)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("queue", "worker", "caller", "leases", "oldest lease", "newest lease"):
        if column != "caller" or callers:
            leases.add_column(column, justify="right" if column == "leases" else "left")
    for column in ("kind", "worker", "caller", "queues", "since", "leases", "peer"):
        if column != "caller" or callers:
            consumers.add_column(column, justify="right" if column == "leases" else "left")
    for h in workers.lease_holders:
        leases.add_row(
            _cell(h.queue),
            _cell(h.worker_id),
            *((_cell(h.caller),) if callers else ()),
            str(h.leases),
            _short_time(h.oldest_leased_at),
            _short_time(h.newest_leased_at),
        )
    for c in workers.consumers:
        consumers.add_row(
            "stream" if c.kind == ConsumerKind.STREAM else "lease calls",
            _cell(c.worker_id),
            *((_cell(c.caller),) if callers else ()),
            _cell(", ".join(c.queues)),
            _short_time(c.since),
            str(c.leases),
            _cell(c.peer),
        )
    return leases, consumers


def _short_time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _shortened(text: str, most: int = 60) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _bytes(name: str, value: bytes) -> dict[str, str]:
    try:
        return {name: value.decode()}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(value).decode()}


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()
