"""QueueControls: an operator's controls of whole queues, in domain terms.

Pause and resume store the pause (the store's claims obey it, on every feeder of a shared
database); a purge deletes the queue's tasks that wait to be leased, a slice at a time, as
the state machine's `purge` selects them, each deletion guarded like any other change;
deleting a queue is the janitor's forgetting, asked for one queue by name; listings read
the store. None of these decide anything about a task's life beyond `machine.purge`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from feeder.core import machine
from feeder.core.model import State, Task
from feeder.core.quoting import quoted
from feeder.service.turns import next_turn
from feeder.store.base import Change, LeaseHolder, QueueCounts, Store, StoreUnavailable, TaskPage

log = logging.getLogger("feedwork.feeder")

# READY and SCHEDULED tasks read, decided and deleted per store apply (one transaction).
PURGE_SLICE = 500
# A deletion that lost its guard (the task changed meanwhile) is decided again this often.
MAX_RACES = 8
PENDING = frozenset({State.READY, State.SCHEDULED})


class QueueNotFound(Exception):
    """The database does not know the queue (no task was ever submitted to it, or it was
    forgotten since)."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"no queue {quoted(queue)} (no task was ever submitted to it)")
        self.queue = queue


class QueueNotEmpty(Exception):
    """A queue that holds tasks cannot be deleted."""

    def __init__(self, queue: str, held: dict[State, int]) -> None:
        kinds = ", ".join(f"{count} {state.name.lower()}" for state, count in sorted(held.items()))
        what = f"holds {sum(held.values())} tasks ({kinds})" if held else "is being submitted to"
        super().__init__(
            f"queue {quoted(queue)} {what}: a queue is deleted only once it holds no task"
            " (purge it, purge its dead tasks; completed and cancelled tasks go after the"
            " retention period)"
        )
        self.queue = queue
        self.held = held


@dataclass(frozen=True, slots=True)
class TaskListing:
    """What a ListTasks asks for."""

    queue: str
    states: frozenset[State] | None
    page_size: int
    after_id: int | None
    newest_first: bool
    payloads: bool


class QueueControls:
    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float],
        max_reply_bytes: int | None = None,
    ) -> None:
        """`max_reply_bytes`: a page of tasks with payloads is read up to this many bytes."""
        self._store = store
        self._clock = clock
        self._max_reply_bytes = max_reply_bytes

    async def _counts(self, queue: str) -> QueueCounts:
        """The queue's counts; raises QueueNotFound for a queue the database does not know
        (it never counted anything for it, and it is not paused)."""
        (counts,) = await self._store.queue_counts([queue])
        if not _known(counts):
            raise QueueNotFound(queue)
        return counts

    async def pause(self, queue: str) -> bool:
        """Pauses `queue`; False if it was paused already."""
        await self._counts(queue)
        paused = await self._store.pause(queue, at=self._clock())
        if paused:
            log.info("queue %s paused", quoted(queue))
        return paused

    async def resume(self, queue: str) -> bool:
        """Resumes `queue` (its waiting leasers wake); False if it was not paused."""
        if await self._store.resume(queue):
            log.info("queue %s resumed", quoted(queue))
            return True
        await self._counts(queue)
        return False

    async def purge(self, queue: str) -> int:
        """Deletes the READY and SCHEDULED tasks submitted to `queue` before this call,
        PURGE_SLICE per transaction; returns how many. Leased tasks stay (their workers
        finish them), as do dead and finished ones. A task that changed between its read
        and its deletion is decided again from its new record."""
        await self._counts(queue)
        began = self._clock()
        purged, after_id = 0, None
        raced: list[int] = []
        while True:
            page = await self._store.list_tasks(
                queue, PENDING, after_id=after_id, limit=PURGE_SLICE, payloads=False
            )
            deleted, lost = await self._delete(page.tasks, began)
            purged, raced = purged + deleted, raced + lost
            if page.next_after_id is None:
                break
            after_id = page.next_after_id
            await next_turn()
        for _ in range(MAX_RACES):
            if not raced:
                break
            fresh = await self._store.get(raced, payloads=False)
            deleted, raced = await self._delete(fresh.values(), began)
            purged += deleted
        else:
            if raced:
                raise StoreUnavailable("too many concurrent changes to the queue's tasks; retry")
        if purged:
            log.info("queue %s purged: %d tasks deleted", quoted(queue), purged)
        return purged

    async def _delete(self, tasks: Iterable[Task], before: float) -> tuple[int, list[int]]:
        """Deletes those of `tasks` that `machine.purge` selects: (how many went, the ids
        whose deletion lost its guard)."""
        changes = []
        for task in tasks:
            decision = machine.purge(task, before=before)
            if decision.outcome:
                changes.append(Change(task, None, decision.events))
        if not changes:
            return 0, []
        applied = await self._store.apply(changes)
        lost = [c.before.id for c, ok in zip(changes, applied, strict=True) if not ok]
        return len(changes) - len(lost), lost

    async def delete(self, queue: str) -> None:
        """Forgets `queue`, its totals and its pause, if it holds no task in any state;
        raises QueueNotEmpty otherwise, QueueNotFound if it is not known."""
        counts = await self._counts(queue)
        held = {state: n for state, n in counts.by_state.items() if n}
        if held:
            raise QueueNotEmpty(queue, held)
        if await self._store.forget_empty_queues(1, only=[queue]):
            log.info("queue %s deleted", quoted(queue))
            return
        # A submit came first, or another call (the janitor) forgot it meanwhile.
        (counts,) = await self._store.queue_counts([queue])
        if _known(counts):
            raise QueueNotEmpty(queue, {state: n for state, n in counts.by_state.items() if n})

    async def list_tasks(self, listing: TaskListing) -> TaskPage:
        return await self._store.list_tasks(
            listing.queue,
            listing.states,
            after_id=listing.after_id,
            limit=listing.page_size,
            newest_first=listing.newest_first,
            payloads=listing.payloads,
            max_bytes=self._max_reply_bytes,
        )

    async def lease_holders(self, queue: str | None, *, limit: int) -> list[LeaseHolder]:
        return await self._store.lease_holders(queue, limit=limit)


def _known(counts: QueueCounts) -> bool:
    return any(counts.by_state.values()) or bool(counts.totals) or counts.paused_at is not None
