"""Versioned schema migrations for the PostgreSQL store.

The migrations are numbered SQL files shipped in the package (`migrations/NNNN_name.sql`).
Each is applied in a transaction of its own together with its row in
`feedwork.schema_migrations`, under a session advisory lock, so that several feeders
starting at once apply each migration exactly once: the first takes the lock and migrates,
the others wait for it and then find nothing left to do. A database migrated by a newer
feedwork (a version this one does not know) is refused rather than written to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import asyncpg

SCHEMA = "feedwork"
# Advisory locks of feedwork are (LOCK_CLASS, purpose) in the two-int key space, which
# PostgreSQL keeps apart from the one-bigint space where claims mark task ids.
LOCK_CLASS = 0x6677  # "fw"
MIGRATION_LOCK = 1
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

BOOTSTRAP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class SchemaTooNew(Exception):
    """The database has migrations this feedwork does not know: it was upgraded by a newer
    feeder, and an older one must not write to it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    applied: list[AppliedMigration]
    pending: list[Migration]
    # Applied versions this feedwork does not know (a newer one migrated the database).
    unknown: list[AppliedMigration]

    @property
    def version(self) -> int:
        return max((m.version for m in self.applied), default=0)

    @property
    def current(self) -> bool:
        return not self.pending and not self.unknown


def known_migrations() -> list[Migration]:
    """The migrations shipped with this feedwork, in version order."""
    found: list[Migration] = []
    folder = resources.files(__package__).joinpath("migrations")
    for entry in folder.iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3... without gaps: {versions}")
    return found


async def status(conn: asyncpg.Connection) -> SchemaStatus:
    """What is applied, what is pending, what is unknown; changes nothing but creates the
    bookkeeping table if the database has none."""
    await conn.execute(BOOTSTRAP)
    rows = await conn.fetch(
        f"SELECT version, name, applied_at FROM {SCHEMA}.schema_migrations ORDER BY version"
    )
    applied = [AppliedMigration(r["version"], r["name"], r["applied_at"]) for r in rows]
    known = known_migrations()
    done = {m.version for m in applied}
    latest = known[-1].version if known else 0
    return SchemaStatus(
        applied=applied,
        pending=[m for m in known if m.version not in done],
        unknown=[m for m in applied if m.version > latest],
    )


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Applies every pending migration; returns those this call applied. Raises
    SchemaTooNew (changing nothing) on a database a newer feedwork has migrated."""
    # Session lock, not a transaction lock: it must span one transaction per migration.
    await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, MIGRATION_LOCK)
    try:
        found = await status(conn)
        if found.unknown:
            versions = ", ".join(str(m.version) for m in found.unknown)
            raise SchemaTooNew(
                f"the database has schema migrations this feeder does not know ({versions}):"
                f" it was migrated by a newer feedwork (this one knows up to version"
                f" {known_migrations()[-1].version}); upgrade this feeder"
            )
        for migration in found.pending:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        return found.pending
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_CLASS, MIGRATION_LOCK)
