"""Lease tokens: opaque to clients, authenticated by the feeder.

A token carries (task id, attempt) and an HMAC-SHA256 tag over them with a secret kept in the
database, so tokens survive restarts, are shared by feeders on one database, and cannot be
forged or altered by a client: changing either number invalidates the tag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

_BODY = struct.Struct(">BQI")  # version, task id, attempt
_TAG_BYTES = 16
_VERSION = 1
_TOKEN_BYTES = _BODY.size + _TAG_BYTES


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """What a verified token names: one attempt of one task."""

    task_id: int
    attempt: int


class TokenError(ValueError):
    """The token is malformed or its tag does not verify."""


class TokenCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("token secret must be at least 16 bytes")
        self._secret = secret

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_TAG_BYTES]

    def issue(self, task_id: int, attempt: int) -> str:
        body = _BODY.pack(_VERSION, task_id, attempt)
        return _encode(body + self._tag(body))

    def verify(self, token: str) -> LeaseRef:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("lease token is not valid base64") from exc
        if len(raw) != _TOKEN_BYTES:
            raise TokenError("lease token has the wrong length")
        if _encode(raw) != token:
            # The decoder skips stray characters and ignores the unused low bits of the
            # last character: accept only the one spelling `issue` produces.
            raise TokenError("lease token is not in canonical form")
        body, tag = raw[: _BODY.size], raw[_BODY.size :]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise TokenError("lease token was not issued by this feeder")
        version, task_id, attempt = _BODY.unpack(body)
        if version != _VERSION:
            raise TokenError("lease token version is not supported")
        return LeaseRef(task_id=task_id, attempt=attempt)


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
