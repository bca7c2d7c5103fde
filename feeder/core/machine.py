"""The lease state machine: every rule about what happens to a task, and nothing else.

Each function takes a task record and `now`, and returns a `Decision`: a typed outcome, the
new record (or None when nothing changed) and the events to count. No I/O, no clock, no
global randomness. Storage persists the new record only if the task still has the version
the decision was made from, so a decision based on a stale read is never applied.

Time-driven transitions are applied first by `advance`: a lease whose deadline has passed
has expired whether or not the reaper got to it yet, so the outcome of an operation never
depends on how promptly the reaper ran.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from feeder.core.model import (
    EMPTY_HEADERS,
    AckOutcome,
    Attempt,
    AttemptOutcome,
    CancelOutcome,
    ExtendOutcome,
    NackOutcome,
    State,
    Task,
    TaskSpec,
)
from feeder.core.policy import QueuePolicy

# A task released over and over (workers restarting) would grow its history without bound.
# No rule reads the attempts trimmed from it: how each attempt ended is kept whole in
# Task.expired_attempts.
MAX_HISTORY = 100

OutcomeT = TypeVar("OutcomeT")


class Event(enum.Enum):
    """Things counted in the feeder's running totals."""

    SUBMITTED = "submitted"
    COMPLETED = "completed"
    ADOPTED = "adopted"
    EXPIRED = "expired"
    REDELIVERED = "redelivered"
    DUPLICATE_ACK = "duplicate_acks"
    DEAD_LETTERED = "dead_lettered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class Decision(Generic[OutcomeT]):
    outcome: OutcomeT
    task: Task | None = None
    events: tuple[Event, ...] = ()


# What `advance` returns for a task that time has not changed (nearly every call): one
# shared instance instead of a new one per operation; decisions are immutable.
_NOTHING_DUE: Decision[None] = Decision(None)


_SUBMITTED = (Event.SUBMITTED,)


def create(spec: TaskSpec, *, task_id: int, now: float, policy: QueuePolicy) -> Decision[State]:
    """A new task: scheduled when its not-before time is in the future, else ready."""
    not_before = spec.not_before
    if not_before is not None and not_before > now:
        state = State.SCHEDULED
    else:
        state, not_before = State.READY, None
    # Positional: one of these per submitted task (the fields in Task's order).
    task = Task(
        task_id, spec.queue, spec.payload, spec.headers or EMPTY_HEADERS, spec.priority,
        state, spec.max_attempts or policy.max_attempts, now, now, 0, 0, not_before, None,
        spec.lease_duration, None, spec.idempotency_key,
    )  # fmt: skip
    return Decision(state, task, _SUBMITTED)


def advance(task: Task, now: float) -> Decision[None]:
    """Applies the transitions that time alone causes: promotion and lease expiry."""
    if task.state is State.SCHEDULED and task.not_before is not None and task.not_before <= now:
        promoted = task.evolve(
            state=State.READY, not_before=None, ready_at=now, version=task.version + 1
        )
        return Decision(None, promoted)
    if (
        task.state is State.LEASED
        and task.lease_deadline is not None
        and task.lease_deadline <= now
    ):
        return _expire(task, now)
    return _NOTHING_DUE


def _expire(task: Task, now: float) -> Decision[None]:
    failures = task.failures + 1
    history = _end_current(task, now, AttemptOutcome.EXPIRED, "lease expired")
    expired = _with_attempt(task.expired_attempts, task.attempt)
    if failures >= task.max_attempts:
        dead = task.evolve(
            state=State.DEAD,
            failures=failures,
            lease_deadline=None,
            finished_at=now,
            history=history,
            expired_attempts=expired,
            version=task.version + 1,
        )
        return Decision(None, dead, (Event.EXPIRED, Event.DEAD_LETTERED))
    ready = task.evolve(
        state=State.READY,
        failures=failures,
        lease_deadline=None,
        ready_at=now,
        history=history,
        expired_attempts=expired,
        version=task.version + 1,
    )
    return Decision(None, ready, (Event.EXPIRED,))


def lease(
    task: Task,
    *,
    now: float,
    worker_id: str,
    lease_duration: float | None,
    policy: QueuePolicy,
    caller: str = "",
) -> Decision[bool]:
    """Hands a ready task to a worker. Outcome False (no change) if it is not ready.

    The attempt records both names of who took it: `worker_id`, the worker's own, and
    `caller`, the identity the feeder authenticated ("" without auth)."""
    caught_up = advance(task, now)
    current = caught_up.task or task
    if current.state is not State.READY:
        return Decision(False, caught_up.task, caught_up.events)
    duration = lease_duration or current.lease_duration or policy.lease_duration
    attempt = current.attempt + 1
    history = _trim((*current.history, Attempt(attempt, worker_id, now, caller=caller)))
    leased = current.evolve(
        state=State.LEASED,
        attempt=attempt,
        lease_deadline=now + duration,
        lease_granted=duration,
        history=history,
        version=current.version + 1,
    )
    events = caught_up.events + ((Event.REDELIVERED,) if attempt > 1 else ())
    return Decision(True, leased, events)


