"""What a handler sees: the `Task` it is given, and the `Retry` and `Fail` signals it may raise."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Guards the lazy creation of `Task.cancelled` (the handler's thread and the event loop may
# both ask for it first).
_EVENT_LOCK = threading.Lock()


@dataclass(eq=False, kw_only=True, slots=True)
class Task:
    """One leased task, handed to the handler.

    `cancelled` is set when the worker stops caring about the result: the lease was lost,
    the task was cancelled or completed elsewhere, the time limit passed, or the worker is
    shutting down (`cancel_reason` says which). Async handlers are also cancelled outright;
    sync handlers should check `cancelled.is_set()` (or `cancelled.wait(...)`) in long work.
    """

    id: str
    queue: str
    payload: bytes
    headers: Mapping[str, str]
    # 1-based: a value above 1 means an earlier attempt failed, expired or was released.
    attempt: int
    # Failures allowed before the task is dead.
    max_attempts: int
    priority: int = 0
    # time.monotonic() value at which the worker's time limit (--task-timeout) runs out;
    # None without a limit.
    deadline: float | None = None
    cancel_reason: str | None = None
    lease_token: str = field(default="", repr=False)
    _on_cancel: Callable[[], object] | None = field(default=None, init=False, repr=False)
    # Made on first use: most tasks finish without anyone asking (a threading.Event costs
    # more to create than the rest of the task).
    _cancelled: threading.Event | None = field(default=None, init=False, repr=False)

    @property
    def cancelled(self) -> threading.Event:
        """Set when the worker stops caring about the result (see the class docstring)."""
        event = self._cancelled
        if event is None:
            with _EVENT_LOCK:
                if self._cancelled is None:
                    self._cancelled = threading.Event()
                event = self._cancelled
        return event

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure now makes the task dead (unless the feeder's count differs
        because of expiries it has seen that this attempt number does not show)."""
        return self.max_attempts > 0 and self.attempt >= self.max_attempts

    def cancel(self, reason: str) -> None:
        """Tells the handler to stop. Called by the worker, on its event loop thread."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self.cancelled.set()
        if self._on_cancel is not None:
            self._on_cancel()


class Retry(Exception):
    """Raise to fail this attempt and ask for the next one no sooner than `after` seconds
    (None: the queue's backoff). Chaining (`raise Retry(after=5) from exc`) keeps the cause
    in the error recorded with the task."""

    def __init__(self, message: str = "", *, after: float | None = None) -> None:
        super().__init__(message)
        if after is not None and after < 0:
            raise ValueError("Retry(after=...) must not be negative")
        self.after = after


class Fail(Exception):
    """Raise to fail the task for good: it goes dead at once, whatever attempts are left."""


def task_fields(task: Task) -> dict[str, object]:
    """The fields of a log line about `task` (`extra=`): JSON logs show them."""
    return {"task_id": task.id, "queue": task.queue, "attempt": task.attempt}
