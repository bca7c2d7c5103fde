"""N real feeders on one fresh database of the local PostgreSQL, for the feedwork-pg cases
and the dispatch-pg and expiry-pg experiments.

`PostgresFeeders.start(count, tag)` creates a database ``feedwork_bench_<tag>_<pid>_<k>`` on
the server at 127.0.0.1:5432 (user postgres, trust auth), starts `count` feeders on it at
once (``python -m feeder --db postgresql://.../DB``; they apply the migrations under an
advisory lock, and one of them becomes the maintenance leader), and returns once all of
them listen. `stop()` stops the feeders (SIGTERM, SIGKILL after a bound) and drops the
database (``WITH (FORCE)``). No other database is touched. The feeders die with the
benchmark (`FeederProcess`); a database left behind by a killed benchmark keeps its name
(``feedwork_bench_*``) and holds nothing but benchmark tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from bench.cases.feedwork import new_directory, remove_directory
from bench.core import Skip, probe_tcp
from bench.feeder_process import FeederProcess
from bench.postgres_cpu import PostgresServer, postmaster_of

HOST, PORT = "127.0.0.1", 5432
ADMIN_DATABASE = "postgres"
DATABASE_PREFIX = "feedwork_bench"
STOP_GRACE = 5.0
SETTINGS = ("server_version", "fsync", "synchronous_commit", "wal_level", "max_connections")
_databases = itertools.count()


def dsn_of(database: str) -> str:
    return f"postgresql://postgres@{HOST}:{PORT}/{database}"


async def connect(database: str = ADMIN_DATABASE) -> asyncpg.Connection:
    return await asyncpg.connect(dsn_of(database), timeout=5, command_timeout=60)


async def server_of(conn: asyncpg.Connection, database: str) -> PostgresServer | None:
    """The local server behind `conn`, for its CPU (None: not visible in this /proc)."""
    postmaster = postmaster_of(int(await conn.fetchval("SELECT pg_backend_pid()")))
    return None if postmaster is None else PostgresServer(postmaster, database)


async def settings() -> dict[str, Any]:
    """The server's version and durability settings; raises `Skip` if it is unreachable."""
    await probe_tcp(HOST, PORT, "postgres")
    try:
        conn = await connect()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Skip(f"postgres at {HOST}:{PORT}: {type(exc).__name__}: {exc}") from exc
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in SETTINGS}
    finally:
        await conn.close(timeout=5)


def _database_name(tag: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", tag.lower()).strip("_")
    return f"{DATABASE_PREFIX}_{slug}_{os.getpid()}_{next(_databases)}"[:63]


class PostgresFeeders:
    """Feeders sharing one database; `targets[i]` is feeder i's address."""

    def __init__(
        self,
        database: str,
        directory: Path,
        feeders: Sequence[FeederProcess],
        server: PostgresServer | None,
    ) -> None:
        self.database = database
        self.directory = directory
        self.feeders = list(feeders)
        # The server's CPU accounting (None where its processes are not visible here).
        self.server = server

    @property
    def targets(self) -> list[str]:
        return [f.target for f in self.feeders]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(f.pid for f in self.feeders)

    @classmethod
    async def start(cls, count: int, tag: str) -> PostgresFeeders:
        database = _database_name(tag)
        admin = await connect()
        try:
            await admin.execute(f"CREATE DATABASE {database}")
            server = await server_of(admin, database)
        finally:
            await admin.close(timeout=5)
        directory = new_directory()
        cluster = cls(database, directory, [], server)
        try:
            started = await asyncio.gather(
                *(
                    FeederProcess.start(directory / f"feeder-{i}", db=dsn_of(database))
                    for i in range(count)
                ),
                return_exceptions=True,
            )
            cluster.feeders = [f for f in started if isinstance(f, FeederProcess)]
            failed = [f for f in started if isinstance(f, BaseException)]
            if failed:
                raise failed[0]
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    async def stop(self) -> None:
        """Stops every feeder, drops the database, removes the port files."""
        feeders, self.feeders = self.feeders, []
        try:
            # A short grace (then SIGKILL), so that the drop is reached within the runner's
            # teardown bound even if a feeder hangs.
            await asyncio.gather(*(f.stop(STOP_GRACE) for f in feeders), return_exceptions=True)
            admin = await connect()
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
            finally:
                await admin.close(timeout=5)
        finally:
            remove_directory(self.directory)


@contextlib.asynccontextmanager
async def postgres_feeders(count: int, tag: str) -> AsyncIterator[PostgresFeeders]:
    cluster = await PostgresFeeders.start(count, tag)
    try:
        yield cluster
    finally:
        await cluster.stop()
