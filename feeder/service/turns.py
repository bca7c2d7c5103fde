"""Long work split over event-loop turns.

Every call of a feeder is served on one event loop, so work done in one go holds up every
other call for as long as it takes: a batch of 1000 items converted, verified or decided
item by item takes 2-20 ms, a page of 10,000 queue counts over 100 ms (measured with
`python -m bench.loop_stall`, see docs/PERFORMANCE.md). Such work goes in slices, and the
loop serves whatever else is ready between two of them: no single piece of work holds it
for more than a few milliseconds, and a small request (one slice) pays nothing.

Only work whose parts are independent is sliced: what a store applies as one transaction
(a submit batch, an apply) stays whole, and is bounded by the batch limits instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

T = TypeVar("T")

# Items of the cheap kinds (a token verified, a result converted: 1-5 us each) per slice.
SLICE = 256


async def next_turn() -> None:
    """Lets the loop run every callback that is ready before going on."""
    await asyncio.sleep(0)


async def in_slices(items: Sequence[T], size: int = SLICE) -> AsyncIterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`, the loop served before each when
    there are several (so the first is not added to whatever ran before it), and never
    when there is one."""
    if size < 1:
        raise ValueError("size must be at least 1")
    several = len(items) > size
    for start in range(0, len(items), size):
        if several:
            await next_turn()
        yield items[start : start + size]
