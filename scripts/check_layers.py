"""Checks the feeder's layer rule: server -> service -> store -> core, never back.

A module may import from its own layer and the layers below it, never from a layer above:
the state machine (core) knows nothing of storage, storage nothing of the service, the
service nothing of gRPC. Process-level modules (`feeder/__main__.py`, `feeder/config.py`,
`feeder/dbtool.py`) sit above every layer. Run by `make lint`; exits 1 naming each import
that breaks the rule.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a layer may import the ones before it.
LAYERS = ("core", "store", "service", "server")
# feeder.config holds settings and parsers every layer above core may read.
SHARED = {"feeder.config": "service"}
# What a layer must not import at all: the state machine is pure (no I/O, no clock, no
# event loop), and gRPC stays in the server.
FORBIDDEN = {
    "core": ("asyncio", "grpc", "sqlite3", "asyncpg", "time", "socket"),
    "store": ("grpc",),
    "service": ("grpc", "sqlite3", "asyncpg"),
}


def layer_of(module: str) -> int | None:
    """The layer index of a feeder module name, or None for process-level modules."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "feeder":
        return None
    if parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted((ROOT / "feeder").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = layer_of(module)
        if own is None:
            continue
        for line, name in imported_modules(path):
            root = name.split(".")[0]
            if root in FORBIDDEN.get(LAYERS[own], ()):
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {LAYERS[own]} must not import {name}"
                )
                continue
            target = layer_of(name)
            if target is None and name in SHARED:
                target = LAYERS.index(SHARED[name])
            if target is not None and target > own:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {LAYERS[own]} imports {name}"
                    f" ({LAYERS[target]} is above {LAYERS[own]})"
                )
    return problems


def main() -> int:
    problems = violations()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} imports break the layer rule (server -> service -> store -> core)")
        return 1
    print("layer rule holds: server -> service -> store -> core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
