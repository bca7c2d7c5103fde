"""Task records and the typed outcomes of the lease state machine."""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from feeder.core.records import draft_class, fast_init

EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})


class State(enum.IntEnum):
    """Lifecycle states. Values match the wire enum `feedwork.v1.TaskState`."""

    SCHEDULED = 1
    READY = 2
    LEASED = 3
    COMPLETED = 4
    DEAD = 5
    CANCELLED = 6

    @property
    def is_final(self) -> bool:
        """Completed and cancelled tasks never change again (dead ones can be redriven)."""
        return self in _FINAL

    @property
    def is_pending(self) -> bool:
        """Scheduled, ready or leased: the task still has work ahead of it."""
        return self in _PENDING


# Sets of plain ints: asked about every stored task, and cheaper than enum attribute lookups.
_FINAL = frozenset({State.COMPLETED.value, State.CANCELLED.value})
_PENDING = frozenset({State.SCHEDULED.value, State.READY.value, State.LEASED.value})


class AttemptOutcome(enum.IntEnum):
    """How one attempt ended. Values match `feedwork.v1.AttemptOutcome`."""

    RUNNING = 1
    ACKED = 2
    FAILED = 3
    EXPIRED = 4
    RELEASED = 5
    REVOKED = 6


class AckOutcome(enum.IntEnum):
    ACKED = 1
    ADOPTED = 2
    DUPLICATE = 3
    REJECTED = 4
    NOT_FOUND = 5
    INVALID_TOKEN = 6


class NackOutcome(enum.IntEnum):
    RETRYING = 1
    DEAD = 2
    RELEASED = 3
    STALE = 4
    COMPLETED = 5
    CANCELLED = 6
    NOT_FOUND = 7
    INVALID_TOKEN = 8
    DUPLICATE = 9


class ExtendOutcome(enum.IntEnum):
    EXTENDED = 1
    LEASE_LOST = 2
    COMPLETED = 3
    CANCELLED = 4
    NOT_FOUND = 5
    INVALID_TOKEN = 6


class CancelOutcome(enum.IntEnum):
    CANCELLED = 1
    ALREADY_CANCELLED = 2
    ALREADY_COMPLETED = 3


@fast_init
@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt (lease) of a task.

    `worker_id` is what the worker calls itself (its own claim, unchecked); `caller` is who
    the feeder authenticated for the lease (an API key's name, a client certificate's
    identity), "" when the feeder runs without auth."""

    attempt: int
    worker_id: str
    leased_at: float
    ended_at: float | None = None
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    error: str = ""
    caller: str = ""


@fast_init
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated task as submitted; the feeder fills in the rest."""

    queue: str
    payload: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: EMPTY_HEADERS)
    priority: int = 0
    not_before: float | None = None
    max_attempts: int | None = None
    lease_duration: float | None = None
    idempotency_key: str | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Task:
    """A task record. Immutable: every transition returns a new record with version + 1.

    `attempt` is the number of leases handed out so far and doubles as the lease epoch that
    fences stale tokens. `history` holds the newest attempts, oldest first (at most
    `machine.MAX_HISTORY`: the earlier ones are trimmed, see `attempts_omitted`), so no rule
    reads it for attempts but the current one. `expired_attempts` holds, whole, the attempts
    whose lease ended by expiry, as sorted (first, last) ranges of attempt numbers: a late
    ack may complete the task only for one of those (an attempt that ended otherwise was
    failed or released by its own worker, or is the current one). Runs of expiries are one
    range, so it stays small however often a task was redelivered.
    """

    id: int
    queue: str
    payload: bytes
    headers: Mapping[str, str]
    priority: int
    state: State
    max_attempts: int
    created_at: float
    ready_at: float
    attempt: int = 0
    failures: int = 0
    not_before: float | None = None
    lease_deadline: float | None = None
    lease_duration: float | None = None
    lease_granted: float | None = None
    idempotency_key: str | None = None
    result: bytes | None = None
    finished_at: float | None = None
    history: tuple[Attempt, ...] = field(default=())
    version: int = 1
    expired_attempts: tuple[tuple[int, int], ...] = field(default=())

    def evolve(self, **changes: Any) -> Task:
        """A copy with `changes` applied, like dataclasses.replace but about 3x faster: the
        state machine makes one per transition, so it is on every RPC's path."""
        if not changes.keys() <= _TASK_FIELDS:
            raise TypeError(f"unknown Task fields: {sorted(changes.keys() - _TASK_FIELDS)}")
        # Filled in as a draft, then made a Task (see feeder.core.records): plain stores
        # cost a fraction of the object.__setattr__ a frozen class needs per field.
        # Spelled out (no loop over fields()): this is the hot path. A unit test checks
        # that it covers every field.
        new: Any = _new(_TaskDraft)
        get = changes.get
        new.id = get("id", self.id)
        new.queue = get("queue", self.queue)
        new.payload = get("payload", self.payload)
        new.headers = get("headers", self.headers)
        new.priority = get("priority", self.priority)
        new.state = get("state", self.state)
        new.max_attempts = get("max_attempts", self.max_attempts)
        new.created_at = get("created_at", self.created_at)
        new.ready_at = get("ready_at", self.ready_at)
        new.attempt = get("attempt", self.attempt)
        new.failures = get("failures", self.failures)
        new.not_before = get("not_before", self.not_before)
        new.lease_deadline = get("lease_deadline", self.lease_deadline)
        new.lease_duration = get("lease_duration", self.lease_duration)
        new.lease_granted = get("lease_granted", self.lease_granted)
        new.idempotency_key = get("idempotency_key", self.idempotency_key)
        new.result = get("result", self.result)
        new.finished_at = get("finished_at", self.finished_at)
        new.history = get("history", self.history)
        new.version = get("version", self.version)
        new.expired_attempts = get("expired_attempts", self.expired_attempts)
        new.__class__ = Task
        task: Task = new
        return task

    def current_attempt(self) -> Attempt | None:
        """The record of attempt number `self.attempt`, if the task was ever leased."""
        if self.history and self.history[-1].attempt == self.attempt:
            return self.history[-1]
        return None

    def attempt_record(self, attempt: int) -> Attempt | None:
        for record in reversed(self.history):
            if record.attempt == attempt:
                return record
        return None

    @property
    def attempts_omitted(self) -> int:
        """How many of the earliest attempts `history` no longer lists (it lists the newest
        ones, every one from its first to the current)."""
        return self.history[0].attempt - 1 if self.history else 0

    def expired(self, attempt: int) -> bool:
        """Whether the lease of `attempt` ended by expiry (whatever `history` still holds)."""
        ranges = self.expired_attempts
        if not ranges:
            return False
        index = bisect_right(ranges, (attempt, _NO_END)) - 1
        return index >= 0 and ranges[index][1] >= attempt


_new = object.__new__
_NO_END = 2**63  # above any attempt number: (n, _NO_END) sorts after every (n, last)
_TASK_FIELDS = frozenset(f.name for f in fields(Task))
_TaskDraft = draft_class(Task)
