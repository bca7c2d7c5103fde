"""Storage backends. Each one implements `feeder.store.base.Store` and passes the shared
conformance suite in `tests/storage/`."""

from feeder.store.base import (
    Change,
    LeaseHolder,
    QueueCounts,
    QueueFull,
    Store,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TaskPage,
    TooManyPending,
    TooManyQueues,
)

__all__ = [
    "Change",
    "LeaseHolder",
    "QueueCounts",
    "QueueFull",
    "Store",
    "StoreHooks",
    "StoreUnavailable",
    "Submitted",
    "TaskPage",
    "TooManyPending",
    "TooManyQueues",
]
