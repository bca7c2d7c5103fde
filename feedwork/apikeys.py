"""API keys: `fwk_<key id>_<secret>`, and the hash an auth file keeps instead of the key.

The key id (8 hex digits) is not secret: it names a key in logs and audit records without
revealing it. The secret is 32 random bytes, URL-safe base64 (it may contain `_` and `-`,
so a key splits on its first two underscores only). An auth file stores
`sha256:<hex>` of the whole key string, so that reading the file gives no key away.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "fwk"
HASH_SCHEME = "sha256"
_KEY = re.compile(r"fwk_([0-9a-f]{8})_([A-Za-z0-9_-]{16,})")


def new_key() -> str:
    """A new random API key."""
    return f"{PREFIX}_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def key_id(key: str) -> str:
    """The key's id (its 8 hex digits). Raises ValueError for text that is not a key."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError("not a feedwork API key (fwk_<8 hex digits>_<secret>)")
    return match[1]


def key_digest(key: str) -> bytes:
    """The SHA-256 digest of the whole key (any text: what a caller sent is hashed as is)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_hash(key: str) -> str:
    """`sha256:<64 hex digits>` of the whole key, as an auth file names the key."""
    return f"{HASH_SCHEME}:{key_digest(key).hex()}"
