"""Whether the feeder is reachable, as the worker's calls find it, logged once per change.

Every component reports each call's success or transient failure here. During an outage
the leaser, heartbeater and acker may all fail many times a second between them; the log
gets one line when the outage starts and one when it ends, not one per try.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import tenacity

from feedwork.retry import status_code
from worker.metrics import WorkerMetrics

log = logging.getLogger("feedwork.worker")


class ConnectionMonitor:
    def __init__(
        self,
        *,
        target: str,
        clock: Callable[[], float] = time.monotonic,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._target = target
        self._clock = clock
        self._metrics = metrics
        self._connected_once = False
        self._down_since: float | None = None
        self._failures = 0

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def succeeded(self) -> None:
        """A call reached the feeder."""
        if self._down_since is not None:
            outage = self._clock() - self._down_since
            if self._connected_once:
                log.info(
                    "connection to feeder %s restored after %.1f s (%d failed calls)",
                    self._target,
                    outage,
                    self._failures,
                )
            else:
                log.info("connected to feeder %s after %.1f s", self._target, outage)
            self._down_since = None
            self._failures = 0
        elif not self._connected_once:
            log.info("connected to feeder %s", self._target)
        self._connected_once = True

    def note_retry(self, call: str) -> Callable[[tenacity.RetryCallState], None]:
        """A tenacity `before_sleep` that reports each failed try of `call` here."""

        def note(state: tenacity.RetryCallState) -> None:
            if state.outcome is not None and (exc := state.outcome.exception()) is not None:
                self.failed(exc, call=call)

        return note

    def failed(self, exc: BaseException, *, call: str) -> None:
        """A call failed in a way worth retrying; it will be retried."""
        self._failures += 1
        if self._metrics is not None:
            failures = self._metrics.failures
            failures[call] = failures.get(call, 0) + 1
        if self._down_since is not None:
            log.debug("%s failed again: %s", call, _summary(exc))
            return
        self._down_since = self._clock()
        what = "connection to feeder %s lost" if self._connected_once else "feeder %s not reachable"
        log.warning(
            what + " (%s: %s); retrying until it is back", self._target, call, _summary(exc)
        )


def _summary(exc: BaseException) -> str:
    code = status_code(exc)
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return f"{code.name}: {text}" if code is not None else f"{type(exc).__name__}: {text}"
