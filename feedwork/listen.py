"""The addresses servers listen on (the feeder's gRPC port, the metrics endpoints):
HOST:PORT, with an IPv6 host in brackets ([::1]:9100); port 0 picks a free one."""

from __future__ import annotations

import re

_LISTEN = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):([0-9]{1,5})")


def parse_listen(value: object) -> str:
    """`value` stripped if it is HOST:PORT, else ValueError saying what is wanted."""
    match = _LISTEN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match[2]) > 65535:
        raise ValueError(f"invalid address {value!r} (want HOST:PORT, e.g. 127.0.0.1:50051)")
    return str(value).strip()
