"""Lease tokens under a key ring (version 3): rotation, key ids, and every way such a token
can be wrong; versions 1 and 2 still verify with the legacy (database) secret."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeder.core.tokens import MAX_KEY_ID, KeyRing, LeaseRef, TokenCodec, TokenError
from tests.unit.test_tokens import ALPHABET, encode, raw_of, signed, signed_v1

LEGACY = b"database-secret-0123456789abcdef"
K1, K2, K3 = (bytes([n]) * 32 for n in (1, 2, 3))
V3_BYTES = 14 + 16  # version, key id, task id, attempt; 16-byte tag
UNKNOWN_KEY = "signed with a key this feeder does not have"


def ring(current: int, **keys: bytes) -> KeyRing:
    return KeyRing({int(name[1:]): secret for name, secret in keys.items()}, current)


def codec(current: int, **keys: bytes) -> TokenCodec:
    return TokenCodec(LEGACY, ring(current, **keys))


def signed_v3(key_id: int, task_id: int, attempt: int, secret: bytes) -> str:
    """A version 3 token as the feeder issues it, made here from the format."""
    body = struct.pack(">BBQI", 3, key_id, task_id, attempt)
    key = hashlib.blake2s(secret).digest() if len(secret) > 32 else secret
    return encode(body + hashlib.blake2s(body, key=key, digest_size=16).digest())


CODEC = codec(2, k1=K1, k2=K2)


def test_version_3_token_shape_and_format() -> None:
    token = CODEC.issue(123, 4)
    raw = raw_of(token)
    assert len(raw) == V3_BYTES and len(token) == 40
    assert set(token) <= set(ALPHABET) and "=" not in token
    assert raw[:2] == bytes([3, 2])  # version 3, key 2 (the current one)
    assert token == signed_v3(2, 123, 4, K2)
    assert CODEC.issue(123, 4) == token  # deterministic
    assert CODEC.current_key_id == 2


@pytest.mark.parametrize(
    ("task_id", "attempt"), [(0, 0), (1, 1), (42, 7), (2**63, 2**31), (2**64 - 1, 2**32 - 1)]
)
def test_round_trip(task_id: int, attempt: int) -> None:
    token = CODEC.issue(task_id, attempt)
    assert CODEC.verify(token) == LeaseRef(task_id, attempt)
    assert codec(2, k1=K1, k2=K2).verify(token) == LeaseRef(task_id, attempt)  # a restart


@settings(max_examples=200, database=None)
@given(
    task_id=st.integers(0, 2**64 - 1),
    attempt=st.integers(0, 2**32 - 1),
    key_id=st.integers(1, MAX_KEY_ID),
    secret=st.binary(min_size=32, max_size=100),
)
def test_any_key_id_and_secret_round_trip(
    task_id: int, attempt: int, key_id: int, secret: bytes
) -> None:
    issuer = TokenCodec(LEGACY, KeyRing({key_id: secret}, key_id))
    token = issuer.issue(task_id, attempt)
    assert token == signed_v3(key_id, task_id, attempt, secret)
    assert issuer.verify(token) == LeaseRef(task_id, attempt)


def test_rotation_keeps_old_tokens_until_their_key_is_dropped() -> None:
    before = codec(1, k1=K1)
    old = before.issue(7, 1)
    # Step 1: the new key is added (not current): new tokens still use key 1.
    added = codec(1, k1=K1, k2=K2)
    assert raw_of(added.issue(8, 1))[1] == 1
    # Step 2: key 2 becomes current; key 1 tokens still verify.
    rotated = codec(2, k1=K1, k2=K2)
    new = rotated.issue(8, 1)
    assert raw_of(new)[1] == 2
    assert rotated.verify(old) == LeaseRef(7, 1)
    assert rotated.verify(new) == LeaseRef(8, 1)
    # A feeder that has key 2 but has not made it current verifies new tokens too.
    assert added.verify(new) == LeaseRef(8, 1)
    # Step 3: key 1 is dropped: its tokens are refused, key 2's are not.
    dropped = codec(2, k2=K2)
    with pytest.raises(TokenError, match=UNKNOWN_KEY):
        dropped.verify(old)
    assert dropped.verify(new) == LeaseRef(8, 1)
    # A feeder that never had key 2 refuses its tokens.
    with pytest.raises(TokenError, match=UNKNOWN_KEY):
        before.verify(new)


def test_a_key_id_reused_for_another_secret_refuses_the_old_tokens() -> None:
    old = codec(1, k1=K1).issue(7, 1)
    with pytest.raises(TokenError, match="not issued by this feeder"):
        codec(1, k1=K3).verify(old)


def test_legacy_tokens_verify_with_a_ring_and_without() -> None:
    plain = TokenCodec(LEGACY)
    v2 = plain.issue(5, 2)
    assert len(v2) == 39 and raw_of(v2)[0] == 2
    v1 = signed_v1(struct.pack(">BQI", 1, 5, 2), LEGACY)
    for verifier in (plain, CODEC, codec(3, k3=K3)):
        assert verifier.verify(v2) == LeaseRef(5, 2)
        assert verifier.verify(v1) == LeaseRef(5, 2)


def test_without_a_ring_tokens_are_exactly_version_2() -> None:
    plain = TokenCodec(LEGACY)
    assert plain.current_key_id is None
    assert plain.issue(9, 3) == signed(struct.pack(">BQI", 2, 9, 3), LEGACY)


def test_a_ring_with_no_key_current_signs_version_2_and_verifies_its_keys() -> None:
    """How a ring reaches every feeder before any signs with it (no lease refused)."""
    staged = TokenCodec(LEGACY, KeyRing({1: K1, 2: K2}, None))
    assert staged.current_key_id is None
    token = staged.issue(9, 3)
    assert token == TokenCodec(LEGACY).issue(9, 3)
    assert staged.verify(CODEC.issue(9, 3)) == LeaseRef(9, 3)
    assert CODEC.verify(token) == LeaseRef(9, 3)


def test_a_feeder_without_the_ring_refuses_version_3() -> None:
    with pytest.raises(TokenError, match=UNKNOWN_KEY):
        TokenCodec(LEGACY).verify(CODEC.issue(1, 1))


def test_legacy_secret_under_another_database_is_refused() -> None:
    token = TokenCodec(b"another-database-secret-0123456").issue(1, 1)
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(token)


def test_the_legacy_secret_does_not_sign_version_3() -> None:
    """A ring key id whose secret is the database's does not make v2 tags v3 ones."""
    token = signed_v3(2, 1, 1, LEGACY)
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(token)


