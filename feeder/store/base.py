"""The storage interface: stores apply the state machine's decisions, they never make them.

Every write is atomic and guarded: a `Change` is applied only if the store still holds the
exact version of the task the decision was made from (`UPDATE ... WHERE id = ? AND version = ?`
in SQL terms). A write returns only once it is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from feeder.core.machine import Decision, Event
from feeder.core.model import State, Task, TaskSpec
from feeder.core.records import fast_init


class QueueFull(Exception):
    """Submitting would take a queue past its maximum depth."""

    def __init__(self, queue: str, depth: int, max_depth: int) -> None:
        super().__init__(f"queue {queue!r} is full ({depth} pending tasks, max_depth {max_depth})")
        self.queue = queue
        self.depth = depth
        self.max_depth = max_depth


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
class DeadPage:
    tasks: list[Task]
    next_after_id: int | None


@dataclass(slots=True)
class QueueCounts:
    queue: str
    by_state: dict[State, int] = field(default_factory=dict)
    oldest_ready_at: float | None = None
    totals: dict[Event, int] = field(default_factory=dict)


# Builds the record of a new task from its spec and the id the store assigned.
TaskFactory = Callable[[TaskSpec, int], Decision[State]]
# Decides the lease of one ready task.
LeaseDecider = Callable[[Task], Decision[bool]]


class Store(Protocol):
    """What the feeder needs from storage. All methods are safe to call concurrently from
    one event loop."""

    @property
    def token_secret(self) -> bytes:
        """A random secret created with the database, for signing lease tokens."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Flushes every pending write and releases the database."""
        ...

    async def submit(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
    ) -> list[Submitted]:
        """Stores new tasks, all or none, as `create` makes them (fresh records: never
        leased, no result, no history). A spec whose (queue, idempotency_key) exists returns
        that task with deduplicated=True. Raises QueueFull (storing nothing) when a queue's
        pending tasks (scheduled, ready, leased) would exceed max_depth(queue)."""
        ...

    async def claim(self, queue: str, limit: int, lease: LeaseDecider) -> list[Task]:
        """Leases up to `limit` READY tasks of `queue` in order (priority high to low, then
        ready_at, then id) by applying `lease` to each; returns the leased records. Every
        decision `lease` returns is applied: if the caller is cancelled while the claim
        commits, the tasks `lease` leased stay leased (the caller gives them back)."""
        ...

    async def get(self, task_ids: Iterable[int]) -> dict[int, Task]:
        """Current records of the tasks that exist; missing ids are left out."""
        ...

    async def apply(
        self, changes: Sequence[Change], events: Mapping[tuple[str, Event], int] | None = None
    ) -> list[bool]:
        """Applies each change whose `before` is still current, in order, in one transaction
        with the events of the applied changes and `events` (counts per queue that belong to
        no change, such as dropped duplicate acks). Returns, per change, whether it applied."""
        ...

    async def due(self, now: float, limit: int) -> list[Task]:
        """Up to `limit` tasks whose timer has passed: LEASED with lease_deadline <= now, and
        SCHEDULED with not_before <= now. Earliest first."""
        ...

    def next_due(self) -> float | None:
        """The earliest lease deadline or not-before time of any task, if any."""
        ...

    def has_ready(self, queue: str) -> bool: ...

    async def list_dead(self, queue: str, *, after_id: int | None, limit: int) -> DeadPage:
        """Dead tasks of a queue in id order, starting after `after_id`."""
        ...

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        """Deletes up to `limit` COMPLETED or CANCELLED tasks that finished before the given
        time (their idempotency keys go with them). Returns how many were deleted."""
        ...

    async def queue_counts(self, queues: Sequence[str] | None = None) -> list[QueueCounts]:
        """Counts by state, oldest ready time and running totals, per queue."""
        ...
