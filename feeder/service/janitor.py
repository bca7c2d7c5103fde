"""The janitor: deletes completed and cancelled tasks after the retention period, in
bounded batches so it never holds the store for long."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from feeder.store.base import Store

log = logging.getLogger("feedwork.feeder.janitor")

BATCH = 1000


class Janitor:
    def __init__(
        self, *, store: Store, clock: Callable[[], float], retention: float, interval: float = 30.0
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval

    async def run_once(self, now: float) -> int:
        """Purges up to BATCH tasks that finished more than `retention` seconds before now."""
        return await self._store.purge_finished(finished_before=now - self._retention, limit=BATCH)

    async def run(self) -> None:
        while True:
            try:
                while await self.run_once(self._clock()) >= BATCH:
                    await asyncio.sleep(0)
            except Exception:
                log.exception("retention purge failed; retrying later")
            await asyncio.sleep(self._interval)