def ack(task: Task, attempt: int, *, result: bytes | None, now: float) -> Decision[AckOutcome]:
    """Completes the task for the worker holding lease `attempt`, or for a late one whose
    lease expired (adopted); see AckOutcome. Any other attempt ended by its own worker's
    nack (failed or released): rejected."""
    caught_up = advance(task, now)
    current = caught_up.task or task
    if attempt < 1 or attempt > current.attempt:
        return Decision(AckOutcome.INVALID_TOKEN, caught_up.task, caught_up.events)
    if current.state is State.COMPLETED:
        return Decision(
            AckOutcome.DUPLICATE, caught_up.task, (*caught_up.events, Event.DUPLICATE_ACK)
        )
    is_current = current.state is State.LEASED and current.attempt == attempt
    if current.state is State.CANCELLED or not (is_current or current.expired(attempt)):
        return Decision(AckOutcome.REJECTED, caught_up.task, caught_up.events)
    history = list(current.history)
    for index, record in enumerate(history):
        if record.attempt == attempt:
            note = "" if is_current else "completed after its lease ended (adopted)"
            history[index] = _ended(record, record.ended_at or now, AttemptOutcome.ACKED, note)
        elif record.outcome is AttemptOutcome.RUNNING:
            history[index] = _ended(
                record,
                now,
                AttemptOutcome.REVOKED,
                f"revoked: attempt {attempt} completed the task first",
            )
    completed = current.evolve(
        state=State.COMPLETED,
        result=result,
        lease_deadline=None,
        not_before=None,
        finished_at=now,
        history=tuple(history),
        version=current.version + 1,
    )
    if is_current:
        return Decision(AckOutcome.ACKED, completed, (*caught_up.events, Event.COMPLETED))
    events = (*caught_up.events, Event.COMPLETED, Event.ADOPTED)
    return Decision(AckOutcome.ADOPTED, completed, events)


def nack(
    task: Task,
    attempt: int,
    *,
    error: str,
    retry_after: float | None,
    terminal: bool,
    release: bool,
    now: float,
    policy: QueuePolicy,
    rng: random.Random,
) -> Decision[NackOutcome]:
    """Records a failed (or released) attempt; see NackOutcome."""
    caught_up = advance(task, now)
    current = caught_up.task or task
    if attempt < 1 or attempt > current.attempt:
        return Decision(NackOutcome.INVALID_TOKEN, caught_up.task, caught_up.events)
    if current.state is State.COMPLETED:
        return Decision(NackOutcome.COMPLETED, caught_up.task, caught_up.events)
    if current.state is State.CANCELLED:
        return Decision(NackOutcome.CANCELLED, caught_up.task, caught_up.events)
    if not (current.state is State.LEASED and current.attempt == attempt):
        if current.expired(attempt):
            return _stale_nack(current, attempt, error, caught_up)
        # Not current and not expired: its own worker failed or released it already.
        return Decision(NackOutcome.DUPLICATE, caught_up.task, caught_up.events)
    if release:
        released = current.evolve(
            state=State.READY,
            lease_deadline=None,
            ready_at=now,
            history=_end_current(current, now, AttemptOutcome.RELEASED, error),
            version=current.version + 1,
        )
        return Decision(NackOutcome.RELEASED, released, caught_up.events)
    failures = current.failures + 1
    history = _end_current(current, now, AttemptOutcome.FAILED, error)
    if terminal or failures >= current.max_attempts:
        dead = current.evolve(
            state=State.DEAD,
            failures=failures,
            lease_deadline=None,
            finished_at=now,
            history=history,
            version=current.version + 1,
        )
        return Decision(NackOutcome.DEAD, dead, (Event.FAILED, Event.DEAD_LETTERED))
    delay = retry_after if retry_after is not None else policy.backoff(failures, rng)
    retry = current.evolve(
        state=State.SCHEDULED if delay > 0 else State.READY,
        failures=failures,
        lease_deadline=None,
        not_before=now + delay if delay > 0 else None,
        ready_at=now,
        history=history,
        version=current.version + 1,
    )
    return Decision(NackOutcome.RETRYING, retry, (Event.FAILED,))


def _stale_nack(
    task: Task, attempt: int, error: str, caught_up: Decision[None]
) -> Decision[NackOutcome]:
    """A nack from an attempt that already ended: keep its error for the record (once)."""
    record = task.attempt_record(attempt)
    note = f"worker reported: {error}"
    if record is None or not error or record.error == error or record.error.endswith(note):
        return Decision(NackOutcome.STALE, caught_up.task, caught_up.events)
    history = tuple(
        replace(r, error=f"{r.error}; {note}") if r is record else r for r in task.history
    )
    noted = task.evolve(history=history, version=task.version + 1)
    return Decision(NackOutcome.STALE, noted, caught_up.events)


