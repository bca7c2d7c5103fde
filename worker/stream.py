"""The worker's Consume stream: credits and reports up, leased tasks down.

It does the leaser's job over one long-lived call instead of a Lease call per batch: a
credit is granted for each free slot, so the worker still never holds more tasks than it
has room for (no hidden prefetch), and the feeder sends a task as soon as it leases one.
Acks and nacks travel on the same stream when it is up (see `report`); the acker falls
back to the unary calls whenever it is not, so a report is never stuck behind a broken
stream.

When the stream breaks, the credits the feeder had not used yet are gone with it: their
slots are freed and granted again on the next stream. The stream is reopened for as long
as the worker runs: at once after a stream that worked (with several feeders, on one that
is up), then with backoff while none opens; a new stream waits for gRPC to reconnect the
channel rather than failing while it is down. The backoff starts afresh after every
stream a feeder accepted, so it never grows from one feeder restart to the next. Only a
refusal no retry can fix (an invalid queue name) ends it, and a feeder without Consume
(UNIMPLEMENTED) makes the worker use Lease instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from feedwork.errors import error_from_rpc, error_from_status
from feedwork.retry import status_code
from feedwork.v1 import feeder_pb2 as pb
from worker.connection import ConnectionMonitor
from worker.leaser import BACKOFF_INITIAL, Slots, reconnecting, retryable
from worker.metrics import WorkerMetrics

log = logging.getLogger("feedwork.worker")

# The feeder takes at most 1000 credits per message, and 10000 unused per stream.
MAX_CREDITS_PER_MESSAGE = 1000
MAX_UNUSED_CREDITS = 10_000
# A report not answered within this long is sent again by the acker (acks are idempotent).
REPORT_TIMEOUT = 10.0
# A stream that stayed up this long, or brought anything, was working: once it breaks, the
# next one opens at once (on another feeder, if the target names several) and the backoff
# starts afresh. Counted over a worker's life instead, a few feeder restarts would grow
# every later wait to the backoff cap, and a worker must find a live feeder within ~2 s.
WORKING_STREAM = 1.0
# A stream the feeder accepted (its initial metadata says so) that broke sooner, before
# bringing anything, starts the backoff afresh too, but after a pause of up to this: a
# feeder that accepts streams and ends them at once is not called in a tight loop.
ACCEPTED_PAUSE = BACKOFF_INITIAL
# The feeder's initial metadata key on a stream it accepted (feeder.server.consume.ACCEPTED).
ACCEPTED_KEY = "feedwork-consume"
# A new stream waits for a connection; when none comes within this long, the connection
# monitor is told (the feeder is "not reachable"), as a failed call would.
NOT_REACHABLE_AFTER = 0.5


class StreamLost(Exception):
    """No stream is open, or it broke before answering: send the report another way."""


class StreamUnsupported(Exception):
    """The feeder does not offer Consume (an older feeder): lease with unary calls."""


class ConsumeStream:
    """Keeps a Consume stream open: `run()` until cancelled; `report()` meanwhile."""

    def __init__(
        self,
        *,
        stub: Any,
        monitor: ConnectionMonitor,
        slots: Slots,
        queue: str,
        worker_id: str,
        lease_duration: float | None,
        on_leased: Callable[[list[Any], float], None],
        on_cancelled: Callable[[list[str]], None] = lambda task_ids: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._stub = stub
        self._monitor = monitor
        self._slots = slots
        self._queue = queue
        self._worker_id = worker_id
        self._lease_duration = lease_duration
        self._on_leased = on_leased
        self._on_cancelled = on_cancelled
        self._clock = clock
        self._wall_clock = wall_clock
        self._metrics = metrics
        self._sessions = 0  # streams opened (tried) so far
        self._call: Any = None  # the open call, once its first message is sent
        self._write_lock = asyncio.Lock()
        self._report_ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[Any]] = {}
        self._unused = 0  # credits granted on the open stream and not used by a task yet
        # Credits owed to the feeder but not sent yet: they go at the end of the loop turn
        # (one message for every slot freed in it), or with a report written before that.
        # (Holding them back for the report of their tasks halves the messages up, but
        # measured slower: the feeder then waits for credits.)
        self._owed = 0
        self._flush_scheduled = False
        self._sending: set[asyncio.Future[None]] = set()
        self._heard = False  # the open stream brought a message
        self._accepted = False  # the feeder accepted the open stream
        self.messages_sent = 0  # for tests and benchmarks: messages up the stream

    @property
    def is_open(self) -> bool:
        return self._call is not None

    async def run(self) -> None:
        try:
            while True:  # a fresh reconnect policy after each working stream
                async for attempt in reconnecting(self._monitor, "Consume"):
                    with attempt:
                        await self._session_until_broken()
        except grpc.RpcError as exc:
            if status_code(exc) is grpc.StatusCode.UNIMPLEMENTED:
                raise StreamUnsupported(str(exc)) from exc
            raise error_from_rpc(exc) from exc

    async def report(
        self,
        *,
        acks: Sequence[Any] = (),
        nacks: Sequence[Any] = (),
        extends: Sequence[Any] = (),
    ) -> Any:
        """Sends a report on the open stream; returns the feeder's ConsumeResponse to it.
        Raises `StreamLost` if there is no stream or it broke before the answer came, and
        the report's error (a `FeedworkError`) if the feeder refused it as a whole."""
        if self._call is None:
            raise StreamLost("no Consume stream is open")
        report_id = next(self._report_ids)
        answer = asyncio.get_running_loop().create_future()
        self._answers[report_id] = answer
        request = pb.ConsumeRequest(
            report_id=report_id, credits=self._take_owed(), acks=acks, nacks=nacks, extends=extends
        )
        try:
            await self._write(request)
            response = await asyncio.wait_for(answer, REPORT_TIMEOUT)
        except (TimeoutError, grpc.RpcError, asyncio.InvalidStateError) as exc:
            raise StreamLost(f"report {report_id} got no answer: {exc}") from exc
        finally:
            self._answers.pop(report_id, None)
        refused = response.error or response.error_code  # the enum, else an older feeder's int
        if refused:
            raise error_from_status(refused, response.error_message)
        return response

    async def _session_until_broken(self) -> None:
        """One session. A working stream that breaks returns (see WORKING_STREAM); one
        that never worked raises, and is retried with growing backoff."""
        opened = self._clock()
        self._heard = self._accepted = False
        self._sessions += 1
        if self._metrics is not None and self._sessions > 1:
            self._metrics.reconnects += 1
        try:
            await self._session()
        except grpc.RpcError as exc:
            worked = self._heard or self._clock() - opened >= WORKING_STREAM
            if not (worked or self._accepted) or not retryable(exc):
                raise
            self._monitor.failed(exc, call="Consume")
            if not worked:
                await asyncio.sleep(random.uniform(0, ACCEPTED_PAUSE))

    async def _session(self) -> None:
        granted = await self._slots.reserve_free()
        if granted > MAX_UNUSED_CREDITS:
            self._slots.release(granted - MAX_UNUSED_CREDITS)
            granted = MAX_UNUSED_CREDITS
        self._unused = granted
        # Waits for a connection rather than failing at once while the channel is down:
        # the stream opens as soon as gRPC reconnects (its own backoff, 250 ms to 2 s),
        # with no second backoff of ours compounding it.
        call = self._stub.Consume(wait_for_ready=True)
        reading: asyncio.Task[None] | None = None
        try:
            start = pb.ConsumeStart(queue=self._queue, worker_id=self._worker_id)
            if self._lease_duration is not None:
                start.lease_duration.FromNanoseconds(int(self._lease_duration * 1e9))
            self._call = call
            reading = asyncio.create_task(self._read(call), name="feedwork-consume-read")
            try:
                self._owed = granted
                await self._write(pb.ConsumeRequest(start=start, credits=self._take_owed()))
                self._owe(0)  # the rest, if more than one message holds
                await self._grant_loop(reading)
            except (grpc.RpcError, asyncio.InvalidStateError, StreamLost) as exc:
                # A write failed because the call ended: its status says why.
                await asyncio.wait({reading}, timeout=REPORT_TIMEOUT)
                if reading.done():
                    reading.result()
                raise _Ended(f"the Consume stream ended: {exc}") from exc
        finally:
            self._call = None
            if reading is not None:
                reading.cancel()
            call.cancel()
            self._slots.release(self._unused)
            self._unused = self._owed = 0
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(StreamLost("the Consume stream broke"))

    async def _grant_loop(self, reading: asyncio.Task[None]) -> None:
        """Grants a credit for every slot that frees up (as it frees up), until the stream
        ends."""
        self._slots.on_release = self._grant_freed
        try:
            self._grant_freed()  # any freed before the hook was set
            await reading
        finally:
            self._slots.on_release = None
        raise _Ended("the feeder closed the Consume stream")

    def _grant_freed(self) -> None:
        # The feeder refuses a stream holding more than MAX_UNUSED_CREDITS; slots beyond
        # that are granted as tasks come in and credits get used.
        credits = self._slots.reserve_now(MAX_UNUSED_CREDITS - self._unused)
        if credits:
            self._unused += credits
            self._owe(credits)

    def _owe(self, credits: int) -> None:
        self._owed += credits
        if self._owed and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_owed)

    def _take_owed(self) -> int:
        credits = min(self._owed, MAX_CREDITS_PER_MESSAGE)
        self._owed -= credits
        return credits

    def _flush_owed(self) -> None:
        self._flush_scheduled = False
        if self._owed and self._call is not None:
            request = pb.ConsumeRequest(credits=self._take_owed())
            sending = asyncio.ensure_future(self._send_credits(request))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
            self._owe(0)  # more than one message holds: the rest next turn

    async def _send_credits(self, request: Any) -> None:
        # A failed write means the stream broke: the session ends and frees these slots.
        with contextlib.suppress(Exception):
            await self._write(request)

    async def _read(self, call: Any) -> None:
        headers = asyncio.ensure_future(call.initial_metadata())
        await asyncio.wait({headers}, timeout=NOT_REACHABLE_AFTER)
        if not headers.done():
            # The call waits for a connection: no failure to report, so say it here.
            self._monitor.failed(_Ended("no connection to a feeder yet"), call="Consume")
        metadata = await headers
        if metadata is not None and any(key == ACCEPTED_KEY for key, _ in metadata):
            self._accepted = True
            self._monitor.succeeded()
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                return
            self._heard = True
            self._monitor.succeeded()
            if response.tasks:
                tasks = list(response.tasks)
                self._unused -= len(tasks)
                self._on_leased(tasks, self._leased_at(tasks))
                self._grant_freed()  # room under the cap for slots left ungranted
            if response.cancelled_task_ids:
                self._on_cancelled(list(response.cancelled_task_ids))
            if _answers_a_report(response):
                answer = self._answers.get(response.report_id)
                if answer is not None and not answer.done():
                    answer.set_result(response)

    def _leased_at(self, tasks: list[Any]) -> float:
        """When the leases began, on our monotonic clock (for the heartbeater): back from
        now by the part of the lease already gone, judged from the soonest deadline. Without
        a known duration, or with skewed clocks, now (the heartbeater then extends a little
        later, by the skew; the lease still has a third of its time left)."""
        now = self._clock()
        if self._lease_duration is None:
            return now
        deadline: float = min(
            t.lease_deadline.seconds + t.lease_deadline.nanos * 1e-9 for t in tasks
        )
        gone = self._lease_duration - (deadline - self._wall_clock())
        return now - min(max(gone, 0.0), self._lease_duration)

    async def _write(self, request: Any) -> None:
        call = self._call
        if call is None:
            raise StreamLost("no Consume stream is open")
        async with self._write_lock:
            self.messages_sent += 1
            await call.write(request)


class _Ended(grpc.RpcError):  # type: ignore[misc]  # grpc is untyped here
    """The feeder ended the stream cleanly (it does so when draining): reconnect."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self.args[0])


def _answers_a_report(response: Any) -> bool:
    # Every report has at least one item, so its answer has results or an error.
    return bool(
        response.ack_results
        or response.nack_results
        or response.extend_results
        or response.error
        or response.error_code
    )
