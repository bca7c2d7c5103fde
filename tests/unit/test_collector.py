"""The feeder process's garbage-collection schedule."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from feeder.server.collector import scheduled_full_collections


async def test_full_collections_run_on_the_timer_only_and_thresholds_come_back() -> None:
    before = gc.get_threshold()
    full: list[int] = []

    def observe(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(1)

    gc.callbacks.append(observe)
    try:
        async with scheduled_full_collections(interval=0.05):
            threshold = gc.get_threshold()
            assert threshold[:2] == before[:2]
            assert threshold[2] >= 1_000_000  # never started by allocations
            # Enough new long-lived objects that CPython would start a full collection.
            kept = [[] for _ in range(1_000_000)]
            assert full == []
            del kept
            await asyncio.sleep(0.3)
            assert len(full) >= 2  # the timer's
        assert gc.get_threshold() == before
    finally:
        gc.callbacks.remove(observe)
