"""The files of a SQLite database are its owner's alone: they hold every payload, result
and the secret that signs lease tokens. Before: the database, its WAL and its lock file were
made world-readable (0644), and a token minted from a copied secret was accepted."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from feeder.core import machine
from feeder.core.model import TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.store.sqlite import SqliteStore


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must not depend on the caller's."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


async def write_one(store: SqliteStore) -> None:
    await store.open()
    try:
        await store.submit(
            [TaskSpec(queue="q", payload=b"secret")],
            create=lambda s, i: machine.create(s, task_id=i, now=1.0, policy=QueuePolicy()),
            max_depth=lambda _q: 10,
        )
        # Every file a database has while open: the database, its WAL and shared memory,
        # and the lock file.
        files = [Path(f"{store._path}{suffix}") for suffix in ("", "-wal", "-shm", ".lock")]
        for path in files:
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    finally:
        await store.close()


def test_a_new_database_and_its_files_are_the_owners_alone(
    tmp_path: Path, open_umask: None
) -> None:
    asyncio.run(write_one(SqliteStore(tmp_path / "data" / "f.db")))


def test_a_database_open_to_others_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f.db"
    path.touch(mode=0o644)
    path.chmod(0o644)

    async def body() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    with caplog.at_level(logging.WARNING, logger="feedwork.feeder.store"):
        asyncio.run(body())
    assert any(
        "open to other users (mode -rw-r--r--)" in r.getMessage() and "chmod 600" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # left as the operator made it
