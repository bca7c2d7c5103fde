"""`feedwork db`: schema status and migration, and the move from an embedded (SQLite)
feeder to a PostgreSQL one with nothing lost."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from feeder import dbtool
from feeder.config import Settings
from feeder.server.app import FeederServer, StartupError
from feeder.store.rows import history_from, history_json
from feedwork.v1 import feeder_pb2 as pb
from tests import postgres
from tests.conftest import FeederFactory, RunningFeeder
from tests.integration.test_feeder_rpc import (
    ack,
    cancel,
    dur,
    get,
    lease,
    nack,
    queue_stats,
    submit,
    submit_ids,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def empty_dsn() -> Iterator[str]:
    """A PostgreSQL database without feedwork's schema."""
    yield from postgres.databases(None)


async def db(*argv: str) -> int:
    """Runs `feedwork db ARGV` (it runs its own event loop: in a thread)."""
    return await asyncio.to_thread(dbtool.main, list(argv))


async def test_status_and_migrate(empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await db("status", "--db", empty_dsn) == dbtool.EXIT_FAILED
    assert "schema version 0" in capsys.readouterr().out
    assert await db("migrate", "--db", empty_dsn) == dbtool.EXIT_OK
    out = capsys.readouterr().out
    assert "applied 0001_initial" in out and "up to date" in out
    assert await db("migrate", "--db", empty_dsn) == dbtool.EXIT_OK
    assert "applied" not in capsys.readouterr().out.replace("up to date", "")
    assert await db("status", "--db", empty_dsn) == dbtool.EXIT_OK
    out = capsys.readouterr().out
    assert "schema version 1" in out and "up to date" in out
    assert await db("status", "--db", "./feedwork.db") == dbtool.EXIT_USAGE


async def test_a_database_migrated_by_a_newer_feedwork_is_refused(
    empty_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await db("migrate", "--db", empty_dsn) == dbtool.EXIT_OK
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(
            "INSERT INTO feedwork.schema_migrations (version, name) VALUES (999, 'future')"
        )
    finally:
        await conn.close()
    capsys.readouterr()
    assert await db("status", "--db", empty_dsn) == dbtool.EXIT_FAILED
    assert "newer feedwork" in capsys.readouterr().out
    assert await db("migrate", "--db", empty_dsn) == dbtool.EXIT_FAILED
    assert "newer feedwork" in capsys.readouterr().err
    server = FeederServer(Settings(listen="127.0.0.1:0", db=empty_dsn))
    with pytest.raises(StartupError, match="newer feedwork"):
        await server.start()


async def embedded_feeder_with_everything(feeder: RunningFeeder) -> dict[str, str]:
    """Tasks in every state, with history, results, keys and totals; returns the lease
    token of a task left leased, and the ids by what they are."""
    keyed = [pb.TaskSpec(queue="q", payload=b"p%d" % i, idempotency_key=f"k{i}") for i in range(8)]
    ids = await submit_ids(
        feeder,
        *keyed,
        pb.TaskSpec(queue="later", delay=dur(3600)),
        pb.TaskSpec(queue="other", headers={"h": "v"}, priority=7),
    )
    done, retried, dead, cancelled, leased, *_ = await lease(feeder, n=5, duration=60)
    assert await ack(feeder, done.lease_token, result=b"the result") == [pb.ACK_OUTCOME_ACKED]
    assert await ack(feeder, done.lease_token) == [pb.ACK_OUTCOME_DUPLICATE]
    await nack(feeder, pb.NackItem(lease_token=retried.lease_token, error="e1", release=True))
    await nack(feeder, pb.NackItem(lease_token=dead.lease_token, error="fatal", terminal=True))
    await cancel(feeder, cancelled.task_id)
    return {"leased_token": leased.lease_token, "leased": leased.task_id, "all": ",".join(ids)}


async def snapshot(feeder: RunningFeeder, ids: list[str]) -> tuple[object, ...]:
    tasks = [await get(feeder, i) for i in ids]
    stats = [await queue_stats(feeder, q) for q in ("q", "later", "other")]
    for entry in stats:  # an age: it grows between the two snapshots
        assert entry.oldest_ready_age.seconds < 60
        entry.ClearField("oldest_ready_age")
    dead = await feeder.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue="q"))
    return tasks, stats, list(dead.tasks)


