"""A disk that fills up on demand: SQLite connections whose COMMIT fails as it does when the
file system is full (SQLITE_FULL, "database or disk is full", the transaction rolled back),
for as long as the disk says it is full. Runs anywhere, without root or a tmpfs.

    disk = FullDisk()                          # or FullDisk(flag=path): full while it exists
    store = SqliteStoreOnAFillingDisk(path, disk=disk)
    disk.full = True; ...; disk.full = False

`python -m tests.faults.faulty_feeder` serves a feeder on such a store, full while the
file named by $FAULTY_FEEDER_DISK_FULL exists.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from feeder.store.sqlite import SqliteStore


class FullDisk:
    """Whether the disk is full now: `full`, or (for another process) a flag file exists."""

    def __init__(self, flag: Path | None = None) -> None:
        self.flag = flag
        self.full = False
        self.refused = 0  # commits failed so far

    def __bool__(self) -> bool:
        return self.full or (self.flag is not None and self.flag.exists())


def connection_class(disk: FullDisk) -> type[sqlite3.Connection]:
    class FullDiskConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            if sql == "COMMIT" and disk:
                disk.refused += 1
                # What SQLite does on SQLITE_FULL at commit: roll back, then report it.
                super().execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
            return super().execute(sql, *args)

    return FullDiskConnection


class SqliteStoreOnAFillingDisk(SqliteStore):
    def __init__(self, path: str | os.PathLike[str], *, disk: FullDisk, sync: str = "normal"):
        super().__init__(path, sync=sync)
        self.disk = disk
        self.connection_class = connection_class(disk)
