"""The SQLite store's row encoding: the hand-written history JSON is exactly json.dumps's,
the history split into JSON and last-attempt columns reads back whole, and databases from
before that split still open."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from feeder.core.model import Attempt, AttemptOutcome, State
from feeder.store.sqlite import (
    LAST_ATTEMPT_COLUMNS,
    SCHEMA,
    SqliteStore,
    _history_columns,
    _history_from,
    _history_json,
)

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


@given(st.lists(attempts, max_size=4).map(tuple))
def test_history_columns_read_back_as_written(history: tuple[Attempt, ...]) -> None:
    text, *last = _history_columns(history)
    assert _history_from(text, tuple(last)) == history
    if len(history) <= 1:
        assert text is None  # one attempt (the common case) needs no JSON at all


async def test_a_database_from_before_the_last_attempt_columns_opens(tmp_path: Path) -> None:
    """Rows an earlier feeder wrote (the whole history as JSON, no last_* columns) are
    read back unchanged, and the table gets the new columns."""
    db = tmp_path / "old.db"
    old_schema = SCHEMA.replace(
        "".join(f",\n    {name} {kind}" for name, kind in LAST_ATTEMPT_COLUMNS), ""
    )
    assert "last_outcome" not in old_schema
    conn = sqlite3.connect(db)
    conn.executescript(old_schema)
    history = (
        Attempt(1, "w1", 10.0, 40.0, AttemptOutcome.EXPIRED, "lease expired"),
        Attempt(2, "w2", 41.0),
    )
    conn.execute(
        "INSERT INTO tasks (id, queue, payload, priority, state, max_attempts, created_at,"
        " ready_at, attempt, failures, lease_deadline, lease_granted, history, version)"
        " VALUES (7, 'q', x'00', 0, 3, 5, 1.0, 1.0, 2, 1, 71.0, 41.0, ?, 4)",
        (reference(history),),
    )
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    await store.open()
    try:
        task = (await store.get([7]))[7]
        assert (task.state, task.attempt, task.history) == (State.LEASED, 2, history)
    finally:
        await store.close()
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(tasks)")}
    assert {name for name, _ in LAST_ATTEMPT_COLUMNS} <= columns
