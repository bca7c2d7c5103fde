"""The feeder's clock: wall-clock seconds that advance with elapsed time.

Every deadline the feeder decides (a lease's, a retry's backoff, a delayed task's ready
time) is a wall-clock time, because it is stored and must mean the same after a restart
and to the other feeders on a shared database. But a running feeder must not follow the
wall clock's steps: a +10 min step would expire every healthy lease at once, a -1 h step
would keep a dead worker's lease for an hour. So the wall clock only anchors this clock;
from then on it advances with the monotonic clock (which follows NTP's rate corrections,
not its steps), and leans toward the wall clock by at most `max_slew` seconds per
elapsed second, so a feeder started with a wrong wall clock, or stepped later, converges
slowly (0.1%: a 10 min step is absorbed in about 7 days, and meanwhile a 5 min lease lasts
5 min +-0.3 s) instead of jumping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("feedwork.feeder")

MAX_SLEW = 0.001
# A change of the wall clock's distance from this clock by more than this between two
# readings is a step, and logged.
STEP = 1.0


class SteadyClock:
    """Callable: seconds since the epoch, never stepping, never going back."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_slew: float = MAX_SLEW,
    ) -> None:
        if not 0.0 <= max_slew < 1.0:
            raise ValueError("max_slew must be at least 0 and below 1")
        self._wall = wall
        self._monotonic = monotonic
        self._max_slew = max_slew
        self._last_monotonic = monotonic()
        self._now = wall()
        self._gap = 0.0  # the wall clock's distance at the last reading
        # Read from the writer thread too (sync=full commits); the update is short.
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            monotonic = self._monotonic()
            elapsed = monotonic - self._last_monotonic
            if elapsed <= 0.0:
                return self._now
            self._last_monotonic = monotonic
            steady = self._now + elapsed
            # Toward the wall clock, by at most max_slew per elapsed second.
            gap = self._wall() - steady
            if abs(gap - self._gap) > STEP:
                log.warning(
                    "the wall clock stepped by %+.3f s: leases and timers follow elapsed "
                    "time, and lean toward the wall clock by at most %g s per second",
                    gap - self._gap,
                    self._max_slew,
                )
            lean = elapsed * self._max_slew
            self._now = steady + min(max(gap, -lean), lean)
            self._gap = gap - (self._now - steady)
            return self._now

    @property
    def offset(self) -> float:
        """How far this clock is behind (+) or ahead (-) of the wall clock now."""
        return self._wall() - self()
