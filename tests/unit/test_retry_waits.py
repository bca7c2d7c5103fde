"""The clients' retry waits (feedwork.retry for producers and the acker, the worker's
`reconnecting` for leasing): capped exponential backoff with full jitter. The cap bounds
the step before the jitter is drawn, so retries past the cap still spread over [0, cap]
(a cap applied after the jitter would make every capped retry wait exactly the cap, and a
crowd of clients come back in step)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import tenacity
from hypothesis import given, settings
from hypothesis import strategies as st

from feedwork import retry
from worker.connection import ConnectionMonitor
from worker.leaser import BACKOFF_CAP, BACKOFF_INITIAL, reconnecting


def _state(attempt_number: int) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt_number
    return state


def _waits() -> list[tuple[str, Any, float, float]]:
    """(name, wait strategy, first step, cap) of every client retry loop."""
    return [
        ("feedwork.retry", retry.sync_retrying().wait, retry.INITIAL_WAIT, retry.MAX_WAIT),
        ("async feedwork.retry", retry.async_retrying().wait, retry.INITIAL_WAIT, retry.MAX_WAIT),
        (
            "worker reconnecting",
            reconnecting(ConnectionMonitor(target="127.0.0.1:1"), "Lease").wait,
            BACKOFF_INITIAL,
            BACKOFF_CAP,
        ),
    ]


@pytest.mark.parametrize(("name", "wait", "initial", "cap"), _waits(), ids=[w[0] for w in _waits()])
@settings(max_examples=50)
@given(attempt=st.integers(min_value=1, max_value=200), seed=st.integers(0, 2**32))
def test_waits_stay_within_the_step_and_spread_over_it(
    name: str, wait: Any, initial: float, cap: float, attempt: int, seed: int
) -> None:
    step = min(cap, initial * 2.0 ** min(attempt - 1, 60))
    random.seed(seed)  # tenacity draws from the random module
    waits = [wait(_state(attempt)) for _ in range(200)]
    assert all(0.0 <= w <= cap for w in waits), name
    assert max(waits) <= step * 1.000001, name
    # Spread over the whole step, capped or not: never a crowd at the cap.
    assert min(waits) < step / 4 and max(waits) > step * 3 / 4, (name, min(waits), max(waits))
    assert sum(w == cap for w in waits) <= 1, name
