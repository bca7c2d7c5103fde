"""postgres-skip-locked: a jobs table drained with FOR UPDATE SKIP LOCKED (asyncpg).

Lease and ack are two statements, each its own (autocommit, hence durable) transaction,
because that is what a lease-based queue does: a leased task survives a worker crash and
can be handed out again once its lease runs out.

  lease: UPDATE jobs SET state = 'leased', leased_until = now() + 30 s
         WHERE id IN (SELECT id FROM jobs WHERE state = 'ready'
                      ORDER BY id FOR UPDATE SKIP LOCKED LIMIT b)
         RETURNING id, payload
  ack:   UPDATE jobs SET state = 'done', leased_until = NULL
         WHERE id = ANY($1) AND state = 'leased'

The one-round-trip form (``SET state = 'done' ... RETURNING`` in the lease statement) would
be about twice as fast at batch 1 but is not a lease: a crash after it loses the task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from bench.core import Case, Consumer, DbServer, Producer, Skip, Workload, probe_tcp
from bench.postgres_cpu import PostgresServer, postmaster_of

HOST, PORT = "127.0.0.1", 5432
DATABASE = "postgres"
DSN = f"postgresql://postgres@{HOST}:{PORT}/{DATABASE}"
SCHEMA = "feedwork_bench"
TABLE = f"{SCHEMA}.jobs"
LEASE_SECONDS = 30

CREATE = [
    f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
    f"CREATE SCHEMA {SCHEMA}",
    f"""CREATE TABLE {TABLE} (
        id bigserial PRIMARY KEY,
        payload bytea NOT NULL,
        state text NOT NULL DEFAULT 'ready',
        leased_until timestamptz
    )""",
    f"CREATE INDEX jobs_ready ON {TABLE} (id) WHERE state = 'ready'",
]

LEASE = f"""
UPDATE {TABLE} SET state = 'leased', leased_until = now() + interval '{LEASE_SECONDS} seconds'
WHERE id IN (
    SELECT id FROM {TABLE} WHERE state = 'ready'
    ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1
)
RETURNING id, payload
"""

ACK = f"""
UPDATE {TABLE} SET state = 'done', leased_until = NULL
WHERE id = ANY($1::bigint[]) AND state = 'leased'
"""


async def _connect() -> asyncpg.Connection:
    return await asyncpg.connect(DSN, timeout=3, command_timeout=30)


class PostgresConsumer(Consumer):
    def __init__(self, conn: asyncpg.Connection, batch: int) -> None:
        self.conn = conn
        self.batch = batch
        self.lost_acks = 0  # acks that updated no row (should stay 0)

    async def lease(self) -> Sequence[asyncpg.Record]:
        return await self.conn.fetch(LEASE, self.batch)

    async def ack(self, items: Sequence[asyncpg.Record]) -> None:
        status = await self.conn.execute(ACK, [row["id"] for row in items])
        self.lost_acks += len(items) - int(status.rsplit(" ", 1)[-1])

    async def close(self) -> None:
        await self.conn.close(timeout=5)


INSERT = f"INSERT INTO {TABLE} (payload) VALUES ($1)"


class PostgresProducer(Producer):
    """executemany of b INSERTs: one transaction (one commit) per batch."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def submit(self, payloads: Sequence[bytes]) -> None:
        await self.conn.executemany(INSERT, [(p,) for p in payloads])

    async def close(self) -> None:
        await self.conn.close(timeout=5)


class PostgresSkipLockedCase(Case):
    name = "postgres-skip-locked"
    summary = "asyncpg: lease UPDATE..SKIP LOCKED..RETURNING, then ack UPDATE (2 commits)"

    def __init__(self) -> None:
        self.admin: asyncpg.Connection | None = None
        self.consumers: list[PostgresConsumer] = []
        self.server: PostgresServer | None = None

    async def check(self) -> None:
        await probe_tcp(HOST, PORT, "postgres")
        try:
            self.admin = await _connect()
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise Skip(f"postgres at {DSN}: {type(exc).__name__}: {exc}") from exc

    async def info(self) -> dict[str, Any]:
        assert self.admin is not None
        settings = {
            name: await self.admin.fetchval(f"SHOW {name}")
            for name in ("server_version", "fsync", "synchronous_commit", "wal_level")
        }
        return {
            "server": f"postgres {settings.pop('server_version')}",
            "client": f"asyncpg {asyncpg.__version__}",
            "config": settings,
            "durability": f"WAL, fsync={settings['fsync']}, "
            f"synchronous_commit={settings['synchronous_commit']} (per statement)",
        }

    async def setup(self, n: int, workload: Workload) -> None:
        assert self.admin is not None
        self.consumers = []
        for statement in CREATE:
            await self.admin.execute(statement)
        # Per workload: the server may have been restarted (a new postmaster) meanwhile.
        postmaster = postmaster_of(int(await self.admin.fetchval("SELECT pg_backend_pid()")))
        self.server = None if postmaster is None else PostgresServer(postmaster, DATABASE)

    def db_server(self) -> DbServer | None:
        return self.server

    async def preload(self, n: int, payload: bytes) -> None:
        assert self.admin is not None
        await self.admin.copy_records_to_table(
            "jobs", schema_name=SCHEMA, columns=["payload"], records=[(payload,)] * n
        )
        await self.admin.execute(f"ANALYZE {TABLE}")

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        return PostgresProducer(await _connect())

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        assert self.admin is not None
        count = await self.admin.fetchval(f"SELECT count(*) FROM {TABLE} WHERE state = 'ready'")
        if count != n:
            raise RuntimeError(f"table holds {count} ready rows, not {n}")
        return {"ready_rows": count}

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        consumer = PostgresConsumer(await _connect(), workload.batch)
        self.consumers.append(consumer)
        return consumer

    async def verify(self, n: int) -> dict[str, Any]:
        assert self.admin is not None
        rows = await self.admin.fetch(f"SELECT state, count(*) FROM {TABLE} GROUP BY state")
        return {
            "states": {row["state"]: row["count"] for row in rows},
            "lost_acks": sum(c.lost_acks for c in self.consumers),
        }

    async def teardown(self) -> None:
        if self.admin is not None:
            await self.admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    async def close(self) -> None:
        if self.admin is not None:
            admin, self.admin = self.admin, None
            with contextlib.suppress(Exception):
                await admin.close(timeout=5)
