"""`IndexedStore`: decisions applied to an in-memory `TaskIndex`, the engine behind the memory
and SQLite stores. One feeder owns the data, so the index alone answers which tasks are ready
or due, and reports every change through the store hooks as it applies it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from secrets import token_bytes

from feeder.core.machine import Event
from feeder.core.model import State, Task, TaskSpec
from feeder.store.base import (
    Change,
    DeadPage,
    LeaseDecider,
    QueueCounts,
    QueueFull,
    StoreHooks,
    Submitted,
    TaskFactory,
    changes_news,
    report_news,
)
from feeder.store.index import TaskIndex

EventCounts = Mapping[tuple[str, Event], int]


class IndexedStore:
    """Decisions applied to an in-memory `TaskIndex`. Subclasses make them durable by
    overriding the `_persist_*` hooks; this class alone forgets everything on exit.

    Only one feeder opens the data (`shared` is False), so it is always the maintenance
    leader and hears of every change: nothing needs re-checking."""

    shared = False
    ready_recheck: float | None = None
    timer_recheck: float | None = None

    def __init__(self) -> None:
        self._index = TaskIndex()
        self._hooks = StoreHooks()
        self._secret = token_bytes(32)
        self._next_id = 1
        # New tasks of each queue between their depth check and their becoming visible.
        self._inflight: Counter[str] = Counter()
        self._inflight_keys: dict[tuple[str, str], Task] = {}

    @property
    def token_secret(self) -> bytes:
        return self._secret

    def set_hooks(self, hooks: StoreHooks) -> None:
        self._hooks = hooks

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def leadership(self) -> AsyncIterator[asyncio.Event]:
        # The only feeder on this data: the role is ours at once and never lost.
        yield asyncio.Event()

    # -- durability hooks ---------------------------------------------------------------

    async def _persist_new(self, tasks: Sequence[Task], events: EventCounts) -> None:
        """Makes new tasks durable before they become visible."""
        return None

    async def _persist_changes(self, changes: Sequence[Change], events: EventCounts) -> None:
        """Makes applied changes durable (they are already visible in the index)."""
        return None

    async def _fetch(self, task_ids: Sequence[int]) -> dict[int, Task]:
        """Records that are not held in memory."""
        return {}

    # -- writes -------------------------------------------------------------------------

    async def submit(
        self,
        specs: Sequence[TaskSpec],
        *,
        create: TaskFactory,
        max_depth: Callable[[str], int],
    ) -> list[Submitted]:
        index = self._index
        results: list[Submitted | None] = []
        new: list[Task] = []
        # Per new task, its queue and events: counted once per batch, below.
        new_events: list[tuple[str, tuple[Event, ...]]] = []
        batch_keys: dict[tuple[str, str], Task] = {}
        existing_ids: dict[int, int] = {}
        for position, spec in enumerate(specs):
            key = (spec.queue, spec.idempotency_key) if spec.idempotency_key else None
            if key is not None and (key in batch_keys or key in self._inflight_keys):
                twin = batch_keys.get(key) or self._inflight_keys[key]
                results.append(Submitted(twin, True))
                continue
            if key is not None and key in index.keys:
                existing_ids[position] = index.keys[key]
                results.append(None)
                continue
            decision = create(spec, self._next_id + len(new))
            task = decision.task
            assert task is not None
            new.append(task)
            new_events.append((spec.queue, decision.events))
            if key is not None:
                batch_keys[key] = task
            results.append(Submitted(task, False))
        # Counted once per batch (Counter counts an iterable in C).
        added: Counter[str] = Counter(task.queue for task in new)
        events: Counter[tuple[str, Event]] = Counter()
        for (queue, decided), count in Counter(new_events).items():
            for event in decided:
                events[(queue, event)] += count
        for queue, count in added.items():
            depth = index.pending(queue) + self._inflight[queue]
            if depth + count > max_depth(queue):
                raise QueueFull(queue, depth, max_depth(queue))
        # Ids and depth are reserved before any await so concurrent submits never share one.
        self._next_id += len(new)
        self._inflight.update(added)
        self._inflight_keys.update(batch_keys)
        try:
            if existing_ids:
                found = await self.get(existing_ids.values())
                for position, task_id in existing_ids.items():
                    results[position] = Submitted(found[task_id], deduplicated=True)
            if new:
                await self._persist_new(new, events)
                for task in new:
                    index.put(None, task)
                self._count(events)
                self._report([(None, task) for task in new])
        finally:
            self._inflight.subtract(added)
            for key in batch_keys:
                self._inflight_keys.pop(key, None)
        return [r for r in results if r is not None]

    async def claim(self, queue: str, limit: int, lease: LeaseDecider) -> list[Task]:
        changes: list[Change] = []
        for task in self._index.pop_ready(queue, limit):
            decision = lease(task)
            if decision.task is not None:
                changes.append(Change(task, decision.task, decision.events))
        if changes:
            await self.apply(changes)
        return [c.after for c in changes if c.after is not None and c.after.state is State.LEASED]

    async def apply(
        self, changes: Sequence[Change], events: EventCounts | None = None
    ) -> list[bool]:
        index = self._index
        applied: list[bool] = []
        done: list[Change] = []
        counted: Counter[tuple[str, Event]] = Counter(events or {})
        missing = [c.before.id for c in changes if c.before.id not in index.tasks]
        if missing:
            # Records no longer held in memory (final tasks a subclass evicted) are read
            # back; `get` keeps them in the index. Deleted tasks stay missing.
            await self.get(missing)
        for change in changes:
            # Every current record is in the index now; anything else was changed meanwhile.
            current = index.tasks.get(change.before.id)
            if current is None or current.version != change.before.version:
                applied.append(False)
                continue
            index.put(current, change.after)
            applied.append(True)
            done.append(change)
            for event in change.events:
                counted[(current.queue, event)] += 1
        if counted:
            self._count(counted)
        if done or counted:
            await self._persist_changes(done, counted)
        if done:
            self._report([(c.before.state, c.after) for c in done])
        return applied

    def _report(self, records: Sequence[tuple[State | None, Task | None]]) -> None:
        report_news(self._hooks, changes_news(records))

    def _count(self, events: EventCounts) -> None:
        for (queue, event), count in events.items():
            self._index.totals[queue][event] += count

    # -- reads --------------------------------------------------------------------------

    async def get(self, task_ids: Iterable[int]) -> dict[int, Task]:
        found: dict[int, Task] = {}
        missing: list[int] = []
        for task_id in task_ids:
            task = self._index.tasks.get(task_id)
            if task is None:
                missing.append(task_id)
            else:
                found[task_id] = task
        if missing:
            fetched = await self._fetch(missing)
            for task_id, task in fetched.items():
                # Another coroutine may have loaded (and changed) it during the await.
                found[task_id] = self._index.tasks.setdefault(task_id, task)
                self._cached_from_disk(task)
        return found

    async def recall(self, task_ids: Iterable[int]) -> tuple[dict[int, Task], set[int]]:
        # The index holds every current record: nothing is out of date.
        found = await self.get(task_ids)
        return found, set(found)

    def _cached_from_disk(self, task: Task) -> None:
        """Hook: a record read from disk is now held in memory."""

    async def due(self, now: float, limit: int) -> list[Task]:
        return self._index.due(now, limit)

    async def next_due(self) -> float | None:
        return self._index.next_due()

    async def list_dead(self, queue: str, *, after_id: int | None, limit: int) -> DeadPage:
        dead = sorted(
            t.id
            for t in self._index.tasks.values()
            if t.queue == queue and t.state is State.DEAD and (after_id is None or t.id > after_id)
        )
        page = [self._index.tasks[i] for i in dead[:limit]]
        more = len(dead) > limit
        return DeadPage(page, page[-1].id if more and page else None)

    async def purge_finished(self, *, finished_before: float, limit: int) -> int:
        old = [
            t
            for t in self._index.tasks.values()
            if t.state.is_final and t.finished_at is not None and t.finished_at < finished_before
        ][:limit]
        await self.apply([Change(t, None) for t in old])
        return len(old)

    async def queue_counts(self, queues: Sequence[str] | None = None) -> list[QueueCounts]:
        index = self._index
        names = list(queues) if queues else index.queues()
        # .get, not [name]: asking about a queue must not make the feeder know it.
        none: Counter[State] = Counter()
        return [
            QueueCounts(
                queue=name,
                by_state={s: index.counts.get(name, none)[s] for s in State},
                oldest_ready_at=index.oldest_ready_at(name),
                totals=dict(index.totals.get(name, {})),
            )
            for name in names
        ]
