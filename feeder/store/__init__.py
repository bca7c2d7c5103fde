"""Storage backends. Each one implements `feeder.store.base.Store` and passes the shared
conformance suite in `tests/storage/`."""

from feeder.store.base import (
    Change,
    DeadPage,
    QueueCounts,
    QueueFull,
    Store,
    StoreHooks,
    StoreUnavailable,
    Submitted,
    TooManyPending,
    TooManyQueues,
)

__all__ = [
    "Change",
    "DeadPage",
    "QueueCounts",
    "QueueFull",
    "Store",
    "StoreHooks",
    "StoreUnavailable",
    "Submitted",
    "TooManyPending",
    "TooManyQueues",
]
