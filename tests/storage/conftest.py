"""Backends of the storage conformance suite.

Every backend in BACKENDS must pass tests/storage/test_conformance.py; those in DURABLE_BACKENDS
must also keep everything across close and reopen; those in SHARED_BACKENDS must also stay
correct with two stores open on one database at once (two feeders). A new backend is added
to the lists and to `_make`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from feeder.store.base import Store
from feeder.store.memory import MemoryStore
from feeder.store.postgres import PostgresStore
from feeder.store.sqlite import SqliteStore

# "sqlite-full" fsyncs every commit from a writer thread; "sqlite" commits on the loop;
# "sqlite-lean" holds almost nothing in memory: most payloads, finished records and their
# idempotency keys are read back from disk.
BACKENDS = ["memory", "sqlite", "sqlite-full", "sqlite-lean", "postgres"]
DURABLE_BACKENDS = ["sqlite", "sqlite-full", "sqlite-lean", "postgres"]
SHARED_BACKENDS = ["postgres"]

StoreFactory = Callable[[], Store]

# The payload bytes of pending tasks the lean store holds: a few small payloads.
LEAN_PAYLOAD_MEMORY = 64


class LeanSqliteStore(SqliteStore):
    """SQLite holding at most 2 finished records and 64 payload bytes in memory."""

    final_cache = 2
    final_cache_bytes = 64


def _make(backend: str, request: pytest.FixtureRequest) -> Callable[[], Store]:
    """A factory of stores of `backend` on one database of this test's own."""
    if backend == "memory":
        return MemoryStore
    tmp_path: Path = request.getfixturevalue("tmp_path")
    if backend == "sqlite":
        return lambda: SqliteStore(tmp_path / "f.db")
    if backend == "sqlite-full":
        return lambda: SqliteStore(tmp_path / "f.db", sync="full")
    if backend == "sqlite-lean":
        return lambda: LeanSqliteStore(tmp_path / "f.db", payload_memory=LEAN_PAYLOAD_MEMORY)
    if backend == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")
        return lambda: PostgresStore(dsn, pool_size=4, startup_wait=5.0)
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Makes an unopened store of the backend under test (each call: the same database)."""
    return _make(request.param, request)


@pytest.fixture(params=DURABLE_BACKENDS)
def make_durable_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Like `make_store`, for backends whose data survives a close: every call opens the
    same database."""
    return _make(request.param, request)


@pytest.fixture(params=SHARED_BACKENDS)
def make_shared_store(request: pytest.FixtureRequest) -> StoreFactory:
    """Like `make_durable_store`, for backends that several feeders may open at once: two
    stores from this factory, both open, are two feeders on one database."""
    return _make(request.param, request)
