"""The SQLite store's row encoding: the hand-written history JSON is exactly json.dumps's."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from feeder.core.model import Attempt, AttemptOutcome
from feeder.store.sqlite import _history_json

times = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**53))
attempts = st.builds(
    Attempt,
    st.integers(0, 2**63),
    st.text(),
    times,
    st.none() | times,
    st.sampled_from(AttemptOutcome),
    st.text(),
)


def reference(history: tuple[Attempt, ...]) -> str:
    return json.dumps(
        [
            [a.attempt, a.worker_id, a.leased_at, a.ended_at, int(a.outcome), a.error]
            for a in history
        ],
        separators=(",", ":"),
    )


@given(st.lists(attempts, min_size=1, max_size=4).map(tuple))
def test_history_json_is_what_json_dumps_writes(history: tuple[Attempt, ...]) -> None:
    assert _history_json(history) == reference(history)


def test_history_json_of_awkward_text_and_no_history() -> None:
    history = (
        Attempt(1, 'wörker "1"\n', 1700000000.123456),
        Attempt(2, "\ud800\x00", 5, 1e22, AttemptOutcome.FAILED, "☃ \\ boom"),
    )
    assert _history_json(history) == reference(history)
    assert _history_json(()) is None
