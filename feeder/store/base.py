"""The storage interface: stores apply the state machine's decisions, they never make them.

Every write is atomic and guarded: a `Change` is applied only if the store still holds the
exact version of the task the decision was made from. In the SQL backends the guard is in the
statement (`UPDATE ... WHERE id = $1 AND version = $2`), so when several feeders share one
database, the database itself says which of two racing decisions won. A write returns only
once it is durable.

A store also reports what it hears (`StoreHooks`): tasks that became ready, timers that
were set, here or by another feeder on the same database. The service waits on those
instead of asking the store about its memory.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from feeder.core.machine import Decision, Event
from feeder.core.model import State, Task, TaskSpec
from feeder.core.quoting import quoted
from feeder.core.records import fast_init


class QueueFull(Exception):
    """Submitting would take a queue past its maximum depth."""

    def __init__(self, queue: str, depth: int, max_depth: int) -> None:
        super().__init__(
            f"queue {quoted(queue)} is full ({depth} pending tasks, max_depth {max_depth})"
        )
        self.queue = queue
        self.depth = depth
        self.max_depth = max_depth


class TooManyQueues(Exception):
    """Submitting would make the database know more queues than allowed."""

    def __init__(self, queue: str, known: int, max_queues: int) -> None:
        super().__init__(
            f"queue {quoted(queue)} would be a new queue past the limit ({known} queues known,"
            f" max_queues {max_queues}): submit to an existing queue, or raise --max-queues"
        )
        self.queue = queue
        self.known = known
        self.max_queues = max_queues


class TooManyPending(Exception):
    """Submitting would take the tasks a feeder holds pending in memory past its bound."""

    def __init__(self, pending: int, max_pending: int) -> None:
        super().__init__(
            f"the feeder holds {pending} pending tasks (max_pending {max_pending}): retry once"
            " workers have drained some, or raise --max-pending"
        )
        self.pending = pending
        self.max_pending = max_pending


# What a leased task adds to a reply besides its payload and headers: ids, token, times,
# field tags (a generous bound; a lease token is under 100 bytes).
TASK_OVERHEAD = 512


def wire_size(task: Task) -> int:
    """A bound on the bytes `task` takes in a Lease reply or a Consume message."""
    size = TASK_OVERHEAD + len(task.payload) + len(task.queue)
    for key, value in task.headers.items():
        size += len(key.encode()) + len(value.encode()) + 8
    return size


class StoreUnavailable(Exception):
    """The store could not make a write durable (disk full, I/O error). Nothing was applied;
    the caller may retry."""


@fast_init
@dataclass(frozen=True, slots=True)
class Change:
    """Replace `before` by `after` (None deletes), only if the store still holds `before`.

    `events` are counted in the task's queue totals if, and only if, the change applies.
    """

    before: Task
    after: Task | None
    events: tuple[Event, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True)
class Submitted:
    task: Task
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of a listing: its tasks, and the id the next page starts after (in the
    listing's order), None on the last page."""

    tasks: list[Task]
    next_after_id: int | None


@dataclass(slots=True)
class QueueCounts:
    queue: str
    by_state: dict[State, int] = field(default_factory=dict)
    oldest_ready_at: float | None = None
    totals: dict[Event, int] = field(default_factory=dict)
    # When the queue was paused (see `Store.pause`); None while it is not.
    paused_at: float | None = None


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """The current leases of one worker on one queue, as the stored tasks tell (on a
    database several feeders share: whichever feeder granted them)."""

    queue: str
    worker_id: str
    # Who the feeder authenticated for the leases ("" without auth).
    caller: str
    leases: int
    oldest_leased_at: float
    newest_leased_at: float


def listed_size(task: Task) -> int:
    """A bound on the bytes `task` takes in a listing's reply, with its payload and result."""
    return wire_size(task) + len(task.result or b"")


def fitting(tasks: Sequence[Task], max_bytes: int | None, used: int = 0) -> tuple[int, int]:
    """How many of `tasks`, from the first, fit in `max_bytes` after `used` bytes of the page
    taken already (the first task of a page always fits: a page is never empty for its
    size), and the bytes used then. `max_bytes` None: every one fits."""
    if max_bytes is None:
        return len(tasks), used
    for position, task in enumerate(tasks):
        size = listed_size(task)
        if used and used + size > max_bytes:
            return position, used
        used += size
    return len(tasks), used


# Builds the record of a new task from its spec and the id the store assigned.
TaskFactory = Callable[[TaskSpec, int], Decision[State]]
# Decides the lease of one ready task.
LeaseDecider = Callable[[Task], Decision[bool]]


