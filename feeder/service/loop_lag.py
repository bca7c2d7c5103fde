"""The event loop's lag: how late a short sleep wakes up.

Every RPC, commit callback and timer of the feeder runs on one event loop, so any piece of
work that holds the loop for 300 ms delays every other call by up to 300 ms, whatever the
call. A probe that sleeps `interval` and measures how late it wakes sees such a stall
whatever caused it, at the cost of one wake-up per interval.

A late wake-up has two possible causes, and the probe tells them apart: the loop was busy
(a piece of work held it: the loop's thread spent the time on the CPU), or the process
waited for a CPU (a loaded machine) or for the GIL (another thread). `busy` is the loop
thread's CPU time from the start of the sleep to the wake-up, so `min(lag, busy)` bounds
the part of the lag that the feeder's own work on the loop caused (from above: work done
during the sleep itself counts too, at most `interval` of it).

`LoopLagProbe.step(due, now, busy)` is the whole logic (recorded, tested with any
numbers); `run()` only sleeps and calls it. Two views are kept: the totals since start (counters for
metrics) and a window since the last `take()` (what a caller asks "since I last looked").
A stall past `stall` is logged as a warning, at most once per `warn_every` seconds; the
stalls in between are counted into the next warning rather than dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("feedwork.feeder.loop")

# Short enough that a stall of a few ms shows, long enough that the probe costs nothing
# (100 wake-ups a second, a few microseconds each).
INTERVAL = 0.01
# A lag past this is a stall: every call waited at least this long for the loop.
STALL = 0.05
WARN_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class LagStats:
    """Wake-ups of the probe over some span: how many, the worst and total lag (seconds),
    how many were stalls, and the worst lag the loop's own work caused (`worst_busy`)."""

    samples: int = 0
    worst: float = 0.0
    total: float = 0.0
    stalls: int = 0
    worst_busy: float = 0.0

    def add(self, lag: float, busy: float, *, stall: bool) -> LagStats:
        return LagStats(
            self.samples + 1,
            max(self.worst, lag),
            self.total + lag,
            self.stalls + stall,
            max(self.worst_busy, busy),
        )


class LoopLagProbe:
    """Measures how late the event loop runs a timer. Construct, then run `run()` as a task
    on the loop to watch; read `totals`, `window` or `take()` from the same loop."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
        interval: float = INTERVAL,
        stall: float = STALL,
        warn_every: float = WARN_EVERY,
    ) -> None:
        if interval <= 0 or stall <= 0:
            raise ValueError("interval and stall must be positive")
        self._clock = clock
        self._cpu_clock = cpu_clock
        self.interval = interval
        self.stall = stall
        self._warn_every = warn_every
        self.totals = LagStats()
        self.window = LagStats()
        # Stalls not named in a warning yet, and when the last warning went out.
        self._unreported = LagStats()
        self._warned_at: float | None = None

    def step(self, due: float, now: float, busy: float | None = None) -> float:
        """Records a wake-up at `now` of a sleep that was due to end at `due`, the loop's
        thread having spent `busy` seconds of CPU meanwhile (None: not measured, all of the
        lag counts as busy); returns the lag (never below 0: a timer may fire a hair early
        on a coarse clock)."""
        lag = max(0.0, now - due)
        own = lag if busy is None else min(lag, max(0.0, busy))
        stall = lag > self.stall
        self.totals = self.totals.add(lag, own, stall=stall)
        self.window = self.window.add(lag, own, stall=stall)
        if stall:
            self._unreported = self._unreported.add(lag, own, stall=True)
        if self._unreported.stalls and (
            self._warned_at is None or now - self._warned_at >= self._warn_every
        ):
            self._warn(now)
        return lag

    def _warn(self, now: float) -> None:
        stalls = self._unreported
        log.warning(
            "the event loop stalled: %d times over %.0f ms since the last warning, the worst"
            " %.0f ms (the loop's own work: %.0f ms; the rest waiting for a CPU or the GIL);"
            " every call in flight waited that long (see OPERATIONS.md, event loop lag)",
            stalls.stalls,
            self.stall * 1000,
            stalls.worst * 1000,
            stalls.worst_busy * 1000,
        )
        self._unreported = LagStats()
        self._warned_at = now

    def take(self) -> LagStats:
        """The window since the last `take()` (or the start); starts a new one."""
        window, self.window = self.window, LagStats()
        return window

    async def run(self) -> None:
        """Sleeps `interval` and records how late it woke, until cancelled."""
        clock, cpu_clock, interval = self._clock, self._cpu_clock, self.interval
        while True:
            due, cpu = clock() + interval, cpu_clock()
            await asyncio.sleep(interval)
            self.step(due, clock(), cpu_clock() - cpu)
