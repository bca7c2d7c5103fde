"""The PostgreSQL connector: it owns the connection pool, the listen connection and the
connections that hold advisory locks, and nothing else (no task logic).

- Statements run on pooled connections. Errors that mean "the database cannot be reached
  right now" (refused, dropped, shutting down, starting up, too many connections) become
  `StoreUnavailable`, which the feeder answers with UNAVAILABLE so clients retry; a
  deadlock or serialization failure between concurrent transactions is retried here.
- One connection LISTENs on the feedwork channel and also sends this feeder's
  notifications, coalesced: while one NOTIFY is on its way the next ones gather, and each
  queue is named once per NOTIFY. (A NOTIFY takes a lock that every committing NOTIFY
  transaction queues on, so none rides on the data transactions.) Notifications sent by
  this feeder come back to it and are ignored.
- The listen connection is the feeder's view of whether the database is up: when it drops,
  or stops answering the `SELECT 1` it is sent every LISTEN_CHECK seconds, the store is
  unavailable (health NOT_SERVING) and it reconnects by itself, with backoff; once it is
  back, anything may have changed meanwhile (`missed`). The check catches what the
  connection's own end does not report: a cut without a reset (a partition), and a loss
  that is never signalled (a feeder once kept reporting SERVING for 10 s after PostgreSQL
  stopped under load; the cause was not found, the check bounds its effect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import tenacity

from feeder.store.base import StoreUnavailable

log = logging.getLogger("feedwork.feeder.store")

CHANNEL = "feedwork"
APPLICATION_NAME = "feedwork-feeder"
# Counter shards (see the counters table): 1..SHARDS by connection; 0 is the folded total.
SHARDS = 31
CONNECT_TIMEOUT = 5.0
# How often the listen connection is checked, and how long its answer may take.
LISTEN_CHECK = 3.0
LISTEN_CHECK_TIMEOUT = 5.0
# Deadlocks and serialization failures between concurrent transactions: retried this often.
CONFLICT_RETRIES = 5
R = TypeVar("R")
# A write refused because the disk is full: health turns NOT_SERVING until a probe write,
# tried this often, succeeds.
DISK_FULL = "53100"
WRITE_PROBE_EVERY = 1.0
# Task ids per "c" (cancelled) notification: 20 digits and a space each, under 8000 bytes.
CANCELLED_PER_NOTIFICATION = 300

# SQLSTATE classes and codes that mean the database is not reachable now, as opposed to a
# statement that is wrong: 08 connection exception, 53 insufficient resources (too many
# connections, disk full), 57P01-57P03 shutting down, crashed, starting up, 25006 a
# read-only standby (a failover in progress).
_UNAVAILABLE_CLASSES = ("08", "53", "58")
_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "57014", "25006", "40001", "40P01"})
_CONFLICT_CODES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def is_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot serve now (retry later), not that a statement
    is wrong."""
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # What asyncpg raises on a connection whose session was cut in the middle of an
        # operation (MagicStack/asyncpg#784): the connection is unusable, not the database.
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # "connection is closed" (it dropped under us), or "released back to the pool"
        # (asyncpg detaches a pooled connection that closed); others are bugs.
        return "closed" in str(exc) or "released back to the pool" in str(exc)
    return isinstance(exc, OSError | TimeoutError)


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _CONFLICT_CODES


async def _write_probe(conn: asyncpg.Connection) -> None:
    """A small real write (it needs WAL, so it fails while the disk is full)."""
    await conn.execute(
        "INSERT INTO feedwork.meta (key, value) VALUES ('write_probe', '\\x01')"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    return None


def unavailable(exc: BaseException) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"PostgreSQL is unavailable: {detail}")


