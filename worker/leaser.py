"""Asking the feeder for work: as many tasks as there are free slots, never more.

The worker holds no hidden prefetch buffer: a leased task starts at once, so its lease is
never spent waiting in a local queue and another worker can take what this one has no
room for. With nothing ready, one Lease call waits on the feeder (long poll) instead of
polling.

The lease loop never gives up on an unreachable feeder: a worker whose feeder restarts
simply carries on when it is back. Only a refusal that no retry can fix (a malformed
request, e.g. an invalid queue name) ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import tenacity

from feedwork.errors import error_from_rpc
from feedwork.retry import async_retrying, status_code
from feedwork.v1 import feeder_pb2 as pb
from worker.connection import ConnectionMonitor

log = logging.getLogger("feedwork.worker")

# The feeder hands out at most 1000 tasks per call.
MAX_TASKS_PER_LEASE = 1000
# A long poll's reply may take `wait` plus this before the call is treated as lost.
CALL_MARGIN = 10.0
# Backoff between failed Lease calls: full jitter, capped so that a feeder that is back
# is found within a few seconds.
BACKOFF_INITIAL = 0.2
BACKOFF_CAP = 5.0
# An empty reply that comes back sooner than this after its call (wait=0, or a feeder that
# is draining for shutdown) is followed by a pause, so that nothing polls in a hot loop.
MIN_EMPTY_POLL_INTERVAL = 1.0
# Refusals that mean the request itself is wrong: retrying would loop forever.
FATAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class Slots:
    """The worker's capacity: slots are reserved before a Lease call and freed when a task's
    handler has returned (or been abandoned)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("concurrency must be at least 1")
        self.capacity = capacity
        self.busy = 0
        self._freed = asyncio.Event()
        # Called (synchronously) whenever slots are freed; the Consume stream sets it to
        # grant them as credits at once, in the same loop turn as the freeing task's ack.
        self.on_release: Callable[[], None] | None = None

    @property
    def free(self) -> int:
        return self.capacity - self.busy

    async def reserve_free(self) -> int:
        """Waits for at least one free slot, then reserves every free slot."""
        while self.free <= 0:
            self._freed.clear()
            await self._freed.wait()
        count = self.free
        self.busy += count
        return count

    def reserve_now(self, most: int) -> int:
        """Reserves free slots without waiting, `most` at most; returns how many."""
        count = max(min(self.free, most), 0)
        self.busy += count
        return count

    def release(self, count: int = 1) -> None:
        self.busy -= count
        if count > 0:
            self._freed.set()
            if self.on_release is not None:
                self.on_release()


class Leaser:
    """The lease loop. `run()` until cancelled; it hands each batch of tasks to `on_leased`
    together with the clock time the Lease call was sent (the leases began after it)."""

    def __init__(
        self,
        *,
        stub: Any,
        monitor: ConnectionMonitor,
        slots: Slots,
        queue: str,
        worker_id: str,
        lease_duration: float | None,
        wait: float,
        on_leased: Callable[[list[Any], float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._monitor = monitor
        self._slots = slots
        self._queue = queue
        self._worker_id = worker_id
        self._lease_duration = lease_duration
        self._wait = wait
        self._on_leased = on_leased
        self._clock = clock

    async def run(self) -> None:
        while True:
            reserved = await self._slots.reserve_free()
            try:
                tasks, sent_at = await self.lease(min(reserved, MAX_TASKS_PER_LEASE))
            except BaseException:
                self._slots.release(reserved)
                raise
            # Slots for tasks we got stay busy until their handlers return.
            self._slots.release(reserved - len(tasks))
            if tasks:
                self._on_leased(tasks, sent_at)
            else:
                await asyncio.sleep(MIN_EMPTY_POLL_INTERVAL - (self._clock() - sent_at))

    async def lease(self, max_tasks: int) -> tuple[list[Any], float]:
        """One Lease call, retried until the feeder answers. Raises a `FeedworkError` if the
        feeder refuses the request itself."""
        request = pb.LeaseRequest(queue=self._queue, max_tasks=max_tasks, worker_id=self._worker_id)
        request.wait.FromNanoseconds(int(self._wait * 1e9))
        if self._lease_duration is not None:
            request.lease_duration.FromNanoseconds(int(self._lease_duration * 1e9))
        try:
            async for attempt in reconnecting(self._monitor, "Lease"):
                with attempt:
                    sent_at = self._clock()
                    reply = await self._stub.Lease(request, timeout=self._wait + CALL_MARGIN)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        self._monitor.succeeded()
        return list(reply.tasks), sent_at


def reconnecting(monitor: ConnectionMonitor, call: str) -> tenacity.AsyncRetrying:
    """How leasing (a Lease call, or the Consume stream) retries: for as long as the worker
    runs, with capped full-jitter backoff, each failure reported to `monitor`; only a
    refusal that no retry can fix (FATAL_CODES) ends it."""
    return async_retrying(
        max_delay=None,
        retry=tenacity.retry_if_exception(retryable),
        wait=tenacity.wait_random_exponential(multiplier=BACKOFF_INITIAL, max=BACKOFF_CAP),
        before_sleep=monitor.note_retry(call),
    )


def retryable(exc: BaseException) -> bool:
    # Everything the feeder might get over (down, overloaded, an internal hiccup) is
    # retried; only requests it will never accept, and bugs on our side, are not.
    return isinstance(exc, grpc.RpcError) and status_code(exc) not in FATAL_CODES
