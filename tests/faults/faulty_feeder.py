"""`python -m tests.faults.faulty_feeder [python -m feeder's flags]`: the real feeder, on a
SQLite store with a fault of the test's choosing, set in the environment:

- FAULTY_FEEDER_DISK_FULL=PATH: every commit fails as on a full disk (SQLITE_FULL at
  COMMIT, see tests/faults/enospc.py) while the file PATH exists;
- FAULTY_FEEDER_DROP_ACKS=1: a broken store, to show that the audit catches one: it answers
  acks (ACKED, the task COMPLETED in memory) but never writes a completion to disk, so a
  restart forgets them and the tasks run, and complete, again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from feeder.__main__ import build_parser
from feeder.config import load_settings
from feeder.core.model import State
from feeder.server.app import serve
from feeder.store.sqlite import SqliteStore
from tests.faults.enospc import FullDisk, SqliteStoreOnAFillingDisk

DISK_FULL_ENV = "FAULTY_FEEDER_DISK_FULL"
DROP_ACKS_ENV = "FAULTY_FEEDER_DROP_ACKS"


class CompletionsNeverWritten(SqliteStore):
    """Completions are applied in memory and answered, but never made durable."""

    async def _persist_changes(self, changes: Any, events: Any) -> None:
        kept = [c for c in changes if c.after is None or c.after.state is not State.COMPLETED]
        await super()._persist_changes(kept, events)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings(vars(build_parser("faulty_feeder").parse_args(argv)))
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    store: SqliteStore
    if os.environ.get(DISK_FULL_ENV):
        disk = FullDisk(flag=Path(os.environ[DISK_FULL_ENV]))
        store = SqliteStoreOnAFillingDisk(settings.db, disk=disk, sync=settings.sync)
    elif os.environ.get(DROP_ACKS_ENV):
        store = CompletionsNeverWritten(settings.db, sync=settings.sync)
    else:
        store = SqliteStore(settings.db, sync=settings.sync)
    asyncio.run(serve(settings, store=store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
