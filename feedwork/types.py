"""Producer-side records: what a client sends to the feeder and what it gets back.

These are plain dataclasses; protobuf messages stay inside `feedwork.client`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

Seconds = float | timedelta
"""A duration: seconds as a number, or a `timedelta`."""


class TaskState(enum.StrEnum):
    """Lifecycle state of a task (the wire enum `feedwork.v1.TaskState`, by name)."""

    UNSPECIFIED = "UNSPECIFIED"
    SCHEDULED = "SCHEDULED"
    READY = "READY"
    LEASED = "LEASED"
    COMPLETED = "COMPLETED"
    DEAD = "DEAD"
    CANCELLED = "CANCELLED"

    @property
    def is_settled(self) -> bool:
        """True once no worker will touch the task again unless someone redrives it."""
        return self in (TaskState.COMPLETED, TaskState.DEAD, TaskState.CANCELLED)


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended (the wire enum `feedwork.v1.AttemptOutcome`, by name)."""

    UNSPECIFIED = "UNSPECIFIED"
    RUNNING = "RUNNING"
    ACKED = "ACKED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"
    RELEASED = "RELEASED"
    REVOKED = "REVOKED"


class CancelOutcome(enum.StrEnum):
    """What `cancel` did (the wire enum `feedwork.v1.CancelOutcome`, by name)."""

    UNSPECIFIED = "UNSPECIFIED"
    CANCELLED = "CANCELLED"
    ALREADY_CANCELLED = "ALREADY_CANCELLED"
    ALREADY_COMPLETED = "ALREADY_COMPLETED"


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task as a producer describes it, for `submit_many`.

    `payload` may be `str` (sent as UTF-8). `delay` and `not_before` are mutually
    exclusive. `None` means "the queue's default" for `max_attempts` and `lease_duration`.
    Without an `idempotency_key` the client generates one, so that a retried Submit
    never creates a second task.
    """

    queue: str
    payload: bytes | str = b""
    headers: Mapping[str, str] | None = None
    priority: int = 0
    delay: Seconds | None = None
    not_before: datetime | None = None
    max_attempts: int | None = None
    lease_duration: Seconds | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The outcome of submitting one task."""

    task_id: str
    state: TaskState
    # True only when a task with the caller's own idempotency key already existed.
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """One lease of a task: who held it and how it ended.

    `worker_id` is the name the worker gave itself (its own claim, unchecked); `caller` is
    the identity the feeder authenticated for the lease (an API key's name, a client
    certificate's identity), "" when the feeder runs without auth."""

    attempt: int
    worker_id: str
    leased_at: datetime | None
    ended_at: datetime | None
    outcome: AttemptOutcome
    error: str
    caller: str = ""


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The feeder's view of a task, with its attempt history (oldest first: the latest
    attempts, after the `attempts_omitted` earliest ones it leaves out)."""

    task_id: str
    queue: str
    state: TaskState
    payload: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    attempts: int = 0
    failures: int = 0
    max_attempts: int = 0
    result: bytes = b""
    idempotency_key: str = ""
    created_at: datetime | None = None
    finished_at: datetime | None = None
    not_before: datetime | None = None
    lease_deadline: datetime | None = None
    lease_duration: timedelta | None = None
    history: tuple[AttemptInfo, ...] = ()
    attempts_omitted: int = 0

    @property
    def is_settled(self) -> bool:
        """True when the task is COMPLETED, DEAD or CANCELLED."""
        return self.state.is_settled


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The outcome of `cancel`: what happened and the task's state afterwards."""

    outcome: CancelOutcome
    state: TaskState


@dataclass(frozen=True, slots=True)
class Totals:
    """Running totals: of a queue since it was made (a queue that holds no task is
    forgotten, with its totals), or summed over queues."""

    submitted: int = 0
    completed: int = 0
    expired: int = 0
    redelivered: int = 0
    duplicate_acks: int = 0
    dead_lettered: int = 0
    adopted: int = 0
    failed: int = 0
    cancelled: int = 0
    # Deleted by a queue purge (`purge_queue`) before they were leased.
    purged: int = 0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Current counts per state, and running totals, of one queue."""

    queue: str
    scheduled: int = 0
    ready: int = 0
    leased: int = 0
    completed: int = 0
    dead: int = 0
    cancelled: int = 0
    oldest_ready_age: timedelta = timedelta(0)
    totals: Totals = field(default_factory=Totals)


@dataclass(frozen=True, slots=True)
class Stats:
    """Per-queue statistics and their sums."""

    queues: tuple[QueueStats, ...] = ()
    totals: Totals = field(default_factory=Totals)

    def queue(self, name: str) -> QueueStats:
        """The stats of queue `name` (all zeros if the feeder does not know it)."""
        for queue_stats in self.queues:
            if queue_stats.queue == name:
                return queue_stats
        return QueueStats(queue=name)


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of tasks (`list_tasks`, `dead_list`); `next_page_token` is empty on the
    last page."""

    tasks: tuple[TaskInfo, ...]
    next_page_token: str


DeadPage = TaskPage
"""A page of dead tasks (`dead_list`): a `TaskPage`."""


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queue as `list_queues` shows it: whether it is paused (it takes submits and hands
    out no task until resumed), since when, and its counts and totals."""

    queue: str
    paused: bool
    paused_at: datetime | None
    stats: QueueStats


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """The current leases of one worker on one queue, as the feeder's database holds them
    (with several feeders on one database: every feeder's)."""

    queue: str
    worker_id: str
    caller: str
    leases: int
    oldest_leased_at: datetime | None
    newest_leased_at: datetime | None


class ConsumerKind(enum.StrEnum):
    """A Consume stream, or the Lease calls of one worker_id (`feedwork.v1.ConsumerKind`)."""

    UNSPECIFIED = "UNSPECIFIED"
    STREAM = "STREAM"
    LEASE = "LEASE"


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of the feeder that answered `list_workers`: an open stream (leases or
    not), or a Lease caller holding leases from it."""

    kind: ConsumerKind
    worker_id: str
    caller: str
    queues: tuple[str, ...]
    since: datetime | None
    leases: int
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Workers:
    """Who works on the queues (`list_workers`): `lease_holders` from the database,
    `consumers` of the one `feeder` that answered; `truncated` when a list was cut."""

    lease_holders: tuple[LeaseHolder, ...]
    consumers: tuple[ConsumerInfo, ...]
    feeder: str
    truncated: bool = False
