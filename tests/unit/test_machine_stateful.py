"""A model-based test: a small feeder driven by hypothesis.

The model is the records the test expects (`records`), and the ids the store gave back for
every Submit (`submitted`). Every operation of the state machine is applied to them with a
fake clock, with lease tokens of current and old attempts, and with restarts (a new rng;
the store is closed and opened again from its file). Each decision is also applied to a
real SQLite store, guarded by the version it was made from; after every step the rows on
disk must be the model's records (nothing lost, nothing changed behind its back) and the
feeder's guarantees must hold.

How each attempt ended is also kept here, outside the machine, for every attempt ever
handed out: the machine's own rules (a late ack of an attempt that gave its task back is
rejected, one that lost its lease to expiry is adopted) are checked against it, and a
variant runs with a history of one attempt, so that those rules cannot lean on records
the history no longer holds.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from feeder.core import machine
from feeder.core.machine import Decision, Event
from feeder.core.model import (
    AckOutcome,
    AttemptOutcome,
    CancelOutcome,
    ExtendOutcome,
    NackOutcome,
    State,
    Task,
    TaskSpec,
)
from feeder.core.policy import QueuePolicy
from feeder.store.base import Change
from feeder.store.rows import COLUMNS, task_from_row
from feeder.store.sqlite import SqliteStore

T = TypeVar("T")
# The databases live in RAM where there is a tmpfs for it: thousands of short runs, whose
# fsyncs (at each checkpoint and close) would only wait for a disk.
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None
T0 = 1_700_000_000.0
POLICY = QueuePolicy(max_attempts=3, backoff_base=1.0, backoff_cap=8.0, lease_duration=10.0)

durations = st.none() | st.floats(min_value=1.0, max_value=20.0)
errors = st.sampled_from(["", "boom", "timeout"])


class Feeder(RuleBasedStateMachine):
    task_ids = Bundle("task_ids")
    tokens = Bundle("tokens")  # (task id, attempt): every lease ever handed out

    store_class: type[SqliteStore] = SqliteStore

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.restarts = 0
        self.rng = random.Random(0)
        self.records: dict[int, Task] = {}
        self.submitted: set[int] = set()
        self.completions: Counter[int] = Counter()
        self.totals: Counter[Event] = Counter()
        # (task id, attempt) -> how it ended, as seen from the outside: "nacked" (failed or
        # released by its own worker) or "expired". Never trimmed.
        self.ended: dict[tuple[int, int], str] = {}
        self.loop = asyncio.new_event_loop()
        self.workdir = Path(tempfile.mkdtemp(prefix="feedwork-stateful-", dir=SCRATCH))
        self.path = self.workdir / "feedwork.db"
        self.store = self.store_class(self.path)
        self.run(self.store.open())
        # The test's own look at the file (it sees what is committed, whatever the store
        # holds in memory).
        self.disk = sqlite3.connect(self.path)

    def teardown(self) -> None:
        try:
            self.disk.close()
            self.run(self.store.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(step)

    def on_disk(self) -> dict[int, Task]:
        """Every task row in the database file."""
        rows = self.disk.execute(f"SELECT {COLUMNS} FROM tasks")
        return {row[0]: task_from_row(row) for row in rows}

    def apply(self, task_id: int, decision: Decision[Any]) -> Task:
        """Checks one decision against the record it was made from, then stores it."""
        before = self.records[task_id]
        after = decision.task
        self.totals.update(decision.events)
        if after is None:
            assert decision.events in ((), (Event.DUPLICATE_ACK,)), decision
            return before
        assert after.id == before.id
        assert after.queue == before.queue and after.payload == before.payload
        assert after.version > before.version, (before, after)
        assert after.version - before.version <= 2  # at most advance + the operation
        assert after.attempt >= before.attempt, "attempt numbers went backwards"
        assert not before.state.is_final, f"a {before.state.name} task changed"
        if Event.EXPIRED in decision.events:
            assert before.state is State.LEASED
            self.ended[(task_id, before.attempt)] = "expired"
        if after.state is State.COMPLETED:
            self.completions[task_id] += 1
            assert Event.COMPLETED in decision.events
        else:
            assert Event.COMPLETED not in decision.events
        if Event.DEAD_LETTERED in decision.events:
            assert before.state is not State.DEAD
        applied = self.run(self.store.apply([Change(before, after, decision.events)]))
        assert applied == [True], "the store holds another version than the model"
        self.records[task_id] = after
        return after

    def check_record(self, task: Task) -> None:
        assert 0 <= task.failures <= task.max_attempts
        if task.state.is_pending:
            assert task.failures < task.max_attempts, "out of attempts but not dead"
        assert (task.state is State.LEASED) == (task.lease_deadline is not None)
        assert (task.state is State.SCHEDULED) == (task.not_before is not None)
        assert (task.finished_at is not None) == (
            task.state in (State.COMPLETED, State.DEAD, State.CANCELLED)
        )
        attempts = [a.attempt for a in task.history]
        assert attempts == sorted(set(attempts))
        assert len(task.history) == min(task.attempt, machine.MAX_HISTORY)
        assert task.attempts_omitted == task.attempt - len(task.history)
        if task.history:
            assert attempts[-1] == task.attempt
        running = [a for a in task.history if a.outcome is AttemptOutcome.RUNNING]
        if task.state is State.LEASED:
            assert running == [task.history[-1]]
        else:
            assert running == []
        acked = [a for a in task.history if a.outcome is AttemptOutcome.ACKED]
        assert len(acked) == (1 if task.state is State.COMPLETED else 0) or (
            task.state is State.COMPLETED and not acked  # the acked record was trimmed
        )

    # -- rules ----------------------------------------------------------------------------

    @initialize(target=task_ids, count=st.integers(min_value=1, max_value=3))
    def start(self, count: int) -> object:
        return multiple(*(self.submit(None, None, None) for _ in range(count)))

    @rule(
        target=task_ids,
        delay=st.none() | st.floats(min_value=-5.0, max_value=30.0),
        max_attempts=st.none() | st.integers(min_value=1, max_value=4),
        lease_duration=durations,
    )
    def submit(
        self, delay: float | None, max_attempts: int | None, lease_duration: float | None
    ) -> int:
        not_before = None if delay is None else self.now + delay
        spec = TaskSpec(
            queue="q",
            payload=b"p%d" % len(self.submitted),
            not_before=not_before,
            max_attempts=max_attempts,
            lease_duration=lease_duration,
        )
        decisions: list[Decision[State]] = []

        def create(spec: TaskSpec, task_id: int) -> Decision[State]:
            decisions.append(machine.create(spec, task_id=task_id, now=self.now, policy=POLICY))
            return decisions[-1]

        [submitted] = self.run(self.store.submit([spec], create=create, max_depth=lambda q: 10**6))
        [decision] = decisions
        task = submitted.task
        assert task is decision.task and not submitted.deduplicated
        assert task.id not in self.submitted, "an id was handed out twice"
        assert decision.events == (Event.SUBMITTED,)
        assert task.version == 1 and task.attempt == 0 and task.failures == 0
        scheduled = not_before is not None and not_before > self.now
        expect = State.SCHEDULED if scheduled else State.READY
        assert task.state is expect is decision.outcome
        self.records[task.id] = task
        self.submitted.add(task.id)
        return task.id

    def ready_ids(self) -> list[int]:
        ready = []
        for task_id, task in sorted(self.records.items()):
            current = machine.advance(task, self.now).task or task
            if current.state is State.READY:
                ready.append(task_id)
        return ready

    @precondition(lambda self: bool(self.ready_ids()))
    @rule(target=tokens, data=st.data(), duration=durations)
    def lease_ready(self, data: st.DataObject, duration: float | None) -> object:
        """Leases one of the tasks that are ready now (as a Lease call would)."""
        task_id = data.draw(st.sampled_from(self.ready_ids()), label="task_id")
        return self.lease(task_id, duration)

    @rule(target=tokens, task_id=task_ids, duration=durations)
    def lease(self, task_id: int, duration: float | None) -> object:
        """Tries to lease any task, ready or not."""
        before = self.records[task_id]
        caught_up = machine.advance(before, self.now).task or before
        decision = machine.lease(
            before, now=self.now, worker_id="w", lease_duration=duration, policy=POLICY
        )
        after = self.apply(task_id, decision)
        event(f"lease {decision.outcome}")
        if caught_up.state is not State.READY:
            assert decision.outcome is False
            assert after.state is caught_up.state
            assert after.attempt == before.attempt
            if before.state in (State.DEAD, State.CANCELLED, State.COMPLETED):
                assert decision == Decision(False), "a dead, cancelled or done task was leased"
            return multiple()
        assert decision.outcome is True
        assert after.state is State.LEASED
        assert after.attempt == before.attempt + 1
        assert after.lease_deadline is not None and after.lease_deadline > self.now
        return (task_id, after.attempt)

    @rule(token=tokens, result=st.binary(max_size=3))
    def ack(self, token: tuple[int, int], result: bytes) -> None:
        task_id, attempt = token
        before = self.records[task_id]
        decision = machine.ack(before, attempt, result=result, now=self.now)
        after = self.apply(task_id, decision)
        event(f"ack {decision.outcome.name}")
        if before.state is State.COMPLETED:
            assert decision.outcome is AckOutcome.DUPLICATE
        if decision.outcome is AckOutcome.DUPLICATE:
            assert decision.task is None, "a duplicate ack changed the record"
            assert decision.events == (Event.DUPLICATE_ACK,)
            assert after is before
        elif decision.outcome in (AckOutcome.ACKED, AckOutcome.ADOPTED):
            assert after.state is State.COMPLETED
            assert after.result == result
            assert before.state is not State.CANCELLED
            earlier = before.attempt_record(attempt)
            assert earlier is None or earlier.outcome not in (
                AttemptOutcome.FAILED,
                AttemptOutcome.RELEASED,
            ), "an attempt that nacked completed the task"
            assert self.ended.get(token) != "nacked", "an attempt that nacked completed the task"
            if decision.outcome is AckOutcome.ADOPTED:
                assert self.ended.get(token) == "expired", "adopted an attempt that did not expire"
            record = after.attempt_record(attempt)
            assert record is None or record.outcome is AttemptOutcome.ACKED
            caught_up = machine.advance(before, self.now).task or before
            if caught_up.state is State.LEASED and caught_up.attempt != attempt:
                newer = after.attempt_record(caught_up.attempt)
                assert newer is not None and newer.outcome is AttemptOutcome.REVOKED
                event("ack ADOPTED over a newer lease")
            if decision.outcome is AckOutcome.ACKED:
                assert before.state is State.LEASED and before.attempt == attempt
                assert self.now < (before.lease_deadline or 0)
            # A second ack of the very same token never changes the record again.
            again = machine.ack(after, attempt, result=b"again", now=self.now)
            assert again.outcome is AckOutcome.DUPLICATE and again.task is None
        else:
            assert decision.outcome is AckOutcome.REJECTED, decision
            assert after.state is State.CANCELLED or self.ended.get(token) == "nacked"
            event(f"ack REJECTED, record {'kept' if after.attempt_record(attempt) else 'trimmed'}")

    @rule(
        token=tokens,
        error=errors,
        retry_after=st.none() | st.floats(min_value=0.0, max_value=10.0),
        mode=st.sampled_from(["fail", "terminal", "release"]),
    )
    def nack(
        self, token: tuple[int, int], error: str, retry_after: float | None, mode: str
    ) -> None:
        task_id, attempt = token
        before = self.records[task_id]
        caught_up = machine.advance(before, self.now).task or before
        decision = machine.nack(
            before,
            attempt,
            error=error,
            retry_after=retry_after,
            terminal=mode == "terminal",
            release=mode == "release",
            now=self.now,
            policy=POLICY,
            rng=self.rng,
        )
        after = self.apply(task_id, decision)
        outcome = decision.outcome
        event(f"nack {outcome.name}")
        current = caught_up.state is State.LEASED and caught_up.attempt == attempt
        if outcome in (NackOutcome.RETRYING, NackOutcome.DEAD, NackOutcome.RELEASED):
            assert current
            self.ended[token] = "nacked"
        if outcome in (NackOutcome.DUPLICATE, NackOutcome.STALE):
            expect = (
                NackOutcome.DUPLICATE if self.ended.get(token) == "nacked" else NackOutcome.STALE
            )
            assert outcome is expect, (outcome, self.ended.get(token))
        if outcome is NackOutcome.RELEASED:
            assert after.state is State.READY and after.failures == caught_up.failures
        elif outcome is NackOutcome.RETRYING:
            assert after.failures == caught_up.failures + 1 < after.max_attempts
            assert after.state in (State.READY, State.SCHEDULED)
        elif outcome is NackOutcome.DEAD:
            assert after.state is State.DEAD
        elif outcome in (NackOutcome.COMPLETED, NackOutcome.CANCELLED, NackOutcome.DUPLICATE):
            # Nothing changed but what time alone changes (a retry coming due, an expiry).
            assert decision.task == machine.advance(before, self.now).task
        else:
            assert outcome is NackOutcome.STALE, decision
            assert not current
            # Only the history note may differ from the caught-up record.
            assert (after.state, after.failures, after.attempt, after.lease_deadline) == (
                caught_up.state,
                caught_up.failures,
                caught_up.attempt,
                caught_up.lease_deadline,
            )
            # Repeating the same stale nack changes nothing more.
            again = machine.nack(
                after,
                attempt,
                error=error,
                retry_after=retry_after,
                terminal=mode == "terminal",
                release=mode == "release",
                now=self.now,
                policy=POLICY,
                rng=self.rng,
            )
            assert again == Decision(NackOutcome.STALE)

    @rule(token=tokens, duration=durations)
    def extend(self, token: tuple[int, int], duration: float | None) -> None:
        task_id, attempt = token
        before = self.records[task_id]
        decision = machine.extend(before, attempt, lease_duration=duration, now=self.now)
        after = self.apply(task_id, decision)
        event(f"extend {decision.outcome.name}")
        expected = {
            State.COMPLETED: ExtendOutcome.COMPLETED,
            State.CANCELLED: ExtendOutcome.CANCELLED,
        }.get(after.state)
        if expected is None:
            live = after.state is State.LEASED and after.attempt == attempt
            expected = ExtendOutcome.EXTENDED if live else ExtendOutcome.LEASE_LOST
        assert decision.outcome is expected
        if expected is ExtendOutcome.EXTENDED:
            assert after.lease_deadline == self.now + (duration or after.lease_granted or 0)

    @rule(task_id=task_ids, offset=st.sampled_from([0, 1, 5]))
    def bogus_attempt(self, task_id: int, offset: int) -> None:
        before = self.records[task_id]
        attempt = before.attempt + 1 + offset if offset else 0
        for decision in (
            machine.ack(before, attempt, result=None, now=self.now),
            machine.extend(before, attempt, lease_duration=None, now=self.now),
            machine.nack(
                before,
                attempt,
                error="x",
                retry_after=None,
                terminal=False,
                release=False,
                now=self.now,
                policy=POLICY,
                rng=self.rng,
            ),
        ):
            assert decision.outcome.name == "INVALID_TOKEN"
            # Nothing changed but what time alone changes.
            assert decision.task == machine.advance(before, self.now).task
        self.apply(task_id, machine.advance(before, self.now))

    @rule(task_id=task_ids)
    def cancel(self, task_id: int) -> None:
        before = self.records[task_id]
        decision = machine.cancel(before, now=self.now)
        after = self.apply(task_id, decision)
        if before.state is State.COMPLETED:
            assert decision == Decision(CancelOutcome.ALREADY_COMPLETED)
        elif before.state is State.CANCELLED:
            assert decision == Decision(CancelOutcome.ALREADY_CANCELLED)
        else:
            assert decision.outcome is CancelOutcome.CANCELLED
            assert after.state is State.CANCELLED
            assert Event.CANCELLED in decision.events
            if before.state is State.LEASED:
                # A lease past its deadline expired before the cancel; a live one is revoked.
                lapsed = before.lease_deadline is not None and before.lease_deadline <= self.now
                record = after.attempt_record(before.attempt)
                assert record is not None
                outcome = AttemptOutcome.EXPIRED if lapsed else AttemptOutcome.REVOKED
                assert record.outcome is outcome
                assert after.failures == before.failures + lapsed
                event(f"cancel leased {outcome.name}")

    @rule(task_id=task_ids)
    def redrive(self, task_id: int) -> None:
        before = self.records[task_id]
        decision = machine.redrive(before, now=self.now)
        after = self.apply(task_id, decision)
        assert decision.outcome is (before.state is State.DEAD)
        if decision.outcome:
            assert after.state is State.READY and after.failures == 0

    @rule(dt=st.floats(min_value=0.0, max_value=25.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        for task_id in sorted(self.records):
            after = self.apply(task_id, machine.advance(self.records[task_id], self.now))
            assert machine.advance(after, self.now) == Decision(None), "advance not idempotent"

    @precondition(lambda self: any(t.state is State.LEASED for t in self.records.values()))
    @rule(overshoot=st.sampled_from([0.0, 0.5, 3.0]), reap=st.booleans())
    def expire_next(self, overshoot: float, reap: bool) -> None:
        """Moves the clock to (or just past) the earliest lease deadline, and reaps unless
        the reaper is lagging: outcomes must not depend on whether it ran."""
        deadline = min(
            t.lease_deadline for t in self.records.values() if t.lease_deadline is not None
        )
        dt = max(deadline - self.now, 0.0) + overshoot
        if reap:
            self.tick(dt)
        else:
            self.now += dt

    @rule()
    def restart(self) -> None:
        """A feeder restart: the store is closed and opened again on its file."""
        self.restarts += 1
        self.rng = random.Random(self.restarts)
        self.run(self.store.close())
        self.store = self.store_class(self.path)
        self.run(self.store.open())

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def no_task_lost(self) -> None:
        """The store holds every task a Submit returned, each as the model expects it: on
        disk, and as the store serves it."""
        disk = self.on_disk()
        assert set(disk) == self.submitted, "tasks lost or made up"
        for task_id, task in disk.items():
            expected = self.records[task_id]
            assert task == expected, f"task {task_id} on disk: {task}, expected {expected}"
        served = self.run(self.store.get(self.submitted))
        assert served == {task_id: self.records[task_id] for task_id in self.submitted}

    @invariant()
    def completes_at_most_once(self) -> None:
        assert all(count == 1 for count in self.completions.values()), self.completions
        completed = {i for i, t in self.records.items() if t.state is State.COMPLETED}
        assert completed == set(self.completions)
        assert self.totals[Event.COMPLETED] == len(completed)

    @invariant()
    def records_are_consistent(self) -> None:
        for task in self.records.values():
            self.check_record(task)

    @invariant()
    def totals_add_up(self) -> None:
        assert self.totals[Event.SUBMITTED] == 0  # create is not passed through apply
        assert self.totals[Event.ADOPTED] <= self.totals[Event.COMPLETED]
        dead = sum(t.state is State.DEAD for t in self.records.values())
        assert self.totals[Event.DEAD_LETTERED] >= dead


Feeder.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, database=None
)
TestFeeder = Feeder.TestCase


class SmallHistoryFeeder(Feeder):
    """The same feeder with a history of one attempt: every decision must be the same as
    with a history long enough to hold every attempt."""

    def __init__(self) -> None:
        super().__init__()
        self._kept = machine.MAX_HISTORY
        machine.MAX_HISTORY = 1

    def teardown(self) -> None:
        machine.MAX_HISTORY = self._kept
        super().teardown()


SmallHistoryFeeder.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, database=None
)
TestSmallHistoryFeeder = SmallHistoryFeeder.TestCase


class AckWritesLost(SqliteStore):
    """A broken store: completions are applied in memory but never written to disk (as a
    feeder that answers an ack before, or without, making it durable)."""

    async def _persist_changes(self, changes: Any, events: Any) -> None:
        kept = [c for c in changes if c.after is None or c.after.state is not State.COMPLETED]
        await super()._persist_changes(kept, events)


class FeederOnABrokenStore(Feeder):
    store_class = AckWritesLost


def test_the_model_catches_a_store_that_loses_completions() -> None:
    """The invariants can fail: against a store that drops the writes of acks, the model
    finds a task whose row on disk is not what the feeder answered."""
    run = FeederOnABrokenStore.TestCase(methodName="runTest")
    run.settings = settings(
        max_examples=200,
        stateful_step_count=50,
        deadline=None,
        database=None,
        phases=[Phase.generate],
    )
    with pytest.raises(AssertionError, match=r"on disk|lost or made up|another version"):
        run.runTest()
