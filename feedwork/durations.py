"""The one duration syntax of feedwork: the CLI, the worker's options and the feeder's
configuration all read durations with `parse_duration`, so "1h" means the same wherever
it is written (a FEEDWORK_* environment can serve every process)."""

from __future__ import annotations

import math
import re

_NUMBER = r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

SYNTAX = 'seconds, or a number with a unit: "500ms", "30s", "2m", "1h", "1d", "1h30m"'


def parse_duration(value: object) -> float:
    """Seconds from a number, or from a string like "30", "2.5", "500ms", "30s", "2m",
    "1h", "1d" or "1h30m" (units in any case). Raises `ValueError` for anything else,
    a negative or an infinite duration included."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(_NUMBER, text):
            seconds = float(text)
        elif text and _PART.sub("", text) == "":
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r} (use {SYNTAX})")
    return seconds
