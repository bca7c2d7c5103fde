"""Domain records to `feedwork.v1` messages. The reverse direction is `validate`.

Domain enums carry the wire values (see `feeder.core.model`), so `enum_pb` is just `int()`.
Ids are ints inside the feeder and decimal strings on the wire; times are float seconds.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from feeder.core.machine import Event
from feeder.core.model import Attempt, State, Task
from feeder.service.consumers import ConsumerView
from feeder.service.tasks import AckResult, ExtendResult, LeaseGrant, NackResult
from feeder.store.base import LeaseHolder, QueueCounts, Submitted
from feedwork.v1 import feeder_pb2 as pb

_NANOS = 1_000_000_000


def _split(seconds: float) -> tuple[int, int]:
    # Splitting before scaling keeps nanosecond precision that `seconds * 1e9` would lose.
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS)
    if nanos >= _NANOS:
        return whole + 1, 0
    return whole, nanos


def timestamp_pb(epoch_seconds: float) -> timestamp_pb2.Timestamp:
    seconds, nanos = _split(epoch_seconds)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def duration_pb(seconds: float) -> duration_pb2.Duration:
    whole, nanos = _split(max(seconds, 0.0))
    return duration_pb2.Duration(seconds=whole, nanos=nanos)


def enum_pb(value: enum.IntEnum) -> Any:
    """A domain enum member as the wire enum value it mirrors."""
    return int(value)


def task_id_pb(task_id: int | None) -> str:
    return "" if task_id is None else str(task_id)


def attempt_pb(attempt: Attempt) -> pb.Attempt:
    message = pb.Attempt(
        attempt=attempt.attempt,
        worker_id=attempt.worker_id,
        leased_at=timestamp_pb(attempt.leased_at),
        outcome=enum_pb(attempt.outcome),
        error=attempt.error,
        caller=attempt.caller,
    )
    if attempt.ended_at is not None:
        message.ended_at.CopyFrom(timestamp_pb(attempt.ended_at))
    return message


def task_pb(task: Task, *, payloads: bool = True) -> pb.Task:
    """The task as the wire shows it; `payloads=False` leaves payload and result empty."""
    message = pb.Task(
        task_id=str(task.id),
        queue=task.queue,
        payload=task.payload if payloads else b"",
        headers=dict(task.headers),
        priority=task.priority,
        state=enum_pb(task.state),
        attempts=task.attempt,
        failures=task.failures,
        max_attempts=task.max_attempts,
        result=(task.result or b"") if payloads else b"",
        idempotency_key=task.idempotency_key or "",
        created_at=timestamp_pb(task.created_at),
        history=[attempt_pb(a) for a in task.history],
        attempts_omitted=task.attempts_omitted,
    )
    if task.not_before is not None:
        message.not_before.CopyFrom(timestamp_pb(task.not_before))
    if task.lease_deadline is not None:
        message.lease_deadline.CopyFrom(timestamp_pb(task.lease_deadline))
    if task.finished_at is not None:
        message.finished_at.CopyFrom(timestamp_pb(task.finished_at))
    if task.lease_duration is not None:
        message.lease_duration.CopyFrom(duration_pb(task.lease_duration))
    return message


# The per-task messages of the busy replies are appended to the reply's repeated field,
# built in place with `add`: about half the cost of building each message and copying it
# in (the copy is what `Reply(items=[...])` and `extend` do).


def add_submit_results(field: Any, results: Iterable[Submitted]) -> None:
    add = field.add
    for submitted in results:
        task = submitted.task
        if submitted.deduplicated:
            add(task_id=str(task.id), state=task.state.value, deduplicated=True)
        else:  # `deduplicated` left unset: false is the default
            add(task_id=str(task.id), state=task.state.value)


def add_leased_tasks(field: Any, grants: Iterable[LeaseGrant]) -> None:
    # Scalar fields in `add`, the deadline's fields set in place (no Timestamp built and
    # copied), headers only when there are any.
    add = field.add
    for grant in grants:
        task = grant.task
        message = add(
            task_id=str(task.id),
            queue=task.queue,
            payload=task.payload,
            attempt=task.attempt,
            lease_token=grant.lease_token,
            priority=task.priority,
            max_attempts=task.max_attempts,
        )
        if task.headers:
            message.headers.update(task.headers)
        if task.lease_deadline is not None:
            _set_timestamp(message.lease_deadline, task.lease_deadline)


def add_ack_results(field: Any, results: Iterable[AckResult]) -> None:
    add = field.add
    for result in results:
        task_id = result.task_id
        add(outcome=result.outcome.value, task_id="" if task_id is None else str(task_id))


def _set_timestamp(field: timestamp_pb2.Timestamp, epoch_seconds: float) -> None:
    """Sets a message's Timestamp field in place (which also marks it present)."""
    field.seconds, field.nanos = _split(epoch_seconds)


