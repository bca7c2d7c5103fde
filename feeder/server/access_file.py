"""The access list as configured: the `--auth-file` file (read again when it changes, so a
key is granted or revoked within about a second, without a restart) and the `--auth`
text (fixed for the life of the process), together.

A file that changes into something malformed (or that cannot be read) is logged as an
error and the list in use is kept, so a typo does not lock every client out; the change
is taken once the file is fixed. At start, though, a bad file or text stops the feeder.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

from feeder.server.access import AccessError, AccessList, parse_access_list
from feeder.service.file_versions import FileVersion

log = logging.getLogger("feedwork.feeder.auth")

RECHECK_SECONDS = 1.0


class AccessSource:
    """`current()` is the access list to decide a call by (cheap: one `stat` of the file
    a second at most)."""

    def __init__(
        self,
        *,
        path: str | None = None,
        text: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if path is None and text is None:
            raise ValueError("an access list needs a file or text")
        self.path = path
        self._text = text or ""
        self._clock = clock
        self._checked_at = clock()
        self._version: FileVersion | None = None
        self.reloads = 0
        self._current = self._load()  # raises AccessError: a feeder starts with a good list

    def current(self) -> AccessList:
        if self.path is not None:
            now = self._clock()
            if now - self._checked_at >= RECHECK_SECONDS:
                self._checked_at = now
                self._reload()
        return self._current

    def _reload(self) -> None:
        try:
            if _version(self.path) == self._version:  # type: ignore[arg-type]
                return
            access = self._load()
        except AccessError as exc:
            log.error("access list changed but is not valid (keeping the one in use): %s", exc)
            return
        self._current = access
        self.reloads += 1
        log.info("access list %s read again: %d entries", self.path, len(access))

    def _load(self) -> AccessList:
        file_text = ""
        if self.path is not None:
            version = _version(self.path)
            try:
                with open(self.path, encoding="utf-8") as file:
                    file_text = file.read()
                    mode = os.fstat(file.fileno()).st_mode
            except (OSError, UnicodeDecodeError) as exc:
                raise AccessError(f"{self.path}: cannot read: {exc}") from None
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                log.warning(
                    "%s can be written by other users, who could grant themselves access: "
                    "chmod go-w it",
                    self.path,
                )
            self._version = version
        parts = [parse_access_list(self._text, "--auth")] if self._text else []
        if self.path is not None:
            parts.append(parse_access_list(file_text, self.path))
        return _merge(parts)


def _version(path: str) -> FileVersion:
    try:
        return FileVersion.of_path(path)
    except OSError as exc:
        raise AccessError(f"{path}: {exc.strerror or exc}") from None


def _merge(parts: list[AccessList]) -> AccessList:
    if len(parts) == 1:
        return parts[0]
    merged = AccessList({}, {})
    names: set[str] = set()
    for part in parts:
        for principal in (*part.by_key_digest.values(), *part.by_certificate.values()):
            if principal.name in names:
                raise AccessError(f"{principal.name!r} has entries in both --auth and the file")
            names.add(principal.name)
        merged.by_key_digest.update(part.by_key_digest)
        merged.by_certificate.update(part.by_certificate)
    return merged
