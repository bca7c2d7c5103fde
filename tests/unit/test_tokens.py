"""Lease tokens: round trip, and every way a token can be wrong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeder.core.tokens import LeaseRef, TokenCodec, TokenError

SECRET = b"0123456789abcdef-secret"
CODEC = TokenCodec(SECRET)
ALPHABET = string.ascii_letters + string.digits + "-_"
TOKEN_BYTES = 13 + 16  # version, task id, attempt; 16-byte tag


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def raw_of(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def signed(body: bytes, secret: bytes = SECRET) -> str:
    """A token as the feeder issues it: keyed BLAKE2s (version 2 and later)."""
    key = hashlib.blake2s(secret).digest() if len(secret) > 32 else secret
    return encode(body + hashlib.blake2s(body, key=key, digest_size=16).digest())


def signed_v1(body: bytes, secret: bytes = SECRET) -> str:
    """A version 1 token, as earlier feeders issued them: truncated HMAC-SHA256."""
    return encode(body + hmac.new(secret, body, hashlib.sha256).digest()[:16])


@pytest.mark.parametrize(
    ("task_id", "attempt"),
    [(0, 0), (1, 1), (42, 7), (2**63, 2**31), (2**64 - 1, 2**32 - 1)],
)
def test_round_trip(task_id: int, attempt: int) -> None:
    token = CODEC.issue(task_id, attempt)
    assert CODEC.verify(token) == LeaseRef(task_id=task_id, attempt=attempt)
    assert TokenCodec(SECRET).verify(token) == LeaseRef(task_id, attempt)  # survives restarts


def test_token_shape() -> None:
    token = CODEC.issue(123, 4)
    assert len(raw_of(token)) == TOKEN_BYTES
    assert len(token) == 39
    assert set(token) <= set(ALPHABET)
    assert "=" not in token
    assert CODEC.issue(123, 4) == token  # deterministic
    assert CODEC.issue(123, 5) != token
    assert CODEC.issue(124, 4) != token


@settings(max_examples=200, database=None)
@given(task_id=st.integers(0, 2**64 - 1), attempt=st.integers(0, 2**32 - 1))
def test_round_trip_property(task_id: int, attempt: int) -> None:
    assert CODEC.verify(CODEC.issue(task_id, attempt)) == LeaseRef(task_id, attempt)


def test_every_single_character_change_is_refused() -> None:
    token = CODEC.issue(987654321, 3)
    for index, original in enumerate(token):
        for replacement in ALPHABET + "+/=. ":
            if replacement == original:
                continue
            tampered = token[:index] + replacement + token[index + 1 :]
            with pytest.raises(TokenError):
                CODEC.verify(tampered)


def test_every_bit_flip_of_the_decoded_token_is_refused() -> None:
    raw = raw_of(CODEC.issue(5, 2))
    for index in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[index] ^= 1 << bit
            with pytest.raises(TokenError, match="not issued by this feeder"):
                CODEC.verify(encode(bytes(flipped)))


def test_changing_the_numbers_without_the_secret_is_refused() -> None:
    good = raw_of(CODEC.issue(1, 1))
    forged_body = struct.pack(">BQI", 1, 2, 1)
    with pytest.raises(TokenError):
        CODEC.verify(encode(forged_body + good[13:]))
    other = raw_of(CODEC.issue(1, 2))
    with pytest.raises(TokenError):
        CODEC.verify(encode(other[:13] + good[13:]))


def test_token_of_another_secret_is_refused() -> None:
    token = TokenCodec(b"another-secret-of-16+").issue(1, 1)
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(token)


def test_unsupported_version_is_refused_even_with_a_valid_tag() -> None:
    token = signed(struct.pack(">BQI", 3, 1, 1))
    with pytest.raises(TokenError, match="version"):
        CODEC.verify(token)


@pytest.mark.parametrize("size", [0, 1, 12, 28, 30, 32, 64])
def test_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(encode(bytes(range(size))))


def test_truncated_and_extended_tokens_are_refused() -> None:
    token = CODEC.issue(77, 1)
    for cut in range(len(token)):
        with pytest.raises(TokenError):
            CODEC.verify(token[:cut])
    for suffix in ("A", "AA", "AAAA", "=", "==", "\n", " ", "!"):
        with pytest.raises(TokenError):
            CODEC.verify(token + suffix)
    for prefix in (" ", "\t", "A"):
        with pytest.raises(TokenError):
            CODEC.verify(prefix + token)


def test_token_with_characters_inserted_is_refused() -> None:
    token = CODEC.issue(77, 1)
    for junk in ("\n", " ", "!", "*", "é"):
        with pytest.raises(TokenError):
            CODEC.verify(token[:10] + junk + token[10:])


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "A",
        "AAAA",
        "====",
        "null",
        "not a token",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        "A" * 39,
        "_" * 39,
        "A" * 4000,
        "\x00" * 39,
        "%00%01",
    ],
)
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(garbage)


@pytest.mark.parametrize(
    "text", ["é" * 39, "🔑" * 10, "\uff21\uff22\uff23\uff24" * 10, "токен", "\u200b" * 39]
)
def test_unicode_is_refused_as_a_token_error(text: str) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(text)


def test_unicode_substituted_into_a_valid_token_is_refused() -> None:
    token = CODEC.issue(3, 3)
    for index in (0, 19, 38):
        with pytest.raises(TokenError):
            CODEC.verify(token[:index] + "é" + token[index + 1 :])


@settings(max_examples=300, database=None)
@given(text=st.text(max_size=80))
def test_arbitrary_text_is_refused(text: str) -> None:
    with pytest.raises(TokenError):
        CODEC.verify(text)


@settings(max_examples=200, database=None)
@given(raw=st.binary(min_size=TOKEN_BYTES, max_size=TOKEN_BYTES))
def test_random_bytes_of_the_right_length_are_refused(raw: bytes) -> None:
    with pytest.raises(TokenError, match="not issued by this feeder"):
        CODEC.verify(encode(raw))


def test_token_error_is_a_value_error() -> None:
    assert issubclass(TokenError, ValueError)


def test_secret_must_be_at_least_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        TokenCodec(b"x" * 15)
    assert TokenCodec(b"x" * 16).verify(TokenCodec(b"x" * 16).issue(1, 2)) == LeaseRef(1, 2)


@settings(max_examples=100, database=None)
@given(secret=st.binary(min_size=16, max_size=200), task_id=st.integers(0, 2**64 - 1))
def test_tags_are_keyed_blake2s_for_any_secret(secret: bytes, task_id: int) -> None:
    body = struct.pack(">BQI", 2, task_id, 3)
    assert TokenCodec(secret).issue(task_id, 3) == signed(body, secret)


@settings(max_examples=100, database=None)
@given(secret=st.binary(min_size=16, max_size=200), task_id=st.integers(0, 2**64 - 1))
def test_version_1_tokens_of_earlier_feeders_still_verify(secret: bytes, task_id: int) -> None:
    codec = TokenCodec(secret)
    token = signed_v1(struct.pack(">BQI", 1, task_id, 3), secret)
    assert codec.verify(token) == LeaseRef(task_id, 3)
    # ...but not with the other MAC's tag, nor as version 2.
    with pytest.raises(TokenError, match="not issued"):
        codec.verify(signed(struct.pack(">BQI", 1, task_id, 3), secret))
    with pytest.raises(TokenError, match="not issued"):
        codec.verify(signed_v1(struct.pack(">BQI", 2, task_id, 3), secret))
