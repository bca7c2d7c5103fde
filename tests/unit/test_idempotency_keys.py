"""The keys the producer clients generate for tasks submitted without one."""

from __future__ import annotations

import time
import uuid

import pytest

from feedwork import _wire
from feedwork._wire import new_idempotency_key


def test_keys_are_uuid7_with_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    key = new_idempotency_key()
    after = time.time_ns() // 1_000_000
    assert key.startswith("auto-") and len(key) == 37
    value = uuid.UUID(hex=key.removeprefix("auto-"))
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert before <= value.int >> 80 <= after


def test_keys_increase_within_a_process() -> None:
    keys = [new_idempotency_key() for _ in range(10_000)]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


def test_keys_of_one_millisecond_still_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same clock reading and the same random bits: still unique and in order."""
    monkeypatch.setattr(_wire.time, "time_ns", lambda: 1_700_000_000_000_000_000)
    monkeypatch.setattr(_wire.os, "urandom", lambda n: b"\xff" * n)
    monkeypatch.setattr(_wire, "_last_key", (0, 0))
    keys = [new_idempotency_key() for _ in range(3)]
    assert keys == sorted(set(keys))
    values = [uuid.UUID(hex=key.removeprefix("auto-")) for key in keys]
    assert all((v.version, v.variant) == (7, uuid.RFC_4122) for v in values)
    # All 74 random bits were set: the second key carried into the next millisecond.
    assert [v.int >> 80 for v in values] == [1_700_000_000_000] + [1_700_000_000_001] * 2
