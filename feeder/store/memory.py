"""A store that keeps everything in memory and nothing on disk: for tests and benchmarks."""

from __future__ import annotations

from feeder.store.indexed import IndexedStore


class MemoryStore(IndexedStore):
    """Everything in memory, nothing durable: payloads, finished tasks and their keys
    (until the retention purge) too, so that its memory grows with the tasks it keeps."""
