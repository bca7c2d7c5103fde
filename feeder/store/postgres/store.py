"""The PostgreSQL store: one database shared by as many feeders as you like.

Nothing lives in a feeder's memory but what is on its way: every read goes to the
database, every write is one guarded statement (`... WHERE id = v.id AND version = v.guard`)
or a short transaction, so the database decides every race between feeders. The rules are
the state machine's alone; the statements (see `sql`) only store its decisions and count.

- Submit: one transaction. Idempotency keys are unique per queue in the database; the depth
  of a queue is checked under a per-queue lock after the insert, so feeders submitting to
  one queue at once never take it past max_depth together.
- Claim: `SELECT ... FOR UPDATE SKIP LOCKED` of up to `limit` ready tasks, the lease
  decisions, one guarded UPDATE, commit: four round trips for any batch size.
- Ack, nack, extend, cancel: the service reads the records, decides, and applies the
  decisions in one guarded UPDATE (a lost guard is decided again).
- Task ids come from one sequence, a block at a time; the token secret is in the database,
  so a task leased through one feeder can be acked through any other.
- Wake-ups: after a commit that made tasks ready, the other feeders hear of it through a
  coalesced NOTIFY (see `connector`); long polls also re-check every `ready_recheck`
  seconds in case a notification was lost.
- Maintenance (reaper, janitor) runs on one feeder at a time, the holder of an advisory
  lock; when it dies, its connection closes, the lock is free and the next feeder takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from feeder.core.machine import Event
from feeder.core.model import State, Task, TaskSpec
from feeder.store.base import (
    Change,
    LeaseDecider,
    LeaseHolder,
    QueueCounts,
    QueueFull,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TaskFactory,
    TaskPage,
    TooManyQueues,
    changes_news,
    fitting,
    report_news,
    wire_size,
)
from feeder.store.postgres import sql
from feeder.store.postgres.connector import PostgresConnector, is_unavailable
from feeder.store.postgres.migrate import LOCK_CLASS, SchemaTooNew, migrate
from feeder.store.rows import expired_text, headers_json, history_columns, task_from_row

log = logging.getLogger("feedwork.feeder.store")

# The advisory lock of the maintenance role (see migrate.LOCK_CLASS).
LEADER_LOCK = 2
# Timers due sooner than this from now are announced to the other feeders; the maintenance
# leader re-reads the earliest timer this often anyway (`timer_recheck`).
TIMER_RECHECK = 0.5
READY_RECHECK = 2.0
# Fold counter shards into one row per counter every this many purges (see the schema).
FOLD_EVERY = 10
# The most tasks one claim statement marks (see _claim), and how many times that many
# ready tasks it looks at, at most, for unmarked ones (a bound on its work when the head
# of the queue is marked by other claims).
CLAIM_CHUNK = 64
CLAIM_WINDOW = 8
# Leased tasks whose record this feeder remembers for `recall` (their acks, nacks and
# extends then need no read); least recently written first out.
RECALL_CACHE = 10_000
# Seconds a feeder trusts that a queue it saw the database know is still known, before it
# asks again (see _check_new_queues): the maintenance leader, maybe another feeder, may
# have forgotten it meanwhile.
KNOWN_QUEUE_TTL = 30.0
# Rows of dead tasks read per statement (each a task with its payload to decode and convert
# on the event loop).
READ_SLICE = 128

_DEAD = frozenset({State.DEAD})
_NO_ID = 2**63 - 1  # above every task id: where a newest-first listing starts

EventCounts = Mapping[tuple[str, Event], int]
_STATE_COUNTERS = {state: f"state:{int(state)}" for state in State}
_EVENT_COUNTERS = {event: f"event:{event.value}" for event in Event}
_COUNTER_STATES = {name: state for state, name in _STATE_COUNTERS.items()}
_COUNTER_EVENTS = {name: event for event, name in _EVENT_COUNTERS.items()}


class _Counts:
    """Counter changes of one statement, as the arrays `sql._COUNT` takes.

    Changes are grouped by kind (queue, state before, state after, events): the counters a
    kind moves are sent once, each change names its kind, and the statement multiplies by
    how many changes of each kind applied. A batch of 64 acks is one kind, three counter
    rows, rather than three rows per task to filter, sort and sum.
    """

    __slots__ = ("_always", "_kinds", "counters", "deltas", "kinds", "queues")

    def __init__(self) -> None:
        self._kinds: dict[tuple[str, State | None, State | None, tuple[Event, ...]], int] = {}
        self._always: Counter[tuple[str, str]] = Counter()
        self.kinds: list[int] = []
        self.queues: list[str] = []
        self.counters: list[str] = []
        self.deltas: list[int] = []

    def _add(self, kind: int, queue: str, counter: str, delta: int) -> None:
        self.kinds.append(kind)
        self.queues.append(queue)
        self.counters.append(counter)
        self.deltas.append(delta)

    def kind(
        self, queue: str, before: State | None, after: State | None, events: tuple[Event, ...]
    ) -> int:
        """The kind of a change of a task of `queue` from state `before` (None: a new task)
        to `after` (None: deleted) with `events`."""
        key = (queue, before, after, events)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = len(self._kinds)
            if before is not after:
                if before is not None:
                    self._add(kind, queue, _STATE_COUNTERS[before], -1)
                if after is not None:
                    self._add(kind, queue, _STATE_COUNTERS[after], 1)
            for event in events:
                self._add(kind, queue, _EVENT_COUNTERS[event], 1)
        return kind

    def change(self, change: Change) -> int:
        after = change.after
        before = change.before
        return self.kind(
            before.queue, before.state, None if after is None else after.state, change.events
        )

    def created(self, task: Task, events: tuple[Event, ...]) -> None:
        """The counts of a new task that is certain to be stored (kind -1)."""
        always = self._always
        always[(task.queue, _STATE_COUNTERS[task.state])] += 1
        for event in events:
            always[(task.queue, _EVENT_COUNTERS[event])] += 1

    def events(self, events: EventCounts) -> None:
        """Counts that belong to no change: they always count (kind -1)."""
        for (queue, event), count in events.items():
            self._always[(queue, _EVENT_COUNTERS[event])] += count

    def arguments(self, shard: int) -> tuple[Any, ...]:
        for (queue, counter), delta in self._always.items():
            if delta:
                self._add(-1, queue, counter, delta)
        self._always.clear()
        return (shard, self.kinds, self.queues, self.counters, self.deltas)


def _queue_full(error: asyncpg.PostgresError) -> QueueFull:
    """The QueueFull that feedwork.refuse_submit's error stands for."""
    depth, max_depth, queue = (getattr(error, "detail", "") or "0 0 ?").split(" ", 2)
    return QueueFull(queue, int(depth), int(max_depth))


