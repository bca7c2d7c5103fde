"""Lease-token keys kept in a file of their own (--token-secret-file), re-read when it changes.

The file is text, one key per line::

    # feedwork lease-token keys: KEY_ID SECRET [current]
    1 5f0c...64 or more hex digits...e1
    2 9a7b...64 or more hex digits...03 current

KEY_ID is a number from 1 to 255, each used once. SECRET is at least 32 bytes written as
hex (64 or more hex digits, either case): hex, not base64, because it has one spelling and
nothing in it can be mistaken for a comment or a separator. At most one line carries the
word `current`: new tokens are signed with that key; the others only verify tokens signed
earlier. With no key current, new tokens are signed with the database's secret, as without
a file. A `#` starts a comment, to the end of its line; blank lines are ignored.

The current key is marked, not implied by its place (the last line, the highest id), so
that a change can reach several feeders in two steps and no lease is refused meanwhile:
add the new key to every feeder's file first (each verifies it, none signs with it), then
mark it current. Once no lease signed with the old key can still be in use, drop its line.
The same two steps turn the file on (a first key, then its mark) and off (the mark away,
then the option). `feedwork db token-key` makes a key line or adds one to a file.

A file that cannot be read or parsed is refused at startup (a `TokenKeyFileError` naming
the file and line, never quoting a secret); later, a bad new version is logged and the keys
read before stay in use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping

from feeder.core.tokens import MAX_KEY_ID, MIN_KEY_BYTES, KeyRing
from feeder.service.file_versions import FileVersion

log = logging.getLogger("feedwork.feeder.tokens")

# How often a running feeder looks at the file (a stat; it is read only when it changed).
KEY_FILE_CHECK = 1.0
# A key file is a few lines: anything this large is not one (a wrong path, /dev/zero).
MAX_FILE_BYTES = 64 * 1024
# The mode `write_new_key` gives a file it makes: its owner's alone, whatever the umask.
FILE_MODE = 0o600
CURRENT = "current"
_KEY_ID = re.compile(r"[0-9]{1,3}")
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


class TokenKeyFileError(ValueError):
    """The token secret file cannot be read, or is not a valid one."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        where = f"token secret file {path}" + ("" if line is None else f", line {line}")
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


def parse_key_file(text: str, path: str) -> KeyRing:
    """The key ring `text` (a key file's content) describes; `path` is for messages.
    Raises TokenKeyFileError naming the line at fault."""
    keys: dict[int, bytes] = {}
    current: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] != CURRENT):
            raise TokenKeyFileError(path, f"want KEY_ID SECRET [{CURRENT}]", number)
        if not _KEY_ID.fullmatch(fields[0]) or not 1 <= int(fields[0]) <= MAX_KEY_ID:
            raise TokenKeyFileError(
                path, f"the key id must be a number from 1 to {MAX_KEY_ID}", number
            )
        key_id = int(fields[0])
        if key_id in keys:
            raise TokenKeyFileError(path, f"key id {key_id} is used twice", number)
        if not _HEX.fullmatch(fields[1]):
            raise TokenKeyFileError(path, f"the secret of key {key_id} is not hex digits", number)
        secret = bytes.fromhex(fields[1])
        if len(secret) < MIN_KEY_BYTES:
            raise TokenKeyFileError(
                path,
                f"the secret of key {key_id} is {len(secret)} bytes; a key needs at least"
                f" {MIN_KEY_BYTES} ({2 * MIN_KEY_BYTES} hex digits)",
                number,
            )
        if len(fields) == 3:
            if current is not None:
                raise TokenKeyFileError(
                    path, f"key {current} is already marked {CURRENT}; mark one key only", number
                )
            current = key_id
        keys[key_id] = secret
    if not keys:
        raise TokenKeyFileError(path, "holds no key (want lines KEY_ID SECRET [current])")
    return KeyRing(keys, current)


