"""Consumers: who holds which leases, for the cap on unacked leases and for pushing
cancellations.

A consumer is one Consume stream, or one Lease caller (named by its `worker_id`, which the
caller chooses: until clients authenticate, a caller can dodge the cap by changing names).
Like JetStream's MaxAckPending, a consumer that holds `cap` leases nobody has acked,
nacked or let expire yet gets no more tasks until one of them ends.

What this feeder hears of is exact: its store reports every lease that ends through it
(`StoreHooks.ended`: an ack, a nack, an expiry by its reaper, a cancel, a revocation), and,
on a shared database, every cancellation another feeder makes. Acks through other feeders
and expiries by another feeder's reaper are not announced (a notification per ack would
cost every feeder a message per task); a consumer at its cap re-reads its leases from the
store instead (`verify`), at most every CAP_RECHECK seconds while it waits, and every
consumer's leases are re-read once a minute and after lost notifications (see
`TaskService._recheck_consumers`), so such ends do not stay in the books.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from feeder.core.model import State, Task

# How often a consumer waiting at its cap re-reads its leases, for ends it did not hear of.
CAP_RECHECK = 1.0


class Consumer:
    """The leases one consumer holds (task id -> attempt) and its waiting room, and who it
    is (for `Consumers.listing`)."""

    __slots__ = (
        "caller",
        "checked_at",
        "freed",
        "held",
        "name",
        "on_cancelled",
        "peer",
        "queues",
        "reserved",
        "since",
        "worker_id",
    )

    def __init__(
        self,
        name: str,
        on_cancelled: Callable[[int], None] | None = None,
        *,
        worker_id: str = "",
        caller: str = "",
        queue: str | None = None,
        peer: str = "",
        since: float = 0.0,
    ) -> None:
        self.name = name
        self.worker_id = worker_id
        self.caller = caller
        # The queues it leases from: a stream's one; those of a Lease caller's calls.
        self.queues: set[str] = set() if queue is None else {queue}
        self.peer = peer
        # When the stream opened, or the Lease caller first called since it held nothing.
        self.since = since
        self.held: dict[int, int] = {}
        # Tasks a claim in progress may lease for this consumer.
        self.reserved = 0
        self.freed = asyncio.Event()
        # Told the id of a task this consumer holds as soon as it is cancelled (a stream
        # pushes it down to its worker).
        self.on_cancelled = on_cancelled
        self.checked_at = 0.0

    def room(self, cap: int) -> int:
        return cap - len(self.held) - self.reserved

    @property
    def is_stream(self) -> bool:
        return not self.name.startswith("lease:")

    def __repr__(self) -> str:
        return f"Consumer({self.name!r}, held={len(self.held)})"


@dataclass(frozen=True, slots=True)
class ConsumerView:
    """One consumer of this feeder as an operator sees it (ListWorkers)."""

    stream: bool  # a Consume stream; else the Lease calls of one worker_id (and caller)
    worker_id: str
    caller: str
    queues: tuple[str, ...]
    peer: str
    since: float
    # Leases it holds, as far as this feeder knows (see the module docstring).
    leases: int


class Consumers:
    """Every consumer of this feeder with leases, and who holds each task's lease; and
    every open stream, leases or not."""

    def __init__(self) -> None:
        self._callers: dict[str, Consumer] = {}
        self._holders: dict[int, Consumer] = {}
        self._streams: set[Consumer] = set()

    def open_stream(self, consumer: Consumer) -> Consumer:
        """Registers a stream's consumer until it is `close`d."""
        self._streams.add(consumer)
        return consumer

    def lease_caller(self, worker_id: str, caller: str = "", *, since: float = 0.0) -> Consumer:
        """The consumer of Lease calls made under `worker_id` by `caller` (the identity
        the feeder authenticated, "" without auth): with auth, one caller cannot use up
        another's cap by claiming its worker_id. (An access list name has no spaces.)
        `since`: when it is made, now."""
        name = f"{caller} {worker_id}" if caller else worker_id
        consumer = self._callers.get(name)
        if consumer is None:
            consumer = self._callers[name] = Consumer(
                f"lease:{name}", worker_id=worker_id, caller=caller, since=since
            )
        return consumer

    def listing(self, queue: str | None = None) -> list[ConsumerView]:
        """The open streams and the Lease callers holding (or taking) leases, of `queue`
        (None: of every queue): streams first, each kind by worker id, caller, since."""
        found = [
            ConsumerView(
                consumer.is_stream,
                consumer.worker_id,
                consumer.caller,
                tuple(sorted(consumer.queues)),
                consumer.peer,
                consumer.since,
                len(consumer.held),
            )
            for consumer in (*self._streams, *self._callers.values())
            if queue is None or queue in consumer.queues
        ]
        found.sort(key=lambda c: (not c.stream, c.worker_id, c.caller, c.since))
        return found

    def granted(self, consumer: Consumer, tasks: Iterable[Task]) -> None:
        holders = self._holders
        for task in tasks:
            before = holders.get(task.id)
            if before is not None and before is not consumer:
                # It held an earlier lease that ended where this feeder did not hear of it.
                before.held.pop(task.id, None)
            holders[task.id] = consumer
            consumer.held[task.id] = task.attempt

    def ended(self, leases: Iterable[tuple[int, State | None]]) -> None:
        """The leases of these tasks ended; each task's state now (None: deleted)."""
        holders = self._holders
        for task_id, state in leases:
            consumer = holders.pop(task_id, None)
            if consumer is None:
                continue
            consumer.held.pop(task_id, None)
            consumer.freed.set()
            if state is State.CANCELLED and consumer.on_cancelled is not None:
                consumer.on_cancelled(task_id)
            self._forget_if_idle(consumer)

    def close(self, consumer: Consumer) -> None:
        """A stream ended: its leases run on to their deadlines, but nobody is left to cap
        or to tell of cancellations."""
        self._streams.discard(consumer)
        for task_id in consumer.held:
            if self._holders.get(task_id) is consumer:
                del self._holders[task_id]
        consumer.held.clear()
        consumer.on_cancelled = None

    def due_check(self, consumer: Consumer, now: float) -> bool:
        """Whether a consumer at its cap should re-read its leases now."""
        if now - consumer.checked_at < CAP_RECHECK:
            return False
        consumer.checked_at = now
        return True

    def verify(
        self, consumer: Consumer, task_ids: Iterable[int], current: Mapping[int, Task]
    ) -> None:
        """Drops the leases of `task_ids` that `current` (their records, read after the
        ids were taken from `consumer.held`) shows ended."""
        ended = []
        for task_id in task_ids:
            attempt = consumer.held.get(task_id)
            if attempt is None:
                continue
            task = current.get(task_id)
            if task is None or task.state is not State.LEASED or task.attempt != attempt:
                ended.append((task_id, task.state if task is not None else None))
        for task_id, state in ended:
            consumer.held.pop(task_id, None)
            if self._holders.get(task_id) is consumer:
                del self._holders[task_id]
            if state is State.CANCELLED and consumer.on_cancelled is not None:
                consumer.on_cancelled(task_id)  # in case its notification was lost
        if ended:
            consumer.freed.set()
            self._forget_if_idle(consumer)

    def _forget_if_idle(self, consumer: Consumer) -> None:
        # A Lease caller without leases is forgotten, so made-up worker ids do not pile up.
        if not consumer.held and not consumer.reserved and consumer.name.startswith("lease:"):
            name = consumer.name.removeprefix("lease:")
            if self._callers.get(name) is consumer:
                del self._callers[name]

    def release_reservation(self, consumer: Consumer, count: int) -> None:
        consumer.reserved -= count
        self._forget_if_idle(consumer)

    def by_holder(self) -> dict[Consumer, list[int]]:
        """The tasks each consumer holds."""
        found: dict[Consumer, list[int]] = {}
        for task_id, consumer in self._holders.items():
            found.setdefault(consumer, []).append(task_id)
        return found

    @property
    def holders(self) -> int:
        """Leases tracked (for tests and metrics)."""
        return len(self._holders)

    def holding(self) -> int:
        """Consumers holding at least one lease (for metrics: O(leases))."""
        return len(set(map(id, self._holders.values())))