def nack_result_pb(result: NackResult) -> pb.NackResult:
    message = pb.NackResult(outcome=enum_pb(result.outcome), task_id=task_id_pb(result.task_id))
    if result.retry_at is not None:
        message.retry_at.CopyFrom(timestamp_pb(result.retry_at))
    return message


def extend_result_pb(result: ExtendResult) -> pb.ExtendResult:
    message = pb.ExtendResult(outcome=enum_pb(result.outcome), task_id=task_id_pb(result.task_id))
    if result.lease_deadline is not None:
        message.lease_deadline.CopyFrom(timestamp_pb(result.lease_deadline))
    return message


def totals_pb(totals: Iterable[tuple[Event, int]]) -> pb.Totals:
    message = pb.Totals()
    for event, count in totals:
        # Event values are the Totals field names.
        setattr(message, event.value, getattr(message, event.value) + count)
    return message


def queue_stats_pb(counts: QueueCounts, *, now: float) -> pb.QueueStats:
    by_state = counts.by_state
    age = 0.0 if counts.oldest_ready_at is None else now - counts.oldest_ready_at
    return pb.QueueStats(
        queue=counts.queue,
        scheduled=by_state.get(State.SCHEDULED, 0),
        ready=by_state.get(State.READY, 0),
        leased=by_state.get(State.LEASED, 0),
        completed=by_state.get(State.COMPLETED, 0),
        dead=by_state.get(State.DEAD, 0),
        cancelled=by_state.get(State.CANCELLED, 0),
        oldest_ready_age=duration_pb(age),
        totals=totals_pb(counts.totals.items()),
    )


def stats_response_pb(queues: Iterable[QueueCounts], *, now: float) -> pb.GetStatsResponse:
    reply = pb.GetStatsResponse()
    overall: Counter[Event] = Counter()
    add_queue_stats(reply.queues, queues, now=now, overall=overall)
    reply.totals.CopyFrom(totals_pb(overall.items()))
    return reply


def add_queue_stats(
    field: Any, queues: Iterable[QueueCounts], *, now: float, overall: Counter[Event]
) -> None:
    """Appends each queue's stats to a GetStatsResponse's `queues` and adds its totals to
    `overall` (a reply of 10,000 queues is built a slice at a time, see the servicer)."""
    append = field.append
    for counts in queues:
        overall.update(counts.totals)
        append(queue_stats_pb(counts, now=now))


def queue_info_pb(counts: QueueCounts, *, now: float) -> pb.QueueInfo:
    message = pb.QueueInfo(
        queue=counts.queue,
        paused=counts.paused_at is not None,
        stats=queue_stats_pb(counts, now=now),
    )
    if counts.paused_at is not None:
        _set_timestamp(message.paused_at, counts.paused_at)
    return message


def lease_holder_pb(holder: LeaseHolder) -> pb.LeaseHolder:
    return pb.LeaseHolder(
        queue=holder.queue,
        worker_id=holder.worker_id,
        caller=holder.caller,
        leases=holder.leases,
        oldest_leased_at=timestamp_pb(holder.oldest_leased_at),
        newest_leased_at=timestamp_pb(holder.newest_leased_at),
    )


def consumer_pb(consumer: ConsumerView) -> pb.ConsumerInfo:
    return pb.ConsumerInfo(
        kind=pb.CONSUMER_KIND_STREAM if consumer.stream else pb.CONSUMER_KIND_LEASE,
        worker_id=consumer.worker_id,
        caller=consumer.caller,
        queues=consumer.queues,
        since=timestamp_pb(consumer.since),
        leases=consumer.leases,
        peer=consumer.peer,
    )