def read_key_file(path: str) -> tuple[KeyRing, FileVersion]:
    """The file's keys, and the version of it they were read from. Warns when others may
    read or write it. Raises TokenKeyFileError."""
    try:
        # Non-blocking: a FIFO put in the file's place is refused below, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise TokenKeyFileError(path, _cannot_read(exc)) from None
    try:
        # The version is taken before the read: a change during it is a later version.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenKeyFileError(path, "is not a regular file")
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenKeyFileError(path, _cannot_read(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise TokenKeyFileError(path, f"is larger than {MAX_FILE_BYTES} bytes: not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TokenKeyFileError(path, "is not UTF-8 text", line) from None
    ring = parse_key_file(text, path)
    if info.st_mode & 0o077:
        log.warning(
            "token secret file %s is open to other users (mode %s): whoever reads it can"
            " forge lease tokens; make it the owner's alone with chmod 600",
            path,
            stat.filemode(info.st_mode),
        )
    return ring, FileVersion.of(info)


def same_keys(a: KeyRing, b: KeyRing) -> bool:
    return a.current == b.current and a.keys == b.keys


def describe(ring: KeyRing) -> str:
    """The ring's key ids and current key, for logs (never a secret)."""
    ids = ", ".join(str(key_id) for key_id in sorted(ring.keys))
    if ring.current is None:
        return f"keys {ids}; none current (new tokens signed with the database's secret)"
    return f"keys {ids}; current {ring.current}"


class TokenKeyFile:
    """One token secret file: `load()` once at startup, then `poll()` every KEY_FILE_CHECK
    seconds. Both do blocking I/O (run them in a thread from the event loop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()  # one poll at a time: each updates what was seen
        self._seen: FileVersion | None = None
        self._ring: KeyRing | None = None
        # The last version read was refused; it was read twice (see `poll`).
        self._failing = self._settled = False

    def load(self) -> KeyRing:
        """The file's keys; raises TokenKeyFileError."""
        with self._lock:
            self._ring, self._seen = read_key_file(self.path)
            self._settled = self._failing = False
            log.info("%s: %s", self._name, describe(self._ring))
            return self._ring

    def poll(self) -> KeyRing | None:
        """The file's keys if it changed since last read and now holds other valid keys,
        else None. Never raises: a file that went missing or is invalid is logged once per
        version, and the keys read before stay in use."""
        with self._lock:
            try:
                seen = FileVersion.of_path(self.path)
            except OSError as exc:
                self._refuse(None, TokenKeyFileError(self.path, _cannot_read(exc)))
                return None
            if seen == self._seen and self._settled:
                return None
            # A version is read once more at the next poll, whatever its stat says: a write
            # within the timestamps' resolution of the one before may leave every field as
            # it was. The stat is trusted once two reads a poll apart found the same.
            unchanged = seen == self._seen
            try:
                ring, seen = read_key_file(self.path)
            except TokenKeyFileError as exc:
                self._settled = unchanged and self._failing
                self._refuse(seen, exc)
                return None
            failing, self._failing, self._seen = self._failing, False, seen
            same = self._ring is not None and same_keys(ring, self._ring)
            self._settled = unchanged and same and not failing
            if same:
                if failing:
                    log.info("%s is valid again: %s", self._name, describe(ring))
                return None
            self._ring = ring
            log.info("%s changed: %s", self._name, describe(ring))
            return ring

    @property
    def _name(self) -> str:
        return f"token secret file {self.path}"

    def _refuse(self, seen: FileVersion | None, problem: TokenKeyFileError) -> None:
        if seen != self._seen or not self._failing:
            kept = describe(self._ring) if self._ring is not None else "none"
            log.error("%s; keeping the keys read before (%s)", problem, kept)
        self._seen, self._failing = seen, True


def _cannot_read(exc: OSError) -> str:
    return f"cannot read it: {exc.strerror or exc}"


# -- making keys (feedwork db token-key) --------------------------------------------------


def key_line(key_id: int, secret: bytes, *, current: bool) -> str:
    """One line of a key file."""
    return f"{key_id} {secret.hex()}" + (f" {CURRENT}" if current else "")


def new_secret() -> bytes:
    return secrets.token_bytes(MIN_KEY_BYTES)


def free_key_id(keys: Mapping[int, bytes]) -> int:
    """The id a new key gets: one more than the highest, else the lowest unused."""
    highest = max(keys, default=0)
    if highest < MAX_KEY_ID:
        return highest + 1
    for key_id in range(1, MAX_KEY_ID + 1):
        if key_id not in keys:
            return key_id
    raise ValueError(f"all {MAX_KEY_ID} key ids are in use; drop keys no longer needed")


_HEADER = (
    "# feedwork lease-token keys: KEY_ID SECRET [current]  (docs/SECURITY.md)\n"
    "# New tokens are signed with the key marked current (none: the database's secret);\n"
    "# the others still verify the tokens they signed.\n"
)


def write_new_key(path: str, key_id: int | None = None, *, current: bool = False) -> int:
    """Adds a new random key to the key file at `path` (made, mode 0600, if there is none)
    and returns its id. The key is marked current if `current`, which a file with a key
    current already refuses: the mark moves by hand once every feeder has the new key.
    The file is replaced whole (rename), so a feeder never reads it half written."""
    if key_id is not None and not 1 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"a key id is a number from 1 to {MAX_KEY_ID}")
    try:
        ring, _ = read_key_file(path)
    except TokenKeyFileError:
        if os.path.lexists(path):
            raise
        key_id = key_id or 1
        _replace(path, _HEADER + key_line(key_id, new_secret(), current=current) + "\n", FILE_MODE)
        return key_id
    if current and ring.current is not None:
        raise TokenKeyFileError(
            path,
            f"key {ring.current} is current: add the new key unmarked, and move the mark to"
            " it once every feeder has it",
        )
    if key_id is None:
        key_id = free_key_id(ring.keys)
    elif key_id in ring.keys:
        raise TokenKeyFileError(path, f"key id {key_id} is in use already")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    if text and not text.endswith("\n"):
        text += "\n"
    mode = stat.S_IMODE(os.stat(path).st_mode)
    _replace(path, text + key_line(key_id, new_secret(), current=current) + "\n", mode)
    return key_id


def _replace(path: str, text: str, mode: int) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