def test_forged_key_ids_are_refused() -> None:
    raw = raw_of(CODEC.issue(11, 2))
    for key_id in range(256):
        if key_id == 2:
            continue
        forged = encode(raw[:1] + bytes([key_id]) + raw[2:])
        expected = "not issued by this feeder" if key_id == 1 else UNKNOWN_KEY
        with pytest.raises(TokenError, match=expected):
            CODEC.verify(forged)


def test_a_token_re_signed_under_another_key_id_needs_that_key() -> None:
    # Key 1's secret, key 2's id: the tag is over the id, so this is not key 1's token.
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(signed_v3(2, 11, 2, K1))


def test_every_byte_change_is_refused() -> None:
    raw = raw_of(CODEC.issue(987654321, 3))
    for index, value in itertools.product(range(V3_BYTES), range(256)):
        if value == raw[index]:
            continue
        tampered = bytearray(raw)
        tampered[index] = value
        with pytest.raises(TokenError):
            CODEC.verify(encode(bytes(tampered)))


def test_every_single_character_change_is_refused() -> None:
    token = CODEC.issue(987654321, 3)
    for index, original in enumerate(token):
        for replacement in ALPHABET + "+/=. é":
            if replacement != original:
                with pytest.raises(TokenError):
                    CODEC.verify(token[:index] + replacement + token[index + 1 :])


def test_other_versions_in_the_version_3_shape_are_refused() -> None:
    for version in (0, 1, 2, 4, 255):
        body = struct.pack(">BBQI", version, 2, 1, 1)
        token = encode(body + hashlib.blake2s(body, key=K2, digest_size=16).digest())
        with pytest.raises(TokenError, match="version"):
            CODEC.verify(token)


def test_version_3_in_the_version_2_shape_is_refused() -> None:
    with pytest.raises(TokenError, match="version"):
        CODEC.verify(signed(struct.pack(">BQI", 3, 1, 1), LEGACY))


def test_truncated_and_extended_tokens_are_refused() -> None:
    token = CODEC.issue(77, 1)
    for cut in range(len(token)):
        with pytest.raises(TokenError):
            CODEC.verify(token[:cut])
    for suffix in ("A", "AA", "AAAA", "=", "==", "\n", " "):
        with pytest.raises(TokenError):
            CODEC.verify(token + suffix)
    # A v2 token with one character more is 40 characters: the size of a v3 one.
    with pytest.raises(TokenError):
        CODEC.verify(TokenCodec(LEGACY).issue(77, 1) + "A")


def test_non_canonical_spellings_are_refused() -> None:
    # 30 bytes are exactly 40 characters: no spare bits, but '=' or stray characters may
    # still be slipped in in place of one.
    token = CODEC.issue(77, 1)
    for index in (0, 20, 39):
        for junk in ("=", "\n", " ", "!"):
            with pytest.raises(TokenError):
                CODEC.verify(token[:index] + junk + token[index + 1 :])


@settings(max_examples=300, database=None)
@given(raw=st.binary(min_size=V3_BYTES, max_size=V3_BYTES))
def test_random_bytes_of_the_version_3_size_are_refused(raw: bytes) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(encode(raw))


@settings(max_examples=300, database=None)
@given(text=st.text(min_size=38, max_size=42))
def test_arbitrary_text_of_about_a_tokens_length_is_refused(text: str) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(text)


def test_a_ring_checks_its_keys() -> None:
    with pytest.raises(ValueError, match="between 1 and 255"):
        KeyRing({0: K1}, 0)
    with pytest.raises(ValueError, match="between 1 and 255"):
        KeyRing({256: K1}, 256)
    with pytest.raises(ValueError, match="shorter than 32 bytes"):
        KeyRing({1: b"x" * 31}, 1)
    with pytest.raises(ValueError, match="not in the ring"):
        KeyRing({1: K1}, 2)
    keys = {1: K1}
    kept = KeyRing(keys, 1)
    keys[2] = K2
    assert dict(kept.keys) == {1: K1}  # the ring keeps a copy


def test_version_1_tags_do_not_pass_as_version_3() -> None:
    body = struct.pack(">BBQI", 3, 2, 1, 1)
    token = encode(body + hmac.new(K2, body, hashlib.sha256).digest()[:16])
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(token)