@dataclass(slots=True)
class _Outbox:
    """Notifications waiting to be sent: ready tasks per queue, the earliest timer and
    tasks whose lease was cancelled."""

    ready: Counter[str]
    timer: float | None = None
    cancelled: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.ready) or self.timer is not None or bool(self.cancelled)

    def payloads(self) -> list[str]:
        found = [f"r {count} {queue}" for queue, count in self.ready.items()]
        if self.timer is not None:
            found.append(f"t {self.timer!r}")
        # A payload must stay under PostgreSQL's 8000 bytes.
        for start in range(0, len(self.cancelled), CANCELLED_PER_NOTIFICATION):
            ids = self.cancelled[start : start + CANCELLED_PER_NOTIFICATION]
            found.append("c " + " ".join(map(str, ids)))
        return found


class PostgresConnector:
    """Connections to one PostgreSQL database. `await open()`, use, `await close()`."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        startup_wait: float = 30.0,
        on_ready: Callable[[str, int], None],
        on_timer: Callable[[float], None],
        on_missed: Callable[[], None],
        on_available: Callable[[bool], None],
        on_cancelled: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._startup_wait = startup_wait
        self._on_ready = on_ready
        self._on_timer = on_timer
        self._on_missed = on_missed
        self._on_available = on_available
        self._on_cancelled = on_cancelled
        self._pool: asyncpg.Pool | None = None
        self._listen: asyncpg.Connection | None = None
        self._listening: asyncio.Task[None] | None = None
        self._listen_up = asyncio.Event()
        self._available = False
        # Health is reachable (the listen connection is up) and writable (no write has
        # failed on a full disk since the last one that succeeded).
        self._reachable = False
        self._writable = True
        self._probing: asyncio.Task[None] | None = None
        self._outbox = _Outbox(Counter())
        self._sending: asyncio.Task[None] | None = None
        # One operation at a time on the listen connection: the NOTIFYs and the checks.
        self._listen_lock = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> asyncpg.Connection:
        """A connection of its own (not pooled), for what holds it: a LISTEN, a lock."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._dsn,
                timeout=CONNECT_TIMEOUT,
                server_settings={"application_name": APPLICATION_NAME},
            )
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        return conn

    async def open(self, prepare: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
        """Connects (waiting up to `startup_wait` for a database that is starting or not
        reachable yet), runs `prepare` on a first connection (migrations), then opens the
        pool and the listen connection."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=2.0),
            stop=tenacity.stop_after_delay(self._startup_wait),
            before_sleep=lambda state: log.warning(
                "waiting for PostgreSQL: %s", state.outcome and state.outcome.exception()
            ),
            reraise=True,
        )
        first: asyncpg.Connection = await retrying(self.connect)
        try:
            await prepare(first)
        finally:
            await first.close()
        self._pool = await asyncpg.create_pool(
            self._dsn,
            # No floor: during an outage asyncpg would try to restore it every second and
            # log a traceback each time; connections open on demand instead.
            min_size=0,
            max_size=self._pool_size,
            # A statement that hangs (a network partition) fails the call, not the feeder.
            command_timeout=30.0,
            # asyncpg still rolls back a transaction left open; the statements that undo
            # session state (RESET ALL, advisory unlocks, UNLISTEN, CLOSE ALL) would cost a
            # round trip per release, and the store's pooled sessions keep none.
            reset=_keep_session,
            server_settings={
                "application_name": APPLICATION_NAME,
                # Every statement is prepared once per connection and run with arrays
                # (whose sizes a custom plan would not use anyway): plan it once, not at
                # each execution (planning a batch write cost about as much as running it).
                "plan_cache_mode": "force_generic_plan",
                # Every statement reaches tasks through an index. A queue table churns
                # faster than its statistics follow: a plan made while it was small (a
                # new database) would scan the whole table for every batch, and a
                # generic plan is kept for the life of the connection.
                "enable_seqscan": "off",
            },
        )
        self._listening = asyncio.create_task(self._listen_forever(), name="feedwork-listen")
        # The first listen connection usually takes a few ms; a feeder that starts without
        # it only misses notifications until it comes (the long polls re-check).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listen_up.wait(), 5.0)

    async def close(self) -> None:
        self._closing = True
        if self._releasing:
            await asyncio.wait(self._releasing, timeout=5.0)
        for task in (self._sending, self._listening, self._probing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._listen is not None:
            with contextlib.suppress(Exception):
                await self._listen.close(timeout=2.0)
            self._listen = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5.0)
            self._pool.terminate()
            self._pool = None

    # -- statements -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; unavailability errors inside become StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._pool.acquire(timeout=10.0) as conn:
                try:
                    yield conn
                except Exception as exc:
                    if is_unavailable(exc):
                        # A session cut mid-operation can leave asyncpg's side of the
                        # connection in a state it cannot leave: never pool it again.
                        # (If it is closed already, asyncpg has detached it from the pool
                        # and refuses the call.)
                        with contextlib.suppress(Exception):
                            conn.terminate()
                    raise
        except StoreUnavailable:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise self.failed(exc) from exc
            raise

    async def hold(self) -> asyncpg.Connection:
        """A pooled connection for the caller to give back with `release_after`."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            conn: asyncpg.Connection = await self._pool.acquire(timeout=10.0)
        except Exception as exc:
            if is_unavailable(exc):
                raise self.failed(exc) from exc
            raise
        return conn

    def release_after(self, conn: asyncpg.Connection, statement: str) -> None:
        """Runs `statement` on `conn` (from `hold`) in the background, then puts it back in
        the pool; if that fails, closes it (which also drops its session state)."""
        task = asyncio.create_task(self._release_after(conn, statement))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_after(self, conn: asyncpg.Connection, statement: str) -> None:
        try:
            # fetchval, not execute: a prepared statement, not parsed again each time.
            await conn.fetchval(statement)
        except Exception:
            with contextlib.suppress(Exception):
                conn.terminate()
        finally:
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[R]]) -> R:
        """`work(conn)` on a pooled connection, retried when it loses a deadlock or a
        serialization conflict to a concurrent transaction (work must be safe to repeat:
        every write of the store is guarded)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(_is_conflict),
            wait=tenacity.wait_random(0.001, 0.02),
            stop=tenacity.stop_after_attempt(CONFLICT_RETRIES),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self.connection() as conn:
                        return await work(conn)
        except asyncpg.PostgresError as exc:
            if _is_conflict(exc):
                raise unavailable(exc) from exc
            raise
        raise AssertionError("unreachable")  # tenacity either returns or raises

    async def transaction(self, work: Callable[[asyncpg.Connection], Awaitable[R]]) -> R:
        """`work(conn)` in one transaction (retried like `run`)."""

        async def transact(conn: asyncpg.Connection) -> R:
            async with conn.transaction():
                return await work(conn)

        return await self.run(transact)

    @staticmethod
    def shard(conn: asyncpg.Connection) -> int:
        """The counter shard this connection adds to."""
        pid: int = conn.get_server_pid()
        return 1 + pid % SHARDS

    # -- notifications --------------------------------------------------------------------

    def announce(
        self, ready: Counter[str], timer: float | None, cancelled: list[int] | None = None
    ) -> None:
        """Tells the other feeders that tasks became ready (and, if it is soon, that a timer
        was set, and which leased tasks were cancelled), in the next coalesced NOTIFY."""
        if not ready and timer is None and not cancelled:
            return
        outbox = self._outbox
        outbox.ready.update(ready)
        if cancelled:
            outbox.cancelled.extend(cancelled)
        if timer is not None and (outbox.timer is None or timer < outbox.timer):
            outbox.timer = timer
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="feedwork-notify")

    async def _send(self) -> None:
        # One NOTIFY transaction at a time; what gathers meanwhile goes in the next.
        while self._outbox and not self._closing:
            outbox, self._outbox = self._outbox, _Outbox(Counter())
            conn = self._listen
            if conn is None:
                return  # not listening: the others' re-checks find the tasks
            try:
                async with self._listen_lock:
                    await conn.execute(
                        "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                        CHANNEL,
                        outbox.payloads(),
                        timeout=LISTEN_CHECK_TIMEOUT,
                    )
            except Exception as exc:
                log.debug("could not notify the other feeders: %s", exc)
                return

    def _heard(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        listen = self._listen
        if listen is not None and pid == listen.get_server_pid():
            return  # our own
        kind, _, rest = payload.partition(" ")
        try:
            if kind == "r":
                count, _, queue = rest.partition(" ")
                self._on_ready(queue, int(count))
            elif kind == "t":
                self._on_timer(float(rest))
            elif kind == "c" and self._on_cancelled is not None:
                self._on_cancelled([int(task_id) for task_id in rest.split()])
        except ValueError:
            log.warning("ignoring a malformed notification %r", payload)

    async def _listen_forever(self) -> None:
        """Keeps a listen connection open; reconnects with backoff when it drops."""
        first = True
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(StoreUnavailable),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
            stop=tenacity.stop_never,
            reraise=True,
        )
        while not self._closing:
            lost = asyncio.Event()
            try:
                conn: asyncpg.Connection = await retrying(self._start_listening, lost)
            except Exception:
                log.exception("cannot listen for notifications")
                await asyncio.sleep(1.0)
                continue
            self._listen = conn
            self._listen_up.set()
            self._set_available(True)
            if not first:
                log.info("PostgreSQL is reachable again")
                self._on_missed()  # notifications sent meanwhile are lost
            first = False
            await self._until_lost(conn, lost)
            self._listen = None
            self._listen_up.clear()
            if not self._closing:
                log.warning("lost the connection to PostgreSQL; reconnecting")
                self._set_available(False)
                with contextlib.suppress(Exception):
                    conn.terminate()

    async def _until_lost(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Returns when the listen connection is gone: closed (`lost`), or not answering."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), LISTEN_CHECK)
                return
            try:
                # The timeout covers the wait for the lock too: a NOTIFY stuck on a
                # connection that does not answer holds it.
                await asyncio.wait_for(self._check(conn), LISTEN_CHECK_TIMEOUT)
            except Exception as exc:
                if not lost.is_set():
                    log.warning("the listen connection does not answer (%s)", exc or type(exc))
                return

    async def _check(self, conn: asyncpg.Connection) -> None:
        async with self._listen_lock:
            await conn.fetchval("SELECT 1")

    async def _start_listening(self, lost: asyncio.Event) -> asyncpg.Connection:
        conn = await self.connect()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._heard)
        except Exception as exc:
            conn.terminate()
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        return conn

    def _set_available(self, reachable: bool) -> None:
        self._reachable = reachable
        self._report()

    def _report(self) -> None:
        available = self._reachable and self._writable
        if available != self._available:
            self._available = available
            self._on_available(available)

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """The StoreUnavailable a write that failed with `exc` (`is_unavailable`) raises. A
        full disk also turns health NOT_SERVING until a probe write succeeds: reads may
        still work, but nothing can be accepted."""
        if (
            isinstance(exc, asyncpg.PostgresError)
            and exc.sqlstate == DISK_FULL
            and self._writable
            and not self._closing
        ):
            log.warning("PostgreSQL cannot write (disk full): health NOT_SERVING until it can")
            self._writable = False
            self._report()
            self._probing = asyncio.ensure_future(self._probe_writes())
        return unavailable(exc)

    async def _probe_writes(self) -> None:
        while not self._closing:
            await asyncio.sleep(WRITE_PROBE_EVERY)
            try:
                await self.run(_write_probe)
            except Exception as exc:
                log.debug("the write probe failed: %s", exc)
                continue
            log.info("PostgreSQL can write again")
            self._writable = True
            self._report()
            return

    @property
    def available(self) -> bool:
        return self._available
