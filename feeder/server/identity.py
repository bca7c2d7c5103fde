"""Who the current call comes from, for the service to record with each lease.

`CALLER` holds the authenticated identity of the call being served: an API key's name or
a client certificate's identity from the access list (`feeder.server.auth` sets it around
each handler). It stays "" when the feeder runs without auth. Tasks started while serving
a call (the Consume stream's lease loop) inherit it with the call's context.
"""

from __future__ import annotations

from contextvars import ContextVar

CALLER: ContextVar[str] = ContextVar("feedwork_caller", default="")


def current_caller() -> str:
    return CALLER.get()
