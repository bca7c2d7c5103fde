"""The embedded default store: the in-memory index made durable in SQLite (WAL mode).

Every change is written by one writer thread. Changes staged while it commits are committed
together in its next transaction (group commit), so durability costs one commit per burst,
not one per RPC. A caller's write returns only after the transaction holding it committed.

Ordering argument: batches commit in the order they were staged, and a reply waits for its
own batch. So any reply a client saw implies every change it could have observed is durable.

New tasks become visible only after their insert committed, so a failed insert (disk full)
is simply reported to its submitter. Updates are visible before they commit; if a commit of
updates fails, the index is rebuilt from disk and every caller waiting on it gets
StoreUnavailable (nothing they were told happened is lost, and they may retry).

A failed commit also makes the store unavailable (`StoreHooks.available(False)`: the
feeder's health turns NOT_SERVING) until a commit succeeds again: the next write, or a
small probe write tried every PROBE_INTERVAL meanwhile, so that an idle feeder (one a load
balancer stopped sending to) still finds out that the disk has room again.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import sqlite3
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_bytes
from typing import Any

from feeder.core.machine import Event
from feeder.core.model import State, Task
from feeder.store.base import Change, StoreUnavailable, TaskPage, fitting
from feeder.store.index import TaskIndex
from feeder.store.indexed import EventCounts, IndexedStore
from feeder.store.rows import (
    COLUMNS,
    NO_LAST_ATTEMPT,
    columns_without_bytes,
    columns_without_payload,
    expired_text,
    headers_json,
    history_columns,
    history_from,
    task_from_row,
)
from feeder.store.sqlite_lock import DatabaseLock, lock_database
from feeder.store.sqlite_migrations import migrate

log = logging.getLogger("feedwork.feeder.store")

# Version 1 of the schema; later versions are steps in feeder.store.sqlite_migrations.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT,
    priority INTEGER NOT NULL,
    state INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    ready_at REAL NOT NULL,
    attempt INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    not_before REAL,
    lease_deadline REAL,
    lease_duration REAL,
    lease_granted REAL,
    idempotency_key TEXT,
    result BLOB,
    finished_at REAL,
    history TEXT,
    version INTEGER NOT NULL,
    last_attempt INTEGER,
    last_worker TEXT,
    last_leased_at REAL,
    last_ended_at REAL,
    last_outcome INTEGER,
    last_error TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency
    ON tasks (queue, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_dead ON tasks (queue, id) WHERE state = 5;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at) WHERE state IN (4, 6);
CREATE TABLE IF NOT EXISTS totals (
    queue TEXT NOT NULL, event TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (queue, event)
) WITHOUT ROWID;
"""

