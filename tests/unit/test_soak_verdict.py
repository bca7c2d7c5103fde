"""The soak's verdict (tests/soak/verdict.py) on made-up RSS series: flat ones pass, growing
ones fail for the reason that shows the growth, and a run too short to tell fails too."""

from __future__ import annotations

import random

import pytest

from tests.soak.verdict import (
    HOUR,
    Completion,
    MiB,
    Rules,
    completion_problems,
    judge,
    slope,
)

WARMUP = 180.0
JANITOR = 30.0
RULES = Rules(warmup=WARMUP, cycle=JANITOR)


def series(
    minutes: float = 30,
    *,
    base: float = 100 * MiB,
    growth_per_hour: float = 0.0,
    noise: float = 3 * MiB,
    every: float = 5.0,
    seed: int = 1,
) -> list[tuple[float, int]]:
    """RSS every `every` s: a base, the janitor's 30 s sawtooth (8 MiB), random noise,
    and a steady growth per hour from the start."""
    rng = random.Random(seed)
    points = []
    for step in range(int(minutes * 60 / every) + 1):
        t = step * every
        sawtooth = 8 * MiB * ((t % JANITOR) / JANITOR)
        value = base + sawtooth + rng.uniform(-noise, noise) + growth_per_hour * t / HOUR
        points.append((t, int(value)))
    return points


def test_a_flat_noisy_series_is_flat() -> None:
    verdict = judge(series(), RULES)
    assert verdict.flat, verdict.describe()
    assert verdict.samples == 30 * 12 + 1 - WARMUP / 5
    assert abs(verdict.slope) < 16
    assert verdict.slope_bound == RULES.max_slope


def test_growth_during_the_warm_up_only_is_not_judged() -> None:
    points = [(t, v + int(min(t, WARMUP) / WARMUP * 200 * MiB)) for t, v in series()]
    assert judge(points, RULES).flat
    assert not judge(points, Rules(warmup=0, cycle=JANITOR)).flat


def test_steady_growth_fails_on_both_counts() -> None:
    # 40 bytes a task at 500 tasks/s, about 69 MiB an hour.
    verdict = judge(series(growth_per_hour=40 * 500 * HOUR / MiB * MiB), RULES)
    assert not verdict.flat
    assert len(verdict.reasons) == 2, verdict.describe()
    assert "last quarter's peak" in verdict.reasons[0]
    assert "MiB/h" in verdict.reasons[1]
    assert verdict.slope == pytest.approx(40 * 500 * HOUR / MiB, rel=0.1)


def test_a_creep_that_the_peaks_hide_in_noise_fails_on_the_slope() -> None:
    points = series(growth_per_hour=80 * MiB)
    # A spike early in the judged window lifts the first quarter's peak.
    points = [(t, v + 30 * MiB if t == WARMUP + 60 else v) for t, v in points]
    verdict = judge(points, RULES)
    assert verdict.last_peak <= verdict.allowed_peak
    assert not verdict.flat
    assert verdict.reasons == (verdict.reasons[0],) and "MiB/h" in verdict.reasons[0]


def test_a_late_step_fails_on_the_peaks() -> None:
    points = [(t, v + 40 * MiB if t > 27 * 60 else v) for t, v in series()]
    verdict = judge(points, RULES)
    assert not verdict.flat
    assert any("last quarter's peak" in reason for reason in verdict.reasons)


def test_the_tolerance_is_a_fraction_of_a_large_feeder() -> None:
    big = series(base=1024 * MiB)
    stepped = [(t, v + 50 * MiB if t > 27 * 60 else v) for t, v in big]
    assert judge(stepped, RULES).flat  # 50 MiB is within 10% of 1 GiB
    assert not judge(stepped, Rules(warmup=WARMUP, cycle=JANITOR, tolerance=0.01)).flat


def test_a_short_window_is_held_to_the_slope_it_can_resolve() -> None:
    rules = Rules(warmup=90, cycle=JANITOR)
    verdict = judge(series(minutes=3), rules)
    assert verdict.flat, verdict.describe()
    assert verdict.slope_bound == pytest.approx(16 / (90 / HOUR))
    # Gross growth still shows in a short run: a payload of 3 KiB a task, 500 tasks/s.
    assert not judge(series(minutes=3, growth_per_hour=3 * 1024 * 500 * HOUR), rules).flat


def test_each_quarter_is_at_least_a_janitor_cycle_long() -> None:
    # RSS tops out 5 s before each purge. Quarters of a 90 s window are 22.5 s: the first
    # holds no top, the last holds one; cycle-long ones hold a top each.
    points = [(float(t), (100 + (30 if t % 30 == 25 else 0)) * MiB) for t in range(0, 181, 5)]
    assert judge(points, Rules(warmup=90, cycle=JANITOR)).flat
    assert not judge(points, Rules(warmup=90)).flat


def test_too_little_after_the_warm_up_is_no_verdict() -> None:
    few = judge(series(minutes=4), Rules(warmup=200, cycle=JANITOR, min_samples=10))
    assert not few.flat and "samples" in few.reasons[0]
    short = judge(series(minutes=4), Rules(warmup=200, cycle=JANITOR, min_samples=2))
    assert not short.flat and "cycles" in short.reasons[0]


def test_a_ceiling_fails_a_flat_series_above_it() -> None:
    assert judge(series(), Rules(warmup=WARMUP, cycle=JANITOR, ceiling=200 * MiB)).flat
    verdict = judge(series(), Rules(warmup=WARMUP, cycle=JANITOR, ceiling=64 * MiB))
    assert not verdict.flat and "ceiling" in verdict.reasons[0]


def test_slope_of_a_line() -> None:
    assert slope([(t, 7 + 3 * int(t)) for t in range(10)]) == pytest.approx(3.0)
    assert slope([(1.0, 5)]) == 0.0


def test_completions_match_the_submitted_tasks() -> None:
    done = [Completion("1", 1), Completion("2", 2), Completion("2", 2)]
    assert completion_problems(["1", "2"], done) == []
    problems = completion_problems(["1", "2", "3"], [*done, Completion("1", 2)])
    assert problems[0].startswith("1 tasks submitted but never completed: ['3']")
    assert problems[1].startswith("1 tasks completed for two attempts: ['1']")
    assert completion_problems(["1"], done) == ["1 completions of tasks not submitted: ['2']"]
