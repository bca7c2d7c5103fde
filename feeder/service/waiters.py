"""Long-poll waiters: leasers that found nothing ready, served in arrival order.

Only the first waiter of a queue is woken when tasks become ready; after it has claimed,
it wakes the next one if its claim came back full (more may be left). So a burst of submits
never wakes every waiter at once (no thundering herd) and no one polls.

Every "tasks may be ready" notice also moves the queue's epoch on. A leaser reads the epoch
before it claims: if the claim finds nothing but the epoch moved meanwhile, tasks arrived
while it was claiming, and it claims again instead of going to sleep on a notice it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque


class Waiters:
    def __init__(self) -> None:
        self._queues: dict[str, deque[asyncio.Future[bool]]] = {}
        self._epochs: Counter[str] = Counter()

    def has_waiters(self, queue: str) -> bool:
        return bool(self._queues.get(queue))

    def epoch(self, queue: str) -> int:
        """How many "tasks may be ready" notices the queue has had since it was watched."""
        return self._epochs[queue]

    def enqueue(self, queue: str, *, first: bool = False) -> asyncio.Future[bool]:
        """A future that resolves True when this waiter's turn comes (False: shutting down)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        line = self._queues.setdefault(queue, deque())
        if first:
            line.appendleft(future)
        else:
            line.append(future)
        return future

    def is_first(self, queue: str, future: asyncio.Future[bool]) -> bool:
        line = self._queues.get(queue)
        return bool(line) and line[0] is future  # type: ignore[index]

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
        """`count` tasks may have become ready: gives the turn to as many leasers, at most."""
        if queue in self._epochs:
            self._epochs[queue] += 1
        for _ in range(count):
            if queue not in self._queues:
                return
            self.wake_first(queue)

    def wake_every_queue(self) -> None:
        """Anything may have changed (notices were lost): the first waiter of every queue
        looks again."""
        for queue in self._epochs:
            self._epochs[queue] += 1
        for queue in list(self._queues):
            self.wake_first(queue)

    def watch(self, queue: str) -> int:
        """Starts counting notices for `queue` (a leaser is about to claim) and returns the
        epoch now. Counting only watched queues keeps notices for queues nobody leases
        from growing this table."""
        return self._epochs.setdefault(queue, 0)

    def wake_all(self) -> None:
        """Shutdown: every waiter returns empty-handed."""
        for line in self._queues.values():
            for future in line:
                if not future.done():
                    future.set_result(False)
        self._queues.clear()
