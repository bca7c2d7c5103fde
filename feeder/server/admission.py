"""Admission control: the work a feeder holds at once is bounded, and a call past the bound
is refused at once, explicitly, instead of queueing without end.

Work is counted in items (a task of a Submit, an item of an Ack, Nack or Extend, 1 for any
other call) and in request bytes, while the call runs. A call that would take either count
past its limit is answered UNAVAILABLE with a message saying the feeder is overloaded;
every feedwork client retries UNAVAILABLE with backoff (on the next feeder when it has
several), and nothing of a refused call was applied, so the retry is safe. A call alone
is always admitted, however large, so no call can be refused for ever.

New work yields first: Submits are admitted up to the limits, every other call (acks,
nacks, extends, reads) up to twice the limits, so that under a flood of submits the
workers still settle what they hold and an operator can still look.

Not counted: Lease calls (a long poll waits idle for up to 30 s; what it claims is
bounded by its max_tasks) and Consume streams (bounded per stream by their credits and
unanswered reports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("feedwork.feeder.rpc")

# Overload is logged at most this often (a burst refuses thousands of calls a second).
LOG_EVERY = 10.0


class Overloaded(Exception):
    """The call would take the feeder past its bound on work in flight."""


@dataclass(slots=True)
class Admission:
    """Counts the work in flight; `enter` admits a call or raises `Overloaded`."""

    max_items: int
    max_bytes: int
    items: int = 0
    bytes: int = 0
    calls: int = 0
    refused: int = 0
    _logged_at: float = float("-inf")

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.max_bytes < 1:
            raise ValueError("admission limits must be positive")

    def enter(self, items: int, size: int, now: float, *, new_work: bool = False) -> None:
        """Admits a call of `items` and `size` bytes, or raises `Overloaded`. `new_work`
        (Submits) stops at the limits; other calls at twice the limits."""
        share = 1 if new_work else 2
        if self.calls and (
            self.items + items > share * self.max_items
            or self.bytes + size > share * self.max_bytes
        ):
            self.refused += 1
            if now - self._logged_at >= LOG_EVERY:
                self._logged_at = now
                log.warning(
                    "overloaded: refusing calls (%d items, %d bytes in flight; limits %d "
                    "items, %d bytes; %d refused so far)",
                    self.items,
                    self.bytes,
                    self.max_items,
                    self.max_bytes,
                    self.refused,
                )
            raise Overloaded(
                f"the feeder is overloaded ({self.items} items and {self.bytes} bytes of "
                f"requests in flight; limits {self.max_items} and {self.max_bytes}): "
                "retry with backoff"
            )
        self.calls += 1
        self.items += items
        self.bytes += size

    def leave(self, items: int, size: int) -> None:
        self.calls -= 1
        self.items -= items
        self.bytes -= size
