"""Where a store that keeps its final tasks only in memory (the memory store) finds them
without a scan: dead tasks by queue in id order (ListDeadTasks, redrive, purge), completed
and cancelled tasks by the time they finished (the janitor's retention purge).

A scan of every task held the event loop for the whole walk: 10-20 ms per call at 100,000
tasks, for every page of dead tasks and every janitor step. Here a page costs its own size
(plus a sort of the queue's dead ids after they changed) and a purge step its batch.

Fed by `TaskIndex.put` with every change; a store whose final tasks live on disk (SQLite)
reads them there and does not keep this.
"""

from __future__ import annotations

import bisect
import heapq

from feeder.core.model import State, Task


class FinalTasks:
    def __init__(self) -> None:
        self._dead: dict[str, set[int]] = {}
        # Each queue's dead ids sorted, made when a page is asked for after a change.
        self._dead_sorted: dict[str, list[int]] = {}
        # (finished_at, task id) of completed and cancelled tasks (`is_final`: what the
        # retention purge deletes; dead ones wait for an operator), earliest first. Entries of
        # tasks deleted or changed since are dropped when they come up (see `finished`).
        self._finished: list[tuple[float, int]] = []

    def put(self, before: Task | None, after: Task | None) -> None:
        """Records that `before` became `after` (None: created / deleted)."""
        was_dead = before is not None and before.state is State.DEAD
        is_dead = after is not None and after.state is State.DEAD
        if was_dead and not is_dead:
            assert before is not None
            dead = self._dead.get(before.queue)
            if dead is not None:
                dead.discard(before.id)
                self._dead_sorted.pop(before.queue, None)
        if after is None:
            return
        if is_dead:
            if not was_dead:
                self._dead.setdefault(after.queue, set()).add(after.id)
                self._dead_sorted.pop(after.queue, None)
        elif after.state.is_final and after.finished_at is not None:
            # Every record of one: an entry `finished` took for a delete that then lost its
            # guard comes back here with the change that won.
            heapq.heappush(self._finished, (after.finished_at, after.id))

    def dead_after(self, queue: str, after_id: int | None, limit: int) -> list[int]:
        """Up to `limit` ids of the queue's dead tasks, in id order, after `after_id`."""
        ids = self._dead_sorted.get(queue)
        if ids is None:
            ids = self._dead_sorted[queue] = sorted(self._dead.get(queue, ()))
        start = 0 if after_id is None else bisect.bisect_right(ids, after_id)
        return ids[start : start + limit]

    def finished(self, before: float, limit: int, tasks: dict[int, Task]) -> list[Task]:
        """Up to `limit` of the `tasks` that are completed or cancelled and finished before
        `before`, earliest first. They are taken off the order: the caller deletes them,
        and one that changes instead comes back through `put` if it is still final."""
        found: dict[int, Task] = {}
        heap = self._finished
        while heap and heap[0][0] < before and len(found) < limit:
            finished_at, task_id = heapq.heappop(heap)
            task = tasks.get(task_id)
            if task is not None and task.state.is_final and task.finished_at == finished_at:
                found[task_id] = task
        return list(found.values())
