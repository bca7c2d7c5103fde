"""What the service tells an observer about the work it does, for metrics.

The service calls these on the event loop, once per batch, after the change is applied;
they must be cheap and must not block. The base class ignores everything: a feeder without
metrics pays one method call per batch. `feeder.server.metrics` counts them for Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence

from feeder.core.model import AckOutcome, ExtendOutcome, NackOutcome, Task


class Observer:
    def leased(self, queue: str, tasks: Sequence[Task], now: float) -> None:
        """`tasks` of `queue` were leased at `now` (their records after the lease: each
        `ready_at` is when it became ready)."""

    def acked(self, decided: Sequence[tuple[AckOutcome, Task | None]], now: float) -> None:
        """Acks were decided at `now`: each outcome with the task's record after it (None
        when the task was not found)."""

    def nacked(self, outcomes: Sequence[NackOutcome]) -> None:
        """Nacks were decided."""

    def extended(self, outcomes: Sequence[ExtendOutcome]) -> None:
        """Extends were decided."""


IGNORED = Observer()
