"""Child processes of tests die with the test process.

A test that crashes (or is killed) skips its fixtures' teardown; without this, the feeders
and workers it started would live on, holding ports and databases. util-linux `setpriv`
sets PR_SET_PDEATHSIG (SIGKILL when the thread that started the child exits) and then
execs the command; a preexec_fn would need a fork of a process that runs gRPC threads.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv`, prefixed so that the child gets SIGKILL when the test process dies."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]
