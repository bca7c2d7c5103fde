"""Domain operations of the feeder: the state machine applied through a store, long-poll
waiters, and the background loops (reaper, janitor)."""

from feeder.service.tasks import (
    AckItem,
    AckResult,
    ExtendItem,
    ExtendResult,
    LeaseGrant,
    NackItem,
    NackResult,
    TaskService,
)

__all__ = [
    "AckItem",
    "AckResult",
    "ExtendItem",
    "ExtendResult",
    "LeaseGrant",
    "NackItem",
    "NackResult",
    "TaskService",
]
