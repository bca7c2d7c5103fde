"""Which version of a file is on disk, for the files a running feeder reads again when they
change (the access list, the TLS certificate and key, the token secret file): one `stat`
tells, without reading the file."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What identifies a version of a file: a change of any part is a new version (a file
    renamed over it, a rewrite, a chmod)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int  # a chmod, or a rewrite within the mtime's resolution

    @classmethod
    def of(cls, info: os.stat_result) -> FileVersion:
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)

    @classmethod
    def of_path(cls, path: str) -> FileVersion:
        """The version of the file at `path` now; raises OSError."""
        return cls.of(os.stat(path))
