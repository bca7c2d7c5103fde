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
from feeder.core.model import Attempt, AttemptOutcome
from feeder.server.app import FeederServer, StartupError
from feeder.store.postgres import PostgresStore
from feeder.store.postgres.migrate import BOOTSTRAP, known_migrations, migrate
from feeder.store.rows import NO_LAST_ATTEMPT, expired_from, history_from, history_json
from feeder.store.sqlite import SqliteStore
from feeder.store.transfer import copy_sqlite_to_postgres
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
from tests.storage.test_conformance import (
    check_callers,
    check_long_history,
    leased_by_callers,
    leaser,
    long_history,
    spec,
    submit_tasks,
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
    assert "applied 0001_initial" in out and "applied 0002_expired_attempts" in out
    assert "applied 0003_gate_generations" in out and "applied 0004_last_caller" in out
    assert "applied 0005_paused_queues" in out and "up to date" in out
    assert await db("migrate", "--db", empty_dsn) == dbtool.EXIT_OK
    assert "applied" not in capsys.readouterr().out.replace("up to date", "")
    assert await db("status", "--db", empty_dsn) == dbtool.EXIT_OK
    out = capsys.readouterr().out
    assert "schema version 5" in out and "up to date" in out
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
        " last_outcome, last_error, last_caller FROM tasks"
    ).fetchall()
    for task_id, text, *last in rows:
        conn.execute(
            "UPDATE tasks SET history = ?, last_attempt = NULL, last_worker = NULL,"
            " last_leased_at = NULL, last_ended_at = NULL, last_outcome = NULL,"
            " last_error = NULL, last_caller = NULL WHERE id = ?",
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


async def test_schema_2_fills_in_the_expired_attempts_from_each_history(empty_dsn: str) -> None:
    """A database at schema 1 (attempts kept in the history only) migrated to 2: each task's
    expired attempts come from what its history still holds, as ranges."""
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(BOOTSTRAP)
        first = known_migrations()[0]
        await conn.execute(first.sql)
        await conn.execute(
            "INSERT INTO feedwork.schema_migrations (version, name) VALUES ($1, $2)",
            first.version,
            first.name,
        )
        histories = {
            # attempts 3-7 held: 3, 4 and 6 expired; the last (7) expired too.
            1: ((3, 4), (4, 4), (5, 5), (6, 4)),
            2: ((1, 5),),  # one released attempt: nothing expired
            3: (),  # never leased
        }
        for task_id, held in histories.items():
            earlier = [Attempt(a, "w", 1.0, 2.0, AttemptOutcome(o), "") for a, o in held]
            # Schema 1 has no last_caller: the first six of the last attempt's columns.
            last = (7, "w", 3.0, 4.0, 4, "lease expired") if task_id == 1 else NO_LAST_ATTEMPT[:6]
            await conn.execute(
                "INSERT INTO feedwork.tasks (id, queue, payload, priority, state, max_attempts,"
                " created_at, ready_at, attempt, failures, history, version, last_attempt,"
                " last_worker, last_leased_at, last_ended_at, last_outcome, last_error)"
                " VALUES ($1, 'q', '', 0, 2, 50, 1, 1, 7, 0, $2, 1, $3, $4, $5, $6, $7, $8)",
                task_id,
                history_json(tuple(earlier)),
                *last,
            )
        assert [m.version for m in await migrate(conn)] == [2, 3, 4, 5]
        rows = await conn.fetch("SELECT id, expired_attempts FROM feedwork.tasks ORDER BY id")
    finally:
        await conn.close()
    assert [(r["id"], r["expired_attempts"]) for r in rows] == [
        (1, "3-4,6-7"),
        (2, None),
        (3, None),
    ]
    assert expired_from("3-4,6-7") == ((3, 4), (6, 7))


async def test_copy_carries_which_attempts_expired(tmp_path: Path, empty_dsn: str) -> None:
    """A task with more attempts than its history keeps: after the copy, a late ack of its
    expired first attempt is still adopted and one of a released attempt still rejected."""
    path = tmp_path / "long.db"
    store = SqliteStore(path)
    await store.open()
    try:
        task = await long_history(store)
    finally:
        await store.close()
    await copy_sqlite_to_postgres(path, empty_dsn)
    cluster = PostgresStore(empty_dsn, pool_size=2, startup_wait=5.0)
    await cluster.open()
    try:
        copied = (await cluster.get([task.id]))[task.id]
    finally:
        await cluster.close()
    assert copied == task and copied.expired_attempts == ((1, 1),)
    check_long_history(copied)


async def test_copy_carries_the_paused_queues(
    tmp_path: Path, empty_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "paused.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await submit_tasks(store, [spec("held"), spec("running")])
        await store.pause("held", at=1_700_000_000.5)
    finally:
        await store.close()
    assert await db("copy", "--from", str(path), "--to", empty_dsn) == dbtool.EXIT_OK
    assert "paused queues: held" in capsys.readouterr().out
    cluster = PostgresStore(empty_dsn, pool_size=2, startup_wait=5.0)
    await cluster.open()
    try:
        held, running = await cluster.queue_counts(["held", "running"])
        assert (held.paused_at, running.paused_at) == (1_700_000_000.5, None)
        assert await cluster.claim("held", 1, leaser(1_700_000_001.0)) == []
        assert len(await cluster.claim("running", 1, leaser(1_700_000_001.0))) == 1
    finally:
        await cluster.close()


async def test_copy_carries_the_caller_of_every_lease(tmp_path: Path, empty_dsn: str) -> None:
    path = tmp_path / "callers.db"
    store = SqliteStore(path)
    await store.open()
    try:
        made = await leased_by_callers(store)
    finally:
        await store.close()
    await copy_sqlite_to_postgres(path, empty_dsn)
    cluster = PostgresStore(empty_dsn, pool_size=2, startup_wait=5.0)
    await cluster.open()
    try:
        copied = await cluster.get([t.id for t in made])
    finally:
        await cluster.close()
    assert [copied[t.id] for t in made] == list(made)
    check_callers(*made)


async def test_schema_4_keeps_the_caller_of_each_lease_from_then_on(empty_dsn: str) -> None:
    """A database as the feedwork before callers left it (schema 3, attempts as six items
    in the JSON, no last_caller): its attempts read with no caller, and leases from then
    on keep theirs."""
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(BOOTSTRAP)
        for migration in known_migrations()[:3]:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO feedwork.schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'feedwork' AND table_name = 'tasks'"
        )
        assert "last_caller" not in {row["column_name"] for row in columns}
        old_json = '[[1,"w1",1.0,2.0,4,"lease expired"]]'  # six items: no caller
        await conn.execute(
            "INSERT INTO feedwork.tasks (id, queue, payload, priority, state, max_attempts,"
            " created_at, ready_at, attempt, failures, history, version, last_attempt,"
            " last_worker, last_leased_at, last_ended_at, last_outcome, last_error)"
            " VALUES (1, 'q', '', 0, 2, 5, 1, 3, 2, 1, $1, 5, 2, 'w2', 2.5, 3.0, 5, 'bye')",
            old_json,
        )
        await conn.execute(
            "INSERT INTO feedwork.counters (queue, counter, shard, value)"
            " VALUES ('q', 'state:2', 0, 1)"
        )
        assert [m.version for m in await migrate(conn)] == [4, 5]
    finally:
        await conn.close()
    store = PostgresStore(empty_dsn, pool_size=2, startup_wait=5.0)
    await store.open()
    try:
        task = (await store.get([1]))[1]
        assert [(a.worker_id, a.caller) for a in task.history] == [("w1", ""), ("w2", "")]
        (leased,) = await store.claim("q", 1, leaser(10.0, "w3", caller="key-a"))
    finally:
        await store.close()
    store = PostgresStore(empty_dsn, pool_size=2, startup_wait=5.0)
    await store.open()
    try:
        again = (await store.get([1]))[1]
    finally:
        await store.close()
    assert again == leased
    assert [(a.worker_id, a.caller) for a in again.history] == [
        ("w1", ""),
        ("w2", ""),
        ("w3", "key-a"),
    ]


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
        assert sorted(row["version"] for row in applied) == [1, 2, 3, 4, 5]
        assert secrets == 1
        # One secret for all: a token issued by one feeder verifies on the others.
        assert len({server.store.token_secret for server in servers}) == 1
    finally:
        await asyncio.gather(*(server.stop(0) for server in servers))
