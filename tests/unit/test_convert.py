"""Domain records to protobuf: enum values, times and every Task field."""

from __future__ import annotations

import enum

import grpc
import pytest

from feeder.core.machine import Event
from feeder.core.model import (
    AckOutcome,
    Attempt,
    AttemptOutcome,
    CancelOutcome,
    ExtendOutcome,
    NackOutcome,
    State,
    Task,
)
from feeder.server import convert
from feeder.service.tasks import LeaseGrant, NackResult
from feeder.store.base import QueueCounts
from feedwork.v1 import feeder_pb2 as pb


@pytest.mark.parametrize(
    ("domain", "wire", "prefix"),
    [
        (State, pb.TaskState, "TASK_STATE_"),
        (AttemptOutcome, pb.AttemptOutcome, "ATTEMPT_OUTCOME_"),
        (AckOutcome, pb.AckOutcome, "ACK_OUTCOME_"),
        (NackOutcome, pb.NackOutcome, "NACK_OUTCOME_"),
        (ExtendOutcome, pb.ExtendOutcome, "EXTEND_OUTCOME_"),
        (CancelOutcome, pb.CancelOutcome, "CANCEL_OUTCOME_"),
    ],
)
def test_domain_enums_carry_the_wire_values(
    domain: type[enum.IntEnum], wire: object, prefix: str
) -> None:
    wire_values = {
        name.removeprefix(prefix): value
        for name, value in wire.items()  # type: ignore[attr-defined]
        if not name.endswith("UNSPECIFIED")
    }
    assert {member.name: int(member) for member in domain} == wire_values


def test_every_event_is_a_totals_field() -> None:
    assert {e.value for e in Event} == set(pb.Totals.DESCRIPTOR.fields_by_name)


@pytest.mark.parametrize("seconds", [0.0, 1.5, 1_700_000_000.123456, 1_700_000_000.9999999999])
def test_timestamps_keep_sub_microsecond_precision(seconds: float) -> None:
    message = convert.timestamp_pb(seconds)
    assert 0 <= message.nanos < 1_000_000_000
    assert abs(message.seconds + message.nanos / 1e9 - seconds) < 1e-6


def test_negative_durations_become_zero() -> None:
    assert convert.duration_pb(-3.0).ToTimedelta().total_seconds() == 0


def make_task(**changes: object) -> Task:
    fields: dict[str, object] = {
        "id": 42,
        "queue": "q",
        "payload": b"p",
        "headers": {"h": "v"},
        "priority": 3,
        "state": State.LEASED,
        "max_attempts": 5,
        "created_at": 100.0,
        "ready_at": 100.0,
        "attempt": 2,
        "failures": 1,
        "lease_deadline": 160.0,
        "lease_duration": 60.0,
        "idempotency_key": "k",
        "history": (
            Attempt(1, "w1", 101.0, 131.0, AttemptOutcome.EXPIRED, "lease expired", "key-a"),
            Attempt(2, "w2", 130.0),
        ),
    }
    fields.update(changes)
    return Task(**fields)  # type: ignore[arg-type]


def test_task() -> None:
    message = convert.task_pb(make_task())
    assert (message.task_id, message.queue, message.payload) == ("42", "q", b"p")
    assert dict(message.headers) == {"h": "v"}
    assert message.state == pb.TASK_STATE_LEASED
    assert (message.attempts, message.failures, message.max_attempts) == (2, 1, 5)
    assert message.lease_deadline.seconds == 160
    assert message.lease_duration.seconds == 60
    assert message.created_at.seconds == 100
    assert message.idempotency_key == "k"
    assert not message.HasField("not_before") and not message.HasField("finished_at")
    first, current = message.history
    assert (first.attempt, first.worker_id, first.outcome) == (1, "w1", pb.ATTEMPT_OUTCOME_EXPIRED)
    assert (first.ended_at.seconds, first.error) == (131, "lease expired")
    assert (first.caller, current.caller) == ("key-a", "")  # "": taken without auth
    assert current.outcome == pb.ATTEMPT_OUTCOME_RUNNING and not current.HasField("ended_at")


def test_finished_task() -> None:
    task = make_task(
        state=State.COMPLETED,
        lease_deadline=None,
        result=b"r",
        finished_at=170.0,
        idempotency_key=None,
    )
    message = convert.task_pb(task)
    assert (message.result, message.finished_at.seconds) == (b"r", 170)
    assert message.idempotency_key == "" and not message.HasField("lease_deadline")


def leased_task_pb(grant: LeaseGrant) -> pb.LeasedTask:
    reply = pb.LeaseResponse()
    convert.add_leased_tasks(reply.tasks, [grant])
    (message,) = reply.tasks
    return message


def test_leased_task() -> None:
    message = leased_task_pb(LeaseGrant(make_task(), "token"))
    assert (message.task_id, message.attempt, message.lease_token) == ("42", 2, "token")
    assert (message.priority, message.max_attempts, message.lease_deadline.seconds) == (3, 5, 160)


def test_results_without_a_task_id() -> None:
    message = convert.nack_result_pb(NackResult(NackOutcome.INVALID_TOKEN, None))
    assert message.task_id == "" and not message.HasField("retry_at")
    message = convert.nack_result_pb(NackResult(NackOutcome.RETRYING, 7, retry_at=200.0))
    assert message.task_id == "7" and message.retry_at.seconds == 200


def test_stats() -> None:
    queues = [
        QueueCounts("a", {State.READY: 2, State.DEAD: 1}, 90.0, {Event.SUBMITTED: 3}),
        QueueCounts("b", {}, None, {Event.SUBMITTED: 1, Event.DUPLICATE_ACK: 4}),
    ]
    reply = convert.stats_response_pb(queues, now=100.0)
    a, b = reply.queues
    assert (a.queue, a.ready, a.dead, a.scheduled) == ("a", 2, 1, 0)
    assert a.oldest_ready_age.seconds == 10 and b.oldest_ready_age.seconds == 0
    assert (b.totals.submitted, b.totals.duplicate_acks) == (1, 4)
    assert (reply.totals.submitted, reply.totals.duplicate_acks) == (4, 4)


def test_leased_task_without_headers_or_deadline_and_at_time_zero() -> None:
    bare = leased_task_pb(LeaseGrant(make_task(headers={}, lease_deadline=None), "t"))
    assert not bare.headers and not bare.HasField("lease_deadline")
    at_zero = leased_task_pb(LeaseGrant(make_task(lease_deadline=0.0), "t"))
    assert at_zero.HasField("lease_deadline") and at_zero.lease_deadline.seconds == 0
    assert dict(at_zero.headers) == {"h": "v"}
    precise = leased_task_pb(LeaseGrant(make_task(lease_deadline=1.999999999), "t"))
    assert precise.lease_deadline == convert.timestamp_pb(1.999999999)


def test_report_errors_are_the_status_codes_of_their_names() -> None:
    from feeder.server.consume import _report_error

    for name, number in pb.ReportError.items():
        if number == 0:
            continue
        code = next(c for c in grpc.StatusCode if c.value[0] == number)
        assert name == f"REPORT_ERROR_{code.name}"
        assert _report_error(code) == number
    assert _report_error(grpc.StatusCode.DATA_LOSS) == pb.REPORT_ERROR_INTERNAL
