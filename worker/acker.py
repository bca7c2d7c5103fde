"""Batching Acks and Nacks.

Reports are queued and sent in batches: a batch goes out when it reaches `batch_size`
items (or about `max_batch_bytes`), or `flush_interval` after its first item, whichever
comes first. Under load that turns hundreds of RPCs into a few; when idle it adds a few
milliseconds at most.

A report is never dropped quietly. Transient failures (feeder down or restarting) are
retried until they get through (on the worker's Consume stream while it is open, else as
Ack and Nack calls), which is safe because the feeder treats a repeated Ack or
Nack of the same lease as a no-op (DUPLICATE). A batch the feeder refuses as a whole is
split and its items sent one by one, so one bad item cannot hold the others back. Each
report's future resolves with the feeder's per-item outcome, or fails with the error that
item alone got; reports still unsent when `close` runs out of time are named in its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from feedwork.retry import INITIAL_WAIT, async_retrying, is_transient
from feedwork.v1 import feeder_pb2 as pb
from worker.connection import ConnectionMonitor
from worker.stream import ConsumeStream, StreamLost

log = logging.getLogger("feedwork.worker")

# The feeder takes at most 1000 items per request.
MAX_BATCH_SIZE = 1000
# How long one Ack or Nack call may take before it is treated as lost and retried.
CALL_TIMEOUT = 10.0
# The longest wait between two tries of a report (see `_retry`).
REPORT_MAX_WAIT = 1.0
# Batches of one kind on their way at once: the next full batch goes out without waiting
# for the answer to the last (answers take a commit on the feeder).
MAX_IN_FLIGHT = 4


@dataclass(eq=False, slots=True)
class _Report:
    message: Any  # pb.AckItem or pb.NackItem
    task_id: str
    outcome: asyncio.Future[int]
    size: int  # the message's encoded size


class _Line:
    """The reports of one kind (acks or nacks) waiting to be sent, in order."""

    def __init__(self, *, name: str, send: Callable[[list[Any]], Awaitable[list[int]]]) -> None:
        self.name = name
        self.send = send
        self.waiting: deque[_Report] = deque()
        self.waiting_bytes = 0
        # Batches of this kind on their way. Per kind, so that acks held up by retries do
        # not hold nacks up, nor the other way round.
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def take(self, batch_size: int, max_bytes: int) -> list[_Report]:
        batch: list[_Report] = []
        size = 0
        while self.waiting and len(batch) < batch_size:
            item_size = self.waiting[0].size
            if batch and size + item_size > max_bytes:
                break
            batch.append(self.waiting.popleft())
            size += item_size
        self.waiting_bytes -= size
        return batch


class Acker:
    """Sends Ack and Nack reports in batches. `start()`, report, then `close()`."""

    def __init__(
        self,
        *,
        stub: Any,
        monitor: ConnectionMonitor,
        batch_size: int = 64,
        flush_interval: float = 0.005,
        max_batch_bytes: int = 1 << 20,
        stream: ConsumeStream | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        self._stub = stub
        # Reports go on the worker's Consume stream while it is open, else as Ack/Nack calls.
        self._stream = stream
        self._monitor = monitor
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_batch_bytes = max_batch_bytes
        self._acks = _Line(name="Ack", send=self._send_acks)
        self._nacks = _Line(name="Nack", send=self._send_nacks)
        self._unresolved: set[_Report] = set()
        self._wake = asyncio.Event()  # something is waiting
        self._full = asyncio.Event()  # a batch is full: send without waiting
        self._drained = asyncio.Event()
        self._drained.set()
        self._loop_task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def unresolved(self) -> int:
        """Reports not yet answered by the feeder (waiting or in flight)."""
        return len(self._unresolved)

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="feedwork-acker")

    def ack(self, *, lease_token: str, task_id: str, result: bytes) -> asyncio.Future[int]:
        """Queues an Ack; the future resolves with its `AckOutcome`."""
        return self._add(self._acks, pb.AckItem(lease_token=lease_token, result=result), task_id)

    def nack(
        self,
        *,
        lease_token: str,
        task_id: str,
        error: str = "",
        retry_after: float | None = None,
        terminal: bool = False,
        release: bool = False,
    ) -> asyncio.Future[int]:
        """Queues a Nack; the future resolves with its `NackOutcome`."""
        item = pb.NackItem(lease_token=lease_token, error=error, terminal=terminal, release=release)
        if retry_after is not None:
            item.retry_after.FromNanoseconds(int(retry_after * 1e9))
        return self._add(self._nacks, item, task_id)

    async def close(self, *, time_limit: float) -> list[str]:
        """Sends everything still queued, retrying for up to `time_limit` seconds. Returns the
        ids of tasks whose reports could not be delivered (their futures are cancelled)."""
        self._flush_interval = 0.0
        self._full.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), time_limit)
        for task in [self._loop_task, *self._sending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        undelivered = sorted(report.task_id for report in self._unresolved)
        for report in list(self._unresolved):
            report.outcome.cancel()
        return undelivered

    def _add(self, line: _Line, message: Any, task_id: str) -> asyncio.Future[int]:
        size = message.ByteSize()
        report = _Report(message, task_id, asyncio.get_running_loop().create_future(), size)
        report.outcome.add_done_callback(lambda _: self._resolved(report))
        self._unresolved.add(report)
        self._drained.clear()
        line.waiting.append(report)
        line.waiting_bytes += size
        self._wake.set()
        if len(line.waiting) >= self._batch_size or line.waiting_bytes >= self._max_batch_bytes:
            self._full.set()
        return report.outcome

    def _resolved(self, report: _Report) -> None:
        self._unresolved.discard(report)
        if not self._unresolved:
            self._drained.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Give a batch a few milliseconds to fill, unless it already has.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._flush_interval)
            self._wake.clear()
            self._full.clear()
            # Sends are spawned (each kind has its own in-flight limit), so a batch waiting
            # for its answer does not hold the next one back.
            await self._drain(self._acks)
            await self._drain(self._nacks)

    async def _drain(self, line: _Line) -> None:
        while line.waiting:
            await line.in_flight.acquire()
            batch = line.take(self._batch_size, self._max_batch_bytes)
            sending = asyncio.create_task(self._send_one(line, batch))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send_one(self, line: _Line, batch: list[_Report]) -> None:
        try:
            await self._send(line, batch)
        finally:
            line.in_flight.release()

    async def _send(self, line: _Line, batch: list[_Report]) -> None:
        messages = [report.message for report in batch]
        try:
            outcomes = await self._call(line, messages)
        except Exception as exc:  # refused as a whole, or a reply we cannot use
            if len(batch) > 1:
                log.warning(
                    "%s batch of %d refused (%s); sending one by one", line.name, len(batch), exc
                )
                for report in batch:
                    await self._send(line, [report])
                return
            log.error("%s for task %s failed for good: %s", line.name, batch[0].task_id, exc)
            _settle(batch[0].outcome, exception=exc)
            return
        for report, outcome in zip(batch, outcomes, strict=True):
            _settle(report.outcome, result=outcome)

    async def _call(self, line: _Line, messages: list[Any]) -> list[int]:
        # The first try goes out directly, without the retry machinery; failures are retried.
        try:
            outcomes = await line.send(messages)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._monitor.failed(exc, call=line.name)
            outcomes = await self._retry(line, messages)
        self._monitor.succeeded()
        if len(outcomes) != len(messages):
            raise _MalformedReply(
                f"{line.name} reply has {len(outcomes)} results for {len(messages)} items"
            )
        return outcomes

    async def _retry(self, line: _Line, messages: list[Any]) -> list[int]:
        note = self._monitor.note_retry(line.name)
        # Waits of at most REPORT_MAX_WAIT, not the clients' 5 s: a report is due within its
        # lease, and a retry asleep for seconds after a feeder came back held acks past
        # 5 s leases, their tasks then run again (seen in the feeder-killed fault test).
        wait = tenacity.wait_random_exponential(multiplier=INITIAL_WAIT, max=REPORT_MAX_WAIT)
        async for attempt in async_retrying(max_delay=None, before_sleep=note, wait=wait):
            with attempt:
                outcomes = await line.send(messages)
        return outcomes

    async def _send_acks(self, items: list[Any]) -> list[int]:
        if self._stream is not None and self._stream.is_open:
            with contextlib.suppress(StreamLost):
                answer = await self._stream.report(acks=items)
                return [result.outcome for result in answer.ack_results]
        reply = await self._stub.Ack(pb.AckRequest(items=items), timeout=CALL_TIMEOUT)
        return [result.outcome for result in reply.results]

    async def _send_nacks(self, items: list[Any]) -> list[int]:
        if self._stream is not None and self._stream.is_open:
            with contextlib.suppress(StreamLost):
                answer = await self._stream.report(nacks=items)
                return [result.outcome for result in answer.nack_results]
        reply = await self._stub.Nack(pb.NackRequest(items=items), timeout=CALL_TIMEOUT)
        return [result.outcome for result in reply.results]


class _MalformedReply(Exception):
    """The feeder answered with the wrong number of results (a feeder bug)."""


def _settle(
    future: asyncio.Future[int], *, result: int = 0, exception: BaseException | None = None
) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
