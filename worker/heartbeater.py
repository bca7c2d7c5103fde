"""Keeping the leases of running tasks alive.

Each lease is extended when a third of its duration is left: early enough that one failed
or slow Extend can be retried before the lease runs out, late enough that a worker with
many long tasks sends few RPCs. All leases that are due go out in one Extend batch.

Expiry times are kept on this process's monotonic clock, counted from when our request
was sent. That underestimates the feeder's deadline by the network delay, which errs on
the safe side, and does not depend on the two machines' wall clocks agreeing.

An Extend outcome other than EXTENDED means the task is no longer ours (lease lost,
completed or cancelled elsewhere, gone): the lease is dropped and `on_lost` is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from feedwork.retry import is_transient
from feedwork.v1 import feeder_pb2 as pb
from worker.connection import ConnectionMonitor
from worker.metrics import WorkerMetrics

log = logging.getLogger("feedwork.worker")

# Extend when this fraction of the lease duration is left.
EXTEND_AT_REMAINING = 1 / 3
# The feeder takes at most 1000 items per request.
MAX_BATCH_SIZE = 1000
# After a failed Extend, wait this long before trying again (leases are at least 1 s, and
# a third of that is left when we first try, so a few quick retries still fit).
RETRY_PAUSE = 0.2
# Upper bound on one sleep, so that a clock jump or a missed wakeup costs little.
MAX_TICK = 1.0


@dataclass(slots=True)
class _Lease:
    lease_token: str
    task_id: str
    duration: float
    expires: float


class Heartbeater:
    """Extends the leases it tracks until told to forget them. `start()`, then `stop()`."""

    def __init__(
        self,
        *,
        stub: Any,
        monitor: ConnectionMonitor,
        on_lost: Callable[[str, int], None],
        lease_duration: float | None,
        clock: Callable[[], float] = time.monotonic,
        call_timeout: float = 5.0,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._stub = stub
        self._monitor = monitor
        self._on_lost = on_lost
        self._lease_duration = lease_duration
        self._clock = clock
        self._call_timeout = call_timeout
        self._metrics = metrics
        self._leases: dict[str, _Lease] = {}
        self._changed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_refusal: str | None = None

    def __len__(self) -> int:
        return len(self._leases)

    def track(self, *, lease_token: str, task_id: str, duration: float, now: float) -> None:
        """Starts extending a lease granted (or last extended) at `now` for `duration` s."""
        self._leases[lease_token] = _Lease(lease_token, task_id, duration, now + duration)
        self._changed.set()

    def forget(self, lease_token: str) -> None:
        self._leases.pop(lease_token, None)

    def due(self, now: float) -> list[_Lease]:
        """Leases with a third or less of their duration left at `now`."""
        return [
            lease
            for lease in self._leases.values()
            if lease.expires - now <= lease.duration * EXTEND_AT_REMAINING
        ]

    def next_due(self) -> float | None:
        """When the next lease becomes due (clock time), or None with nothing tracked."""
        return min(
            (
                lease.expires - lease.duration * EXTEND_AT_REMAINING
                for lease in self._leases.values()
            ),
            default=None,
        )

    async def run_once(self, now: float) -> bool:
        """Extends every lease due at `now`. False when the feeder could not be reached."""
        due = self.due(now)
        for start in range(0, len(due), MAX_BATCH_SIZE):
            if not await self._extend(due[start : start + MAX_BATCH_SIZE], now):
                return False
        return True

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="feedwork-heartbeater")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    async def _run(self) -> None:
        while True:
            now = self._clock()
            if self.due(now) and not await self._run_once_guarded(now):
                await asyncio.sleep(RETRY_PAUSE)
                continue
            next_due = self.next_due()
            delay = MAX_TICK if next_due is None else min(max(next_due - now, 0.0), MAX_TICK)
            self._changed.clear()
            # A newly tracked lease may be due sooner than anything we know of.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)

    async def _run_once_guarded(self, now: float) -> bool:
        # A bug here must not silently end all extensions: every lease would then expire.
        try:
            return await self.run_once(now)
        except Exception:
            log.exception("extending leases failed; retrying")
            return False

    async def _extend(self, leases: list[_Lease], now: float) -> bool:
        items = [pb.ExtendItem(lease_token=lease.lease_token) for lease in leases]
        if self._lease_duration is not None:
            for item in items:
                item.lease_duration.FromNanoseconds(int(self._lease_duration * 1e9))
        try:
            reply = await self._stub.Extend(
                pb.ExtendRequest(items=items), timeout=self._call_timeout
            )
        except grpc.RpcError as exc:
            if is_transient(exc):
                self._monitor.failed(exc, call="Extend")
            elif str(exc) != self._last_refusal:  # once per distinct refusal, not per retry
                self._last_refusal = str(exc)
                log.error("Extend of %d leases refused by the feeder: %s", len(items), exc)
            return False
        self._monitor.succeeded()
        extends = self._metrics.extends if self._metrics is not None else None
        for lease, result in zip(leases, reply.results, strict=False):
            if extends is not None:
                extends[result.outcome] = extends.get(result.outcome, 0) + 1
            self._apply(lease, result.outcome, now)
        return True

    def _apply(self, lease: _Lease, outcome: int, now: float) -> None:
        if self._leases.get(lease.lease_token) is not lease:
            return  # forgotten (task reported) while the call was in flight
        if outcome == pb.EXTEND_OUTCOME_EXTENDED:
            lease.expires = now + lease.duration
            return
        del self._leases[lease.lease_token]
        self._on_lost(lease.lease_token, outcome)