async def test_copy_moves_everything_and_leases_stay_valid(
    feeder_factory: FeederFactory,
    feeder_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    embedded = await feeder_factory(store_kind="sqlite")
    made = await embedded_feeder_with_everything(embedded)
    ids = made["all"].split(",")
    before = await snapshot(embedded, ids)

    target = await feeder_factory.postgres_dsn()  # type: ignore[attr-defined]
    # Not while the embedded feeder runs.
    assert await db("copy", "--from", feeder_settings.db, "--to", target) == dbtool.EXIT_FAILED
    assert "in use" in capsys.readouterr().err
    await embedded.server.stop(0)
    assert await db("copy", "--from", feeder_settings.db, "--to", target) == dbtool.EXIT_OK
    out = capsys.readouterr().out
    assert f"copied {len(ids)} tasks" in out and "verified" in out

    cluster = await feeder_factory(store_kind="postgres")
    second = await feeder_factory(store_kind="postgres")
    assert await snapshot(cluster, ids) == before
    # The lease handed out before the move is acked through either feeder after it.
    assert await ack(second, made["leased_token"]) == [pb.ACK_OUTCOME_ACKED]
    # Keys still deduplicate; new ids come after every old one.
    [again] = await submit(cluster, pb.TaskSpec(queue="q", idempotency_key="k3"))
    assert again.deduplicated and again.task_id == ids[3]
    [new] = await submit_ids(cluster, pb.TaskSpec(queue="q"))
    assert int(new) > max(map(int, ids))
    # A second copy into the same database is refused.
    assert await db("copy", "--from", feeder_settings.db, "--to", target) == dbtool.EXIT_FAILED
    assert "already holds tasks" in capsys.readouterr().err


async def test_copy_with_a_new_secret_invalidates_old_leases(
    feeder_factory: FeederFactory,
    feeder_settings: Settings,
    empty_dsn: str,
) -> None:
    embedded = await feeder_factory(store_kind="sqlite")
    made = await embedded_feeder_with_everything(embedded)
    await embedded.server.stop(0)
    assert (
        await db("copy", "--from", feeder_settings.db, "--to", empty_dsn, "--new-secret")
        == dbtool.EXIT_OK
    )
    cluster = await feeder_factory(store_kind="postgres", db=empty_dsn)
    assert await ack(cluster, made["leased_token"]) == [pb.ACK_OUTCOME_INVALID_TOKEN]
    # The task is still there, leased, and will be handed out again when its lease ends.
    assert (await get(cluster, made["leased"])).state == pb.TASK_STATE_LEASED


async def test_an_old_sqlite_file_copies_too(
    feeder_factory: FeederFactory, feeder_settings: Settings, tmp_path: Path
) -> None:
    """A database whose history is all JSON (written before the last attempt had columns
    of its own) is read through the same row codec and lands in the current layout."""
    embedded = await feeder_factory(store_kind="sqlite")
    made = await embedded_feeder_with_everything(embedded)
    ids = made["all"].split(",")
    before = await snapshot(embedded, ids)
    await embedded.server.stop(0)
    conn = sqlite3.connect(feeder_settings.db)
    rows = conn.execute(
        "SELECT id, history, last_attempt, last_worker, last_leased_at, last_ended_at,"
        " last_outcome, last_error FROM tasks"
    ).fetchall()
    for task_id, text, *last in rows:
        conn.execute(
            "UPDATE tasks SET history = ?, last_attempt = NULL, last_worker = NULL,"
            " last_leased_at = NULL, last_ended_at = NULL, last_outcome = NULL,"
            " last_error = NULL WHERE id = ?",
            (history_json(history_from(text, last)), task_id),
        )
    conn.execute("DELETE FROM meta WHERE key = 'history_split'")
    conn.commit()
    conn.close()
    target = await feeder_factory.postgres_dsn()  # type: ignore[attr-defined]
    assert await db("copy", "--from", feeder_settings.db, "--to", target) == dbtool.EXIT_OK
    cluster = await feeder_factory(store_kind="postgres")
    assert await snapshot(cluster, ids) == before
    conn = await asyncpg.connect(target)
    try:  # every attempt but the last in the JSON, the last in its columns
        split = await conn.fetchval(
            "SELECT count(*) FROM feedwork.tasks WHERE last_outcome IS NOT NULL"
        )
        leased_ever = await conn.fetchval("SELECT count(*) FROM feedwork.tasks WHERE attempt > 0")
    finally:
        await conn.close()
    assert split == leased_ever == 5


async def test_feeders_starting_at_once_on_an_empty_database_migrate_it_once(
    empty_dsn: str, tmp_path: Path
) -> None:
    servers = [
        FeederServer(Settings(listen="127.0.0.1:0", db=empty_dsn, shutdown_grace=0.5))
        for _ in range(3)
    ]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        conn = await asyncpg.connect(empty_dsn)
        try:
            applied = await conn.fetch("SELECT version FROM feedwork.schema_migrations")
            secrets = await conn.fetchval("SELECT count(*) FROM feedwork.meta")
        finally:
            await conn.close()
        assert [row["version"] for row in applied] == [1]
        assert secrets == 1
        # One secret for all: a token issued by one feeder verifies on the others.
        assert len({server.store.token_secret for server in servers}) == 1
    finally:
        await asyncio.gather(*(server.stop(0) for server in servers))
