"""The case registry. A case module defines one or more :class:`bench.core.Case` subclasses.

To add a case (e.g. the feedwork feeder), add its module name to ``MODULES``; the run
order follows this list. A module that fails to import (a missing client library) is
reported as SKIPPED rather than stopping the run.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from bench.core import Case

MODULES: tuple[str, ...] = (
    "floor",
    "redis_streams",
    "nats_jetstream",
    "postgres_skip_locked",
    "feedwork",
    "feedwork_node",
    "feedwork_pg",
)


@dataclass(frozen=True)
class Unavailable:
    """A case module that could not be imported."""

    module: str
    reason: str

    @property
    def name(self) -> str:
        return self.module.replace("_", "-")


def load_cases() -> list[type[Case] | Unavailable]:
    cases: list[type[Case] | Unavailable] = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ImportError as exc:
            cases.append(Unavailable(module_name, f"cannot import {module_name}: {exc}"))
            continue
        found = [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj)
            and issubclass(obj, Case)
            and obj is not Case
            and not inspect.isabstract(obj)
            and obj.__module__ == module.__name__
        ]
        if not found:
            raise RuntimeError(f"{module.__name__} defines no Case subclass")
        cases.extend(found)  # in definition order
    return cases
