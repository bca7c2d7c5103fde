"""The tasks a worker holds, each from its lease to its report.

What is reported for a task, by how its attempt ended:

- the handler returned: Ack with the result;
- it raised (or ran out of time): Nack with "ExcType: message" (`Retry` sets the delay,
  `Fail` makes it terminal). A timed-out sync handler keeps its thread, and its slot, until
  it returns, but what it returns is ignored;
- the feeder said the lease is gone (an Extend outcome other than EXTENDED): the handler is
  told (`task.cancelled`; async handlers are also cancelled). If it still returns a result
  after LEASE_LOST, that result is acked anyway: the feeder adopts it if no other attempt
  has completed the task (first completion wins, sparing a redo) and otherwise answers
  DUPLICATE. After COMPLETED, CANCELLED or NOT_FOUND nothing is sent (the feeder could only
  answer DUPLICATE or REJECTED), and a failure after any loss is not nacked: the attempt no
  longer counts;
- the worker is shutting down and the grace period ran out, or the task arrived as it
  was stopping: Nack with release=true, so another worker can take it at once without a
  failure being counted; anything its handler returns later is ignored.

A lease stays tracked by the heartbeater until the feeder has answered its report, so a
report held up by an outage does not let the lease expire under it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from feedwork import tracing
from feedwork.v1 import feeder_pb2 as pb
from worker.acker import Acker
from worker.handlers import Failed, Invocation, Invoker, Outcome, Succeeded, describe
from worker.heartbeater import Heartbeater
from worker.leaser import Slots
from worker.metrics import ERROR, WorkerMetrics
from worker.receipts import AckLedger
from worker.task import Task, task_fields

log = logging.getLogger("feedwork.worker")

# Bounds of a lease duration (the feeder's own limits).
MIN_LEASE, MAX_LEASE = 1.0, 12 * 3600.0
_LOSS_REASONS: dict[int, str] = {
    pb.EXTEND_OUTCOME_LEASE_LOST: "lease lost",
    pb.EXTEND_OUTCOME_COMPLETED: "completed elsewhere",
    pb.EXTEND_OUTCOME_CANCELLED: "cancelled",
    pb.EXTEND_OUTCOME_NOT_FOUND: "task not found",
    pb.EXTEND_OUTCOME_INVALID_TOKEN: "invalid lease token",
}
_ACK_TAKEN = (pb.ACK_OUTCOME_ACKED, pb.ACK_OUTCOME_ADOPTED, pb.ACK_OUTCOME_DUPLICATE)


@dataclass(slots=True)
class WorkerCounters:
    """Running totals of one `Worker.run`. Safe to read from any thread."""

    leased: int = 0  # tasks received
    done: int = 0  # acks the feeder took (ACKED, ADOPTED, or DUPLICATE for a retried ack)
    failed: int = 0  # handler raised or ran out of time (nacked)
    dead: int = 0  # of those, nacks that made the task dead
    lease_lost: int = 0  # running tasks the feeder took back (Extend said not ours)
    released: int = 0  # given back at shutdown

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(eq=False, slots=True)
class _Job:
    task: Task
    # Resolved once the attempt's fate is decided (reported, released or abandoned).
    settled: asyncio.Future[None]
    work: asyncio.Task[None] | None = None
    # The Extend outcome that took the lease away, if one did.
    lost: int | None = None
    # When the task arrived (the clock's time), for the handler duration metric.
    started: float = 0.0


class Jobs:
    """Starts a job per leased task and reports its outcome."""

    def __init__(
        self,
        *,
        invoker: Invoker,
        acker: Acker,
        heartbeater: Heartbeater,
        slots: Slots,
        counters: WorkerCounters,
        lease_duration: float | None,
        task_timeout: float | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        ack_ledger: AckLedger | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._invoker = invoker
        self._acker = acker
        self._heartbeater = heartbeater
        self._slots = slots
        self._counters = counters
        self._lease_duration = lease_duration
        self._task_timeout = task_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._ack_ledger = ack_ledger
        self._metrics = metrics
        self._jobs: dict[str, _Job] = {}
        # Set when the worker stops leasing: tasks that still arrive are given back.
        self.stopping = False

    @property
    def running(self) -> int:
        """Tasks whose handlers are running (one past its time limit included)."""
        return len(self._jobs)

    def unsettled(self) -> list[asyncio.Future[None]]:
        # list() first: other threads (tests, embedding apps) may ask while the loop changes it.
        return [job.settled for job in list(self._jobs.values()) if not job.settled.done()]

    def on_leased(self, messages: list[Any], sent_at: float) -> None:
        """Starts the handler for each newly leased task (the leaser reserved the slots)."""
        now = 0.0
        if self._metrics is not None:
            self._metrics.received += len(messages)
            now = self._clock()
        for message in messages:
            task = self._task_from(message)
            self._counters.leased += 1
            duration = self._duration_of(message)
            self._heartbeater.track(
                lease_token=task.lease_token, task_id=task.id, duration=duration, now=sent_at
            )
            if self.stopping:
                self._release(task, error="released unstarted: worker shutting down")
                self._slots.release()
                continue
            job = _Job(task=task, settled=asyncio.get_running_loop().create_future(), started=now)
            self._jobs[task.lease_token] = job
            job.work = asyncio.create_task(self._work(job))

    def on_lost(self, lease_token: str, outcome: int) -> None:
        """The heartbeater learned that a lease is no longer ours."""
        job = self._jobs.get(lease_token)
        reason = _LOSS_REASONS.get(outcome, pb.ExtendOutcome.Name(outcome))
        if job is None or job.settled.done():
            log.info("lease ended (%s) while the task's report was on its way", reason)
            return
        self._counters.lease_lost += 1
        job.lost = outcome
        log.warning(
            "task %s: %s; telling its handler to stop",
            job.task.id, reason, extra=task_fields(job.task),
        )  # fmt: skip
        job.task.cancel(reason)

    def on_cancelled(self, task_ids: list[str]) -> None:
        """The feeder pushed these tasks' cancellation (Consume stream): stop their
        handlers as for a lost lease, without waiting for the next Extend to say so."""
        wanted = set(task_ids)
        for token, job in list(self._jobs.items()):
            if job.task.id in wanted and job.lost is None:
                self.on_lost(token, pb.EXTEND_OUTCOME_CANCELLED)

    def release_unsettled(self) -> None:
        """Gives back every task whose handler has not finished, and stops those handlers."""
        now = self._clock()
        for job in list(self._jobs.values()):
            if job.settled.done():
                continue
            job.settled.set_result(None)
            if self._metrics is not None:
                self._metrics.ended("released", now - job.started)
            job.task.cancel("shutdown")
            self._release(job.task, error="released: worker shutting down")
            if job.work is not None:
                job.work.cancel()

    def cancel_all(self) -> None:
        """Stops waiting for handlers (including overrun ones whose tasks are reported)."""
        for job in list(self._jobs.values()):
            if job.work is not None:
                job.work.cancel()

    async def _work(self, job: _Job) -> None:
        task = job.task
        try:
            # A span per attempt, linked to the producer's (feedwork.tracing): nothing
            # without OpenTelemetry.
            with tracing.task_span(
                task_id=task.id, queue=task.queue, attempt=task.attempt, headers=task.headers
            ) as span:
                try:
                    invocation = await self._invoker.invoke(task)
                except Exception as exc:  # a bug of ours, not the handler's: fail the attempt
                    log.exception(
                        "task %s: could not run the handler", task.id, extra=task_fields(task)
                    )
                    invocation = Invocation(Failed(describe(exc)))
                if isinstance(invocation.outcome, Failed):
                    tracing.failed(span, invocation.outcome.error)
            self._settle(job, invocation.outcome)
            if invocation.straggler is not None:
                log.warning(
                    "task %s: handler still running after its time limit; its slot stays "
                    "busy until it returns",
                    job.task.id,
                )
                await asyncio.wait({invocation.straggler})
        finally:
            self._jobs.pop(job.task.lease_token, None)
            self._slots.release()

    def _settle(self, job: _Job, outcome: Outcome) -> None:
        if job.settled.done():
            return  # released at shutdown: whatever the handler did is no longer ours
        job.settled.set_result(None)
        if self._metrics is not None:
            # A handler that ends after its lease was taken away is "abandoned", whatever
            # it returned (a result after LEASE_LOST is still acked: see the acks' outcomes).
            kind = outcome.kind if job.lost is None else "abandoned"
            self._metrics.ended(kind, self._clock() - job.started)
        task = job.task
        if isinstance(outcome, Succeeded) and job.lost in (None, pb.EXTEND_OUTCOME_LEASE_LOST):
            result = outcome.result
            acked = self._acker.ack(lease_token=task.lease_token, task_id=task.id, result=result)
            acked.add_done_callback(lambda future: self._on_acked(task, future, result))
        elif isinstance(outcome, Failed) and job.lost is None:
            self._counters.failed += 1
            nacked = self._acker.nack(
                lease_token=task.lease_token,
                task_id=task.id,
                error=outcome.error,
                retry_after=outcome.retry_after,
                terminal=outcome.terminal,
            )
            nacked.add_done_callback(lambda future: self._on_nacked(task, future))
        else:
            log.debug("task %s: %s; nothing to report", task.id, task.cancel_reason)
            self._heartbeater.forget(task.lease_token)

    def _release(self, task: Task, *, error: str) -> None:
        released = self._acker.nack(
            lease_token=task.lease_token, task_id=task.id, error=error, release=True
        )
        released.add_done_callback(lambda future: self._on_nacked(task, future))

    def _on_acked(self, task: Task, future: asyncio.Future[int], result: bytes) -> None:
        self._heartbeater.forget(task.lease_token)
        if future.cancelled():
            return  # undelivered at exit; the worker logs those
        exc = future.exception()
        metrics = self._metrics
        if metrics is not None:
            key = ERROR if exc is not None else future.result()
            metrics.acks[key] = metrics.acks.get(key, 0) + 1
        if exc is not None:
            # The feeder refused this ack for good (e.g. a result over its size limit):
            # fail the attempt rather than leave the task to wait for its lease to expire.
            self._counters.failed += 1
            nacked = self._acker.nack(
                lease_token=task.lease_token, task_id=task.id, error=f"ack refused: {exc}"
            )
            nacked.add_done_callback(lambda f: self._on_nacked(task, f))
            return
        outcome = future.result()
        if self._ack_ledger is not None:
            self._ack_ledger.record(
                task_id=task.id, attempt=task.attempt, outcome=outcome, result=result
            )
        if outcome in _ACK_TAKEN:
            self._counters.done += 1
        else:
            log.info("task %s: ack not taken (%s)", task.id, pb.AckOutcome.Name(outcome))

    def _on_nacked(self, task: Task, future: asyncio.Future[int]) -> None:
        self._heartbeater.forget(task.lease_token)
        if future.cancelled():
            return  # undelivered at exit; the worker logs those
        metrics = self._metrics
        if future.exception() is not None:
            if metrics is not None:
                metrics.nacks[ERROR] = metrics.nacks.get(ERROR, 0) + 1
            return  # logged by the acker
        outcome = future.result()
        if metrics is not None:
            metrics.nacks[outcome] = metrics.nacks.get(outcome, 0) + 1
        if outcome == pb.NACK_OUTCOME_DEAD:
            self._counters.dead += 1
            log.warning("task %s is dead after attempt %d", task.id, task.attempt)
        elif outcome == pb.NACK_OUTCOME_RELEASED:
            self._counters.released += 1
        elif outcome != pb.NACK_OUTCOME_RETRYING:
            log.info("task %s: nack not taken (%s)", task.id, pb.NackOutcome.Name(outcome))

    def _task_from(self, message: Any) -> Task:
        timeout = self._task_timeout
        return Task(
            id=message.task_id,
            queue=message.queue,
            payload=message.payload,
            headers=dict(message.headers) if message.headers else {},
            attempt=message.attempt,
            max_attempts=message.max_attempts,
            priority=message.priority,
            deadline=None if timeout is None else self._clock() + timeout,
            lease_token=message.lease_token,
        )

    def _duration_of(self, message: Any) -> float:
        if self._lease_duration is not None:
            return self._lease_duration
        # No duration asked for: the feeder used the task's or queue's. Estimate it from
        # the deadline; a skewed clock only moves the first extension earlier or later.
        deadline = message.lease_deadline
        remaining: float = deadline.seconds + deadline.nanos * 1e-9 - self._wall_clock()
        return min(max(remaining, MIN_LEASE), MAX_LEASE)
