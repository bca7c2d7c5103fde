"""The event-loop lag probe: its step records lag, stalls and windows from the times it is
given, and warns about stalls at most once per `warn_every` without losing count."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from feeder.service.loop_lag import LagStats, LoopLagProbe


def probe(**kwargs: float) -> LoopLagProbe:
    return LoopLagProbe(interval=0.01, stall=0.05, warn_every=10.0, **kwargs)


def test_step_records_how_late_the_wake_up_was() -> None:
    p = probe()
    assert p.step(100.0, 100.003) == pytest.approx(0.003)
    assert p.step(100.013, 100.093) == pytest.approx(0.08)
    # A timer that fires a hair early is no lag, not a negative one.
    assert p.step(100.103, 100.1025) == 0.0
    assert p.totals.samples == 3
    assert p.totals.worst == pytest.approx(0.08)
    assert p.totals.total == pytest.approx(0.083)
    assert p.totals.stalls == 1


def test_take_starts_a_new_window_and_keeps_the_totals() -> None:
    p = probe()
    p.step(0.0, 0.2)
    first = p.take()
    assert first.samples == 1 and first.stalls == 1
    assert first.worst == pytest.approx(0.2)
    p.step(1.0, 1.001)
    second = p.take()
    assert second.samples == 1 and second.stalls == 0
    assert second.worst == pytest.approx(0.001)
    assert p.take() == LagStats()
    assert p.totals.samples == 2 and p.totals.stalls == 1
    assert p.totals.worst == pytest.approx(0.2)


def test_busy_tells_the_loops_own_work_from_waiting_for_a_cpu() -> None:
    p = probe()
    p.step(0.0, 0.2, busy=0.21)  # the loop's thread was on the CPU all along: its own work
    assert p.window.worst_busy == pytest.approx(0.2)  # at most the lag
    p.step(1.0, 1.3, busy=0.004)  # the process waited for a CPU most of the time
    stats = p.take()
    assert stats.worst == pytest.approx(0.3)
    assert stats.worst_busy == pytest.approx(0.2)
    assert stats.stalls == 2
    p.step(2.0, 2.001, busy=-0.5)  # a CPU clock read off another thread: never below 0
    assert p.take().worst_busy == 0.0


def test_a_lag_at_the_threshold_is_not_a_stall() -> None:
    p = probe()
    p.step(0.0, 0.05)
    assert p.totals.stalls == 0
    p.step(1.0, 1.0501)
    assert p.totals.stalls == 1


def test_stalls_are_warned_about_at_most_once_per_period_and_all_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="feedwork.feeder.loop")
    p = probe()
    p.step(0.0, 0.3)  # the first stall: warned at once
    assert len(caplog.records) == 1
    assert "1 times over 50 ms" in caplog.records[0].getMessage()
    assert "worst 300 ms (the loop's own work: 300 ms" in caplog.records[0].getMessage()
    p.step(1.0, 1.1)
    p.step(2.0, 2.7)
    p.step(3.0, 3.001)
    assert len(caplog.records) == 1  # within the period: counted, not logged
    # The period is over: the next wake-up reports both, though it is no stall itself.
    p.step(10.5, 10.501)
    assert len(caplog.records) == 2
    message = caplog.records[1].getMessage()
    assert "2 times over 50 ms" in message and "worst 700 ms" in message
    # Nothing new: nothing more is said.
    p.step(30.0, 30.001)
    assert len(caplog.records) == 2


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoopLagProbe(interval=0)
    with pytest.raises(ValueError):
        LoopLagProbe(stall=-1.0)


async def test_run_sees_a_blocked_loop() -> None:
    p = LoopLagProbe(interval=0.005, stall=0.05, warn_every=10.0)
    running = asyncio.create_task(p.run())
    try:
        await asyncio.sleep(0.02)
        time.sleep(0.12)  # noqa: ASYNC251 (holds the loop: the probe's sleep cannot end)
        await asyncio.sleep(0.02)
    finally:
        running.cancel()
    assert p.totals.samples >= 2
    assert p.totals.stalls >= 1
    assert p.totals.worst >= 0.1
    # time.sleep holds the loop without using the CPU: not the loop's own work.
    assert p.totals.worst_busy < 0.1


async def test_run_counts_a_busy_loop_as_its_own_work() -> None:
    p = LoopLagProbe(interval=0.005, stall=0.05, warn_every=10.0)
    running = asyncio.create_task(p.run())
    try:
        await asyncio.sleep(0.02)
        spin_until = time.thread_time() + 0.12
        while time.thread_time() < spin_until:
            pass  # CPU work on the loop's thread, as a long request would do
        await asyncio.sleep(0.02)
    finally:
        running.cancel()
    assert p.totals.worst_busy >= 0.1
