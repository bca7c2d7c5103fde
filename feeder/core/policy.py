"""Per-queue settings and the retry backoff they imply."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Settings of one queue. Durations are in seconds."""

    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    lease_duration: float = 30.0
    max_depth: int = 1_000_000

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.backoff_base <= self.backoff_cap:
            raise ValueError("backoff_base must be positive and at most backoff_cap")
        if not 1 <= self.lease_duration <= 12 * 3600:
            raise ValueError("lease_duration must be between 1 s and 12 h")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1")

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Delay before retry number `failures` (1-based): exponential, capped, jittered.

        "Equal jitter": half the delay is fixed and half is random, so retries of tasks that
        failed together spread out without any retry coming sooner than half the step.
        """
        exponent = min(max(failures - 1, 0), 62)
        step = min(self.backoff_cap, self.backoff_base * (2.0**exponent))
        return step / 2 + rng.uniform(0, step / 2)
