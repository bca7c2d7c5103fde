"""The feeder's clock follows elapsed time, not the wall clock's steps."""

from __future__ import annotations

import logging

import pytest

from feeder.service.clock import SteadyClock


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.monotonic = 50.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds


def make() -> tuple[Clocks, SteadyClock]:
    clocks = Clocks()
    return clocks, SteadyClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)


def test_it_starts_at_the_wall_clock_and_advances_with_elapsed_time() -> None:
    clocks, clock = make()
    assert clock() == 1_000_000.0
    clocks.advance(2.5)
    assert clock() == pytest.approx(1_000_002.5)


def test_a_forward_step_of_the_wall_clock_does_not_move_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clocks, clock = make()
    clock()
    clocks.wall += 600  # +10 min
    with caplog.at_level(logging.WARNING, logger="feedwork.feeder"):
        clocks.advance(10)
        now = clock()
    assert now == pytest.approx(1_000_010.0 + 10 * 0.001)  # 10 s and at most 10 ms of lean
    assert "stepped by +600" in caplog.text
    caplog.clear()
    clocks.advance(10)
    clock()
    assert "stepped" not in caplog.text  # logged once per step


def test_a_backward_step_does_not_stop_it_or_send_it_back() -> None:
    clocks, clock = make()
    before = clock()
    clocks.wall -= 3600
    readings = []
    for _ in range(100):
        clocks.advance(0.1)
        readings.append(clock())
    assert readings == sorted(readings)
    assert readings[-1] - before == pytest.approx(10.0 - 10 * 0.001)


def test_it_converges_on_the_wall_clock_at_the_bounded_rate() -> None:
    clocks, clock = make()
    clock()
    clocks.wall += 1.0
    for _ in range(1500):
        clocks.advance(1.0)
        clock()
    assert clock() == pytest.approx(clocks.wall)  # 1 s absorbed in 1,000 s


def test_it_never_goes_back_when_the_monotonic_clock_does_not_advance() -> None:
    clocks, clock = make()
    first = clock()
    clocks.wall += 5
    assert clock() == first
