"""Unit tests of the pure lease state machine (feeder.core.machine)."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from feeder.core import machine
from feeder.core.machine import MAX_HISTORY, Decision, Event
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

T0 = 1_700_000_000.0
POLICY = QueuePolicy(max_attempts=3, backoff_base=2.0, backoff_cap=10.0, lease_duration=30.0)
SEED = 1234


# ---------------------------------------------------------------------------------------
# Helpers


def new_task(now: float = T0, policy: QueuePolicy = POLICY, **spec: object) -> Task:
    spec.setdefault("queue", "q")
    decision = machine.create(TaskSpec(**spec), task_id=7, now=now, policy=policy)  # type: ignore[arg-type]
    assert decision.task is not None
    return decision.task


def lease(
    task: Task,
    now: float,
    worker: str = "w",
    duration: float | None = None,
    policy: QueuePolicy = POLICY,
) -> Task:
    decision = machine.lease(
        task, now=now, worker_id=worker, lease_duration=duration, policy=policy
    )
    assert decision.outcome is True
    assert decision.task is not None
    return decision.task


def nack(
    task: Task,
    attempt: int,
    now: float,
    *,
    error: str = "boom",
    retry_after: float | None = None,
    terminal: bool = False,
    release: bool = False,
    policy: QueuePolicy = POLICY,
    rng: random.Random | None = None,
) -> Decision[NackOutcome]:
    return machine.nack(
        task,
        attempt,
        error=error,
        retry_after=retry_after,
        terminal=terminal,
        release=release,
        now=now,
        policy=policy,
        rng=rng or random.Random(SEED),
    )


def changed(decision: Decision[Any]) -> Task:
    assert decision.task is not None, f"expected a change, got {decision}"
    return decision.task


def assert_no_change(decision: Decision[Any]) -> None:
    assert decision.task is None
    assert decision.events == ()


def expired(task: Task) -> Task:
    """The task after its current lease expired (applied through advance)."""
    assert task.lease_deadline is not None
    return changed(machine.advance(task, task.lease_deadline))


# ---------------------------------------------------------------------------------------
# create


def test_create_ready_task_fills_in_every_field() -> None:
    spec = TaskSpec(
        queue="emails",
        payload=b"hello",
        headers={"trace": "abc"},
        priority=5,
        idempotency_key="k1",
    )
    decision = machine.create(spec, task_id=42, now=T0, policy=POLICY)
    assert decision.outcome is State.READY
    assert decision.events == (Event.SUBMITTED,)
    task = changed(decision)
    assert task == Task(
        id=42,
        queue="emails",
        payload=b"hello",
        headers={"trace": "abc"},
        priority=5,
        state=State.READY,
        max_attempts=POLICY.max_attempts,
        created_at=T0,
        ready_at=T0,
        attempt=0,
        failures=0,
        not_before=None,
        lease_deadline=None,
        lease_duration=None,
        lease_granted=None,
        idempotency_key="k1",
        result=None,
        finished_at=None,
        history=(),
        version=1,
    )
    assert task.current_attempt() is None


def test_create_with_future_not_before_is_scheduled() -> None:
    decision = machine.create(
        TaskSpec(queue="q", not_before=T0 + 60), task_id=1, now=T0, policy=POLICY
    )
    assert decision.outcome is State.SCHEDULED
    task = changed(decision)
    assert task.state is State.SCHEDULED
    assert task.not_before == T0 + 60
    assert decision.events == (Event.SUBMITTED,)


@pytest.mark.parametrize("not_before", [T0, T0 - 1, T0 - 86_400])
def test_create_with_past_or_present_not_before_is_ready(not_before: float) -> None:
    task = new_task(not_before=not_before)
    assert task.state is State.READY
    assert task.not_before is None


def test_create_uses_spec_max_attempts_and_lease_duration() -> None:
    task = new_task(max_attempts=9, lease_duration=12.5)
    assert task.max_attempts == 9
    assert task.lease_duration == 12.5


def test_create_without_headers_shares_the_empty_mapping() -> None:
    assert new_task().headers is EMPTY_HEADERS
    assert new_task(headers={}).headers is EMPTY_HEADERS


def test_task_records_are_immutable() -> None:
    task = new_task()
    with pytest.raises(FrozenInstanceError):
        task.state = State.DEAD  # type: ignore[misc]


# ---------------------------------------------------------------------------------------
# advance


def test_advance_leaves_a_scheduled_task_alone_before_its_time() -> None:
    task = new_task(not_before=T0 + 10)
    assert_no_change(machine.advance(task, T0 + 9.999))


def test_advance_promotes_a_scheduled_task_at_its_time() -> None:
    task = new_task(not_before=T0 + 10)
    decision = machine.advance(task, T0 + 10)
    assert decision.outcome is None
    assert decision.events == ()
    promoted = changed(decision)
    assert promoted.state is State.READY
    assert promoted.not_before is None
    assert promoted.ready_at == T0 + 10
    assert promoted.version == task.version + 1
    # Promotion is applied once: a second advance changes nothing.
    assert_no_change(machine.advance(promoted, T0 + 100))


def test_advance_leaves_a_live_lease_alone() -> None:
    task = lease(new_task(), T0)
    assert_no_change(machine.advance(task, T0 + 29.999))


def test_advance_expires_a_lease_at_its_deadline_and_counts_a_failure() -> None:
    task = lease(new_task(), T0)
    decision = machine.advance(task, T0 + 30)
    assert decision.events == (Event.EXPIRED,)
    after = changed(decision)
    assert after.state is State.READY
    assert after.failures == 1
    assert after.attempt == 1
    assert after.lease_deadline is None
    assert after.ready_at == T0 + 30
    assert after.finished_at is None
    assert after.version == task.version + 1
    assert after.history == (
        Attempt(
            attempt=1,
            worker_id="w",
            leased_at=T0,
            ended_at=T0 + 30,
            outcome=AttemptOutcome.EXPIRED,
            error="lease expired",
        ),
    )


def test_advance_expiry_of_the_last_attempt_makes_the_task_dead() -> None:
    task = new_task(max_attempts=2)
    task = lease(expired(lease(task, T0)), T0 + 30)
    assert task.failures == 1
    decision = machine.advance(task, T0 + 60)
    assert decision.events == (Event.EXPIRED, Event.DEAD_LETTERED)
    dead = changed(decision)
    assert dead.state is State.DEAD
    assert dead.failures == 2
    assert dead.finished_at == T0 + 60
    assert dead.lease_deadline is None
    assert [a.outcome for a in dead.history] == [AttemptOutcome.EXPIRED] * 2


@pytest.mark.parametrize("state", [State.READY, State.COMPLETED, State.DEAD, State.CANCELLED])
def test_advance_never_touches_other_states(state: State) -> None:
    task = replace(new_task(), state=state, not_before=T0, lease_deadline=T0)
    assert_no_change(machine.advance(task, T0 + 1e6))


# ---------------------------------------------------------------------------------------
# lease


def test_lease_hands_out_attempt_one() -> None:
    task = new_task()
    decision = machine.lease(
        task, now=T0 + 1, worker_id="worker-a", lease_duration=None, policy=POLICY
    )
    assert decision.outcome is True
    assert decision.events == ()
    leased = changed(decision)
    assert leased.state is State.LEASED
    assert leased.attempt == 1
    assert leased.lease_deadline == T0 + 1 + POLICY.lease_duration
    assert leased.lease_granted == POLICY.lease_duration
    assert leased.version == task.version + 1
    assert leased.history == (Attempt(attempt=1, worker_id="worker-a", leased_at=T0 + 1),)
    assert leased.current_attempt() == leased.history[0]
    assert leased.history[0].outcome is AttemptOutcome.RUNNING


def test_lease_duration_precedence_request_then_task_then_policy() -> None:
    assert lease(new_task(lease_duration=5.0), T0, duration=7.0).lease_deadline == T0 + 7.0
    assert lease(new_task(lease_duration=5.0), T0).lease_deadline == T0 + 5.0
    assert lease(new_task(), T0).lease_deadline == T0 + POLICY.lease_duration
    assert lease(new_task(lease_duration=5.0), T0, duration=7.0).lease_granted == 7.0


def test_lease_of_a_redelivered_task_counts_a_redelivery() -> None:
    task = changed(nack(lease(new_task(), T0), 1, T0 + 1, release=True))
    decision = machine.lease(task, now=T0 + 2, worker_id="w2", lease_duration=None, policy=POLICY)
    assert decision.outcome is True
    assert decision.events == (Event.REDELIVERED,)
    again = changed(decision)
    assert again.attempt == 2
    assert [a.attempt for a in again.history] == [1, 2]
    assert again.history[-1].worker_id == "w2"


def test_each_attempt_keeps_the_caller_that_took_it_however_it_ends() -> None:
    """The authenticated caller is recorded beside the worker's own name, per attempt, and
    every way an attempt ends keeps it ("" without auth)."""

    def lease_as(task: Task, now: float, caller: str) -> Task:
        decision = machine.lease(
            task, now=now, worker_id="w", lease_duration=None, policy=POLICY, caller=caller
        )
        return changed(decision)

    task = lease_as(new_task(max_attempts=10), T0, "key-a")
    assert task.history == (Attempt(1, "w", T0, caller="key-a"),)
    task = changed(machine.advance(task, T0 + 100))  # expired
    task = changed(nack(lease_as(task, T0 + 101, "cert:b"), 2, T0 + 102))  # failed
    task = changed(nack(task, 1, T0 + 103))  # a stale nack notes its error on attempt 1
    task = changed(nack(lease(task, T0 + 200), 3, T0 + 201, release=True))  # released
    task = changed(machine.cancel(lease_as(task, T0 + 300, "key-a"), now=T0 + 301))  # revoked
    assert [(a.outcome, a.caller) for a in task.history] == [
        (AttemptOutcome.EXPIRED, "key-a"),
        (AttemptOutcome.FAILED, "cert:b"),
        (AttemptOutcome.RELEASED, ""),
        (AttemptOutcome.REVOKED, "key-a"),
    ]
    assert task.history[0].error.endswith("worker reported: boom")
    done = changed(machine.ack(lease_as(new_task(), T0, "key-c"), 1, result=None, now=T0 + 1))
    assert (done.history[0].outcome, done.history[0].caller) == (AttemptOutcome.ACKED, "key-c")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: new_task(not_before=T0 + 100), id="scheduled"),
        pytest.param(lambda: lease(new_task(), T0), id="leased"),
        pytest.param(
            lambda: changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0)),
            id="completed",
        ),
        pytest.param(lambda: changed(nack(lease(new_task(), T0), 1, T0, terminal=True)), id="dead"),
        pytest.param(lambda: changed(machine.cancel(new_task(), now=T0)), id="cancelled"),
    ],
)
def test_lease_refuses_a_task_that_is_not_ready(make) -> None:  # type: ignore[no-untyped-def]
    task = make()
    decision = machine.lease(task, now=T0 + 1, worker_id="w", lease_duration=None, policy=POLICY)
    assert decision == Decision(False)


def test_lease_promotes_a_scheduled_task_whose_time_has_come() -> None:
    task = new_task(not_before=T0 + 10)
    leased = lease(task, T0 + 10)
    assert leased.state is State.LEASED
    assert leased.not_before is None
    assert leased.ready_at == T0 + 10
    assert leased.version == task.version + 2  # promotion, then lease


def test_lease_of_an_expired_lease_expires_it_first() -> None:
    task = lease(new_task(), T0)
    decision = machine.lease(task, now=T0 + 31, worker_id="w2", lease_duration=None, policy=POLICY)
    assert decision.outcome is True
    assert decision.events == (Event.EXPIRED, Event.REDELIVERED)
    again = changed(decision)
    assert again.attempt == 2
    assert again.failures == 1
    assert [a.outcome for a in again.history] == [AttemptOutcome.EXPIRED, AttemptOutcome.RUNNING]
    assert again.version == task.version + 2


def test_lease_of_an_expired_last_attempt_returns_the_dead_task() -> None:
    task = lease(new_task(max_attempts=1), T0)
    decision = machine.lease(task, now=T0 + 31, worker_id="w2", lease_duration=None, policy=POLICY)
    assert decision.outcome is False
    assert decision.events == (Event.EXPIRED, Event.DEAD_LETTERED)
    assert changed(decision).state is State.DEAD


# ---------------------------------------------------------------------------------------
# ack


def test_ack_of_the_current_lease_completes_the_task() -> None:
    task = lease(new_task(), T0)
    decision = machine.ack(task, 1, result=b"done", now=T0 + 5)
    assert decision.outcome is AckOutcome.ACKED
    assert decision.events == (Event.COMPLETED,)
    done = changed(decision)
    assert done.state is State.COMPLETED
    assert done.result == b"done"
    assert done.finished_at == T0 + 5
    assert done.lease_deadline is None
    assert done.version == task.version + 1
    assert done.history == (
        Attempt(
            attempt=1,
            worker_id="w",
            leased_at=T0,
            ended_at=T0 + 5,
            outcome=AttemptOutcome.ACKED,
            error="",
        ),
    )


def test_ack_without_result_stores_none() -> None:
    done = changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0))
    assert done.result is None


def test_second_ack_of_the_same_attempt_is_a_duplicate_and_changes_nothing() -> None:
    first = machine.ack(lease(new_task(), T0), 1, result=b"one", now=T0 + 1)
    assert first.outcome is AckOutcome.ACKED
    done = changed(first)
    second = machine.ack(done, 1, result=b"two", now=T0 + 2)
    assert second.outcome is AckOutcome.DUPLICATE
    assert second.task is None
    assert second.events == (Event.DUPLICATE_ACK,)


def test_ack_of_another_attempt_after_completion_is_a_duplicate() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30)
    done = changed(machine.ack(task, 2, result=b"two", now=T0 + 31))
    late = machine.ack(done, 1, result=b"one", now=T0 + 32)
    assert late.outcome is AckOutcome.DUPLICATE
    assert late.task is None
    assert late.events == (Event.DUPLICATE_ACK,)


def test_late_ack_after_expiry_while_ready_is_adopted() -> None:
    task = expired(lease(new_task(), T0))
    assert task.state is State.READY
    decision = machine.ack(task, 1, result=b"late", now=T0 + 40)
    assert decision.outcome is AckOutcome.ADOPTED
    assert decision.events == (Event.COMPLETED, Event.ADOPTED)
    done = changed(decision)
    assert done.state is State.COMPLETED
    assert done.result == b"late"
    assert done.finished_at == T0 + 40
    assert done.failures == 1  # the expiry stays counted
    assert done.version == task.version + 1
    record = done.history[0]
    assert record.outcome is AttemptOutcome.ACKED
    assert record.ended_at == T0 + 30  # when the lease ended, not when the ack came
    assert "adopted" in record.error


def test_late_ack_before_the_reaper_ran_expires_then_adopts() -> None:
    task = lease(new_task(), T0)
    decision = machine.ack(task, 1, result=b"late", now=T0 + 31)
    assert decision.outcome is AckOutcome.ADOPTED
    assert decision.events == (Event.EXPIRED, Event.COMPLETED, Event.ADOPTED)
    done = changed(decision)
    assert done.state is State.COMPLETED
    assert done.failures == 1
    assert done.version == task.version + 2
    assert done.history[0].ended_at == T0 + 31


def test_late_ack_while_a_newer_attempt_holds_the_lease_revokes_that_lease() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30, worker="w2")
    assert task.attempt == 2
    decision = machine.ack(task, 1, result=b"first", now=T0 + 35)
    assert decision.outcome is AckOutcome.ADOPTED
    assert decision.events == (Event.COMPLETED, Event.ADOPTED)
    done = changed(decision)
    assert done.state is State.COMPLETED
    assert done.attempt == 2
    assert done.lease_deadline is None
    assert done.result == b"first"
    first, second = done.history
    assert first.outcome is AttemptOutcome.ACKED
    assert second.outcome is AttemptOutcome.REVOKED
    assert second.ended_at == T0 + 35
    assert "attempt 1" in second.error
    # The newer lease learns it lost from its next call.
    assert machine.ack(done, 2, result=b"second", now=T0 + 36).outcome is AckOutcome.DUPLICATE
    assert machine.extend(done, 2, lease_duration=None, now=T0 + 36).outcome is (
        ExtendOutcome.COMPLETED
    )
    assert nack(done, 2, T0 + 36).outcome is NackOutcome.COMPLETED


def test_late_ack_while_backing_off_is_adopted_and_cancels_the_retry() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30)
    task = changed(nack(task, 2, T0 + 31, retry_after=100))
    assert task.state is State.SCHEDULED
    decision = machine.ack(task, 1, result=None, now=T0 + 32)
    assert decision.outcome is AckOutcome.ADOPTED
    done = changed(decision)
    assert done.state is State.COMPLETED
    assert done.not_before is None


def test_late_ack_of_an_expired_attempt_of_a_dead_task_is_adopted() -> None:
    dead = expired(lease(new_task(max_attempts=1), T0))
    assert dead.state is State.DEAD
    decision = machine.ack(dead, 1, result=b"r", now=T0 + 40)
    assert decision.outcome is AckOutcome.ADOPTED
    assert changed(decision).state is State.COMPLETED


def test_ack_of_a_cancelled_task_is_rejected() -> None:
    task = changed(machine.cancel(lease(new_task(), T0), now=T0 + 1))
    decision = machine.ack(task, 1, result=b"r", now=T0 + 2)
    assert decision.outcome is AckOutcome.REJECTED
    assert_no_change(decision)


@pytest.mark.parametrize("kwargs", [{"release": True}, {"retry_after": 0.0}, {"retry_after": 50.0}])
def test_ack_of_an_attempt_that_already_nacked_is_rejected(kwargs: dict[str, object]) -> None:
    task = changed(nack(lease(new_task(), T0), 1, T0 + 1, **kwargs))  # type: ignore[arg-type]
    decision = machine.ack(task, 1, result=b"r", now=T0 + 2)
    assert decision.outcome is AckOutcome.REJECTED
    assert_no_change(decision)


def test_ack_of_a_terminally_nacked_attempt_is_rejected() -> None:
    task = changed(nack(lease(new_task(), T0), 1, T0 + 1, terminal=True))
    assert machine.ack(task, 1, result=None, now=T0 + 2) == Decision(AckOutcome.REJECTED)


@pytest.mark.parametrize("attempt", [0, -1, 2, 99])
def test_ack_with_an_attempt_never_handed_out_is_an_invalid_token(attempt: int) -> None:
    task = lease(new_task(), T0)
    decision = machine.ack(task, attempt, result=None, now=T0 + 1)
    assert decision.outcome is AckOutcome.INVALID_TOKEN
    assert_no_change(decision)


def test_ack_of_a_never_leased_task_is_an_invalid_token() -> None:
    assert machine.ack(new_task(), 1, result=None, now=T0) == Decision(AckOutcome.INVALID_TOKEN)


# ---------------------------------------------------------------------------------------
# nack


def test_nack_counts_a_failure_and_backs_off() -> None:
    task = lease(new_task(), T0)
    decision = nack(task, 1, T0 + 1, error="kaput", rng=random.Random(SEED))
    assert decision.outcome is NackOutcome.RETRYING
    assert decision.events == (Event.FAILED,)
    retry = changed(decision)
    expected_delay = POLICY.backoff(1, random.Random(SEED))
    assert retry.state is State.SCHEDULED
    assert retry.not_before == T0 + 1 + expected_delay
    assert 1.0 <= expected_delay <= 2.0  # step = base * 2**0 = 2: within [step/2, step]
    assert retry.failures == 1
    assert retry.lease_deadline is None
    assert retry.version == task.version + 1
    assert retry.history[0] == Attempt(
        attempt=1,
        worker_id="w",
        leased_at=T0,
        ended_at=T0 + 1,
        outcome=AttemptOutcome.FAILED,
        error="kaput",
    )


@pytest.mark.parametrize("seed", range(20))
def test_nack_backoff_grows_then_is_capped(seed: int) -> None:
    policy = QueuePolicy(max_attempts=10, backoff_base=2.0, backoff_cap=10.0)
    task = new_task(policy=policy)
    now = T0
    delays = []
    for failures in range(1, 10):
        task = lease(task, now, policy=policy)
        retry = changed(nack(task, task.attempt, now, policy=policy, rng=random.Random(seed)))
        assert retry.failures == failures
        assert retry.not_before is not None
        delay = retry.not_before - now
        step = min(10.0, 2.0 * 2 ** (failures - 1))
        assert step / 2 <= delay <= step
        delays.append(delay)
        task, now = retry, retry.not_before
    assert all(5.0 <= d <= 10.0 for d in delays[3:])  # capped from the fourth failure on


def test_nack_retry_after_overrides_the_backoff_without_drawing_randomness() -> None:
    rng = random.Random(SEED)
    retry = changed(nack(lease(new_task(), T0), 1, T0, retry_after=42.0, rng=rng))
    assert retry.state is State.SCHEDULED
    assert retry.not_before == T0 + 42.0
    assert rng.random() == random.Random(SEED).random()


def test_nack_with_zero_retry_after_is_ready_at_once() -> None:
    decision = nack(lease(new_task(), T0), 1, T0 + 3, retry_after=0.0)
    assert decision.outcome is NackOutcome.RETRYING
    retry = changed(decision)
    assert retry.state is State.READY
    assert retry.not_before is None
    assert retry.ready_at == T0 + 3
    assert retry.failures == 1


def test_nack_is_dead_when_failures_reach_max_attempts() -> None:
    task = new_task()  # max_attempts 3
    now = T0
    outcomes = []
    for _ in range(3):
        task = lease(task, now)
        decision = nack(task, task.attempt, now, retry_after=0.0)
        outcomes.append(decision.outcome)
        task = changed(decision)
        now += 1
    assert outcomes == [NackOutcome.RETRYING, NackOutcome.RETRYING, NackOutcome.DEAD]
    assert task.state is State.DEAD
    assert task.failures == 3
    assert task.finished_at == T0 + 2
    assert task.lease_deadline is None
    assert [a.outcome for a in task.history] == [AttemptOutcome.FAILED] * 3


def test_nack_dead_emits_failed_and_dead_lettered() -> None:
    decision = nack(lease(new_task(max_attempts=1), T0), 1, T0)
    assert decision.outcome is NackOutcome.DEAD
    assert decision.events == (Event.FAILED, Event.DEAD_LETTERED)


def test_terminal_nack_is_dead_at_once() -> None:
    decision = nack(lease(new_task(), T0), 1, T0 + 2, error="bad input", terminal=True)
    assert decision.outcome is NackOutcome.DEAD
    assert decision.events == (Event.FAILED, Event.DEAD_LETTERED)
    dead = changed(decision)
    assert dead.state is State.DEAD
    assert dead.failures == 1
    assert dead.finished_at == T0 + 2
    assert dead.history[0].outcome is AttemptOutcome.FAILED
    assert dead.history[0].error == "bad input"


def test_release_gives_the_task_back_without_counting_a_failure() -> None:
    task = lease(new_task(), T0)
    decision = nack(task, 1, T0 + 4, error="shutting down", release=True)
    assert decision.outcome is NackOutcome.RELEASED
    assert decision.events == ()
    released = changed(decision)
    assert released.state is State.READY
    assert released.failures == 0
    assert released.lease_deadline is None
    assert released.ready_at == T0 + 4
    assert released.version == task.version + 1
    assert released.history[0].outcome is AttemptOutcome.RELEASED
    assert released.history[0].error == "shutting down"
    assert released.history[0].ended_at == T0 + 4


def test_release_never_uses_up_the_attempt_budget() -> None:
    task = new_task(max_attempts=1)
    for i in range(10):
        task = changed(nack(lease(task, T0 + i), i + 1, T0 + i, release=True))
    assert task.state is State.READY
    assert task.failures == 0
    assert task.attempt == 10


def test_nack_of_an_expired_lease_is_stale_and_notes_the_error() -> None:
    task = expired(lease(new_task(), T0))
    decision = nack(task, 1, T0 + 40, error="timeout talking to db")
    assert decision.outcome is NackOutcome.STALE
    assert decision.events == ()
    noted = changed(decision)
    assert noted.history[0].error == "lease expired; worker reported: timeout talking to db"
    assert noted.history[0].outcome is AttemptOutcome.EXPIRED
    assert noted.version == task.version + 1
    # Nothing but the note changes.
    assert replace(noted, history=task.history, version=task.version) == task


def test_repeated_stale_nack_notes_the_error_only_once() -> None:
    task = expired(lease(new_task(), T0))
    noted = changed(nack(task, 1, T0 + 40, error="oops"))
    again = nack(noted, 1, T0 + 41, error="oops")
    assert again.outcome is NackOutcome.STALE
    assert_no_change(again)


def test_stale_nack_with_another_error_is_also_noted() -> None:
    task = expired(lease(new_task(), T0))
    noted = changed(nack(task, 1, T0 + 40, error="one"))
    twice = changed(nack(noted, 1, T0 + 41, error="two"))
    assert twice.history[0].error == "lease expired; worker reported: one; worker reported: two"


def test_stale_nack_without_an_error_changes_nothing() -> None:
    task = expired(lease(new_task(), T0))
    decision = nack(task, 1, T0 + 40, error="")
    assert decision.outcome is NackOutcome.STALE
    assert_no_change(decision)


def test_nack_after_the_deadline_before_the_reaper_ran_is_stale() -> None:
    task = lease(new_task(), T0)
    decision = nack(task, 1, T0 + 31, error="slow")
    assert decision.outcome is NackOutcome.STALE
    assert decision.events == (Event.EXPIRED,)
    after = changed(decision)
    assert after.state is State.READY
    assert after.failures == 1  # the expiry, not the nack
    assert after.history[0].error == "lease expired; worker reported: slow"
    assert after.version == task.version + 2


def test_stale_nack_leaves_a_newer_lease_alone() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30, worker="w2")
    noted = changed(nack(task, 1, T0 + 31, error="late"))
    assert noted.state is State.LEASED
    assert noted.attempt == 2
    assert noted.lease_deadline == task.lease_deadline
    assert noted.history[1] == task.history[1]
    assert noted.history[0].error.endswith("worker reported: late")


def test_stale_nack_keeps_a_promotion_that_advance_applied() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30)
    task = changed(nack(task, 2, T0 + 31, retry_after=5.0))
    assert task.state is State.SCHEDULED
    decision = nack(task, 1, T0 + 100, error="")
    assert decision.outcome is NackOutcome.STALE
    promoted = changed(decision)
    assert promoted.state is State.READY
    assert promoted.ready_at == T0 + 100
    assert promoted.version == task.version + 1


@pytest.mark.parametrize("first", [{"release": True}, {"retry_after": 0.0}, {"retry_after": 60.0}])
def test_second_nack_of_the_same_attempt_is_a_duplicate(first: dict[str, object]) -> None:
    task = changed(nack(lease(new_task(), T0), 1, T0, **first))  # type: ignore[arg-type]
    for kwargs in ({}, {"release": True}, {"terminal": True}):
        decision = nack(task, 1, T0 + 1, error="again", **kwargs)  # type: ignore[arg-type]
        assert decision.outcome is NackOutcome.DUPLICATE
        assert_no_change(decision)


def test_nack_of_a_completed_task() -> None:
    done = changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0))
    assert nack(done, 1, T0 + 1) == Decision(NackOutcome.COMPLETED)


def test_nack_of_a_cancelled_task() -> None:
    cancelled = changed(machine.cancel(lease(new_task(), T0), now=T0))
    assert nack(cancelled, 1, T0 + 1) == Decision(NackOutcome.CANCELLED)


@pytest.mark.parametrize("attempt", [0, -3, 2])
def test_nack_with_an_attempt_never_handed_out_is_an_invalid_token(attempt: int) -> None:
    decision = nack(lease(new_task(), T0), attempt, T0)
    assert decision == Decision(NackOutcome.INVALID_TOKEN)


# ---------------------------------------------------------------------------------------
# extend


def test_extend_moves_the_deadline_by_the_original_duration() -> None:
    task = lease(new_task(), T0, duration=20.0)
    decision = machine.extend(task, 1, lease_duration=None, now=T0 + 15)
    assert decision.outcome is ExtendOutcome.EXTENDED
    assert decision.events == ()
    extended = changed(decision)
    assert extended.lease_deadline == T0 + 35
    assert extended.state is State.LEASED
    assert extended.version == task.version + 1
    # The lease survives its original deadline.
    assert_no_change(machine.advance(extended, T0 + 34))
    assert changed(machine.advance(extended, T0 + 35)).state is State.READY


def test_extend_with_a_duration_does_not_change_the_default_for_later_extends() -> None:
    task = lease(new_task(), T0, duration=20.0)
    once = changed(machine.extend(task, 1, lease_duration=100.0, now=T0 + 1))
    assert once.lease_deadline == T0 + 101
    twice = changed(machine.extend(once, 1, lease_duration=None, now=T0 + 2))
    assert twice.lease_deadline == T0 + 22


def test_extend_can_shorten_the_lease() -> None:
    task = lease(new_task(), T0, duration=100.0)
    shorter = changed(machine.extend(task, 1, lease_duration=5.0, now=T0 + 1))
    assert shorter.lease_deadline == T0 + 6


def test_extend_of_an_expired_lease_is_lease_lost() -> None:
    task = expired(lease(new_task(), T0))
    assert machine.extend(task, 1, lease_duration=None, now=T0 + 31) == Decision(
        ExtendOutcome.LEASE_LOST
    )


def test_extend_after_the_deadline_before_the_reaper_ran_is_lease_lost() -> None:
    task = lease(new_task(), T0)
    decision = machine.extend(task, 1, lease_duration=None, now=T0 + 30)
    assert decision.outcome is ExtendOutcome.LEASE_LOST
    assert decision.events == (Event.EXPIRED,)
    after = changed(decision)
    assert after.state is State.READY
    assert after.failures == 1


def test_extend_of_a_superseded_lease_is_lease_lost() -> None:
    task = lease(expired(lease(new_task(), T0)), T0 + 30)
    decision = machine.extend(task, 1, lease_duration=None, now=T0 + 31)
    assert decision == Decision(ExtendOutcome.LEASE_LOST)


def test_extend_of_a_released_or_dead_lease_is_lease_lost() -> None:
    released = changed(nack(lease(new_task(), T0), 1, T0, release=True))
    assert machine.extend(released, 1, lease_duration=None, now=T0).outcome is (
        ExtendOutcome.LEASE_LOST
    )
    dead = changed(nack(lease(new_task(), T0), 1, T0, terminal=True))
    assert machine.extend(dead, 1, lease_duration=None, now=T0).outcome is (
        ExtendOutcome.LEASE_LOST
    )


def test_extend_of_a_completed_task() -> None:
    done = changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0))
    assert machine.extend(done, 1, lease_duration=None, now=T0) == Decision(ExtendOutcome.COMPLETED)


def test_extend_of_a_cancelled_task() -> None:
    cancelled = changed(machine.cancel(lease(new_task(), T0), now=T0))
    assert machine.extend(cancelled, 1, lease_duration=None, now=T0) == Decision(
        ExtendOutcome.CANCELLED
    )


@pytest.mark.parametrize("attempt", [0, -1, 2])
def test_extend_with_an_attempt_never_handed_out_is_an_invalid_token(attempt: int) -> None:
    task = lease(new_task(), T0)
    assert machine.extend(task, attempt, lease_duration=None, now=T0) == Decision(
        ExtendOutcome.INVALID_TOKEN
    )


# ---------------------------------------------------------------------------------------
# cancel


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: new_task(), id="ready"),
        pytest.param(lambda: new_task(not_before=T0 + 100), id="scheduled"),
        pytest.param(lambda: changed(nack(lease(new_task(), T0), 1, T0, terminal=True)), id="dead"),
    ],
)
def test_cancel_of_an_unleased_task(make) -> None:  # type: ignore[no-untyped-def]
    task = make()
    decision = machine.cancel(task, now=T0 + 5)
    assert decision.outcome is CancelOutcome.CANCELLED
    assert decision.events == (Event.CANCELLED,)
    cancelled = changed(decision)
    assert cancelled.state is State.CANCELLED
    assert cancelled.finished_at == T0 + 5
    assert cancelled.not_before is None
    assert cancelled.lease_deadline is None
    assert cancelled.history == task.history
    assert cancelled.version == task.version + 1
    assert machine.lease(
        cancelled, now=T0 + 1e6, worker_id="w", lease_duration=None, policy=POLICY
    ) == Decision(False)


def test_cancel_of_a_leased_task_revokes_the_lease() -> None:
    task = lease(new_task(), T0)
    decision = machine.cancel(task, now=T0 + 5)
    assert decision.outcome is CancelOutcome.CANCELLED
    assert decision.events == (Event.CANCELLED,)
    cancelled = changed(decision)
    assert cancelled.state is State.CANCELLED
    assert cancelled.lease_deadline is None
    assert cancelled.failures == 0
    assert cancelled.history == (
        Attempt(
            attempt=1,
            worker_id="w",
            leased_at=T0,
            ended_at=T0 + 5,
            outcome=AttemptOutcome.REVOKED,
            error="revoked: task cancelled",
        ),
    )


def test_cancel_after_the_lease_deadline_records_the_expiry() -> None:
    # Whether or not the reaper ran, a lease past its deadline has expired: the cancel must
    # not rewrite that as a revocation nor lose the counted failure.
    task = lease(new_task(), T0)
    via_reaper = changed(machine.cancel(expired(task), now=T0 + 40))
    decision = machine.cancel(task, now=T0 + 40)
    assert decision.outcome is CancelOutcome.CANCELLED
    assert decision.events == (Event.EXPIRED, Event.CANCELLED)
    direct = changed(decision)
    assert direct.history[0].outcome is AttemptOutcome.EXPIRED
    assert direct.failures == 1
    assert replace(direct, history=(), ready_at=0.0) == replace(
        via_reaper, history=(), ready_at=0.0
    )
    assert direct.history[0].outcome == via_reaper.history[0].outcome
    assert direct.history[0].error == via_reaper.history[0].error


def test_cancel_of_a_cancelled_task() -> None:
    cancelled = changed(machine.cancel(new_task(), now=T0))
    assert machine.cancel(cancelled, now=T0 + 1) == Decision(CancelOutcome.ALREADY_CANCELLED)


def test_cancel_of_a_completed_task() -> None:
    done = changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0))
    assert machine.cancel(done, now=T0 + 1) == Decision(CancelOutcome.ALREADY_COMPLETED)


# ---------------------------------------------------------------------------------------
# redrive


def test_redrive_puts_a_dead_task_back_with_a_fresh_budget() -> None:
    dead = changed(nack(lease(new_task(max_attempts=2), T0), 1, T0, terminal=True))
    decision = machine.redrive(dead, now=T0 + 100)
    assert decision.outcome is True
    assert decision.events == ()
    ready = changed(decision)
    assert ready.state is State.READY
    assert ready.failures == 0
    assert ready.ready_at == T0 + 100
    assert ready.finished_at is None
    assert ready.attempt == 1
    assert ready.history == dead.history
    assert ready.version == dead.version + 1
    # Attempt numbers go on, and it takes max_attempts new failures to die again.
    again = machine.lease(ready, now=T0 + 101, worker_id="w", lease_duration=None, policy=POLICY)
    assert again.events == (Event.REDELIVERED,)
    task = changed(again)
    assert task.attempt == 2
    task = changed(nack(task, 2, T0 + 101, retry_after=0.0))
    assert task.state is State.READY
    task = changed(nack(lease(task, T0 + 102), 3, T0 + 102, retry_after=0.0))
    assert task.state is State.DEAD
    assert task.failures == 2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: new_task(), id="ready"),
        pytest.param(lambda: new_task(not_before=T0 + 100), id="scheduled"),
        pytest.param(lambda: lease(new_task(), T0), id="leased"),
        pytest.param(
            lambda: changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0)),
            id="completed",
        ),
        pytest.param(lambda: changed(machine.cancel(new_task(), now=T0)), id="cancelled"),
    ],
)
def test_redrive_only_touches_dead_tasks(make) -> None:  # type: ignore[no-untyped-def]
    assert machine.redrive(make(), now=T0 + 1) == Decision(False)


# ---------------------------------------------------------------------------------------
# purge (of a queue)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: new_task(), id="ready"),
        pytest.param(lambda: new_task(not_before=T0 + 60), id="scheduled"),
        pytest.param(lambda: changed(nack(lease(new_task(), T0), 1, T0)), id="backing-off"),
    ],
)
def test_purge_takes_tasks_waiting_to_be_leased(make) -> None:  # type: ignore[no-untyped-def]
    task = make()
    assert machine.purge(task, before=T0 + 1) == Decision(True, None, (Event.PURGED,))
    # Not one submitted after the purge began.
    assert machine.purge(task, before=T0 - 1) == Decision(False)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: lease(new_task(), T0), id="leased"),
        pytest.param(lambda: lease(new_task(), T0, duration=1.0), id="leased-past-deadline"),
        pytest.param(
            lambda: changed(machine.ack(lease(new_task(), T0), 1, result=None, now=T0)),
            id="completed",
        ),
        pytest.param(lambda: changed(nack(lease(new_task(), T0), 1, T0, terminal=True)), id="dead"),
        pytest.param(lambda: changed(machine.cancel(new_task(), now=T0)), id="cancelled"),
    ],
)
def test_purge_leaves_every_other_task(make) -> None:  # type: ignore[no-untyped-def]
    assert machine.purge(make(), before=T0 + 100) == Decision(False)


# ---------------------------------------------------------------------------------------
# history and versions


def test_history_is_trimmed_to_the_newest_attempts() -> None:
    task = new_task()
    extra = 5
    for i in range(1, MAX_HISTORY + extra):
        task = changed(nack(lease(task, T0 + i), i, T0 + i, release=True))
    task = lease(task, T0 + 1000)
    assert task.attempt == MAX_HISTORY + extra
    assert len(task.history) == MAX_HISTORY
    assert task.history[0].attempt == extra + 1
    assert task.history[-1].attempt == MAX_HISTORY + extra
    assert [a.attempt for a in task.history] == list(range(extra + 1, MAX_HISTORY + extra + 1))
    assert task.current_attempt() == task.history[-1]
    assert task.attempt_record(1) is None
    assert task.attempt_record(extra + 1) == task.history[0]
    done = machine.ack(task, task.attempt, result=None, now=T0 + 1001)
    assert done.outcome is AckOutcome.ACKED
    assert len(changed(done).history) == MAX_HISTORY


def _attempts_then_releases(first: str, releases: int) -> Task:
    """Attempt 1 ends as `first` says ("failed", "released", "expired"), then `releases`
    attempts are each released by their worker; the task is left READY."""
    task = lease(new_task(policy=QueuePolicy(max_attempts=5)), T0)
    if first == "expired":
        task = changed(machine.advance(task, T0 + 31))
    else:
        task = changed(nack(task, 1, T0 + 1, retry_after=0.0, release=first == "released"))
    for i in range(2, releases + 2):
        task = changed(nack(lease(task, T0 + 100 + i), i, T0 + 100 + i, release=True))
    assert task.state is State.READY and task.attempt == releases + 1
    return task


@pytest.mark.parametrize("first", ["failed", "released"])
def test_an_attempt_that_nacked_stays_rejected_after_its_record_was_trimmed(first: str) -> None:
    """Whether an attempt may still complete its task must not depend on how much history
    is kept: attempt 1 gave the task back, 100+ attempts ago."""
    task = _attempts_then_releases(first, MAX_HISTORY + 5)
    assert task.attempt_record(1) is None  # trimmed from the history
    assert machine.ack(task, 1, result=b"late", now=T0 + 500) == Decision(AckOutcome.REJECTED)
    assert nack(task, 1, T0 + 500).outcome is NackOutcome.DUPLICATE
    # And the same with its record still there.
    short = _attempts_then_releases(first, 3)
    assert short.attempt_record(1) is not None
    assert machine.ack(short, 1, result=b"late", now=T0 + 500) == Decision(AckOutcome.REJECTED)


def test_an_attempt_that_expired_is_adopted_after_its_record_was_trimmed() -> None:
    task = _attempts_then_releases("expired", MAX_HISTORY + 5)
    assert task.attempt_record(1) is None
    assert nack(task, 1, T0 + 500, error="late").outcome is NackOutcome.STALE
    decision = machine.ack(task, 1, result=b"late", now=T0 + 500)
    assert decision.outcome is AckOutcome.ADOPTED
    assert (changed(decision).state, changed(decision).result) == (State.COMPLETED, b"late")
    # Any attempt in between was released by its worker: rejected.
    for attempt in (2, 6, MAX_HISTORY + 6):
        assert machine.ack(task, attempt, result=None, now=T0 + 500).outcome is (
            AckOutcome.REJECTED
        )


def test_expired_attempts_are_kept_as_ranges() -> None:
    """Every expiry is kept, compactly: runs of consecutive attempts are one range each."""
    task = new_task(policy=QueuePolicy(max_attempts=1000))
    now = T0
    for i in range(1, 301):
        now += 100
        task = lease(task, now)
        if i % 100 == 50:
            task = changed(nack(task, i, now + 1, retry_after=0.0, release=True))
        else:
            task = changed(machine.advance(task, now + 31))
    assert task.expired_attempts == ((1, 49), (51, 149), (151, 249), (251, 300))
    assert len(task.history) == MAX_HISTORY
    for attempt in (1, 49, 150, 151, 300):
        assert machine.ack(task, attempt, result=None, now=now + 50).outcome is (
            AckOutcome.ADOPTED if attempt != 150 else AckOutcome.REJECTED
        )


def test_attempts_omitted_counts_the_attempts_trimmed_from_the_history() -> None:
    assert new_task().attempts_omitted == 0
    assert _attempts_then_releases("released", 3).attempts_omitted == 0
    task = _attempts_then_releases("released", MAX_HISTORY + 5)
    assert task.attempts_omitted == task.attempt - MAX_HISTORY == 6
    assert task.history[0].attempt == task.attempts_omitted + 1


def test_history_below_the_limit_is_kept_whole() -> None:
    task = new_task()
    for i in range(1, MAX_HISTORY):
        task = changed(nack(lease(task, T0 + i), i, T0 + i, release=True))
    task = lease(task, T0 + 1000)
    assert len(task.history) == MAX_HISTORY
    assert task.history[0].attempt == 1


def test_every_change_increments_the_version_by_one() -> None:
    steps = []
    task = new_task(not_before=T0 + 10)
    assert task.version == 1
    steps.append(changed(machine.advance(task, T0 + 10)))
    steps.append(lease(steps[-1], T0 + 10))
    steps.append(changed(machine.extend(steps[-1], 1, lease_duration=None, now=T0 + 11)))
    steps.append(changed(nack(steps[-1], 1, T0 + 12, retry_after=0.0)))
    steps.append(lease(steps[-1], T0 + 13))
    steps.append(changed(nack(steps[-1], 2, T0 + 14, release=True)))
    steps.append(lease(steps[-1], T0 + 15))
    steps.append(changed(machine.advance(steps[-1], T0 + 100)))  # expiry
    steps.append(changed(nack(steps[-1], 3, T0 + 101, error="noted")))  # stale note
    steps.append(lease(steps[-1], T0 + 102))
    steps.append(changed(nack(steps[-1], 4, T0 + 103, terminal=True)))
    steps.append(changed(machine.redrive(steps[-1], now=T0 + 104)))
    steps.append(lease(steps[-1], T0 + 105))
    steps.append(changed(machine.ack(steps[-1], 5, result=b"ok", now=T0 + 106)))
    assert [s.version for s in steps] == list(range(2, 2 + len(steps)))
    assert steps[-1].state is State.COMPLETED


def test_cancel_increments_the_version_by_one() -> None:
    task = lease(new_task(), T0)
    assert changed(machine.cancel(task, now=T0 + 1)).version == task.version + 1


def test_operations_never_mutate_their_input() -> None:
    task = lease(new_task(), T0)
    snapshot = replace(task)
    machine.ack(task, 1, result=b"x", now=T0 + 100)
    nack(task, 1, T0 + 1)
    machine.extend(task, 1, lease_duration=None, now=T0 + 1)
    machine.cancel(task, now=T0 + 1)
    machine.advance(task, T0 + 100)
    assert task == snapshot


# ---------------------------------------------------------------------------------------
# model helpers


def test_state_predicates() -> None:
    assert {s for s in State if s.is_final} == {State.COMPLETED, State.CANCELLED}
    assert {s for s in State if s.is_pending} == {State.SCHEDULED, State.READY, State.LEASED}


def test_current_attempt_is_none_once_the_task_moved_past_its_record() -> None:
    task = lease(new_task(), T0)
    assert task.current_attempt() is not None
    assert replace(task, attempt=2).current_attempt() is None
    assert task.attempt_record(1) == task.history[0]
    assert task.attempt_record(2) is None


def test_evolve_covers_every_field_and_matches_dataclasses_replace() -> None:
    import dataclasses

    task = new_task()
    for spec in dataclasses.fields(task):
        changed = object()
        evolved = task.evolve(**{spec.name: changed})
        assert getattr(evolved, spec.name) is changed, spec.name
        others = [f.name for f in dataclasses.fields(task) if f.name != spec.name]
        assert all(getattr(evolved, n) is getattr(task, n) for n in others), spec.name
    assert task.evolve(attempt=3, version=9) == replace(task, attempt=3, version=9)
    with pytest.raises(TypeError):
        task.evolve(no_such_field=1)
    with pytest.raises(FrozenInstanceError):
        task.evolve(attempt=1).attempt = 2  # type: ignore[misc]