def _plain(task: Task) -> bool:
    """A new task with nothing but the usual: see sql.INSERT_PLAIN_TASKS."""
    return (
        task.state is State.READY
        and task.ready_at == task.created_at
        and not task.headers
        and task.lease_duration is None
        and task.not_before is None
        and task.idempotency_key is None
    )


def _changed_values(task: Task) -> tuple[Any, ...]:
    """The values of the columns a decision may change (sql.CHANGEABLE), in that order."""
    return (
        int(task.state), task.ready_at, task.attempt, task.failures, task.not_before,
        task.lease_deadline, task.lease_granted, task.result, task.finished_at,
        *history_columns(task.history), expired_text(task.expired_attempts), task.version,
    )  # fmt: skip


def _grouped(changes: Sequence[Change], counts: _Counts) -> tuple[tuple[sql.Group, ...], list[Any]]:
    """Updates grouped by the columns they alter (`before` against `after`: the guard
    makes sure the row holds `before`, so the other columns already have their values),
    as `sql.apply_statement` takes them: (the groups, and per group the ids, the guards,
    then the kinds of change and each altered column, as one value where the whole group
    shares it, else as an array)."""
    groups: dict[tuple[int, ...], list[tuple[Change, tuple[Any, ...]]]] = {}
    for change in changes:
        after = change.after
        assert after is not None
        values = _changed_values(after)
        old = _changed_values(change.before)
        altered = tuple(
            i for i, (new, was) in enumerate(zip(values, old, strict=True)) if new != was
        )
        groups.setdefault(altered, []).append((change, values))
    specs: list[sql.Group] = []
    parameters: list[Any] = []
    kind_of = counts.change
    for columns, members in groups.items():
        parameters.append([change.before.id for change, _ in members])
        parameters.append([change.before.version for change, _ in members])
        fields = [
            [kind_of(change) for change, _ in members],
            *([values[column] for _, values in members] for column in columns),
        ]
        shared = tuple(_shared(field) for field in fields)
        parameters.extend(
            field[0] if one else field for field, one in zip(fields, shared, strict=True)
        )
        specs.append((columns, shared))
    return tuple(specs), parameters


