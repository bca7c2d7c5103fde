"""The Node.js SDK (clients/node) for tests that run Node processes: built when missing or
stale, else a clear failure.

    sdk = ensure_built()          # NodeSdkError if node is missing or the build fails
    subprocess.run([sdk.node, str(sdk.cli), "--help"])

The SDK is TypeScript compiled to clients/node/dist (git-ignored). It is stale when a file
it is built from (clients/node/src, package.json, package-lock.json, tsconfig.json, the
proto) is newer than its compiled output; then `npm ci` (only when node_modules is missing
or older than package-lock.json) and `npm run build` run in clients/node, as `make
node-sdk` does. Concurrent sessions take a lock, so two never build at once. Tests that
need the SDK fail, they do not skip, when it cannot be had: a missing SDK must not pass
for a green run. The `node_sdk` fixture (tests/conftest.py) does this once per session.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "clients" / "node"
SRC = NODE_DIR / "src"
DIST = NODE_DIR / "dist"
PROTO = ROOT / "protos" / "feedwork" / "v1" / "feeder.proto"
MIN_NODE = 20  # package.json "engines"
HOW_TO_BUILD = "run `make node-sdk` (npm ci and npm run build in clients/node)"


class NodeSdkError(Exception):
    """Node.js or the SDK cannot be had; the message says what to do."""


@dataclass(frozen=True)
class NodeSdk:
    node: str  # the node executable
    dist: Path

    @property
    def index(self) -> Path:
        """The package's entry point: require() it for FeederClient, Worker, ..."""
        return self.dist / "index.js"

    @property
    def cli(self) -> Path:
        """feedwork-node-worker."""
        return self.dist / "cli.js"


def find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise NodeSdkError(
            f"node is not on PATH: install Node.js {MIN_NODE} or later, then {HOW_TO_BUILD}"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found.group(1)) < MIN_NODE:
        raise NodeSdkError(f"{node} is {version or 'unknown'}: the SDK needs Node.js {MIN_NODE}+")
    return node


def _sources() -> Iterable[Path]:
    """What the build reads that a developer edits (src/gen is the build's own output)."""
    for path in SRC.rglob("*.ts"):
        if SRC / "gen" not in path.parents:
            yield path
    yield from (NODE_DIR / n for n in ("package.json", "package-lock.json", "tsconfig.json"))
    yield PROTO


def stale_reason() -> str | None:
    """Why clients/node/dist must be built (again), or None when it is up to date."""
    outputs = [
        DIST / path.relative_to(SRC).with_suffix(".js")
        for path in _sources()
        if path.suffix == ".ts" and SRC in path.parents
    ]
    missing = [p for p in outputs if not p.exists()]
    if not outputs or missing:
        return f"{missing[0] if missing else DIST} is missing"
    oldest = min(p.stat().st_mtime for p in outputs)
    newer = [p for p in _sources() if p.exists() and p.stat().st_mtime > oldest]
    if newer:
        return f"{newer[0].relative_to(ROOT)} is newer than clients/node/dist"
    return None


def _needs_install() -> bool:
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    return not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build of this checkout's SDK at a time (pytest sessions may run side by side)."""
    key = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"feedwork-node-sdk-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    try:
        done = subprocess.run(
            argv,
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeSdkError(f"`{' '.join(argv)}` in clients/node took over {timeout:g} s") from exc
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise NodeSdkError(
            f"`{' '.join(argv)}` in clients/node failed (exit {done.returncode}); "
            f"{HOW_TO_BUILD} and fix what it says:\n{output}"
        )


def ensure_built() -> NodeSdk:
    """The SDK, built first if clients/node/dist is missing or stale. NodeSdkError when
    node is missing or the build fails."""
    node = find_node()
    if stale_reason() is not None:
        with _build_lock():
            reason = stale_reason()  # another session may have built it meanwhile
            if reason is not None:
                npm = shutil.which("npm")
                if npm is None:
                    raise NodeSdkError(
                        f"{reason}, and npm is not on PATH to build it: install npm, then "
                        f"{HOW_TO_BUILD}"
                    )
                if _needs_install():
                    _run([npm, "ci", "--no-audit", "--no-fund"], timeout=600)
                _run([npm, "run", "build"], timeout=300)
                reason = stale_reason()
                if reason is not None:
                    raise NodeSdkError(f"built clients/node, but {reason}; {HOW_TO_BUILD}")
    return NodeSdk(node=node, dist=DIST)
