"""Versioned schema migrations for the SQLite store, like the PostgreSQL store's (see
feeder.store.postgres.migrate).

Version 1 is the layout `feeder.store.sqlite.SCHEMA` creates, and what its `upgrade` brings
databases written before versions existed to. Each later version is a step in MIGRATIONS,
applied once, in a transaction of its own together with its row in `schema_migrations`.
Only the process that holds the database's lock migrates it (a feeder, or `feedwork db
copy`), so no two ever race. A database migrated by a newer feedwork (a version this one
does not know) is refused rather than written to.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from feeder.store.rows import NO_LAST_ATTEMPT, expired_in, expired_text, history_from

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""


class SchemaTooNew(RuntimeError):
    """The database has migrations this feedwork does not know: a newer feeder upgraded
    it, and an older one must not write to it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite3.Connection], None]


def _expired_attempts(conn: sqlite3.Connection) -> None:
    """Adds tasks.expired_attempts (see feeder.store.rows), filled in from each task's
    history: the attempts it still holds that ended by expiry. (Attempts trimmed from a
    history before this version are not known to have expired: a late ack of one is
    rejected, never adopted.)"""
    conn.execute("ALTER TABLE tasks ADD COLUMN expired_attempts TEXT")
    rows = conn.execute(
        "SELECT id, history, last_attempt, last_worker, last_leased_at, last_ended_at,"
        " last_outcome, last_error FROM tasks WHERE history IS NOT NULL OR last_outcome = 4"
    )
    updates = []
    for task_id, text, *last in rows:
        # No caller yet (version 3 adds it).
        last_attempt = (*last, "") if last[4] is not None else NO_LAST_ATTEMPT
        ranges = expired_in(history_from(text, last_attempt))
        if ranges:
            updates.append((expired_text(ranges), task_id))
    conn.executemany("UPDATE tasks SET expired_attempts = ? WHERE id = ?", updates)


def _last_caller(conn: sqlite3.Connection) -> None:
    """Adds tasks.last_caller: who the feeder authenticated for the last attempt's lease
    (see feeder.store.rows). Nothing to fill in: attempts before it name no caller (NULL,
    read as "")."""
    conn.execute("ALTER TABLE tasks ADD COLUMN last_caller TEXT")


def _paused_queues(conn: sqlite3.Connection) -> None:
    """Adds paused_queues: the queues an operator paused (PauseQueue), with when. A paused
    queue takes submits and hands out nothing until resumed, across restarts."""
    conn.execute(
        "CREATE TABLE paused_queues (queue TEXT PRIMARY KEY, paused_at REAL NOT NULL) WITHOUT ROWID"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "expired_attempts", _expired_attempts),
    Migration(3, "last_caller", _last_caller),
    Migration(4, "paused_queues", _paused_queues),
)
LATEST = MIGRATIONS[-1].version


def migrate(conn: sqlite3.Connection) -> list[Migration]:
    """Applies every pending migration to a database at version 1 or later; returns those
    applied. Raises SchemaTooNew, changing nothing, on a database a newer feedwork wrote."""
    conn.execute(BOOKKEEPING)
    conn.execute(
        "INSERT OR IGNORE INTO schema_migrations (version, name, applied_at)"
        " VALUES (1, 'initial', ?)",
        (time.time(),),
    )
    done = {version for (version,) in conn.execute("SELECT version FROM schema_migrations")}
    unknown = sorted(v for v in done if v > LATEST)
    if unknown:
        raise SchemaTooNew(
            f"the database has schema migrations this feeder does not know"
            f" ({', '.join(map(str, unknown))}): it was migrated by a newer feedwork (this"
            f" one knows up to version {LATEST}); upgrade this feeder"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration.apply(conn)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(migration)
    return applied
