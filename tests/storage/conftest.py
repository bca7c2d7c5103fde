"""Backends of the storage conformance suite.

Every backend in BACKENDS must pass tests/storage/test_conformance.py; those in DURABLE_BACKENDS
must also keep everything across close and reopen. A new backend (PostgreSQL) is added to both
lists and to `_make`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from feeder.store.base import Store
from feeder.store.memory import MemoryStore
from feeder.store.sqlite import SqliteStore

# "sqlite-full" fsyncs every commit from a writer thread; "sqlite" commits on the loop.
BACKENDS = ["memory", "sqlite", "sqlite-full"]
DURABLE_BACKENDS = ["sqlite", "sqlite-full"]

StoreFactory = Callable[[], Store]


def _make(backend: str, tmp_path: Path) -> Store:
    if backend == "memory":
        return MemoryStore()
    if backend == "sqlite":
        return SqliteStore(tmp_path / "f.db")
    if backend == "sqlite-full":
        return SqliteStore(tmp_path / "f.db", sync="full")
    raise AssertionError(f"unknown backend {backend!r}")


@pytest.fixture(params=BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Makes an unopened store of the backend under test (each call: the same database)."""
    backend: str = request.param
    return lambda: _make(backend, tmp_path)


@pytest.fixture(params=DURABLE_BACKENDS)
def make_durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Like `make_store`, for backends whose data survives a close: every call opens the
    same database."""
    backend: str = request.param
    return lambda: _make(backend, tmp_path)
