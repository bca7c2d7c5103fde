"""QueuePolicy: validation and the retry backoff."""

from __future__ import annotations

import math
import random
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeder.core.policy import QueuePolicy


def test_defaults() -> None:
    policy = QueuePolicy()
    assert (
        policy.max_attempts,
        policy.backoff_base,
        policy.backoff_cap,
        policy.lease_duration,
        policy.max_depth,
    ) == (5, 1.0, 300.0, 30.0, 1_000_000)


def test_policy_is_immutable() -> None:
    with pytest.raises(FrozenInstanceError):
        QueuePolicy().max_attempts = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"backoff_base": 0.0}, "backoff_base"),
        ({"backoff_base": -1.0}, "backoff_base"),
        ({"backoff_base": 10.0, "backoff_cap": 5.0}, "backoff_base"),
        ({"backoff_base": math.nan}, "backoff_base"),
        ({"lease_duration": 0.999}, "lease_duration"),
        ({"lease_duration": 0.0}, "lease_duration"),
        ({"lease_duration": 12 * 3600 + 0.001}, "lease_duration"),
        ({"lease_duration": math.nan}, "lease_duration"),
        ({"lease_duration": math.inf}, "lease_duration"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QueuePolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 1},
        {"backoff_base": 5.0, "backoff_cap": 5.0},
        {"lease_duration": 1.0},
        {"lease_duration": 12 * 3600.0},
        {"max_depth": 1},
    ],
)
def test_boundary_policies_are_accepted(kwargs: dict[str, float]) -> None:
    policy = QueuePolicy(**kwargs)  # type: ignore[arg-type]
    for name, value in kwargs.items():
        assert getattr(policy, name) == value


def test_backoff_is_exponential_with_equal_jitter() -> None:
    policy = QueuePolicy(backoff_base=1.0, backoff_cap=300.0)
    for failures, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 256.0)]:
        expected = step / 2 + random.Random(7).uniform(0, step / 2)
        assert policy.backoff(failures, random.Random(7)) == expected


def test_backoff_is_capped() -> None:
    policy = QueuePolicy(backoff_base=1.0, backoff_cap=10.0)
    for failures in (5, 6, 20, 63, 64, 1000, 10**9):
        delay = policy.backoff(failures, random.Random(failures))
        assert 5.0 <= delay <= 10.0


def test_capped_retries_are_still_spread() -> None:
    """The cap bounds the step, and the jitter applies to the capped step: retries of tasks
    that failed together past the cap spread over [cap/2, cap]. (A cap applied after the
    jitter would make every one of them wait exactly the cap.)"""
    policy = QueuePolicy(backoff_base=1.0, backoff_cap=10.0)
    rng = random.Random(5)
    for failures in (5, 20, 1000):
        delays = [policy.backoff(failures, rng) for _ in range(500)]
        assert all(5.0 <= d <= 10.0 for d in delays)
        assert min(delays) < 5.5 and max(delays) > 9.5
        assert sum(d == 10.0 for d in delays) <= 1


def test_backoff_of_zero_or_negative_failures_is_the_first_step() -> None:
    policy = QueuePolicy(backoff_base=2.0, backoff_cap=100.0)
    for failures in (0, -1, -100):
        assert policy.backoff(failures, random.Random(3)) == policy.backoff(1, random.Random(3))


def test_backoff_is_deterministic_for_a_seed() -> None:
    policy = QueuePolicy()
    first = [policy.backoff(4, rng) for rng in [random.Random(11)] for _ in range(20)]
    rng = random.Random(11)
    second = [policy.backoff(4, rng) for _ in range(20)]
    assert first == second


def test_backoff_jitter_spreads_retries_over_the_upper_half() -> None:
    policy = QueuePolicy(backoff_base=1.0, backoff_cap=300.0)
    rng = random.Random(2024)
    delays = [policy.backoff(5, rng) for _ in range(2000)]  # step 16: within [8, 16]
    assert min(delays) >= 8.0
    assert max(delays) <= 16.0
    assert len(set(delays)) == len(delays)
    assert min(delays) < 8.5
    assert max(delays) > 15.5
    assert 11.5 < sum(delays) / len(delays) < 12.5


@settings(max_examples=300, database=None)
@given(
    base=st.floats(min_value=0.001, max_value=100.0),
    cap_factor=st.floats(min_value=1.0, max_value=1e6),
    failures=st.integers(min_value=-5, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_half_step_and_step(
    base: float, cap_factor: float, failures: int, seed: int
) -> None:
    cap = base * cap_factor
    policy = QueuePolicy(backoff_base=base, backoff_cap=cap)
    step = min(cap, base * 2.0 ** min(max(failures - 1, 0), 62))
    delay = policy.backoff(failures, random.Random(seed))
    assert math.isfinite(delay)
    assert step / 2 <= delay <= step
    assert delay <= cap
    # Spread, capped or not: other seeds give other delays over at least half the range.
    rng = random.Random(seed)
    others = [policy.backoff(failures, rng) for _ in range(64)]
    assert max(others) - min(others) >= step / 4
