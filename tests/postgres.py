"""PostgreSQL databases for tests: each test that asks gets a database of its own, made from
a template that has the schema already, and dropped afterwards.

The server is `FEEDWORK_TEST_POSTGRES` (an admin DSN), by default the local one that
`make services` starts. A test that needs PostgreSQL fails, it does not skip, when the
server cannot be reached: a missing server must not pass for a green run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from feeder.store.postgres.migrate import migrate

ADMIN_DSN = os.environ.get(
    "FEEDWORK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_PREFIX = f"feedwork_test_{os.getpid()}"
_counter = itertools.count()


def dsn_of(database: str) -> str:
    """The admin DSN with another database name."""
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _run(work: Coroutine[Any, Any, None]) -> None:
    """Runs `work` to the end on a loop of its own, in a thread: the fixtures that call this
    may be set up from inside a test's running event loop."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(work)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="postgres-admin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


async def _admin(statement: str) -> None:
    try:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL at {ADMIN_DSN} is not reachable ({exc}); `make services` starts"
            " the local one, FEEDWORK_TEST_POSTGRES names another"
        ) from exc
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _migrated(database: str) -> None:
    conn = await asyncpg.connect(dsn_of(database), timeout=10)
    try:
        await migrate(conn)
    finally:
        await conn.close()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _drop_orphans() -> None:
    """Drops the databases of test processes that are gone (killed before their teardown
    ran): `feedwork_test_<pid>_*` whose pid no longer runs on this machine."""
    conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        names = [
            r[0]
            for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'feedwork\\_test\\_%'"
            )
        ]
        for name in names:
            pid = name.split("_")[2]
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def create_template() -> str:
    """A database with the current schema, for `create_database` to copy. Databases left by
    test processes that were killed are dropped first (only for a local server, where
    their pids can be checked)."""
    name = f"{_PREFIX}_template"
    if urlsplit(ADMIN_DSN).hostname in ("127.0.0.1", "localhost", "::1"):
        _run(_drop_orphans())
    _run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    _run(_admin(f"CREATE DATABASE {name}"))
    _run(_migrated(name))
    return name


def create_database(template: str | None) -> str:
    """A new database (a copy of `template`, or empty); returns its name."""
    name = f"{_PREFIX}_{next(_counter)}"
    source = f" TEMPLATE {template}" if template else ""
    _run(_admin(f"CREATE DATABASE {name}{source}"))
    return name


def drop_database(name: str) -> None:
    _run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def databases(template: str | None) -> Iterator[str]:
    """Yields a fresh database's DSN and drops the database afterwards."""
    name = create_database(template)
    try:
        yield dsn_of(name)
    finally:
        drop_database(name)


def _cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster that `make services` starts."""
    root = Path("/etc/postgresql")
    versions = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError(
            "restarting PostgreSQL needs the local Debian cluster (pg_ctlcluster and"
            " /etc/postgresql); this test cannot run against FEEDWORK_TEST_POSTGRES"
        )
    return versions[-1], "main"


def stop_server() -> None:
    """Stops the local PostgreSQL at once (fast shutdown: sessions are cut, open
    transactions roll back), as a crash or a restart looks to its clients."""
    version, name = _cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "stop", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def start_server() -> None:
    version, name = _cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "start"],
        check=True,
        capture_output=True,
        timeout=60,
    )