def _ignore(*_args: object) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StoreHooks:
    """What a store tells the service about changes it did not ask for by name: changes made
    through this store, and, for a database shared by several feeders, changes made by the
    others. Every hook is a hint ("may"), called on the event loop, and must not block.

    - `ready(queue, count)`: up to `count` tasks of `queue` may have become ready.
    - `timer(when)`: a lease deadline or not-before time at `when` may have been set.
    - `missed()`: notifications from other feeders may have been lost (a reconnect):
      anything may have changed.
    - `available(ok)`: the database became unreachable (False) or reachable again (True).
    - `ended(leases)`: the leases of these tasks ended, as (task id, state now, None if
      deleted): acked, nacked, expired, revoked or cancelled through this store; of the
      changes other feeders make, only cancellations are heard (state CANCELLED).
    """

    ready: Callable[[str, int], None] = _ignore
    timer: Callable[[float], None] = _ignore
    missed: Callable[[], None] = _ignore
    available: Callable[[bool], None] = _ignore
    ended: Callable[[list[tuple[int, State | None]]], None] = _ignore


@dataclass(slots=True)
class News:
    """What applied changes mean to the service (see `changes_news`)."""

    # Tasks that became ready, per queue.
    ready: Counter[str]
    # The earliest lease deadline or not-before time set.
    timer: float | None
    # Leases that ended: (task id, state now).
    ended: list[tuple[int, State | None]]


def changes_news(
    records: Iterable[tuple[State | None, Task | None]],
) -> News:
    """What applied changes mean to waiters, timers and lease holders, from (state before,
    or None for a new task; record after, or None for a deletion). Every backend reports
    through this one function."""
    ready: Counter[str] = Counter()
    earliest: float | None = None
    ended: list[tuple[int, State | None]] = []
    ready_state, leased, scheduled = State.READY, State.LEASED, State.SCHEDULED
    for before, task in records:
        if task is None:
            continue
        state = task.state
        if before is leased and state is not leased:
            ended.append((task.id, state))
        if state is ready_state:
            # A task that was ready already (a stale nack's note) is not news.
            if before is not ready_state:
                ready[task.queue] += 1
            continue
        if state is leased:
            when = task.lease_deadline
        elif state is scheduled:
            when = task.not_before
        else:
            continue
        if when is not None and (earliest is None or when < earliest):
            earliest = when
    return News(ready, earliest, ended)


def report_news(hooks: StoreHooks, news: News) -> None:
    for queue, count in news.ready.items():
        hooks.ready(queue, count)
    if news.timer is not None:
        hooks.timer(news.timer)
    if news.ended:
        hooks.ended(news.ended)


