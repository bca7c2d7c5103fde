"""The soak's verdict, apart from the run: is the feeder's memory flat, and did every
submitted task complete? Plain functions of the samples and the ledgers, no processes.

Memory is judged on the samples taken after the warm-up (the time the feeder needs to
reach its steady state: retention plus a janitor pass, so that tasks are purged as fast
as they finish). It is flat when both hold:

- **Peaks**: the highest RSS of the last quarter of that window is at most the highest of
  its first quarter plus a tolerance, the larger of 10% and 16 MiB. Peaks, not means: a
  leak makes new highs, while the allocator's noise (pymalloc arenas and glibc heaps
  given back or not, gRPC's buffers sized by the largest recent messages, SQLite's page
  cache) moves RSS by a few MiB either way without a trend. 16 MiB covers that noise
  for a feeder of a few tens of MiB, 10% for one that holds more (its payload budget).
- **Slope**: the least-squares slope of RSS over that window is at most 64 MiB per hour.
  That is a leak of about 37 bytes per task at 500 tasks/s; keeping what the issue is
  about (a finished task's key and index entries, about 300 bytes on the SQLite store;
  its payload, 3 KiB on average) is many times over it. The slope catches a steady
  creep that the peaks hide in noise. A fit over T hours cannot tell a slope below about
  tolerance / T from a single step of the allocator, so a short window is held to that
  larger bound instead (a 3-minute smoke run catches gross growth only; the 30-minute
  run resolves the 64 MiB/h).

RSS also swings with the janitor: finished tasks pile up for one interval (30 s), then
are purged at once. A quarter is therefore at least one such `cycle` long, so that both peaks
are tops of the sawtooth; a window shorter than two cycles gets no verdict.

Flat is not small: a feeder whose memory is set by rate x retention is flat at a steady
rate. `ceiling` (off by default) also holds every judged sample under a fixed RSS, to show
that memory follows the configuration (the payload budget) and not the traffic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MiB = 1024 * 1024
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Rules:
    """What "flat" means. `warmup`: seconds from the start that are not judged."""

    warmup: float
    tolerance: float = 0.10
    tolerance_floor: int = 16 * MiB
    max_slope: float = 64.0  # MiB per hour
    # Fewer samples than this after the warm-up: no verdict (a failure).
    min_samples: int = 8
    # Seconds of the longest regular swing of RSS (the janitor's interval).
    cycle: float = 0.0
    # Bytes no judged sample may exceed (None: no ceiling).
    ceiling: int | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    flat: bool
    reasons: tuple[str, ...]
    samples: int
    first_peak: int  # bytes: the highest RSS of the first quarter after the warm-up
    last_peak: int  # ... of the last quarter
    allowed_peak: int  # the most `last_peak` may be
    slope: float  # MiB per hour, after the warm-up
    slope_bound: float  # MiB per hour: the rule's, or what a short window can resolve
    ceiling: int | None = None

    def describe(self) -> str:
        head = f"memory: {'FLAT' if self.flat else 'NOT FLAT'} ({self.samples} samples after"
        head += " the warm-up)"
        if not self.allowed_peak:  # too little to judge: the reason says why
            return "\n".join([head, *(f"  - {reason}" for reason in self.reasons)])
        lines = [
            head,
            f"  peak RSS, first quarter {self.first_peak / MiB:.1f} MiB, last quarter"
            f" {self.last_peak / MiB:.1f} MiB (allowed {self.allowed_peak / MiB:.1f} MiB)",
            f"  slope {self.slope:+.1f} MiB/h (allowed {self.slope_bound:.1f} MiB/h)",
        ]
        if self.ceiling is not None:
            lines.append(f"  ceiling {self.ceiling / MiB:.1f} MiB")
        lines += [f"  - {reason}" for reason in self.reasons]
        return "\n".join(lines)


def slope(points: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of bytes over seconds, in bytes per second (0 for < 2 points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def _too_short(judged: Sequence[tuple[float, int]], rules: Rules) -> str | None:
    """Why `judged` is too little to judge, if it is."""
    if len(judged) < rules.min_samples:
        return (
            f"only {len(judged)} samples after the warm-up of {rules.warmup:g} s (want"
            f" {rules.min_samples}): run longer or sample more often"
        )
    span = judged[-1][0] - judged[0][0]
    if span < 2 * rules.cycle:
        return (
            f"{span:g} s judged after the warm-up, less than two cycles of"
            f" {rules.cycle:g} s: run longer"
        )
    return None


def judge(points: Sequence[tuple[float, int]], rules: Rules) -> Verdict:
    """The verdict on `points`, (seconds since the start, RSS bytes), in time order."""
    judged = [(t, v) for t, v in points if t >= rules.warmup]
    too_short = _too_short(judged, rules)
    if too_short is not None:
        return Verdict(False, (too_short,), len(judged), 0, 0, 0, 0.0, rules.max_slope)
    start, end = judged[0][0], judged[-1][0]
    quarter = max((end - start) / 4, rules.cycle)
    first_peak = max(v for t, v in judged if t <= start + quarter)
    last_peak = max(v for t, v in judged if t >= end - quarter)
    margin = max(int(first_peak * rules.tolerance), rules.tolerance_floor)
    allowed_peak = first_peak + margin
    per_hour = slope(judged) * HOUR / MiB
    # A step of `margin` is within noise; over a short window it alone fits a steep slope.
    slope_bound = max(rules.max_slope, margin / MiB / ((end - start) / HOUR))
    reasons = []
    if last_peak > allowed_peak:
        reasons.append(
            f"the last quarter's peak is {(last_peak - first_peak) / MiB:.1f} MiB above the"
            f" first quarter's (tolerance {margin / MiB:.1f} MiB)"
        )
    if per_hour > slope_bound:
        reasons.append(
            f"RSS grows {per_hour:.1f} MiB/h after the warm-up (bound {slope_bound:.1f} MiB/h)"
        )
    highest = max(v for _, v in judged)
    if rules.ceiling is not None and highest > rules.ceiling:
        reasons.append(
            f"RSS reached {highest / MiB:.1f} MiB, over the ceiling of"
            f" {rules.ceiling / MiB:.1f} MiB"
        )
    return Verdict(
        not reasons,
        tuple(reasons),
        len(judged),
        first_peak,
        last_peak,
        allowed_peak,
        per_hour,
        slope_bound,
        rules.ceiling,
    )


@dataclass(frozen=True, slots=True)
class Completion:
    """One ack the feeder answered as completing a task (ACKED or ADOPTED)."""

    task_id: str
    attempt: int


def completion_problems(
    submitted: Iterable[str], completions: Iterable[Completion], *, shown: int = 5
) -> list[str]:
    """What is wrong between the tasks the producers were told were stored and the
    completions the workers were told of: a task never completed (lost), completed for two
    attempts, or a completion of a task nobody submitted. Empty when all is well."""
    attempts: dict[str, set[int]] = defaultdict(set)
    for completion in completions:
        attempts[completion.task_id].add(completion.attempt)
    expected = set(submitted)
    problems = []
    lost = sorted(expected - attempts.keys())
    if lost:
        problems.append(f"{len(lost)} tasks submitted but never completed: {lost[:shown]}")
    twice = sorted(task for task, seen in attempts.items() if len(seen) > 1)
    if twice:
        problems.append(f"{len(twice)} tasks completed for two attempts: {twice[:shown]}")
    unknown = sorted(attempts.keys() - expected)
    if unknown:
        problems.append(f"{len(unknown)} completions of tasks not submitted: {unknown[:shown]}")
    return problems
