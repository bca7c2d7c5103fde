"""Handlers for the worker SDK cases (importable as bench.cases.sdk_handlers:NAME)."""

from __future__ import annotations

from worker import Task


async def noop(task: Task) -> None:
    """Does nothing: the drain measures the SDK and the feeder, not the work."""
    return None


def noop_sync(task: Task) -> None:
    """The same as a plain function (run in the worker's thread pool)."""
    return None