def _shared(values: list[Any]) -> bool:
    """Whether every value is the same (and of the same type: 1 and 1.0 and True are
    equal in Python, but not one parameter of one type)."""
    first = values[0]
    kind = type(first)
    return all(value == first and type(value) is kind for value in values)


def _rounds(changes: Sequence[Change]) -> list[list[int]]:
    """Positions of `changes` split into rounds in which no task appears twice (a task
    changed twice in one batch: the second change is decided from the first)."""
    rounds: list[list[int]] = []
    seen: list[set[int]] = []
    for position, change in enumerate(changes):
        task_id = change.before.id
        # After the last round that has this task already.
        index = 0
        for index_from_end, ids in enumerate(reversed(seen)):
            if task_id in ids:
                index = len(seen) - index_from_end
                break
        if index == len(rounds):
            rounds.append([])
            seen.append(set())
        rounds[index].append(position)
        seen[index].add(task_id)
    return rounds


class _IdBlocks:
    """Task ids for new tasks: the sequence hands out blocks, this feeder uses them up."""

    def __init__(self) -> None:
        self._free: list[int] = []  # ids left in the current block, highest first
        self._block = 1
        self._lock = asyncio.Lock()

    def set_block(self, block: int) -> None:
        self._block = block

    async def take(self, count: int, conn: asyncpg.Connection) -> list[int]:
        async with self._lock:
            if len(self._free) < count:
                needed = -(-(count - len(self._free)) // self._block)
                starts = [row[0] for row in await conn.fetch(sql.NEXT_IDS, needed)]
                fresh = [start + i for start in starts for i in range(self._block)]
                # Ids in hand first, then the new blocks, lowest first (popped from the end).
                self._free = sorted(fresh, reverse=True) + self._free
            taken = self._free[-count:] if count else []
            del self._free[len(self._free) - count :]
            taken.reverse()
            return taken


class PostgresStore:
    """The store on the PostgreSQL database at `dsn` (postgresql://user@host:port/db)."""

    shared = True
    ready_recheck: float | None = READY_RECHECK
    timer_recheck: float | None = TIMER_RECHECK

    def __init__(self, dsn: str, *, pool_size: int = 10, startup_wait: float = 30.0) -> None:
        self._hooks = StoreHooks()
        # Queues this feeder has seen the database know, with when it saw them (monotonic
        # seconds; see _check_new_queues).
        self._known_queues: dict[str, float] = {}
        self._connector = PostgresConnector(
            dsn,
            pool_size=pool_size,
            startup_wait=startup_wait,
            # Through lambdas: the hooks may be set after the connector is made.
            on_ready=lambda queue, count: self._hooks.ready(queue, count),
            on_timer=lambda when: self._hooks.timer(when),
            on_missed=lambda: self._hooks.missed(),
            on_available=lambda ok: self._hooks.available(ok),
            on_cancelled=lambda ids: self._hooks.ended([(i, State.CANCELLED) for i in ids]),
        )
        self._secret: bytes | None = None
        self._ids = _IdBlocks()
        self._recent: OrderedDict[int, Task] = OrderedDict()
        self._purges = 0
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def token_secret(self) -> bytes:
        if self._secret is None:
            raise StoreUnavailable("the store is not open")
        return self._secret

    def set_hooks(self, hooks: StoreHooks) -> None:
        self._hooks = hooks

    async def open(self) -> None:
        await self._connector.open(self._prepare)

    async def _prepare(self, conn: asyncpg.Connection) -> None:
        """Brings the schema up to date and reads the database's settings."""
        applied = await migrate(conn)
        if applied:
            log.info("applied schema migrations %s", ", ".join(str(m.version) for m in applied))
        await conn.execute(sql.SET_SECRET, secrets.token_bytes(32))
        self._secret = bytes(await conn.fetchval(sql.SECRET))
        self._ids.set_block(int(await conn.fetchval(sql.ID_BLOCK)))

    async def close(self) -> None:
        self._closed = True
        await self._connector.close()

    @contextlib.asynccontextmanager
    async def leadership(self) -> AsyncIterator[asyncio.Event]:
        conn = await self._connector.connect()
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            try:
                # Waits (without polling) until whoever holds the role lets go or dies.
                await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_CLASS, LEADER_LOCK)
            except Exception as exc:
                if is_unavailable(exc):
                    raise self._connector.failed(exc) from exc
                raise
            yield lost
        finally:
            # Closing the connection releases the lock (and a wait for it).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(conn.close()), 2.0)
            conn.terminate()

    # -- announcements --------------------------------------------------------------------

    def _announce(self, records: Iterable[tuple[State | None, Task | None]]) -> None:
        """Tells this feeder (hooks) and the others (NOTIFY) what committed changes did.
        Other feeders hear of a timer only if it is due before the maintenance leader
        re-reads the earliest timer anyway."""
        news = changes_news(records)
        report_news(self._hooks, news)
        timer = news.timer
        soon = timer if timer is not None and timer < time.time() + TIMER_RECHECK else None
        # Cancelled leases too, so the feeder that granted a lease pushes the cancellation
        # to its holder at once (rare, so a notification each is cheap; other ends of
        # leases are not announced: one per ack would cost every feeder a message per task).
        cancelled = [task_id for task_id, state in news.ended if state is State.CANCELLED]
        self._connector.announce(news.ready, soon, cancelled)

    # -- writes ---------------------------------------------------------------------------

    async def submit(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
        max_queues: int | None = None,
    ) -> list[Submitted]:
        if max_queues is not None:
            await self._check_new_queues({spec.queue for spec in specs}, max_queues)
        # Twins within the batch (same queue and key) are one task.
        first_of: dict[tuple[str, str], int] = {}
        twin_of: dict[int, int] = {}
        fresh: list[int] = []
        for position, spec in enumerate(specs):
            key = (spec.queue, spec.idempotency_key) if spec.idempotency_key else None
            if key is not None:
                if key in first_of:
                    twin_of[position] = first_of[key]
                    continue
                first_of[key] = position
            fresh.append(position)
        if not fresh:
            return []

        async def insert(conn: asyncpg.Connection) -> tuple[dict[int, Task], dict[int, Task]]:
            ids = await self._ids.take(len(fresh), conn)
            tasks: dict[int, Task] = {}
            counts = _Counts()
            kinds: list[int] = []
            keyed = any(specs[position].idempotency_key for position in fresh)
            for position, task_id in zip(fresh, ids, strict=True):
                decision = create(specs[position], task_id)
                task = decision.task
                assert task is not None
                tasks[position] = task
                if keyed:
                    kinds.append(counts.kind(task.queue, None, task.state, decision.events))
                else:  # every one is inserted: its counts are known now
                    counts.created(task, decision.events)
            return await self._insert(conn, tasks, counts, kinds if keyed else None, max_depth)

        try:
            created, existing = await self._connector.run(insert)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == sql.QUEUE_FULL:
                raise _queue_full(exc) from None
            raise
        self._announce((None, task) for task in created.values())
        results: list[Submitted] = []
        for position in range(len(specs)):
            source = twin_of.get(position, position)
            if source in created:
                results.append(Submitted(created[source], source != position))
            else:
                results.append(Submitted(existing[source], True))
        return results

    async def _insert(
        self,
        conn: asyncpg.Connection,
        tasks: dict[int, Task],
        counts: _Counts,
        kinds: list[int] | None,
        max_depth: Callable[[str], int],
    ) -> tuple[dict[int, Task], dict[int, Task]]:
        """Inserts `tasks` (by position) in one statement: (created, existing) by position,
        the latter for tasks whose key another task holds. Raises asyncpg's error with
        SQLSTATE sql.QUEUE_FULL, storing nothing, if a queue would exceed its max_depth."""
        columns: list[list[Any]] = [[] for _ in range(12)]
        for task in tasks.values():
            for column, value in zip(
                columns,
                (
                    task.id, task.queue, task.payload, headers_json(task), task.priority,
                    int(task.state), task.max_attempts, task.created_at, task.ready_at,
                    task.not_before, task.lease_duration, task.idempotency_key,
                ),
                strict=True,
            ):  # fmt: skip
                column.append(value)
        adding = Counter(task.queue for task in tasks.values())
        queues = sorted(adding)
        limits = (queues, [max_depth(queue) for queue in queues])
        counted = counts.arguments(PostgresConnector.shard(conn))
        if kinds is None and all(_plain(t) for t in tasks.values()):
            plain = [columns[i] for i in (0, 1, 2, 4, 6, 7)]
            per_queue = [adding[queue] for queue in queues]
            rows = await conn.fetch(sql.INSERT_PLAIN_TASKS, *counted, *plain, *limits, per_queue)
        elif kinds is None:  # no idempotency keys
            per_queue = [adding[queue] for queue in queues]
            rows = await conn.fetch(
                sql.INSERT_UNKEYED_TASKS, *counted, *columns, *limits, per_queue
            )
        else:
            rows = await conn.fetch(sql.INSERT_TASKS, *counted, *columns, kinds, *limits)
        inserted = {row[0] for row in rows}
        created = {p: t for p, t in tasks.items() if t.id in inserted}
        taken = {p: t for p, t in tasks.items() if t.id not in inserted}
        existing: dict[int, Task] = {}
        if taken:
            found = {
                (t.queue, t.idempotency_key): t
                for t in map(
                    task_from_row,
                    await conn.fetch(
                        sql.TASKS_BY_KEY,
                        [t.queue for t in taken.values()],
                        [t.idempotency_key for t in taken.values()],
                    ),
                )
            }
            for position, task in taken.items():
                holder = found.get((task.queue, task.idempotency_key))
                if holder is None:
                    # Purged between the insert and this read. The rest of the batch is
                    # stored; sent again, this spec finds its key free.
                    raise StoreUnavailable("an idempotency key was released meanwhile; retry")
                existing[position] = holder
        return created, existing

    async def _check_new_queues(self, names: set[str], max_queues: int) -> None:
        """Raises TooManyQueues if `names` holds queues the database does not know and it
        knows `max_queues` already. Known names are remembered for KNOWN_QUEUE_TTL
        seconds, so the database is asked only about names this feeder has not seen
        lately. (A queue forgotten within that time is made anew through this feeder
        unchecked: the limit may be passed by a few more.)"""
        known_queues = self._known_queues
        seen_after = time.monotonic() - KNOWN_QUEUE_TTL
        unknown = {name for name in names if known_queues.get(name, seen_after) <= seen_after}
        if not unknown:
            return

        async def check(conn: asyncpg.Connection) -> tuple[set[str], int]:
            found = {r[0] for r in await conn.fetch(sql.KNOWN_QUEUES, list(unknown))}
            return found, int(await conn.fetchval(sql.QUEUE_COUNT))

        try:
            found, known = await self._connector.run(check)
        except Exception as exc:
            if is_unavailable(exc):
                raise self._connector.failed(exc) from exc
            raise
        now = time.monotonic()
        for name in unknown:
            if name in found:
                known_queues[name] = now
            else:
                known_queues.pop(name, None)
        new = sorted(unknown - found)
        if new and known + len(new) > max_queues:
            raise TooManyQueues(new[0], known, max_queues)

    async def claim(
        self, queue: str, limit: int, lease: LeaseDecider, *, max_bytes: int | None = None
    ) -> list[Task]:
        # Shielded: the decisions `lease` made are applied even if the caller is cancelled
        # meanwhile (it gives the tasks back; see Store.claim).
        return await asyncio.shield(self._claim(queue, limit, lease, max_bytes))

    async def _claim(
        self, queue: str, limit: int, lease: LeaseDecider, max_bytes: int | None
    ) -> list[Task]:
        """Two round trips: read and mark up to `limit` ready tasks (sql.CLAIM), then apply
        the lease decisions in one guarded statement, committed on its own. The marks are
        session advisory locks on the task ids, taken as the rows are read: concurrent
        claims, here or on other feeders, pass over marked tasks as SKIP LOCKED would, so
        they take disjoint tasks; the version guards are what makes that certain (a task
        read as ready that another claim has leased meanwhile fails its guard). The marks
        are dropped after the commit, off the caller's path.

        A connection holds at most CLAIM_CHUNK marks at once (PostgreSQL's lock table has
        room for max_locks_per_transaction, 64 by default, per connection): a larger claim
        takes its tasks a chunk at a time."""
        connector = self._connector
        conn = await connector.hold()
        changes: list[Change] = []
        applied: list[bool] = []
        size, full = 0, False
        try:
            while len(changes) < limit and not full:
                if changes:
                    await conn.fetchval(sql.UNMARK)
                chunk = min(CLAIM_CHUNK, limit - len(changes))
                rows = await conn.fetch(sql.CLAIM, queue, chunk, CLAIM_WINDOW * chunk + 256)
                decided: list[Change] = []
                for row in rows:
                    task = task_from_row(row)
                    if max_bytes is not None:
                        size += wire_size(task)
                        if size > max_bytes and (changes or decided):
                            full = True  # this one and the rest stay as they are
                            break
                    decision = lease(task)
                    if decision.task is not None:
                        decided.append(Change(task, decision.task, decision.events))
                if decided:
                    changes += decided
                    applied += await self._write(conn, decided, None)
                if len(rows) < chunk:
                    break  # nothing more is ready (unmarked)
            if full:
                # Tasks read but left for the next claim: unmarked now, not after the
                # caller is answered, and the next waiter here may take them.
                await conn.fetchval(sql.UNMARK)
                self._hooks.ready(queue, 1)
        except Exception as exc:
            if is_unavailable(exc):
                raise self._connector.failed(exc) from exc
            raise
        finally:
            connector.release_after(conn, sql.UNMARK)
        self._remember(changes, applied)
        self._announce(
            (c.before.state, c.after) for c, ok in zip(changes, applied, strict=True) if ok
        )
        leased = State.LEASED
        return [
            c.after
            for c, ok in zip(changes, applied, strict=True)
            if ok and c.after is not None and c.after.state is leased
        ]

    async def apply(
        self, changes: Sequence[Change], events: EventCounts | None = None
    ) -> list[bool]:
        if not changes and not events:
            return []

        async def apply(conn: asyncpg.Connection) -> list[bool]:
            if len(_rounds(changes)) <= 1:
                return await self._write(conn, changes, events)
            async with conn.transaction():
                return await self._write(conn, changes, events)

        applied = await self._connector.run(apply)
        self._remember(changes, applied)
        self._announce(
            (c.before.state, c.after) for c, ok in zip(changes, applied, strict=True) if ok
        )
        return applied

    async def _write(
        self, conn: asyncpg.Connection, changes: Sequence[Change], events: EventCounts | None
    ) -> list[bool]:
        """Applies `changes` (a round at a time, see `_rounds`) with their counts and
        `events`; a transaction is open if there is more than one round."""
        applied = [False] * len(changes)
        shard = PostgresConnector.shard(conn)
        rounds = _rounds(changes) or [[]]
        for number, positions in enumerate(rounds):
            batch = [changes[p] for p in positions]
            counts = _Counts()
            if number == 0 and events:
                counts.events(events)
            updates = [c for c in batch if c.after is not None]
            deletes = [c for c in batch if c.after is None]
            groups, parameters = _grouped(updates, counts)
            if deletes:
                parameters.append([c.before.id for c in deletes])
                parameters.append([c.before.version for c in deletes])
                parameters.append([counts.change(c) for c in deletes])
            statement = sql.apply_statement(groups, bool(deletes))
            rows = await conn.fetch(statement, *counts.arguments(shard), *parameters)
            done = {row[0] for row in rows}
            for position in positions:
                applied[position] = changes[position].before.id in done
            # A later round's change of a task whose change failed here cannot apply
            # either: its `before` never became current. The guard says so by itself.
        return applied

    def _remember(self, changes: Sequence[Change], applied: Sequence[bool]) -> None:
        """Keeps the records of leased tasks this feeder wrote, for `recall`; forgets any
        other it held (a task that is no longer leased, or a write that lost its guard)."""
        recent = self._recent
        leased = State.LEASED
        for change, ok in zip(changes, applied, strict=True):
            after = change.after
            if ok and after is not None and after.state is leased:
                # Held without its payload: recall serves ack and nack decisions, which
                # need none, and 10,000 leases of large payloads would be gigabytes.
                recent[after.id] = after.evolve(payload=b"") if after.payload else after
                recent.move_to_end(after.id)
            else:
                recent.pop(change.before.id, None)
        while len(recent) > RECALL_CACHE:
            recent.popitem(last=False)

    # -- reads ----------------------------------------------------------------------------

    async def recall(self, task_ids: Iterable[int]) -> tuple[dict[int, Task], set[int]]:
        found: dict[int, Task] = {}
        missing: list[int] = []
        recent = self._recent
        for task_id in set(task_ids):
            task = recent.get(task_id)
            if task is None:
                missing.append(task_id)
            else:
                found[task_id] = task
        fresh = await self.get(missing, payloads=False) if missing else {}
        found.update(fresh)
        return found, set(fresh)

    async def get(self, task_ids: Iterable[int], *, payloads: bool = True) -> dict[int, Task]:
        ids = list(set(task_ids))
        if not ids:
            return {}
        statement = sql.GET if payloads else sql.GET_WITHOUT_PAYLOADS

        async def get(conn: asyncpg.Connection) -> dict[int, Task]:
            return {row[0]: task_from_row(row) for row in await conn.fetch(statement, ids)}

        return await self._connector.run(get)

    async def due(self, now: float, limit: int) -> list[Task]:
        async def due(conn: asyncpg.Connection) -> list[Task]:
            return [task_from_row(row) for row in await conn.fetch(sql.DUE, now, limit)]

        found = await self._connector.run(due)
        found.sort(key=_timer_of)
        return found[:limit]

    async def next_due(self) -> float | None:
        async def next_due(conn: asyncpg.Connection) -> float | None:
            value = await conn.fetchval(sql.NEXT_DUE)
            return None if value is None else float(value)

        return await self._connector.run(next_due)

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
        # READ_SLICE rows per statement (one more than the page in all: whether there is
        # more): a page of 1000 tasks with payloads, decoded and converted in one go, held
        # the event loop for tens of ms.
        statement = sql.list_statement(
            None if states is None else tuple(sorted(int(s) for s in states)),
            newest_first=newest_first,
            payloads=payloads,
        )
        bound = max_bytes if payloads else None
        tasks: list[Task] = []
        last_id = after_id if after_id is not None else (_NO_ID if newest_first else 0)
        size, full = 0, False
        while True:
            want = min(READ_SLICE, limit + 1 - len(tasks))

            async def read(
                conn: asyncpg.Connection, after: int = last_id, want: int = want
            ) -> list[Task]:
                return [
                    task_from_row(row) for row in await conn.fetch(statement, queue, after, want)
                ]

            part = await self._connector.run(read)
            fit, size = fitting(part, bound, size)
            tasks += part[:fit]
            if fit < len(part):
                full = True
                break
            if len(part) < want or len(tasks) > limit:
                break
            last_id = part[-1].id
        more = full or len(tasks) > limit
        page = tasks[:limit]
        return TaskPage(page, page[-1].id if more and page else None)

    async def lease_holders(self, queue: str | None, *, limit: int) -> list[LeaseHolder]:
        async def holders(conn: asyncpg.Connection) -> list[LeaseHolder]:
            rows = await conn.fetch(sql.LEASE_HOLDERS, queue, limit)
            return [LeaseHolder(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows]

        return await self._connector.run(holders)

    async def pause(self, queue: str, *, at: float) -> bool:
        async def pause(conn: asyncpg.Connection) -> bool:
            return await conn.fetchval(sql.PAUSE, queue, at) is not None

        return await self._connector.run(pause)

    async def resume(self, queue: str) -> bool:
        async def resume(conn: asyncpg.Connection) -> int | None:
            ready = await conn.fetchval(sql.RESUME, queue)
            return None if ready is None else int(ready)

        ready = await self._connector.run(resume)
        if ready is None:
            return False
        if ready:
            # Leasers waiting here, and on the other feeders, look again.
            self._hooks.ready(queue, ready)
            self._connector.announce(Counter({queue: ready}), None)
        return True

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        self._purges += 1
        fold = self._purges % FOLD_EVERY == 1

        async def purge(conn: asyncpg.Connection) -> int:
            deleted = int(
                await conn.fetchval(
                    sql.PURGE_FINISHED, finished_before, limit, PostgresConnector.shard(conn)
                )
            )
            if fold:
                await conn.execute(sql.FOLD_COUNTERS)
            return deleted

        return await self._connector.run(purge)

    async def forget_empty_queues(self, limit: int, *, only: Sequence[str] | None = None) -> int:
        """See sql.EMPTY_QUEUES: find candidates, take their gates, delete those that hold
        no task, in one transaction. Repeated whole if it loses a deadlock."""
        named = None if only is None else sorted(set(only))

        async def forget(conn: asyncpg.Connection) -> list[str]:
            # READ COMMITTED, whatever the database's default: the last statement must see
            # what committed while the gates were being taken.
            async with conn.transaction(isolation="read_committed"):
                rows = await conn.fetch(sql.EMPTY_QUEUES, limit, named)
                candidates = [row[0] for row in rows]
                if not candidates:
                    return []
                await conn.execute(sql.LOCK_GATES, candidates)
                rows = await conn.fetch(sql.FORGET_QUEUES, candidates, named is not None)
                return [row[0] for row in rows]

        forgotten = await self._connector.run(forget)
        for queue in forgotten:
            self._known_queues.pop(queue, None)
        return len(forgotten)

    async def queue_counts(
        self,
        queues: Sequence[str] | None = None,
        *,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[QueueCounts]:
        wanted = list(queues) if queues else None

        async def counts(conn: asyncpg.Connection) -> list[QueueCounts]:
            nonlocal wanted
            if wanted is None and (after is not None or limit is not None):
                wanted = [row[0] for row in await conn.fetch(sql.QUEUE_PAGE, after or "", limit)]
                if not wanted:
                    return []
            found: dict[str, QueueCounts] = {}
            for queue, counter, value in await conn.fetch(sql.COUNTS, wanted):
                entry = found.setdefault(queue, QueueCounts(queue=queue))
                if (state := _COUNTER_STATES.get(counter)) is not None:
                    entry.by_state[state] = int(value)
                elif (event := _COUNTER_EVENTS.get(counter)) is not None and value:
                    entry.totals[event] = int(value)
            paused = dict(await conn.fetch(sql.PAUSED, wanted))
            names = wanted if wanted is not None else sorted(found.keys() | paused.keys())
            oldest = dict(await conn.fetch(sql.OLDEST_READY, names)) if names else {}
            result = []
            for name in names:
                entry = found.get(name) or QueueCounts(queue=name)
                entry.by_state = {state: entry.by_state.get(state, 0) for state in State}
                entry.oldest_ready_at = oldest.get(name)
                entry.paused_at = paused.get(name)
                result.append(entry)
            return result

        return await self._connector.run(counts)


def _timer_of(task: Task) -> float:
    when = task.lease_deadline if task.state is State.LEASED else task.not_before
    return when if when is not None else 0.0


__all__ = ["PostgresStore", "SchemaTooNew"]
