"""Long-poll waiters: leasers that found nothing ready, served in arrival order.

Only the first waiter of a queue is woken when tasks become ready; after it has claimed,
it wakes the next one if tasks are left. So a burst of submits never wakes every waiter
at once (no thundering herd) and no one polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Waiters:
    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[bool]]] = {}

    def has_waiters(self, queue: str) -> bool:
        return bool(self._queues.get(queue))

    def enqueue(self, queue: str, *, first: bool = False) -> asyncio.Future[bool]:
        """A future that resolves True when this waiter's turn comes (False: shutting down)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        line = self._queues.setdefault(queue, deque())
        if first:
            line.appendleft(future)
        else:
            line.append(future)
        return future

    def discard(self, queue: str, future: asyncio.Future[bool]) -> None:
        line = self._queues.get(queue)
        if line is not None:
            with contextlib.suppress(ValueError):
                line.remove(future)
            if not line:
                del self._queues[queue]

    def wake_first(self, queue: str) -> None:
        """Gives the turn to the longest-waiting leaser of `queue`, if any."""
        line = self._queues.get(queue)
        while line:
            future = line.popleft()
            if not future.done():
                future.set_result(True)
                break
        if line is not None and not line:
            del self._queues[queue]

    def wake(self, queue: str, count: int) -> None:
        """`count` tasks became ready: gives the turn to as many leasers, at most."""
        for _ in range(count):
            if queue not in self._queues:
                return
            self.wake_first(queue)

    def wake_all(self) -> None:
        """Shutdown: every waiter returns empty-handed."""
        for line in self._queues.values():
            for future in line:
                if not future.done():
                    future.set_result(False)
        self._queues.clear()
