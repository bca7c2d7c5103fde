"""The bound on work in flight (feeder.server.admission)."""

from __future__ import annotations

import pytest

from feeder.server.admission import Admission, Overloaded


def test_submits_are_admitted_up_to_the_item_limit_and_refused_past_it() -> None:
    admission = Admission(max_items=100, max_bytes=10_000)
    admission.enter(60, 10, now=0.0, new_work=True)
    admission.enter(40, 10, now=0.0, new_work=True)
    with pytest.raises(Overloaded, match=r"overloaded .*100 items"):
        admission.enter(1, 10, now=0.0, new_work=True)
    admission.leave(40, 10)
    admission.enter(40, 10, now=0.0, new_work=True)
    assert (admission.calls, admission.items, admission.bytes, admission.refused) == (2, 100, 20, 1)


def test_other_calls_keep_headroom_past_the_submits() -> None:
    """Under a flood of submits, acks and reads still get in (up to twice the limits)."""
    admission = Admission(max_items=100, max_bytes=10_000)
    admission.enter(100, 10, now=0.0, new_work=True)
    admission.enter(64, 10, now=0.0)  # an ack batch
    admission.enter(36, 10, now=0.0)
    with pytest.raises(Overloaded):
        admission.enter(1, 10, now=0.0)


def test_the_byte_limit_counts_too() -> None:
    admission = Admission(max_items=100, max_bytes=1000)
    admission.enter(1, 900, now=0.0, new_work=True)
    with pytest.raises(Overloaded):
        admission.enter(1, 101, now=0.0, new_work=True)
    admission.enter(1, 100, now=0.0, new_work=True)


def test_a_call_alone_is_always_admitted_however_large() -> None:
    admission = Admission(max_items=10, max_bytes=10)
    admission.enter(1000, 8_000_000, now=0.0, new_work=True)
    with pytest.raises(Overloaded):
        admission.enter(1, 1, now=0.0)
    admission.leave(1000, 8_000_000)
    assert (admission.calls, admission.items, admission.bytes) == (0, 0, 0)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Admission(max_items=0, max_bytes=1)
