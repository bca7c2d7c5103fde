"""The in-memory index of the tasks a feeder owns: ready FIFOs, timers and counts.

Both the memory store and the SQLite store keep their pending tasks here; SQLite adds the
journal that makes every change durable. The index never decides anything: `put` records
whatever record the state machine produced.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from feeder.core.machine import Event
from feeder.core.model import State, Task
from feeder.store.final_tasks import FinalTasks


@dataclass(slots=True)
class _ReadyQueue:
    """READY tasks of one queue: one FIFO (by ready time, then id) per priority, highest
    first."""

    by_priority: dict[int, OrderedDict[int, float]] = field(default_factory=dict)
    priorities: list[int] = field(default_factory=list)  # sorted, highest first

    def add(self, task: Task) -> None:
        fifo = self.by_priority.get(task.priority)
        if fifo is None:
            fifo = self.by_priority[task.priority] = OrderedDict()
            self.priorities.append(task.priority)
            self.priorities.sort(reverse=True)
        key = (task.ready_at, task.id)
        if fifo:
            last_id = next(reversed(fifo))
            if (fifo[last_id], last_id) > key:
                # Arrived out of (ready_at, id) order: tasks made ready at one `now` in any
                # order, or decisions taken at one time and applied a little later. Move the
                # (usually short) tail that belongs after it.
                tail: list[tuple[int, float]] = []
                while fifo:
                    last_id, last_at = fifo.popitem(last=True)
                    if (last_at, last_id) < key:
                        fifo[last_id] = last_at
                        break
                    tail.append((last_id, last_at))
                fifo[task.id] = task.ready_at
                for task_id, ready_at in reversed(tail):
                    fifo[task_id] = ready_at
                return
        fifo[task.id] = task.ready_at

    def remove(self, task: Task) -> None:
        fifo = self.by_priority.get(task.priority)
        if fifo is not None:
            fifo.pop(task.id, None)

    def pop(self, limit: int) -> list[int]:
        taken: list[int] = []
        for priority in self.priorities:
            fifo = self.by_priority[priority]
            while fifo and len(taken) < limit:
                taken.append(fifo.popitem(last=False)[0])
            if len(taken) >= limit:
                break
        return taken

    def restore(self, tasks: list[Task]) -> None:
        """Puts back at the front, in their order, tasks just taken by `pop`."""
        for task in reversed(tasks):
            fifo = self.by_priority[task.priority]
            fifo[task.id] = task.ready_at
            fifo.move_to_end(task.id, last=False)

    def __bool__(self) -> bool:
        return any(self.by_priority.values())

    def oldest_ready_at(self) -> float | None:
        # Each FIFO is in ready-time order, so its first entry is its oldest.
        firsts = [next(iter(fifo.values())) for fifo in self.by_priority.values() if fifo]
        return min(firsts) if firsts else None


# Stale timer entries dropped per call of `next_due` or `due` at most (~1 us each).
STALE_POPS = 1000


class TaskIndex:
    """Pending tasks by id, plus what finding the next one needs."""

    def __init__(self, *, final_lookup: bool = False) -> None:
        """`final_lookup`: also keep dead and finished tasks findable without a scan (for a
        store whose final tasks live only here, see `feeder.store.final_tasks`)."""
        self.final = FinalTasks() if final_lookup else None
        self.tasks: dict[int, Task] = {}
        self._ready: defaultdict[str, _ReadyQueue] = defaultdict(_ReadyQueue)
        # (when, task id, version): stale entries are skipped when popped.
        self._timers: list[tuple[float, int, int]] = []
        self.counts: defaultdict[str, Counter[State]] = defaultdict(Counter)
        self.totals: defaultdict[str, Counter[Event]] = defaultdict(Counter)
        # Idempotency keys of the tasks held in `tasks` (a store may keep others on disk).
        self.keys: dict[tuple[str, str], int] = {}
        # Payload bytes of the pending records held (a store may hold some without theirs).
        self.payload_bytes = 0
        # Pending records held (scheduled, ready, leased), of every queue.
        self.pending_total = 0
        # Ids of the LEASED tasks, of every queue (who holds leases: `lease_holders`).
        self.leased: set[int] = set()
        # Paused queues, with when each was paused (see `pause`).
        self.paused: dict[str, float] = {}
        # Every queue name, sorted. Rebuilt when a queue appears (the sizes of `counts` and
        # `totals` grow: see `_sorted_names`) or is forgotten (`forget_empty` drops it).
        self._names: list[str] | None = None
        self._names_stamp = (0, 0)

    # -- changes ------------------------------------------------------------------------

    def put(self, before: Task | None, after: Task | None) -> None:
        """Records that `before` became `after` (None: created / deleted)."""
        if self.final is not None:
            self.final.put(before, after)
        if before is not None:
            self.counts[before.queue][before.state] -= 1
            if before.state.is_pending:
                self.payload_bytes -= len(before.payload)
                self.pending_total -= 1
            if before.state is State.READY:
                self._ready[before.queue].remove(before)
            elif before.state is State.LEASED:
                self.leased.discard(before.id)
            if after is None:
                self.tasks.pop(before.id, None)
                if before.idempotency_key is not None:
                    self.keys.pop((before.queue, before.idempotency_key), None)
        if after is None:
            return
        self.counts[after.queue][after.state] += 1
        if after.state.is_pending:
            self.payload_bytes += len(after.payload)
            self.pending_total += 1
        if after.idempotency_key is not None:
            self.keys[(after.queue, after.idempotency_key)] = after.id
        self.tasks[after.id] = after
        if after.state is State.READY:
            self._ready[after.queue].add(after)
        elif after.state is State.LEASED:
            self.leased.add(after.id)
            if after.lease_deadline is not None:
                heapq.heappush(self._timers, (after.lease_deadline, after.id, after.version))
        elif after.state is State.SCHEDULED and after.not_before is not None:
            heapq.heappush(self._timers, (after.not_before, after.id, after.version))

    def evict(self, task: Task) -> None:
        """Forgets a final task's record and key (it stays counted; its row lives on disk)."""
        if self.tasks.get(task.id) is task:
            del self.tasks[task.id]
            key = task.idempotency_key
            if key is not None and self.keys.get((task.queue, key)) == task.id:
                del self.keys[(task.queue, key)]

    def drop_payload(self, task_id: int) -> int:
        """Holds the task's record without its payload (its row keeps it); returns the
        payload's size. The record keeps its version: it is the same record, less the
        bytes."""
        task = self.tasks[task_id]
        size = len(task.payload)
        if size:
            self.tasks[task_id] = task.evolve(payload=b"")
            if task.state.is_pending:
                self.payload_bytes -= size
        return size

    def count_events(self, queue: str, events: dict[Event, int]) -> None:
        self.totals[queue].update(events)

    # -- queries ------------------------------------------------------------------------

    def pop_ready(self, queue: str, limit: int) -> list[Task]:
        """Removes up to `limit` READY tasks from the queue's FIFOs, in lease order."""
        ready = self._ready.get(queue)
        if not ready:
            return []
        return [self.tasks[task_id] for task_id in ready.pop(limit)]

    def restore_ready(self, queue: str, tasks: list[Task]) -> None:
        """Puts tasks just taken by `pop_ready` back at the front of the queue's FIFOs."""
        if tasks:
            self._ready[queue].restore(tasks)

    def has_ready(self, queue: str) -> bool:
        ready = self._ready.get(queue)
        return bool(ready)

    def pending(self, queue: str) -> int:
        counts = self.counts.get(queue)
        if counts is None:
            return 0
        return counts[State.SCHEDULED] + counts[State.READY] + counts[State.LEASED]

    def oldest_ready_at(self, queue: str) -> float | None:
        ready = self._ready.get(queue)
        return ready.oldest_ready_at() if ready else None

    def _timer_is_live(self, entry: tuple[float, int, int]) -> bool:
        task = self.tasks.get(entry[1])
        return task is not None and task.version == entry[2]

    def next_due(self) -> float | None:
        """The earliest timer; possibly one gone stale, earlier than the earliest live one,
        when more than STALE_POPS stale entries lead the heap: the reaper then wakes early
        and finds nothing due, and the next call drops the next STALE_POPS. (Every acked
        lease leaves a stale entry: dropping 20,000 in one go held the loop for 20-40 ms.)"""
        timers = self._timers
        for _ in range(STALE_POPS):
            if not timers or self._timer_is_live(timers[0]):
                break
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def due(self, now: float, limit: int) -> list[Task]:
        """Tasks whose lease deadline or not-before time is <= now, earliest first.

        Their timer entries are consumed: the caller applies `advance`, which gives each a
        new version (and a new timer if it is still timed).
        """
        found: list[Task] = []
        stale = 0
        while self._timers and len(found) < limit and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if self._timer_is_live(entry):
                found.append(self.tasks[entry[1]])
            else:
                stale += 1
                if stale >= STALE_POPS:
                    break  # the rest at the next step (see next_due)
        return found

    def knows(self, queue: str) -> bool:
        """Whether `queue` has (or had) tasks here, and has not been forgotten since, or is
        paused."""
        return queue in self.counts or queue in self.totals or queue in self.paused

    def pause(self, queue: str, at: float) -> bool:
        """Pauses `queue` (False: it was paused already, since its own time)."""
        if queue in self.paused:
            return False
        self.paused[queue] = at
        self._names = None  # a paused queue is listed, tasks or not
        return True

    def resume(self, queue: str) -> bool:
        if self.paused.pop(queue, None) is None:
            return False
        self._names = None
        return True

    def queue_count(self) -> int:
        return len(self._sorted_names())

    def forget_empty(
        self, limit: int, busy: Callable[[str], bool], only: Sequence[str] | None = None
    ) -> list[str]:
        """Forgets up to `limit` queues that hold no task in any state (final tasks evicted
        from `tasks` are still counted, so they keep their queue) and that `busy(queue)`
        does not claim: their counts, totals and ready FIFOs go. Returns them. Paused
        queues are kept, unless named in `only`: then only those are looked at, and a
        paused one is forgotten with its pause (see `Store.forget_empty_queues`)."""
        forgotten: list[str] = []
        names = self._sorted_names() if only is None else sorted(set(only))
        for queue in names:
            if len(forgotten) >= limit:
                break
            if not self.knows(queue) or (only is None and queue in self.paused):
                continue
            counts = self.counts.get(queue)
            if (counts is None or not any(counts.values())) and not busy(queue):
                forgotten.append(queue)
        for queue in forgotten:
            self.counts.pop(queue, None)
            self.totals.pop(queue, None)
            self._ready.pop(queue, None)
            self.paused.pop(queue, None)
        if forgotten:
            # The only place keys leave `counts` and `totals`: the size stamp cannot tell a
            # queue forgotten and another made since, so the list is rebuilt outright.
            self._names = None
        return forgotten

    def _sorted_names(self) -> list[str]:
        """Every queue known, sorted (cached; not to be changed by the caller)."""
        # Keys are added to either dict anywhere (as defaultdicts), but removed only by
        # `forget_empty`, which drops the list: between two removals the sizes only grow,
        # so they say when a queue appeared. (A pause or resume drops the list too.)
        stamp = (len(self.counts), len(self.totals))
        if self._names is None or self._names_stamp != stamp:
            self._names = sorted(self.counts.keys() | self.totals.keys() | self.paused.keys())
            self._names_stamp = stamp
        return self._names

    def queues(self, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Every queue known, in name order: those after `after`, at most `limit`."""
        names = self._sorted_names()
        start = 0 if after is None else bisect.bisect_right(names, after)
        end = len(names) if limit is None else start + limit
        return names[start:end]