# The columns added when the last attempt moved out of the history JSON (see
# feeder.store.rows), for databases written before.
LAST_ATTEMPT_COLUMNS = (
    ("last_attempt", "INTEGER"),
    ("last_worker", "TEXT"),
    ("last_leased_at", "REAL"),
    ("last_ended_at", "REAL"),
    ("last_outcome", "INTEGER"),
    ("last_error", "TEXT"),
)
# Inserts are of new tasks only (the state machine's `create`): no lease, result or
# history yet, so those columns stay NULL.
INSERT = (
    "INSERT INTO tasks (id, queue, payload, headers, priority, state, max_attempts, created_at,"
    " ready_at, attempt, failures, not_before, lease_duration, idempotency_key, version)"
    f" VALUES ({', '.join('?' * 15)})"
)
# Most new tasks are plain: ready at once, with no headers and no lease duration of their
# own. Their insert binds 7 values instead of 15 (measured 2.0 against 3.1 us per row).
INSERT_PLAIN = (
    "INSERT INTO tasks (id, queue, payload, priority, state, max_attempts, created_at,"
    " ready_at, attempt, failures, idempotency_key, version)"
    f" VALUES (?1, ?2, ?3, ?4, {int(State.READY)}, ?5, ?6, ?6, 0, 0, ?7, 1)"
)
UPDATE = (
    "UPDATE tasks SET state=?, ready_at=?, attempt=?, failures=?, not_before=?,"
    " lease_deadline=?, lease_granted=?, result=?, finished_at=?, history=?,"
    " last_attempt=?, last_worker=?, last_leased_at=?, last_ended_at=?, last_outcome=?,"
    " last_error=?, last_caller=?, expired_attempts=?, version=? WHERE id=? AND version=?"
)
# The two commonest writes, a task's first lease and its ack, as statements that bind only
# the columns they change (measured 4.5 against 6-7 us per row for the full UPDATE). A row
# takes one only if every column it leaves alone is the same on disk and in the new record
# (see _update_kind); anything else takes the full UPDATE.
UPDATE_LEASED = (
    "UPDATE tasks SET state=?, attempt=?, lease_deadline=?, lease_granted=?, last_attempt=?,"
    " last_worker=?, last_leased_at=?, last_ended_at=?, last_outcome=?, last_error=?,"
    " last_caller=?, version=? WHERE id=? AND version=?"
)
UPDATE_ENDED = (
    "UPDATE tasks SET state=?, lease_deadline=?, result=?, finished_at=?, last_ended_at=?,"
    " last_outcome=?, last_error=?, version=? WHERE id=? AND version=?"
)
# Every UPDATE and DELETE is guarded by the version the row holds on disk (the record the
# batch's first change of that task was decided from): a row that is not as the index
# believes fails the commit instead of being overwritten.
DELETE = "DELETE FROM tasks WHERE id=? AND version=?"
# The next task id, kept so ids of deleted tasks are never handed out again (a lease token
# of an old task must not match a new one).
SET_NEXT_ID = (
    "INSERT INTO meta (key, value) VALUES ('next_id', ?)"
    " ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)"
)
ADD_TOTAL = (
    "INSERT INTO totals (queue, event, value) VALUES (?, ?, ?)"
    " ON CONFLICT (queue, event) DO UPDATE SET value = value + excluded.value"
)
# Final tasks kept in memory after their last write, so duplicate acks stay cheap: at most
# this many, holding at most FINAL_CACHE_BYTES of payloads and results.
FINAL_CACHE = 10_000
FINAL_CACHE_BYTES = 16 * 2**20
# Payload bytes of pending tasks held in memory by default (see IndexedStore._hold).
PAYLOAD_MEMORY = 64 * 2**20
# Rows read from disk per loop turn by the reads that take many (a page of dead tasks, the
# retention purge): each row is a task with its payload to copy and convert.
READ_SLICE = 128
# A test and operations knob: caps the database file at this many pages (PRAGMA
# max_page_count on the writer). Submits fail with "the database is full" once only the
# reserve below is left, so that leases and acks of the stored tasks still find room and
# the queue can drain; deleting tasks (dead purge, retention) makes room again. The fault
# tests use it to fill a database without filling a disk. Unset: SQLite's own cap.
MAX_PAGES_ENV = "FEEDWORK_SQLITE_MAX_PAGES"
# Under the cap, submits stop while 1/10 of the pages (at least 16) are still free.
RESERVE_FRACTION, RESERVE_MIN_PAGES = 10, 16
# While commits fail, a probe write is tried this often (seconds) if nothing else commits.
PROBE_INTERVAL = 1.0
# The probe: a row of its own, rewritten, so that the commit has a page to write.
PROBE = (
    "INSERT INTO meta (key, value) VALUES ('write_probe', ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


def _insert_row(t: Task) -> tuple[Any, ...]:
    """The row of a new task (see INSERT)."""
    return (
        t.id, t.queue, t.payload, headers_json(t),
        t.priority, int(t.state), t.max_attempts, t.created_at, t.ready_at, t.attempt,
        t.failures, t.not_before, t.lease_duration, t.idempotency_key, t.version,
    )  # fmt: skip


def _insert_rows(tasks: Sequence[Task]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows of new tasks: (for INSERT_PLAIN, for INSERT)."""
    plain: list[tuple[Any, ...]] = []
    other: list[tuple[Any, ...]] = []
    ready = State.READY
    for t in tasks:
        if (
            t.state is ready
            and t.ready_at == t.created_at
            and not t.headers
            and t.lease_duration is None
            and t.not_before is None
            and t.version == 1
            and not t.attempt
            and not t.failures
        ):
            plain.append(
                (t.id, t.queue, t.payload, t.priority, t.max_attempts, t.created_at,
                 t.idempotency_key)
            )  # fmt: skip
        else:
            other.append(_insert_row(t))
    return plain, other


# Each row ends with the id and the version the row must hold on disk (the guard).


def _update_row(t: Task, on_disk: int) -> tuple[Any, ...]:
    return (
        int(t.state), t.ready_at, t.attempt, t.failures, t.not_before, t.lease_deadline,
        t.lease_granted, t.result, t.finished_at, *history_columns(t.history),
        expired_text(t.expired_attempts), t.version, t.id, on_disk,
    )  # fmt: skip


def _leased_row(t: Task, on_disk: int) -> tuple[Any, ...]:
    last = t.history[0]
    return (
        int(t.state), t.attempt, t.lease_deadline, t.lease_granted, last.attempt,
        last.worker_id, last.leased_at, last.ended_at, int(last.outcome), last.error,
        last.caller, t.version, t.id, on_disk,
    )  # fmt: skip


def _ended_row(t: Task, on_disk: int) -> tuple[Any, ...]:
    last = t.history[0]
    return (
        int(t.state), t.lease_deadline, t.result, t.finished_at, last.ended_at,
        int(last.outcome), last.error, t.version, t.id, on_disk,
    )  # fmt: skip


def _update_kind(disk: Task, t: Task) -> int:
    """Which statement writes `t` over the row that holds `disk`: FULL, LEASED (the first
    attempt begun) or ENDED (the first attempt ended). The short ones leave columns alone,
    so they are chosen only when those columns are the same in both records. (An attempt
    keeps its number, worker, caller and start time once recorded: the same attempt number
    means the same last_attempt, last_worker, last_caller and last_leased_at.)"""
    if (
        len(t.history) != 1
        or t.ready_at != disk.ready_at
        or t.failures != disk.failures
        or t.not_before != disk.not_before
        or t.expired_attempts != disk.expired_attempts
    ):
        return _FULL
    if not disk.history:
        if t.result == disk.result and t.finished_at == disk.finished_at:
            return _LEASED
    elif (
        len(disk.history) == 1
        and t.attempt == disk.attempt
        and t.lease_granted == disk.lease_granted
    ):
        return _ENDED
    return _FULL


_FULL, _LEASED, _ENDED = 0, 1, 2
_UPDATES = (UPDATE, UPDATE_LEASED, UPDATE_ENDED)
_ROW_OF = (_update_row, _leased_row, _ended_row)


# COLUMNS with an empty payload in its place (see _load_index).
_COLUMNS_WITHOUT_PAYLOAD = columns_without_payload("X''")
# ... and without its result either (a listing without payloads).
_COLUMNS_WITHOUT_BYTES = columns_without_bytes("X''")
_DEAD = frozenset({State.DEAD})
_NO_ID = 2**63 - 1  # above every task id: where a newest-first listing starts


@functools.lru_cache(maxsize=64)
def _listing(states: frozenset[State] | None, *, newest_first: bool, payloads: bool) -> str:
    """A listing's statement (see SqliteStore.list_tasks): the states as literals, so that
    a listing of dead tasks reads the tasks_dead index."""
    where = (
        ""
        if states is None
        else f" AND state IN ({', '.join(str(int(s)) for s in sorted(states))})"
    )
    columns = COLUMNS if payloads else _COLUMNS_WITHOUT_BYTES
    order = "id < ? ORDER BY id DESC" if newest_first else "id > ? ORDER BY id"
    return f"SELECT {columns} FROM tasks WHERE queue = ?{where} AND {order} LIMIT ?"


def _ready_order(t: Task) -> tuple[float, int]:
    return (t.ready_at, t.id)


@dataclass(slots=True)
class _Batch:
    """Writes staged together, committed in one transaction."""

    rows: dict[int, Task | None] = field(default_factory=dict)  # last write per id wins
    # Per id, the record its row holds when this batch commits: the one its first staged
    # change was decided from (every later one was decided from the change before it).
    disk: dict[int, Task] = field(default_factory=dict)
    totals: Counter[tuple[str, str]] = field(default_factory=Counter)
    inserts: list[tuple[list[Task], Counter[tuple[str, str]], asyncio.Future[None]]] = field(
        default_factory=list
    )
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    insert_errors: list[BaseException | None] = field(default_factory=list)
    # A probe write (see PROBE_INTERVAL) rides along.
    probe: bool = False
    # Queues forgotten (see `SqliteStore._persist_forgotten`): their totals and pause rows
    # go first.
    forgotten: set[str] = field(default_factory=set)
    # Pauses (when) and resumes (None) since the forgetting, last one per queue wins.
    paused: dict[str, float | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.rows
            or self.totals
            or self.inserts
            or self.waiters
            or self.probe
            or self.forgotten
            or self.paused
        )

    @property
    def changes_index(self) -> bool:
        """Whether the index shows writes of this batch (it must be rebuilt from disk if
        they fail): changes, their event counts, forgotten queues and pauses do; new tasks
        and probes do not."""
        return bool(self.rows or self.totals or self.forgotten or self.paused)


class _InsertFailed(Exception):
    """A submit's insert failed and SQLite rolled back the whole transaction with it."""

    def __init__(self, position: int, error: sqlite3.Error) -> None:
        super().__init__(position, error)
        self.position = position
        self.error = error


class SqliteStore(IndexedStore):
    """SQLite at `path`. Only one feeder process may open a database, by whatever path
    (see feeder.store.sqlite_lock)."""

    # The class of its connections: tests put one here that fails as a full disk would.
    connection_class: type[sqlite3.Connection] = sqlite3.Connection
    # See FINAL_CACHE (tests make them small).
    final_cache = FINAL_CACHE
    final_cache_bytes = FINAL_CACHE_BYTES
    # Final tasks are read from disk (list_dead, purge_finished), not looked up in memory.
    final_lookup = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: str = "full",
        payload_memory: int = PAYLOAD_MEMORY,
        max_pending: int | None = None,
    ) -> None:
        super().__init__(payload_memory=payload_memory, max_pending=max_pending)
        if sync not in ("normal", "full"):
            raise ValueError("sync must be 'normal' or 'full'")
        self._path = Path(path)
        self._sync = sync
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        # Reads payloads left on disk, in a worker thread (one at a time).
        self._payload_reader: sqlite3.Connection | None = None
        self._payload_lock = threading.Lock()
        self._lock: DatabaseLock | None = None
        self._batch = _Batch()
        self._flushing: _Batch | None = None  # the batch the writer thread is committing
        self._writing = False
        self._kicked = False
        self._closed = False
        # Final records held (see FINAL_CACHE): id -> bytes of payload and result.
        self._final: OrderedDict[int, int] = OrderedDict()
        self._final_bytes = 0
        # With a page cap (MAX_PAGES_ENV): free pages a submit must leave for updates.
        self._reserve_pages = 0
        # False from a failed commit until one succeeds (reported through the hooks).
        self._writable = True
        self._probe_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            isolation_level=None,
            check_same_thread=False,
            factory=self.connection_class,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync.upper()}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock_database(self._path)
        self._writer = self._connect()
        upgrade(self._writer)
        self._reserve_pages = _cap_pages(self._writer)
        self._reader = self._connect()
        self._payload_reader = self._connect()
        row = self._reader.execute("SELECT value FROM meta WHERE key='token_secret'").fetchone()
        if row is None:
            self._writer.execute(
                "INSERT INTO meta (key, value) VALUES ('token_secret', ?)", (token_bytes(32),)
            )
            row = self._reader.execute("SELECT value FROM meta WHERE key='token_secret'").fetchone()
        self._secret = bytes(row[0])
        # Databases written before the next id was kept: start from the ids they hold.
        self._writer.execute(
            "INSERT OR IGNORE INTO meta (key, value)"
            " SELECT 'next_id', COALESCE(MAX(id), 0) + 1 FROM tasks"
        )
        self._load()

    def _load(self) -> None:
        """Rebuilds the index from disk, with the cyclic garbage collector paused: a million
        new records would trigger dozens of full collections that find nothing (they hold
        no cycles), ~20% of the load time. Afterwards they are frozen out of the collector
        (gc.freeze): long-lived and acyclic, they would only make every later full
        collection walk them all again. Refcounting still frees each when it is dropped."""
        gc.disable()
        try:
            self._load_index()
        finally:
            gc.freeze()
            gc.enable()

    def _load_index(self) -> None:
        """Pending tasks in memory, without their payloads (read back when leased), and
        counts of the rest. Idempotency keys of finished tasks stay on disk."""
        assert self._reader is not None
        self._index = TaskIndex(final_lookup=self.final_lookup)
        self._final.clear()
        self._final_bytes = 0
        offloaded = self._offloaded
        offloaded.clear()
        reader = self._reader
        # Read in storage (id) order and sorted here: the ready FIFOs want (ready_at, id)
        # order, which is nearly id order already, and Python's sort of nearly sorted data
        # costs a fraction of SQLite's ORDER BY over a million rows. (task_from_row reads
        # the columns it knows; the payload's length comes after them.)
        pending = []
        for row in reader.execute(
            f"SELECT {_COLUMNS_WITHOUT_PAYLOAD}, length(payload) FROM tasks"
            " WHERE state IN (1, 2, 3)"
        ):
            pending.append(task_from_row(row))
            if row[-1]:
                offloaded[row[0]] = row[-1]
        pending.sort(key=_ready_order)
        put = self._index.put
        for task in pending:
            put(None, task)
        del pending
        counts = self._index.counts
        for queue, state, count in reader.execute(
            "SELECT queue, state, COUNT(*) FROM tasks WHERE state IN (4, 5, 6) GROUP BY 1, 2"
        ):
            counts[queue][State(state)] = count
        for queue, event, value in reader.execute("SELECT queue, event, value FROM totals"):
            self._index.totals[queue][Event(event)] = value
        for queue, paused_at in reader.execute("SELECT queue, paused_at FROM paused_queues"):
            self._index.pause(queue, paused_at)
        (max_id,) = reader.execute("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()
        row = reader.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()
        # Never below ids already handed out (stored, deleted, or reserved by a submit).
        self._next_id = max(self._next_id, max_id + 1, int(row[0]) if row else 1)

    async def close(self) -> None:
        if self._closed:
            return
        # New writes are refused from now on; those staged before (including any staged while
        # an earlier batch commits) are committed before the connections close.
        self._closed = True
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        while self._batch or self._writing:
            await self._barrier()
        await self._settle()
        for conn in (self._writer, self._reader, self._payload_reader):
            if conn is not None:
                conn.close()
        if self._lock is not None:  # after the connections (see feeder.store.sqlite_lock)
            self._lock.close()

    # -- durability hooks ---------------------------------------------------------------

    def _stage(self) -> _Batch:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        return self._staged()

    def _staged(self) -> _Batch:
        """The batch the next commit takes (one is due to start, or follows the current)."""
        if not self._kicked and not self._writing:
            self._kicked = True
            # Deferred to the end of this loop turn, so every RPC handled in it joins.
            asyncio.get_running_loop().call_soon(self._kick)
        return self._batch

    async def _persist_new(self, tasks: Sequence[Task], events: EventCounts) -> None:
        batch = self._stage()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        totals: Counter[tuple[str, str]] = Counter(
            {(queue, event.value): n for (queue, event), n in events.items()}
        )
        batch.inserts.append((list(tasks), totals, future))
        await future

    async def _persist_forgotten(self, queues: Sequence[str]) -> None:
        batch = self._stage()
        forgotten = set(queues)
        # Totals staged before the forgetting were dropped from memory with the queue; those
        # staged after it (the batch deletes first, see _forget_totals) count anew.
        for key in [key for key in batch.totals if key[0] in forgotten]:
            del batch.totals[key]
        batch.forgotten |= forgotten
        # Likewise pauses staged before: the forgetting deletes the pause rows.
        for queue in forgotten:
            batch.paused.pop(queue, None)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(future)
        await future

    async def _persist_paused(self, queue: str, at: float | None) -> None:
        batch = self._stage()
        batch.paused[queue] = at
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(future)
        await future

    async def _persist_changes(self, changes: Sequence[Change], events: EventCounts) -> None:
        batch = self._stage()
        rows, disk = batch.rows, batch.disk
        for change in changes:
            before = change.before
            rows[before.id] = change.after
            disk.setdefault(before.id, before)
        for (queue, event), n in events.items():
            batch.totals[(queue, event.value)] += n
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        batch.waiters.append(future)
        await future

    async def _barrier(self) -> None:
        """Waits until everything staged so far is durable."""
        if self._batch or self._writing:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._staged().waiters.append(future)
            await future

    def _unsynced(self, task_id: int) -> bool:
        """Whether the task has a write that is not committed yet: its row on disk is stale
        (the index holds its record, or the task was deleted)."""
        flushing = self._flushing
        return task_id in self._batch.rows or (flushing is not None and task_id in flushing.rows)

    async def _fetch(self, task_ids: Sequence[int]) -> dict[int, Task]:
        assert self._reader is not None
        self._trim_final()
        task_ids = [i for i in task_ids if not self._unsynced(i)]
        return {
            row[0]: task_from_row(row)
            for row in _rows_in(self._reader, f"SELECT {COLUMNS} FROM tasks WHERE id", task_ids)
        }

    def _cached_from_disk(self, task: Task) -> None:
        self._remember_final(task)

    async def _read_payloads(self, task_ids: Sequence[int]) -> dict[int, bytes]:
        # In a thread: a lease of many large payloads reads megabytes.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._read_payloads_now, list(task_ids))

    def _read_payloads_now(self, task_ids: list[int]) -> dict[int, bytes]:
        conn = self._payload_reader
        assert conn is not None
        with self._payload_lock:
            return {
                task_id: bytes(payload)
                for task_id, payload in _rows_in(
                    conn, "SELECT id, payload FROM tasks WHERE id", task_ids
                )
            }

    def _find_keys(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        # On the loop, like the submit it serves: one indexed lookup per key, batched.
        assert self._reader is not None
        by_queue: dict[str, list[str]] = {}
        for queue, key in keys:
            by_queue.setdefault(queue, []).append(key)
        found: dict[tuple[str, str], int] = {}
        held = self._index.tasks
        for queue, names in by_queue.items():
            for key, task_id in _rows_in(
                self._reader,
                "SELECT idempotency_key, id FROM tasks WHERE queue = ? AND idempotency_key",
                names,
                (queue,),
            ):
                # A row whose deletion is not committed yet is gone already.
                if task_id in held or not self._unsynced(task_id):
                    found[(queue, key)] = task_id
        return found

    # -- the writer ---------------------------------------------------------------------

    def _kick(self) -> None:
        self._kicked = False
        if self._writing or not self._batch:
            return
        batch, self._batch = self._batch, _Batch()
        self._flushing = batch
        self._writing = True
        loop = asyncio.get_running_loop()
        if self._sync == "normal":
            # Without fsync a commit takes microseconds: running it here is cheaper than a
            # hand-off to a thread and back (measured ~15% more drain throughput).
            done: asyncio.Future[None] = loop.create_future()
            try:
                self._commit(batch)
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)
            self._committed(batch, done)
            return
        # With fsync (sync=full) the commit waits for the disk: keep the loop serving.
        fut = loop.run_in_executor(None, self._commit, batch)
        fut.add_done_callback(lambda f: self._committed(batch, f))

    def _commit(self, batch: _Batch) -> None:
        """One transaction for the whole batch (in a worker thread when sync=full).

        A submit whose insert fails (the database is full) fails alone. SQLite rolls back
        the whole transaction on some errors (SQLITE_FULL among them), not just the
        statement; the transaction is then written again without that submit.
        """
        errors: dict[int, BaseException] = {}
        while True:
            try:
                self._write(batch, errors)
            except _InsertFailed as failed:
                errors[failed.position] = failed.error
                continue
            batch.insert_errors = [errors.get(i) for i in range(len(batch.inserts))]
            return

    def _write(self, batch: _Batch, errors: dict[int, BaseException]) -> None:
        conn = self._writer
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            _forget_totals(conn, batch)
            _write_pauses(conn, batch)
            if batch.probe:
                conn.execute(PROBE, (token_bytes(8),))
            updates: tuple[list[tuple[Any, ...]], ...] = ([], [], [])
            deletes = []
            for task_id, task in batch.rows.items():
                disk = batch.disk[task_id]
                if task is None:
                    deletes.append((task_id, disk.version))
                    continue
                kind = _update_kind(disk, task)
                updates[kind].append(_ROW_OF[kind](task, disk.version))
            for statement, rows in zip(_UPDATES, updates, strict=True):
                if rows:
                    _guarded(conn.executemany(statement, rows), len(rows))
            if deletes:
                _guarded(conn.executemany(DELETE, deletes), len(deletes))
            if batch.totals:
                conn.executemany(ADD_TOTAL, [(q, e, n) for (q, e), n in batch.totals.items()])
            # Each submit in its own savepoint: one that does not fit fails alone.
            next_id = 0
            for position, (tasks, totals, _future) in enumerate(batch.inserts):
                if position in errors:
                    continue
                conn.execute("SAVEPOINT submit")
                try:
                    plain, other = _insert_rows(tasks)
                    if plain:
                        conn.executemany(INSERT_PLAIN, plain)
                    if other:
                        conn.executemany(INSERT, other)
                    conn.executemany(ADD_TOTAL, [(q, e, n) for (q, e), n in totals.items()])
                    self._keep_reserve(conn)
                except sqlite3.Error as exc:
                    if not conn.in_transaction:
                        raise _InsertFailed(position, exc) from exc
                    conn.execute("ROLLBACK TO submit")
                    conn.execute("RELEASE submit")
                    errors[position] = exc
                    continue
                conn.execute("RELEASE submit")
                next_id = max([next_id, *(t.id + 1 for t in tasks)])
            if next_id:
                conn.execute(SET_NEXT_ID, (next_id,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _keep_reserve(self, conn: sqlite3.Connection) -> None:
        """Fails a submit that would leave fewer than the reserved free pages under the cap:
        leases and acks of stored tasks grow their rows, and must not find the database
        full, or the queue could not drain."""
        if not self._reserve_pages:
            return
        (cap,) = conn.execute("PRAGMA max_page_count").fetchone()
        (used,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        if cap - used + free < self._reserve_pages:
            raise sqlite3.OperationalError(
                f"database or disk is full ({self._reserve_pages} pages are kept for the "
                "leases and acks of stored tasks)"
            )

    def _committed(self, batch: _Batch, outcome: asyncio.Future[None]) -> None:
        self._writing = False
        self._flushing = None
        error = outcome.exception()
        if error is None:
            for (_tasks, _totals, future), insert_error in zip(
                batch.inserts, batch.insert_errors, strict=True
            ):
                if not future.done():
                    if insert_error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(_unavailable(insert_error))
            for future in batch.waiters:
                if not future.done():
                    future.set_result(None)
            for task in batch.rows.values():
                if task is not None and not task.state.is_pending:
                    self._remember_final(task)
            self._trim_final()
            self._set_writable(True)
        else:
            if self._writable:
                log.error("commit failed: %s", error)
            self._set_writable(False)
            self._fail_all(batch, error)
        if self._batch and not self._kicked:
            self._kick()

    def _fail_all(self, batch: _Batch, error: BaseException) -> None:
        """Fails everyone who waits; if the index shows writes that did not commit (it is
        ahead of the disk), it is rebuilt from disk."""
        staged, self._batch = self._batch, _Batch()
        for b in (batch, staged):
            for _tasks, _totals, future in b.inserts:
                if not future.done():
                    future.set_exception(_unavailable(error))
            for future in b.waiters:
                if not future.done():
                    future.set_exception(_unavailable(error))
        if batch.changes_index or staged.changes_index:
            log.warning("reloading the index from disk")
            self._load()

    def _set_writable(self, writable: bool) -> None:
        """Reports a change of whether commits succeed through `StoreHooks.available`, and
        keeps a probe write coming while they fail."""
        if writable != self._writable:
            self._writable = writable
            if writable:
                log.info("a commit succeeded again: the store is available")
            self._hooks.available(writable)
        if not writable and self._probe_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._probe_timer = loop.call_later(PROBE_INTERVAL, self._probe)

    def _probe(self) -> None:
        self._probe_timer = None
        if self._writable or self._closed:
            return
        self._staged().probe = True

    def _remember_final(self, task: Task) -> None:
        """Keeps the most recent final tasks in memory (see `_trim_final`)."""
        if task.state.is_pending:
            return
        final = self._final
        size = len(task.payload) + len(task.result or b"")
        self._final_bytes += size - final.get(task.id, 0)
        final[task.id] = size
        final.move_to_end(task.id)

    def _trim_final(self) -> None:
        """Forgets the oldest final records past FINAL_CACHE of them or FINAL_CACHE_BYTES of
        payloads and results; they are read back from disk when needed. Called after each
        commit and before each read from disk, never during one: the records a read just
        loaded stay until the caller has used them."""
        final = self._final
        while len(final) > self.final_cache or (
            self._final_bytes > self.final_cache_bytes and final
        ):
            old_id, old_size = final.popitem(last=False)
            self._final_bytes -= old_size
            old = self._index.tasks.get(old_id)
            # A record with an uncommitted write stays (its commit remembers it again).
            if old is not None and not old.state.is_pending and not self._unsynced(old_id):
                self._index.evict(old)
                self._offloaded.pop(old_id, None)

    # -- reads that need the disk ---------------------------------------------------------

    async def list_dead(self, queue: str, *, after_id: int | None, limit: int) -> TaskPage:
        return await self.list_tasks(queue, _DEAD, after_id=after_id, limit=limit)

    async def list_tasks(
        self,
        queue: str,
        states: frozenset[State] | None,
        *,
        after_id: int | None,
        limit: int,
        newest_first: bool = False,
        payloads: bool = True,
        max_bytes: int | None = None,
    ) -> TaskPage:
        await self._barrier()
        assert self._reader is not None
        statement = _listing(states, newest_first=newest_first, payloads=payloads)
        # Read READ_SLICE rows per loop turn (a page of 1000 tasks with payloads is
        # megabytes to read and convert), and one more than the page: whether there is more.
        tasks: list[Task] = []
        looked, size, full = 0, 0, False
        last_id = after_id if after_id is not None else (_NO_ID if newest_first else 0)
        while True:
            want = min(READ_SLICE, limit + 1 - looked)
            rows = self._reader.execute(statement, (queue, last_id, want)).fetchall()
            for row in rows[: limit - looked]:
                task = self._listed(row, payloads)
                if task is not None and (states is None or task.state in states):
                    fit, size = fitting([task], max_bytes if payloads else None, size)
                    if not fit:
                        full = True
                        break
                    tasks.append(task)
                last_id = row[0]
            looked += len(rows)
            more = full or looked > limit
            if more or len(rows) < want:
                break
            await asyncio.sleep(0)
        # The cursor is the last row looked at, even if it was left out.
        return TaskPage(tasks, last_id if more and limit > 0 else None)

    def _listed(self, row: Any, payloads: bool) -> Task | None:
        """The record of a row a listing read: the index's, which writes staged since the
        listing's barrier have changed already (None: deleted, not committed yet)."""
        task = self._index.tasks.get(row[0])
        if task is None:
            return None if self._unsynced(row[0]) else task_from_row(row)
        if payloads and row[0] in self._offloaded:
            return task.evolve(payload=bytes(row[2]))  # held without it; never changes
        return task

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        await self._barrier()
        assert self._reader is not None
        ids = [
            row[0]
            for row in self._reader.execute(
                "SELECT id FROM tasks WHERE state IN (4, 6) AND finished_at < ? LIMIT ?",
                (finished_before, limit),
            )
        ]
        # Records read READ_SLICE per loop turn (most are on disk only, with payloads); a
        # task changed meanwhile fails its guard and stays.
        tasks: dict[int, Task] = {}
        for start in range(0, len(ids), READ_SLICE):
            if start:
                await asyncio.sleep(0)
            tasks.update(await self.get(ids[start : start + READ_SLICE], payloads=False))
        applied = await self.apply([Change(t, None) for t in tasks.values()])
        return sum(applied)


# Values bound per `IN (...)` statement (SQLite allows 32,766 bound variables; smaller
# statements are prepared faster and keep each step short).
IN_CHUNK = 500


def _rows_in(
    conn: sqlite3.Connection,
    query: str,
    values: Sequence[Any],
    params: tuple[Any, ...] = (),
) -> Iterator[Any]:
    """The rows of `query` + " IN (...)" over `values`, IN_CHUNK at a time; `params` are
    bound before the values (for placeholders in `query` itself)."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        yield from conn.execute(f"{query} IN ({marks})", (*params, *chunk))


def _forget_totals(conn: sqlite3.Connection, batch: _Batch) -> None:
    """Deletes the totals and pauses of the queues the batch forgot, before anything else
    the batch writes: every total it counts was counted after the forgetting, every pause
    it stores was made after it (see SqliteStore._persist_forgotten)."""
    if batch.forgotten:
        queues = [(q,) for q in batch.forgotten]
        conn.executemany("DELETE FROM totals WHERE queue = ?", queues)
        conn.executemany("DELETE FROM paused_queues WHERE queue = ?", queues)


def _write_pauses(conn: sqlite3.Connection, batch: _Batch) -> None:
    resumed = [(q,) for q, at in batch.paused.items() if at is None]
    paused = [(q, at) for q, at in batch.paused.items() if at is not None]
    if resumed:
        conn.executemany("DELETE FROM paused_queues WHERE queue = ?", resumed)
    if paused:
        conn.executemany(
            "INSERT INTO paused_queues (queue, paused_at) VALUES (?, ?)"
            " ON CONFLICT (queue) DO UPDATE SET paused_at = excluded.paused_at",
            paused,
        )


class GuardFailed(sqlite3.DatabaseError):
    """A guarded write found a row that is not at the version the index holds: the database
    was changed behind this feeder's back (it is meant to be the only writer)."""


def _guarded(cursor: sqlite3.Cursor, expected: int) -> None:
    if cursor.rowcount != expected:
        raise GuardFailed(
            f"{expected - cursor.rowcount} of {expected} rows were not at the expected version"
        )


def upgrade(conn: sqlite3.Connection) -> None:
    """Creates the schema, or brings a database an earlier feeder wrote up to it."""
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    _split_old_histories(conn)
    migrate(conn)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Brings a database written by an earlier feeder up to the current columns."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    for name, kind in LAST_ATTEMPT_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")


def _split_old_histories(conn: sqlite3.Connection) -> None:
    """Moves the last attempt of rows an earlier feeder wrote (the whole history as JSON)
    into the last_* columns, once per database: the short UPDATEs (see _update_kind) write
    only those columns and would otherwise leave a stale copy in the JSON. (Before
    last_caller exists: it comes with a later migration, and histories this old name no
    caller.)"""
    if conn.execute("SELECT 1 FROM meta WHERE key='history_split'").fetchone():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT id, history FROM tasks WHERE history IS NOT NULL AND last_outcome IS NULL"
        ).fetchall()
        conn.executemany(
            "UPDATE tasks SET history=?, last_attempt=?, last_worker=?, last_leased_at=?,"
            " last_ended_at=?, last_outcome=?, last_error=? WHERE id=?",
            [
                (*history_columns(history_from(text, NO_LAST_ATTEMPT))[:7], task_id)
                for task_id, text in rows
            ],
        )
        conn.execute("INSERT INTO meta (key, value) VALUES ('history_split', 1)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if rows:
        log.info("moved the last attempt of %d tasks into its own columns", len(rows))


def _cap_pages(conn: sqlite3.Connection) -> int:
    """Applies MAX_PAGES_ENV, if set; returns the pages to keep free for updates (0: none)."""
    value = os.environ.get(MAX_PAGES_ENV, "").strip()
    if not value:
        return 0
    try:
        pages = int(value)
    except ValueError:
        pages = 0
    if pages < 1:
        raise RuntimeError(f"{MAX_PAGES_ENV} must be a positive number of pages, not {value!r}")
    # SQLite never sets the cap below the pages the database already has.
    conn.execute(f"PRAGMA max_page_count={pages}")
    return max(RESERVE_MIN_PAGES, pages // RESERVE_FRACTION)


def _unavailable(error: BaseException) -> StoreUnavailable:
    if isinstance(error, sqlite3.OperationalError) and "full" in str(error).lower():
        return StoreUnavailable(f"the database is full: {error}")
    return StoreUnavailable(f"the database could not commit: {error}")
