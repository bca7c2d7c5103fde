"""Child processes for local runs (the demo, acceptance tests): a feeder and workers.

Children start in their own session, so a Ctrl-C at the terminal reaches only the parent,
which then stops them in order (SIGTERM, a grace period, SIGKILL) instead of leaving
each to print its own traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The project root, so that children import this checkout even when it is not installed.
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass
class Child:
    name: str
    group: str
    process: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ChildProcesses:
    """Starts Python modules as children, logs each to `<log_dir>/<name>.log`, and
    stops them all on `stop_all()` (or on leaving the `with` block).

    Children belong to groups (e.g. "feeder", "workers"); `stop_all` stops the groups in
    the reverse order they were started, so workers can still ack and give back their
    tasks to the feeder before it goes away.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}

    def start_module(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        *,
        group: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Runs `python -m module args...` with this interpreter."""
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            path for path in (_PROJECT_ROOT, child_env.get("PYTHONPATH")) if path
        )
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(env or {})
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,
            )
        child = Child(name=name, group=group or name, process=process, log_path=log_path)
        self.children[name] = child
        return child

    def kill(self, name: str) -> None:
        """SIGKILL: no goodbye, no release of leases (what a crash looks like)."""
        child = self.children[name]
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()
        child.killed = True

    def stop(self, names: Sequence[str], grace: float = 5.0) -> None:
        """SIGTERM the named children, then SIGKILL those still running after `grace`."""
        running = [self.children[name] for name in names if self.children[name].alive()]
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def stop_all(self, grace: float = 5.0) -> None:
        groups = list(dict.fromkeys(child.group for child in self.children.values()))
        for group in reversed(groups):
            self.stop([c.name for c in self.children.values() if c.group == group], grace)

    def __enter__(self) -> ChildProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
