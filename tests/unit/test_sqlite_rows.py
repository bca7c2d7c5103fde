"""The SQLite store's row encoding: the hand-written history JSON is exactly json.dumps's,
the history split into JSON and last-attempt columns reads back whole, the short UPDATEs
leave every row as the full one would, and databases from before that split (or before
callers were kept) still open."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feeder.core import machine
from feeder.core.machine import Decision
from feeder.core.model import Attempt, AttemptOutcome, State, Task, TaskSpec
from feeder.core.policy import QueuePolicy
from feeder.store import sqlite_migrations
from feeder.store.base import Change
from feeder.store.rows import COLUMNS, history_columns, history_from, history_json, task_from_row
from feeder.store.sqlite import LAST_ATTEMPT_COLUMNS, SCHEMA, SqliteStore

times = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**53))
attempts = st.builds(
    Attempt,
    st.integers(0, 2**63),
    st.text(),
    times,
    st.none() | times,
    st.sampled_from(AttemptOutcome),
    st.text(),
    st.text(),
)


def reference(history: tuple[Attempt, ...], *, callers: bool = True) -> str:
    """The history as json.dumps writes it; without `callers`, as feeders wrote it before
    callers were kept (six items an attempt)."""
    return json.dumps(
        [
            [a.attempt, a.worker_id, a.leased_at, a.ended_at, int(a.outcome), a.error]
            + ([a.caller] if callers else [])
            for a in history
        ],
        separators=(",", ":"),
    )


@given(st.lists(attempts, min_size=1, max_size=4).map(tuple))
def test_history_json_is_what_json_dumps_writes(history: tuple[Attempt, ...]) -> None:
    assert history_json(history) == reference(history)


def test_history_json_of_awkward_text_and_no_history() -> None:
    history = (
        Attempt(1, 'wörker "1"\n', 1700000000.123456),
        Attempt(2, "\ud800\x00", 5, 1e22, AttemptOutcome.FAILED, "☃ \\ boom", "ké\x00y"),
    )
    assert history_json(history) == reference(history)
    assert history_json(()) is None


@given(st.lists(attempts, max_size=4).map(tuple))
def test_history_columns_read_back_as_written(history: tuple[Attempt, ...]) -> None:
    text, *last = history_columns(history)
    assert history_from(text, tuple(last)) == history
    if len(history) <= 1:
        assert text is None  # one attempt (the common case) needs no JSON at all


def test_a_history_written_before_callers_were_kept_reads_with_no_caller() -> None:
    history = (
        Attempt(1, "w1", 10.0, 40.0, AttemptOutcome.EXPIRED, "lease expired"),
        Attempt(2, "w2", 41.0, 42.0, AttemptOutcome.FAILED, "boom"),
    )
    old = reference(history, callers=False)
    assert json.loads(old)[0] == [1, "w1", 10.0, 40.0, 4, "lease expired"]
    # The last attempt's columns as a database before last_caller holds them (NULL).
    last = (3, "w3", 43.0, None, int(AttemptOutcome.RUNNING), "", None)
    assert history_from(old, last) == (*history, Attempt(3, "w3", 43.0))
    assert all(a.caller == "" for a in history_from(old, last))


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
    insert = (
        "INSERT INTO tasks (id, queue, payload, priority, state, max_attempts, created_at,"
        " ready_at, attempt, failures, lease_deadline, lease_granted, history, version)"
    )
    conn.execute(
        f"{insert} VALUES (7, 'q', x'00', 0, 3, 5, 1.0, 1.0, 2, 1, 71.0, 41.0, ?, 4)",
        (reference(history, callers=False),),
    )
    # One running attempt: its ack takes the short UPDATE of the last_* columns.
    conn.execute(
        f"{insert} VALUES (8, 'q', x'00', 0, 3, 5, 1.0, 1.0, 1, 0, 71.0, 41.0, ?, 2)",
        (reference(history[1:], callers=False),),
    )
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    await store.open()
    try:
        task = (await store.get([7]))[7]
        assert (task.state, task.attempt, task.history) == (State.LEASED, 2, history)
        assert task.expired_attempts == ((1, 1),)
        single = (await store.get([8]))[8]
        done = machine.ack(single, 1, result=None, now=50.0).task
        assert done is not None and await store.apply([Change(single, done)]) == [True]
    finally:
        await store.close()
    store = SqliteStore(db)
    await store.open()
    try:
        assert (await store.get([7, 8])) == {7: task, 8: done}
    finally:
        await store.close()
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(tasks)")}
    assert {name for name, _ in LAST_ATTEMPT_COLUMNS} <= columns


def _version_1_database(db: Path) -> None:
    """A database as feeders wrote it before schema version 2 (no expired_attempts, no
    schema_migrations): one task whose history was trimmed to attempts 3 to 6."""
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    earlier = (
        Attempt(3, "w", 10.0, 20.0, AttemptOutcome.EXPIRED, "lease expired"),
        Attempt(4, "w", 21.0, 30.0, AttemptOutcome.EXPIRED, "lease expired"),
        Attempt(5, "w", 31.0, 32.0, AttemptOutcome.RELEASED, "bye"),
    )
    conn.execute(
        "INSERT INTO tasks (id, queue, payload, priority, state, max_attempts, created_at,"
        " ready_at, attempt, failures, history, version, last_attempt, last_worker,"
        " last_leased_at, last_ended_at, last_outcome, last_error)"
        " VALUES (9, 'q', x'', 0, 2, 50, 1.0, 45.0, 6, 3, ?, 20, 6, 'w', 33.0, 45.0, 4,"
        " 'lease expired')",
        (reference(earlier, callers=False),),
    )
    conn.execute("INSERT INTO meta (key, value) VALUES ('history_split', 1)")
    conn.commit()
    conn.close()


async def test_schema_version_2_keeps_the_expired_attempts_of_older_databases(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v1.db"
    _version_1_database(db)
    store = SqliteStore(db)
    await store.open()
    try:
        task = (await store.get([9]))[9]
        assert task.expired_attempts == ((3, 4), (6, 6))
        assert task.attempts_omitted == 2
        # Attempts 1 and 2 left the history before expiries were kept: not known to have
        # expired, so their late acks are rejected; the known expired ones are adopted.
        for attempt, outcome in [(1, "REJECTED"), (4, "ADOPTED"), (5, "REJECTED"), (6, "ADOPTED")]:
            assert machine.ack(task, attempt, result=None, now=50.0).outcome.name == outcome
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        versions = [row for row in conn.execute("SELECT version, name FROM schema_migrations")]
        assert versions == [
            (1, "initial"),
            (2, "expired_attempts"),
            (3, "last_caller"),
            (4, "paused_queues"),
        ]
    finally:
        conn.close()


async def test_schema_version_3_keeps_the_caller_of_each_lease_from_then_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database as the feedwork before callers left it (schema version 2): its attempts
    read with no caller, and leases from then on keep theirs, across a reopen."""
    db = tmp_path / "v2.db"
    _version_1_database(db)
    conn = sqlite3.connect(db, isolation_level=None)
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_migrations, "MIGRATIONS", sqlite_migrations.MIGRATIONS[:1])
        patch.setattr(sqlite_migrations, "LATEST", 2)
        sqlite_migrations.migrate(conn)
    assert "last_caller" not in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    conn.close()
    store = SqliteStore(db)
    await store.open()
    try:
        task = (await store.get([9]))[9]
        assert [a.caller for a in task.history] == ["", "", "", ""]
        leased = machine.lease(
            task, now=50.0, worker_id="w", lease_duration=None, policy=POLICY, caller="key-a"
        ).task
        assert leased is not None and await store.apply([Change(task, leased)]) == [True]
    finally:
        await store.close()
    store = SqliteStore(db)
    await store.open()
    try:
        again = (await store.get([9]))[9]
        assert again == leased
        assert [a.caller for a in again.history] == ["", "", "", "", "key-a"]
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        latest = (sqlite_migrations.LATEST,)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == latest
    finally:
        conn.close()