class Store(Protocol):
    """What the feeder needs from storage. All methods are safe to call concurrently from
    one event loop; a backend whose database other feeders share (`shared`) is also safe
    against their concurrent changes: its guards are checked by the database."""

    @property
    def token_secret(self) -> bytes:
        """A random secret created with the database, for signing lease tokens. Every
        feeder on one database reads the same secret, so tokens are valid on each."""
        ...

    @property
    def shared(self) -> bool:
        """Other feeders may change the database too."""
        ...

    @property
    def ready_recheck(self) -> float | None:
        """A long poll re-checks for ready tasks this often, in case a notification from
        another feeder was lost (None: every change is heard, no re-check needed)."""
        ...

    @property
    def timer_recheck(self) -> float | None:
        """The reaper re-reads the earliest timer this often: other feeders set timers it
        does not hear of (None: it hears of every timer through `StoreHooks.timer`)."""
        ...

    def set_hooks(self, hooks: StoreHooks) -> None:
        """Where the store reports what happened (call before `open`)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Flushes every pending write and releases the database."""
        ...

    def leadership(self) -> AbstractAsyncContextManager[asyncio.Event]:
        """Holds the role of the feeder that runs the database's maintenance (the reaper
        and the janitor) while the context is open; entering waits until the role is free.
        The event is set when the role is lost (e.g. the database connection that held it
        dropped): maintenance must stop, and the caller may try to enter again."""
        ...

    async def submit(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
        max_queues: int | None = None,
    ) -> list[Submitted]:
        """Stores new tasks, all or none, as `create` makes them (fresh records: never
        leased, no result, no history). A spec whose (queue, idempotency_key) exists returns
        that task with deduplicated=True. Raises QueueFull (storing nothing) when a queue's
        pending tasks (scheduled, ready, leased) would exceed max_depth(queue), counting
        the tasks every feeder on the database submits at the same time. Raises
        TooManyQueues (storing nothing) when the batch names a queue the database does not
        know and it knows `max_queues` already (with several feeders creating queues at
        once, the limit may be passed by a few). A queue is known from its first submit
        until `forget_empty_queues` forgets it."""
        ...

    async def claim(
        self, queue: str, limit: int, lease: LeaseDecider, *, max_bytes: int | None = None
    ) -> list[Task]:
        """Leases up to `limit` READY tasks of `queue` in order (priority high to low, then
        ready_at, then id) by applying `lease` to each; returns the leased records. Two
        claims, by this feeder or any other, never lease the same task. Every decision
        `lease` returns is applied: if the caller is cancelled while the claim commits,
        the tasks `lease` leased stay leased (the caller gives them back).

        `max_bytes`: the claim stops before a task whose `wire_size` would take the total
        past it (the first task is always taken), so that the reply carrying the tasks
        stays under the message limit; the tasks after it stay READY, in their place."""
        ...

    async def get(self, task_ids: Iterable[int], *, payloads: bool = True) -> dict[int, Task]:
        """Current records of the tasks that exist; missing ids are left out.
        `payloads=False`: the caller does not need payloads, and a record may come without
        its payload (empty) when the store holds it apart; apply changes decided from it
        all the same (a store never writes a payload after the task was created)."""
        ...

    async def recall(self, task_ids: Iterable[int]) -> tuple[dict[int, Task], set[int]]:
        """Records of the tasks as this store last wrote them, which may be out of date
        when other feeders share the database, and the ids among them that are known to
        be current (read now). A decision made from a record that is not known current
        must be applied (its guard tells whether the record was current), or, if it
        changes nothing, made again from `get`. Saves a read per acked task on the
        feeder that leased it. Records may come without payloads (see `get`)."""
        ...

    async def apply(
        self, changes: Sequence[Change], events: Mapping[tuple[str, Event], int] | None = None
    ) -> list[bool]:
        """Applies each change whose `before` is still current, in order, in one transaction
        with the events of the applied changes and `events` (counts per queue that belong to
        no change, such as dropped duplicate acks). Returns, per change, whether it applied.
        "Still current" is checked by the database where it is shared: a change decided
        from a record another feeder has changed since never applies."""
        ...

    async def due(self, now: float, limit: int) -> list[Task]:
        """Up to `limit` tasks whose timer has passed: LEASED with lease_deadline <= now, and
        SCHEDULED with not_before <= now. Earliest first. Records may come without
        payloads (see `get`): the reaper decides expiries, it hands out nothing."""
        ...

    async def next_due(self) -> float | None:
        """The earliest lease deadline or not-before time of any task, if any. May be
        earlier (a timer of a lease that ended, not dropped yet), never later: whoever
        wakes then finds nothing due and asks again."""
        ...

    async def list_dead(self, queue: str, *, after_id: int | None, limit: int) -> TaskPage:
        """Dead tasks of a queue in id order, starting after `after_id`."""
        ...

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
        """Up to `limit` tasks of `queue` in `states` (None: any), in id order (creation
        order), oldest first or `newest_first`, starting after `after_id` in that order.
        `payloads=False`: records may come without payload and result (empty). With
        payloads, the page ends before a task that would take `listed_size` of its tasks
        past `max_bytes` (the first task is always taken), so that whoever holds the page
        holds a bounded amount; its `next_after_id` then continues there. A listing reads
        what is stored: tasks that change state while it pages may be met twice or not
        at all, as with any paged listing."""
        ...

    async def lease_holders(self, queue: str | None, *, limit: int) -> list[LeaseHolder]:
        """The LEASED tasks of `queue` (None: of every queue) grouped by queue, worker id and
        caller of their current attempt: how many each holds, and when the oldest and
        newest of them were granted; at most `limit` groups, in (queue, worker_id, caller)
        order. On a shared database: every feeder's leases."""
        ...

    async def pause(self, queue: str, *, at: float) -> bool:
        """Pauses `queue`: from the moment this returns, no claim on this store, nor on any
        other feeder's store on the database, leases a task of it (a claim already under
        way may finish with what it took); submits, acks, nacks, extends and expiries go
        on. Stored: it holds across restarts until `resume`, and the janitor's
        `forget_empty_queues` keeps a paused queue. Returns False if it was paused
        already (its `at` is kept)."""
        ...

    async def resume(self, queue: str) -> bool:
        """Ends the pause of `queue`; its ready tasks are announced through
        `StoreHooks.ready` (here, and to the other feeders of a shared database), so that
        waiting leasers wake. Returns False if it was not paused."""
        ...

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        """Deletes up to `limit` COMPLETED or CANCELLED tasks that finished before the given
        time (their idempotency keys go with them). Returns how many were deleted."""
        ...

    async def forget_empty_queues(self, limit: int, *, only: Sequence[str] | None = None) -> int:
        """Forgets up to `limit` queues that hold no task in any state (pending, final or
        dead): they leave the `queue_counts` listing, no longer count against
        `max_queues`, and their running totals are dropped. Returns how many were forgotten.

        A paused queue is kept (its pause is an operator's setting), unless it is named in
        `only`: then only the queues named there are looked at, paused or not, and a
        paused one is forgotten with its pause (an operator deleting a queue).

        Safe against submits racing it, here or on other feeders: a queue that a submit is
        adding tasks to is either forgotten before those tasks are stored (the submit then
        makes it anew, its tasks and totals counted from nothing) or not at all; never is
        a stored task left in a forgotten queue, nor a count lost."""
        ...

    async def queue_counts(
        self,
        queues: Sequence[str] | None = None,
        *,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[QueueCounts]:
        """Counts by state, oldest ready time, running totals and when it was paused, per
        queue, as every feeder on the database left them: of `queues`, or (None) of every
        queue the database knows (a paused queue is known, tasks or not), in name order,
        those named after `after`, at most `limit` of them."""
        ...