def extend(
    task: Task, attempt: int, *, lease_duration: float | None, now: float
) -> Decision[ExtendOutcome]:
    """Moves the deadline of a current lease; otherwise says why the lease is gone."""
    caught_up = advance(task, now)
    current = caught_up.task or task
    if attempt < 1 or attempt > current.attempt:
        return Decision(ExtendOutcome.INVALID_TOKEN, caught_up.task, caught_up.events)
    if current.state is State.COMPLETED:
        return Decision(ExtendOutcome.COMPLETED, caught_up.task, caught_up.events)
    if current.state is State.CANCELLED:
        return Decision(ExtendOutcome.CANCELLED, caught_up.task, caught_up.events)
    if not (current.state is State.LEASED and current.attempt == attempt):
        return Decision(ExtendOutcome.LEASE_LOST, caught_up.task, caught_up.events)
    duration = lease_duration or current.lease_granted or 0.0
    extended = current.evolve(lease_deadline=now + duration, version=current.version + 1)
    return Decision(ExtendOutcome.EXTENDED, extended, caught_up.events)


def cancel(task: Task, *, now: float) -> Decision[CancelOutcome]:
    """Cancels a task that has not completed; its live lease, if any, is revoked.

    A lease already past its deadline expired before the cancel (see `advance`): it is
    recorded and counted as expired, not revoked.
    """
    if task.state is State.COMPLETED:
        return Decision(CancelOutcome.ALREADY_COMPLETED)
    if task.state is State.CANCELLED:
        return Decision(CancelOutcome.ALREADY_CANCELLED)
    caught_up = advance(task, now)
    current = caught_up.task or task
    history = current.history
    if current.state is State.LEASED:
        history = _end_current(current, now, AttemptOutcome.REVOKED, "revoked: task cancelled")
    cancelled = current.evolve(
        state=State.CANCELLED,
        lease_deadline=None,
        not_before=None,
        finished_at=now,
        history=history,
        version=current.version + 1,
    )
    return Decision(CancelOutcome.CANCELLED, cancelled, (*caught_up.events, Event.CANCELLED))


def redrive(task: Task, *, now: float) -> Decision[bool]:
    """Puts a dead task back to ready with a fresh failure budget (attempt numbers go on)."""
    if task.state is not State.DEAD:
        return Decision(False)
    ready = task.evolve(
        state=State.READY,
        failures=0,
        ready_at=now,
        finished_at=None,
        version=task.version + 1,
    )
    return Decision(True, ready)


# What a queue purge deletes: tasks waiting to be leased, never one a worker holds, nor a
# final or dead one (dead tasks have their own purge, PurgeDeadTasks).
_PURGEABLE = frozenset({State.READY, State.SCHEDULED})
_PURGED = (Event.PURGED,)


def purge(task: Task, *, before: float) -> Decision[bool]:
    """Whether a queue purge deletes `task` (outcome True, counted as PURGED): READY or
    SCHEDULED, and submitted before the purge began (`before`), so that a purge ends even
    while producers keep submitting. The caller deletes the record; nothing else changes."""
    if task.state in _PURGEABLE and task.created_at <= before:
        return Decision(True, None, _PURGED)
    return Decision(False)


def _end_current(
    task: Task, now: float, outcome: AttemptOutcome, error: str
) -> tuple[Attempt, ...]:
    record = task.current_attempt()
    if record is None or record.outcome is not AttemptOutcome.RUNNING:
        return task.history
    return (*task.history[:-1], _ended(record, now, outcome, error))


def _ended(record: Attempt, ended_at: float, outcome: AttemptOutcome, error: str) -> Attempt:
    """`record` with how it ended: dataclasses.replace, without its per-call look at the
    fields (two of these per task on the hot path)."""
    return Attempt(
        record.attempt, record.worker_id, record.leased_at, ended_at, outcome, error,
        record.caller,
    )  # fmt: skip


def _with_attempt(ranges: tuple[tuple[int, int], ...], attempt: int) -> tuple[tuple[int, int], ...]:
    """`ranges` with `attempt` added: always the newest attempt, so it extends the last
    range or starts a new one after it."""
    if ranges:
        first, last = ranges[-1]
        if last >= attempt:
            return ranges
        if last == attempt - 1:
            return (*ranges[:-1], (first, attempt))
    return (*ranges, (attempt, attempt))


def _trim(history: tuple[Attempt, ...]) -> tuple[Attempt, ...]:
    return history[-MAX_HISTORY:] if len(history) > MAX_HISTORY else history
