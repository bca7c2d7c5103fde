"""Who may call the feeder: API keys and client certificate identities, with roles per queue.

An access list is text, one entry per line (or entries separated by ';' where newlines
are awkward, as in an environment variable)::

    # NAME      CREDENTIAL                    ROLE[:QUEUE-PATTERN] ...
    ingest      sha256:9f86d081884c7d65...    producer:images producer:emails.*
    resizer     sha256:2c26b46b68ffc68f...    worker:images
    ops         sha256:fcde2b2edba56bf4...    admin
    worker-7    cert:worker-7.example.com     worker:images

NAME is the identity the feeder records and logs (with each lease, in the audit log).
CREDENTIAL is `sha256:` and the SHA-256 (hex) of an API key (`feedwork keys new` makes a
key and its line; the feeder never holds the key itself), or `cert:` and the identity of
a client certificate (its subject common name, else its first DNS name) for mTLS. A ROLE
is `producer` (Submit, GetTask, CancelTask), `worker` (Lease, Consume, Ack, Nack, Extend)
or `admin` (all of these, and dead letters and stats), limited to the queues whose names
match its pattern (shell-style: `*`, `?`, `[...]`; no pattern: every queue).

Pure: parsing and decisions only. Reading the file, and reading it again when it changes,
is `feeder.server.auth`'s.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from feeder.core.quoting import quoted
from feedwork.apikeys import key_digest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:/+-]{0,127}")
_HASH = re.compile(r"sha256:([0-9a-f]{64})")
_QUEUE_PATTERN = re.compile(r"[A-Za-z0-9._*?\[\]!-]{1,128}")


class AccessError(ValueError):
    """The access list is malformed; the message names the source and line."""


class Role(enum.StrEnum):
    PRODUCER = "producer"
    WORKER = "worker"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Grant:
    role: Role
    pattern: str = "*"

    def covers(self, role: Role, queue: str | None) -> bool:
        """True when this grant allows `role`'s calls on `queue` (None: every queue,
        which only an unlimited grant covers)."""
        if self.role is not role and self.role is not Role.ADMIN:
            return False
        if queue is None:
            return self.pattern == "*"
        return fnmatchcase(queue, self.pattern)

    def __str__(self) -> str:
        return str(self.role) if self.pattern == "*" else f"{self.role}:{self.pattern}"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its name and what it may do."""

    name: str
    grants: tuple[Grant, ...]

    def may(self, role: Role, queues: Iterable[str | None]) -> str | None:
        """None when every queue in `queues` is allowed for `role`, else the first one
        that is not (`"*"` for None, every queue)."""
        for queue in queues:
            if not any(grant.covers(role, queue) for grant in self.grants):
                return "*" if queue is None else queue
        return None

    def has(self, role: Role) -> bool:
        return any(grant.role is role or grant.role is Role.ADMIN for grant in self.grants)

    def describe(self) -> str:
        return f"{quoted(self.name)} ({' '.join(map(str, self.grants))})"


@dataclass(frozen=True, slots=True)
class AccessList:
    """Principals by the SHA-256 digest of their API key, and by certificate identity."""

    by_key_digest: dict[bytes, Principal]
    by_certificate: dict[str, Principal]

    def for_key(self, key: str) -> Principal | None:
        # Found by the digest of the key, never by the key: how long the lookup takes can
        # only tell how a SHA-256 digest compares with the stored ones, which says nothing
        # of any key (the reason keys are compared in constant time), and the feeder holds
        # no key an attacker could recover from its memory or files.
        return self.by_key_digest.get(key_digest(key))

    def for_certificate(self, identity: str) -> Principal | None:
        return self.by_certificate.get(identity)

    def __len__(self) -> int:
        return len(self.by_key_digest) + len(self.by_certificate)


def parse_access_list(text: str, source: str) -> AccessList:
    """The access list in `text`; `source` names it in errors ("FILE:LINE: ...")."""
    keys: dict[bytes, Principal] = {}
    certificates: dict[str, Principal] = {}
    names: set[str] = set()
    for number, line in _entries(text):
        where = f"{source}:{number}"
        fields = line.split()
        if len(fields) < 3:
            raise AccessError(f"{where}: want NAME CREDENTIAL ROLE[:PATTERN] ...")
        name, credential, *roles = fields
        if not _NAME.fullmatch(name):
            raise AccessError(f"{where}: {name!r} is not a name (letters, digits, ._@:/+-)")
        if name in names:
            raise AccessError(f"{where}: {name!r} has an entry already")
        names.add(name)
        principal = Principal(name, tuple(_grant(role, where) for role in roles))
        if match := _HASH.fullmatch(credential):
            digest = bytes.fromhex(match[1])
            if digest in keys:
                raise AccessError(f"{where}: the same key hash as {keys[digest].name!r}")
            keys[digest] = principal
        elif credential.startswith("cert:") and len(credential) > len("cert:"):
            certificates[credential.removeprefix("cert:")] = principal
        else:
            raise AccessError(
                f"{where}: credential {credential[:12]!r}... is neither sha256:<64 hex digits> "
                "(the hash of an API key) nor cert:<certificate identity>"
            )
    return AccessList(keys, certificates)


def _entries(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        for entry in line.split("#", 1)[0].split(";"):
            if entry.strip():
                yield number, entry.strip()


def _grant(text: str, where: str) -> Grant:
    role_text, _, pattern = text.partition(":")
    try:
        role = Role(role_text)
    except ValueError:
        raise AccessError(
            f"{where}: {role_text!r} is not a role (want producer, worker or admin)"
        ) from None
    if not pattern:
        return Grant(role)
    if not _QUEUE_PATTERN.fullmatch(pattern):
        raise AccessError(f"{where}: {pattern!r} is not a queue name or pattern")
    return Grant(role, pattern)
