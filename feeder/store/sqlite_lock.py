"""One process at a time per SQLite database: the lock a feeder (or `feedwork db copy`)
holds while it has the database open.

The lock belongs to the database file, whatever path leads to it: an exclusive flock(2) on
the file itself, which a symlink, a hard link and a relative path all reach. (A lock file
named after the path let a second feeder in through another name: both then kept an index
of their own and failed each other's writes, `UNIQUE constraint failed: tasks.id`.) flock
locks are kept apart from the POSIX record locks SQLite takes on the same file (Linux, the
BSDs), so the two do not interfere.

One care: closing any descriptor of a file drops every POSIX lock the process holds on it,
SQLite's included (sqlite.org/howtocorrupt.html, section 2.2). So a process never opens a
database it already holds to try the lock again: the files it holds are kept by device and
inode and asked first, and a held lock's descriptor is closed only after the store's
connections are.

The lock file earlier feeders took (the path + ".lock") is taken too, so that an earlier
feeder and this one never share a database during an upgrade.

The database holds every payload, every result and the secret that signs lease tokens, so
the files are made readable by their owner alone (FILE_MODE; SQLite gives its WAL and
shared-memory files the mode of the database file). A database found readable by others is
used all the same, with a warning: its mode is the operator's to change.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path
from typing import IO

log = logging.getLogger("feedwork.feeder.store")

# Of every file made for a database: its owner's alone, whatever the umask.
FILE_MODE = 0o600

# The files this process holds, by (device, inode), with the path each was locked by.
_held: dict[tuple[int, int], Path] = {}


class DatabaseLock:
    """A held lock; `close()` releases it."""

    def __init__(self, fd: int, key: tuple[int, int], legacy: IO[str]) -> None:
        self._fd: int | None = fd
        self._key = key
        self._legacy = legacy

    def close(self) -> None:
        if self._fd is None:
            return
        _held.pop(self._key, None)
        os.close(self._fd)
        self._fd = None
        self._legacy.close()


def lock_database(path: Path) -> DatabaseLock:
    """Locks the database file at `path` (made, empty, if there is none: SQLite takes an
    empty file as an empty database). Raises RuntimeError if another process, or another
    store of this one, holds it."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        if (found.st_dev, found.st_ino) in _held:
            raise RuntimeError(_in_use(path))
    # No await between the check above and the lock below: nothing else of this process
    # can open the file in between.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # this process has no connection to the file (see above): safe
        raise RuntimeError(_in_use(path)) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        legacy = _legacy_lock(path)
    except BaseException:
        os.close(fd)
        raise
    info = os.fstat(fd)
    if info.st_mode & 0o077:
        log.warning(
            "database %s is open to other users (mode %s): it holds payloads, results and"
            " the lease token secret; make it the owner's alone with chmod 600 (its -wal and"
            " -shm files too)",
            path,
            stat.filemode(info.st_mode),
        )
    key = (info.st_dev, info.st_ino)
    _held[key] = path
    return DatabaseLock(fd, key, legacy)


def _legacy_lock(path: Path) -> IO[str]:
    fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    lock_file = os.fdopen(fd, "w")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise RuntimeError(_in_use(path)) from None
    return lock_file


def _in_use(path: Path) -> str:
    real = Path(os.path.realpath(path))
    named = str(path) if real == Path(path).absolute() else f"{path} (the file {real})"
    return f"database {named} is in use by another feeder (or another feedwork process)"