async def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    store = SqliteStore(db)
    await store.open()
    await store.close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)")
    conn.commit()
    conn.close()
    store = SqliteStore(db)
    with pytest.raises(RuntimeError, match="newer feedwork"):
        await store.open()
    await store.close()


POLICY = QueuePolicy(max_attempts=3, backoff_base=1.0, backoff_cap=8.0, lease_duration=10.0)
OPERATIONS = ("lease", "ack", "release", "fail", "extend", "expire", "cancel", "redrive")


def _decide(task: Task, operation: str, now: float, rng: random.Random) -> Decision[Any]:
    if operation == "lease":
        caller = rng.choice(["", "key-a", "cert:b"])
        return machine.lease(
            task, now=now, worker_id="w", lease_duration=None, policy=POLICY, caller=caller
        )
    if operation == "ack":
        return machine.ack(task, task.attempt, result=b"r", now=now)
    if operation in ("release", "fail"):
        return machine.nack(
            task, task.attempt, error="e", retry_after=None, terminal=False,
            release=operation == "release", now=now, policy=POLICY, rng=rng,
        )  # fmt: skip
    if operation == "extend":
        return machine.extend(task, task.attempt, lease_duration=5.0, now=now)
    if operation == "expire":
        return machine.advance(task, now + 60.0)
    if operation == "cancel":
        return machine.cancel(task, now=now)
    return machine.redrive(task, now=now)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.sampled_from(OPERATIONS)), max_size=6),
        max_size=8,
    )
)
def test_every_row_on_disk_is_the_record_in_memory(rounds: list[list[tuple[int, str]]]) -> None:
    """Transitions of four tasks, several of them staged in one commit (so a row may go
    READY -> LEASED -> COMPLETED, or further, in one write): after each commit every row
    reads back as the store's record, whichever INSERT or UPDATE wrote it."""

    async def body(path: Path) -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            now = 1000.0

            def create(spec: TaskSpec, task_id: int) -> Decision[State]:
                return machine.create(spec, task_id=task_id, now=now, policy=POLICY)

            specs = [
                TaskSpec("q", b"p"),  # a plain task, inserted with the short INSERT
                TaskSpec("q", b"", {"h": "v"}, priority=2, idempotency_key="k"),
                TaskSpec("q", b"p", lease_duration=3.0, max_attempts=2, idempotency_key="j"),
                TaskSpec("q", b"p", not_before=now + 2.5),
            ]
            submitted = await store.submit(specs, create=create, max_depth=lambda _q: 100)
            ids = [s.task.id for s in submitted]
            rng = random.Random(0)
            check = sqlite3.connect(path)
            for steps in [[], *rounds]:
                now += 1.0
                latest = await store.get(ids)
                changes = []
                for which, operation in steps:
                    task = latest[ids[which]]
                    decision = _decide(task, operation, now, rng)
                    if decision.task is not None:
                        changes.append(Change(task, decision.task))
                        latest[task.id] = decision.task
                assert all(await store.apply(changes))
                on_disk = {
                    row[0]: task_from_row(row)
                    for row in check.execute(f"SELECT {COLUMNS} FROM tasks")
                }
                assert on_disk == await store.get(ids)
            check.close()
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(body(Path(directory) / "t.db"))
