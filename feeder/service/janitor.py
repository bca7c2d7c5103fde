"""The janitor: deletes completed and cancelled tasks after the retention period, then
forgets the queues left holding no task at all, in bounded batches so it never holds the
store for long."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from feeder.store.base import Store

log = logging.getLogger("feedwork.feeder.janitor")

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Sweep:
    """What one janitor step did."""

    purged: int
    forgotten: int

    @property
    def more(self) -> bool:
        """A batch was full: there may be more to do at once."""
        return self.purged >= BATCH or self.forgotten >= BATCH


class Janitor:
    def __init__(
        self, *, store: Store, clock: Callable[[], float], retention: float, interval: float = 30.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval

    async def run_once(self, now: float) -> Sweep:
        """Purges up to BATCH tasks that finished more than `retention` seconds before now;
        once the purge has caught up, forgets up to BATCH queues that hold no task (those it
        just emptied among them), so that they stop counting against --max-queues."""
        purged = await self._store.purge_finished(
            finished_before=now - self._retention, limit=BATCH
        )
        # Not while a backlog is purged: every pass looks through the queues, and the
        # queues a backlog empties are forgotten by its last pass all the same.
        forgotten = 0 if purged >= BATCH else await self._store.forget_empty_queues(BATCH)
        if forgotten:
            log.info("forgot %d queues that held no task", forgotten)
        return Sweep(purged, forgotten)

    async def run(self) -> None:
        while True:
            try:
                while (await self.run_once(self._clock())).more:
                    await asyncio.sleep(0)
            except Exception:
                log.exception("janitor pass failed; retrying later")
            await asyncio.sleep(self._interval)
