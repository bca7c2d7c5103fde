"""How a value a client sent is quoted in the messages it gets back: as a JSON string
(double quotes, control characters escaped), which a reader of any language knows, not
Python's repr (single quotes, \\x escapes)."""

from __future__ import annotations

import json


def quoted(value: str, *, most: int = 40) -> str:
    """`value` as a JSON string literal, cut to `most` characters (then "...")."""
    shown = value if len(value) <= most else value[:most] + "..."
    return json.dumps(shown, ensure_ascii=False)
