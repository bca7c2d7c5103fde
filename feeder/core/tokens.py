"""Lease tokens: opaque to clients, authenticated by the feeder.

A token carries (task id, attempt) and a MAC over them, so tokens survive restarts, are
shared by feeders with the same secrets, and cannot be forged or altered by a client:
changing any byte invalidates the tag.

Version 2 tokens use keyed BLAKE2s, a MAC by design (RFC 7693) and one C call, less than
half the cost of HMAC-SHA256 through `hmac`: a token is issued per lease and verified per
ack. They are signed with the secret kept in the database (the "legacy" secret), and are
what a feeder issues without a key ring, so feeders of earlier versions on the same
database keep accepting each other's tokens. Version 1 tokens (HMAC-SHA256, issued by
earlier feeders) still verify, so leases held across an upgrade can still be acked.

Version 3 tokens name the key that signed them: a `KeyRing` holds several secrets by key
id, one of them current for issuing, so a secret can be rotated while tokens signed with
the previous one still verify until that key is dropped from the ring. Versions 1 and 2
carry no key id and always verify with the legacy secret, which every codec keeps.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from feeder.core.records import fast_init

_BODY_V2 = struct.Struct(">BQI")  # version, task id, attempt (versions 1 and 2)
_BODY_V3 = struct.Struct(">BBQI")  # version, key id, task id, attempt
_TAG_BYTES = 16
_HMAC_SHA256, _BLAKE2S, _KEYED_BLAKE2S = 1, 2, 3  # token versions
_V2_BYTES = _BODY_V2.size + _TAG_BYTES
_V3_BYTES = _BODY_V3.size + _TAG_BYTES
# Token characters (unpadded base64) -> decoded bytes, of the only two sizes a token has:
# 39 characters for versions 1 and 2, 40 for version 3.
_BYTES_BY_CHARS = {-(-size * 4 // 3): size for size in (_V2_BYTES, _V3_BYTES)}
# The URL-safe base64 alphabet, applied around binascii (what base64.urlsafe_b64* do, minus
# their layers of Python: a token is issued per lease and verified per ack).
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_PADDING = ("", "=", "==", "===")
# A key id is one byte of the token; 0 is never a key's, so a zeroed token names none.
MAX_KEY_ID = 255
# A ring's keys are operator-made secrets: as long as BLAKE2s's longest key.
MIN_KEY_BYTES = 32
# The legacy secret may be shorter (earlier releases allowed it); never below this.
MIN_LEGACY_BYTES = 16


@fast_init
@dataclass(frozen=True, slots=True)
class LeaseRef:
    """What a verified token names: one attempt of one task."""

    task_id: int
    attempt: int


class TokenError(ValueError):
    """The token is malformed or its tag does not verify."""


@dataclass(frozen=True, slots=True, eq=False)
class KeyRing:
    """Lease-token secrets by key id (1 to MAX_KEY_ID). New tokens are signed with the
    `current` one; with none current they are version 2, signed with the legacy secret
    (so that a ring can reach every feeder before any of them signs with it). A token
    verifies while the ring holds the key it names."""

    keys: Mapping[int, bytes]
    current: int | None

    def __post_init__(self) -> None:
        for key_id, secret in self.keys.items():
            if not 1 <= key_id <= MAX_KEY_ID:
                raise ValueError(f"key id {key_id} is not between 1 and {MAX_KEY_ID}")
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id} is shorter than {MIN_KEY_BYTES} bytes")
        if self.current is not None and self.current not in self.keys:
            raise ValueError(f"the current key {self.current} is not in the ring")
        object.__setattr__(self, "keys", dict(self.keys))  # a caller's later edits stay out


class TokenCodec:
    """Issues and verifies lease tokens. `secret` is the legacy (database) secret: it
    signs versions 1 and 2. New tokens are version 3 under the `ring`'s current key, else
    version 2, as feeders without a ring issue them."""

    def __init__(self, secret: bytes, ring: KeyRing | None = None) -> None:
        if len(secret) < MIN_LEGACY_BYTES:
            raise ValueError(f"token secret must be at least {MIN_LEGACY_BYTES} bytes")
        self._key = _blake2s_key(secret)
        # Version 1: keyed once; copying a keyed HMAC costs less than keying one per token.
        self._hmac = hmac.new(secret, digestmod="sha256")
        self._keys = {} if ring is None else {i: _blake2s_key(s) for i, s in ring.keys.items()}
        self._current = None if ring is None else ring.current
        self._current_key = self._key if self._current is None else self._keys[self._current]

    @property
    def current_key_id(self) -> int | None:
        """The key id new tokens carry; None: they are version 2 (no key id)."""
        return self._current

    def _tag(self, body: bytes) -> bytes:
        """The tag of a version 1 or 2 body, which the legacy secret signs."""
        if body[0] == _HMAC_SHA256:
            mac = self._hmac.copy()
            mac.update(body)
            return mac.digest()[:_TAG_BYTES]
        return hashlib.blake2s(body, key=self._key, digest_size=_TAG_BYTES).digest()

    def issue(self, task_id: int, attempt: int) -> str:
        if self._current is None:
            body = _BODY_V2.pack(_BLAKE2S, task_id, attempt)
        else:
            body = _BODY_V3.pack(_KEYED_BLAKE2S, self._current, task_id, attempt)
        tag = hashlib.blake2s(body, key=self._current_key, digest_size=_TAG_BYTES).digest()
        return _encode(body + tag)

    def verify(self, token: str) -> LeaseRef:
        # Checked first: a token of any size may come in (it is an item's outcome, not an
        # error of its request), and nothing longer than a real one is worth decoding.
        size = _BYTES_BY_CHARS.get(len(token))
        if size is None:
            raise TokenError("lease token has the wrong length")
        try:
            padded = (token + _PADDING[-len(token) % 4]).encode("ascii")
            raw = binascii.a2b_base64(padded.translate(_FROM_URLSAFE))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("lease token is not valid base64") from exc
        if len(raw) != size:
            raise TokenError("lease token has the wrong length")
        if _encode(raw) != token:
            # The decoder skips stray characters and ignores the unused low bits of the
            # last character: accept only the one spelling `issue` produces.
            raise TokenError("lease token is not in canonical form")
        if size == _V3_BYTES:
            return self._verify_v3(raw)
        body, tag = raw[: _BODY_V2.size], raw[_BODY_V2.size :]
        if not hmac.compare_digest(tag, self._tag(body)):
            raise TokenError("lease token was not issued by this feeder")
        version, task_id, attempt = _BODY_V2.unpack(body)
        if version not in (_HMAC_SHA256, _BLAKE2S):
            raise TokenError("lease token version is not supported")
        return LeaseRef(task_id, attempt)

    def _verify_v3(self, raw: bytes) -> LeaseRef:
        version, key_id, task_id, attempt = _BODY_V3.unpack_from(raw)
        if version != _KEYED_BLAKE2S:
            raise TokenError("lease token version is not supported")
        key = self._keys.get(key_id)
        if key is None:
            # Dropped from the ring (rotated out), or never in this feeder's: the key id is
            # under the tag, so a forged one fails here or at the tag, never passes.
            raise TokenError("lease token was signed with a key this feeder does not have")
        body, tag = raw[: _BODY_V3.size], raw[_BODY_V3.size :]
        expected = hashlib.blake2s(body, key=key, digest_size=_TAG_BYTES).digest()
        if not hmac.compare_digest(tag, expected):
            raise TokenError("lease token was not issued by this feeder")
        return LeaseRef(task_id, attempt)


def _blake2s_key(secret: bytes) -> bytes:
    # BLAKE2s takes keys of at most 32 bytes; a longer secret is hashed down to 32.
    return hashlib.blake2s(secret).digest() if len(secret) > 32 else secret


def _encode(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode()
