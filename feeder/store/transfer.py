"""From embedded to cluster: copies a stopped SQLite feeder's database into PostgreSQL.

Everything moves, row for row: tasks in every state with their payloads, results, attempt
history (with the worker and the authenticated caller of each lease) and record of expired
attempts, idempotency keys, dead letters, the running totals, the paused queues, the next
task id and (unless told not to) the token secret, so that leases handed out before the
move can still be acked afterwards. The copy is one PostgreSQL transaction that checks its
own work before it commits: counts per queue and state, keys, totals and pauses must match
the source, or nothing is written. The target must hold no tasks (nor pauses) yet.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from feeder.core.model import State
from feeder.store.postgres.connector import APPLICATION_NAME
from feeder.store.postgres.migrate import migrate
from feeder.store.rows import (
    COLUMN_NAMES,
    COLUMNS,
    expired_text,
    history_columns,
    task_from_row,
)
from feeder.store.sqlite import upgrade
from feeder.store.sqlite_lock import lock_database

CHUNK = 5000


class CopyError(Exception):
    """The copy cannot start (source in use or missing, target not empty) or did not
    verify; nothing was written to the target."""


@dataclass(slots=True)
class CopyReport:
    tasks: int = 0
    by_state: Counter[tuple[str, State]] = field(default_factory=Counter)
    keys: int = 0
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    next_id: int = 1
    secret_carried: bool = False
    paused: dict[str, float] = field(default_factory=dict)


async def copy_sqlite_to_postgres(
    source: str | Path, target: str, *, carry_secret: bool = True
) -> CopyReport:
    """Copies the SQLite database at `source` (no feeder may have it open) into the
    PostgreSQL database `target` (migrated first; it must hold no tasks)."""
    path = Path(source)
    if not path.is_file():  # noqa: ASYNC240 - a one-shot tool: nothing else on its loop
        raise CopyError(f"no SQLite database at {path}")
    try:
        lock = lock_database(path)
    except RuntimeError as exc:
        raise CopyError(f"{exc}: stop it before copying") from None
    try:
        src = sqlite3.connect(path, isolation_level=None)
        try:
            upgrade(src)  # an older feeder's file: the current columns first
            return await _copy(src, target, carry_secret)
        finally:
            src.close()
    finally:
        lock.close()


async def _copy(src: sqlite3.Connection, target: str, carry_secret: bool) -> CopyReport:
    conn = await asyncpg.connect(target, server_settings={"application_name": APPLICATION_NAME})
    try:
        await migrate(conn)
        if await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM feedwork.tasks)"
            " OR EXISTS (SELECT 1 FROM feedwork.counters WHERE value <> 0)"
            " OR EXISTS (SELECT 1 FROM feedwork.paused_queues)"
        ):
            raise CopyError("the target database already holds tasks; copy into an empty one")
        report = CopyReport()
        async with conn.transaction():
            await _copy_tasks(src, conn, report)
            await _copy_counters(src, conn, report)
            await _copy_pauses(src, conn, report)
            await _copy_settings(src, conn, report, carry_secret)
            await _verify(conn, report)
        return report
    finally:
        await conn.close()


def _chunks(src: sqlite3.Connection) -> Iterator[list[tuple[object, ...]]]:
    cursor = src.execute(f"SELECT {COLUMNS} FROM tasks ORDER BY id")
    while rows := cursor.fetchmany(CHUNK):
        yield rows


async def _copy_tasks(
    src: sqlite3.Connection, conn: asyncpg.Connection, report: CopyReport
) -> None:
    for rows in _chunks(src):
        records = []
        keys = []
        for row in rows:
            # Through the record and back: rows an older feeder wrote (the whole history as
            # JSON) are written in the current layout.
            task = task_from_row(row)
            earlier, *last = history_columns(task.history)
            expired = expired_text(task.expired_attempts)
            records.append((*row[:18], earlier, task.version, *last, expired))
            report.by_state[(task.queue, task.state)] += 1
            if task.idempotency_key is not None:
                keys.append((task.queue, task.idempotency_key, task.id))
        await conn.copy_records_to_table(
            "tasks", schema_name="feedwork", columns=list(COLUMN_NAMES), records=records
        )
        if keys:
            await conn.copy_records_to_table(
                "task_keys",
                schema_name="feedwork",
                columns=["queue", "key", "task_id"],
                records=keys,
            )
        report.tasks += len(records)
        report.keys += len(keys)


async def _copy_counters(
    src: sqlite3.Connection, conn: asyncpg.Connection, report: CopyReport
) -> None:
    for queue, event, value in src.execute("SELECT queue, event, value FROM totals"):
        report.totals[(queue, event)] += value
    records = [
        (queue, f"state:{int(state)}", 0, count)
        for (queue, state), count in report.by_state.items()
    ]
    records += [
        (queue, f"event:{event}", 0, value)
        for (queue, event), value in report.totals.items()
        if value
    ]
    if records:
        await conn.copy_records_to_table(
            "counters",
            schema_name="feedwork",
            columns=["queue", "counter", "shard", "value"],
            records=records,
        )


async def _copy_pauses(
    src: sqlite3.Connection, conn: asyncpg.Connection, report: CopyReport
) -> None:
    report.paused = dict(src.execute("SELECT queue, paused_at FROM paused_queues").fetchall())
    if report.paused:
        await conn.copy_records_to_table(
            "paused_queues",
            schema_name="feedwork",
            columns=["queue", "paused_at"],
            records=list(report.paused.items()),
        )


async def _copy_settings(
    src: sqlite3.Connection, conn: asyncpg.Connection, report: CopyReport, carry_secret: bool
) -> None:
    meta = dict(src.execute("SELECT key, value FROM meta").fetchall())
    (max_id,) = src.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()
    # Never an id the source handed out (a lease token of a purged task must not match).
    report.next_id = max(int(meta.get("next_id", 1)), max_id + 1)
    await conn.execute("SELECT setval('feedwork.task_ids', $1, false)", report.next_id)
    secret = meta.get("token_secret")
    if carry_secret and secret is not None:
        await conn.execute(
            "INSERT INTO feedwork.meta (key, value) VALUES ('token_secret', $1)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            bytes(secret),
        )
        report.secret_carried = True


async def _verify(conn: asyncpg.Connection, report: CopyReport) -> None:
    """Reads back what was written, inside the transaction: a mismatch rolls it all back."""
    copied = Counter(
        {
            (queue, State(state)): count
            for queue, state, count in await conn.fetch(
                "SELECT queue, state, count(*) FROM feedwork.tasks GROUP BY 1, 2"
            )
        }
    )
    if copied != report.by_state:
        raise CopyError(f"tasks per queue and state differ after the copy: {copied}")
    keys = await conn.fetchval("SELECT count(*) FROM feedwork.task_keys")
    if keys != report.keys:
        raise CopyError(f"{keys} idempotency keys in the target, {report.keys} in the source")
    counted = {
        (queue, counter): value
        for queue, counter, value in await conn.fetch(
            "SELECT queue, counter, sum(value)::bigint FROM feedwork.counters GROUP BY 1, 2"
        )
    }
    expected = {(q, f"state:{int(s)}"): n for (q, s), n in report.by_state.items()}
    expected |= {(q, f"event:{e}"): v for (q, e), v in report.totals.items() if v}
    if {k: v for k, v in counted.items() if v} != expected:
        raise CopyError("counters differ from the source after the copy")
    paused = dict(await conn.fetch("SELECT queue, paused_at FROM feedwork.paused_queues"))
    if paused != report.paused:
        raise CopyError("paused queues differ from the source after the copy")
