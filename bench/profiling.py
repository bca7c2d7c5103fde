"""py-spy profiles of timed phases, and where their time goes.

`python -m bench --profile DIR` samples the server (feeder) and client processes of every
timed phase with ``py-spy record -p PID -f raw --nonblocking`` into
``DIR/<case>.<workload>.<role>.txt`` (collapsed stacks, one "frame;frame;... count" per
line). py-spy leaves out idle threads (a loop waiting in epoll), so the samples are CPU
time (or time waiting on the GIL). Profiling costs the sampled processes a little: take
the table from a run without --profile.

    python -m bench.profiling DIR/feedwork-raw.drain-b64.server.txt [--top 25] [--merge]

prints own ("self") time per file, own and inclusive time per function, as a share of
all samples and in seconds (samples / rate); --merge sums several files first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import REPO_ROOT, PhaseProfiler, die_with_parent

RATE = 100
MAX_SECONDS = 900
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*?)(?::(?P<line>\d+))?\)$")


@dataclass
class _Recording:
    proc: asyncio.subprocess.Process
    path: Path


class PySpyProfiler(PhaseProfiler):
    def __init__(self, directory: Path, *, rate: int = RATE, py_spy: str | None = None) -> None:
        self.directory = directory
        self.rate = rate
        self.py_spy = py_spy or str(Path(_venv_bin()) / "py-spy")
        self.files: list[Path] = []

    async def start(self, label: str, pid: int) -> _Recording:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{label}.txt"
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent([self.py_spy]),
            "record",
            "-p",
            str(pid),
            "-f",
            "raw",
            "-o",
            str(path),
            "-r",
            str(self.rate),
            "-d",
            str(MAX_SECONDS),
            "--nonblocking",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.files.append(path)
        return _Recording(proc, path)

    async def stop(self, recording: _Recording) -> None:
        proc = recording.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def _venv_bin() -> str:
    import sys

    return str(Path(sys.executable).parent)


# ---------------------------------------------------------------------------------------
# Aggregation


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(REPO_ROOT))
    return path


def frame_name(frame: str) -> str:
    """ "func (path/file.py:123)" -> "func (file path without line)"."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['func']} ({_short(match['file'])})"


def aggregate(lines: Sequence[str]) -> dict[str, Any]:
    """Own and inclusive sample counts per function, over collapsed-stack lines."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own_file: Counter[str] = Counter()
    total = 0
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [
            frame_name(f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        own_file[_file_of(frames[-1])] += count
        for name in set(frames):
            inclusive[name] += count
    return {"total": total, "own": own, "inclusive": inclusive, "own_file": own_file}


def _file_of(name: str) -> str:
    return name.rsplit(" (", 1)[-1].rstrip(")") if " (" in name else name


def summary(paths: Sequence[Path], top: int = 20, rate: int = RATE) -> str:
    """Own and inclusive time of the samples of `paths` together."""
    lines: list[str] = []
    for path in paths:
        lines.extend(path.read_text().splitlines())
    data = aggregate(lines)
    total = data["total"]
    name = paths[0].name if len(paths) == 1 else f"{paths[0].name} and {len(paths) - 1} more"
    out = [f"{name}: {total} samples = {total / rate:.2f} s of CPU at {rate} Hz"]
    if not total:
        return "\n".join(out)
    sections = (
        ("own time by file", data["own_file"]),
        ("own time", data["own"]),
        ("inclusive time", data["inclusive"]),
    )
    for title, counter in sections:
        out.append(f"  top {top} by {title}:")
        for name, count in counter.most_common(top):
            out.append(f"    {100 * count / total:5.1f}%  {count / rate:7.2f}s  {name}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiling", description="Own and inclusive time per function."
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rate", type=int, default=RATE, help="py-spy sampling rate (Hz)")
    parser.add_argument(
        "--merge", action="store_true", help="one summary of all files (e.g. several rounds)"
    )
    args = parser.parse_args(argv)
    groups = [args.files] if args.merge else [[path] for path in args.files]
    for group in groups:
        print(summary(group, args.top, args.rate))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
