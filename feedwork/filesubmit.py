"""`feedwork submit --file`: a task file is checked whole before anything is sent, then
sent in slices of about one Submit each, and a refusal names the file's line.

Nothing of a file with a bad line is submitted. A run that stops half-way (the feeder
refused a task by a limit only it knows, or went away) can be repeated once the cause is
fixed: every line carries an idempotency key (its own, or one derived from its text, see
`feedwork.taskfile.LineKeys`), so the tasks already submitted are found, not made again.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from feedwork import _wire
from feedwork.errors import FeedworkError
from feedwork.taskfile import TaskFileError, parse_lines
from feedwork.types import TaskSpec

# A slice holds at most this many tasks, or about this many payload bytes: about one
# Submit (`submit_many` cuts by exact encoded size), and a bound on what is in memory.
SLICE_TASKS = _wire.SUBMIT_BATCH_LIMIT
SLICE_BYTES = _wire.SUBMIT_BATCH_BYTES
# Bad lines reported by the check, at most.
MAX_REPORTED = 20

_BATCH_INDEX = re.compile(r"^tasks\[([0-9]+)\]\.?")

NumberedSpec = tuple[int, TaskSpec]


class TaskFile:
    """The lines of a task file, to be read twice (checked, then sent). A regular file is
    opened again for each reading; standard input ('-') and anything else that can be
    read only once (a pipe, `<(...)`) are read into memory first."""

    def __init__(self, path: str, *, stdin: BinaryIO | None = None) -> None:
        self.path = path
        self._data: bytes | None = None
        if path == "-":
            self._data = (stdin or sys.stdin.buffer).read()
            return
        with open(path, "rb") as handle:  # fails now, as a usage error, if unreadable
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                self._data = handle.read()

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == "-" else self.path

    def lines(self) -> Iterator[bytes]:
        if self._data is not None:
            yield from io.BytesIO(self._data)
            return
        with open(self.path, "rb") as handle:
            yield from handle


@dataclass(frozen=True, slots=True)
class FileCheck:
    """What the check of a whole file found: its task count, and its bad lines."""

    tasks: int
    errors: tuple[str, ...]
    more_errors: int


def check_file(source: TaskFile, *, default_queue: str | None, line_keys: bool = True) -> FileCheck:
    """Reads every line (UTF-8, JSON, fields, and the feeder's bounds), nothing sent."""
    tasks = more = 0
    errors: list[str] = []
    lines = source.lines()
    for _, task in parse_lines(lines, default_queue=default_queue, line_keys=line_keys):
        if not isinstance(task, TaskFileError):
            tasks += 1
        elif len(errors) < MAX_REPORTED:
            errors.append(str(task))
        else:
            more += 1
    return FileCheck(tasks, tuple(errors), more)


def slices(specs: Iterable[NumberedSpec]) -> Iterator[list[NumberedSpec]]:
    """The tasks in slices of at most SLICE_TASKS tasks and about SLICE_BYTES payload."""
    batch: list[NumberedSpec] = []
    size = 0
    for number, spec in specs:
        payload = len(spec.payload)
        if batch and (len(batch) >= SLICE_TASKS or size + payload > SLICE_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((number, spec))
        size += payload
    if batch:
        yield batch


def refused_line(error: FeedworkError, numbers: Sequence[int]) -> str | None:
    """The feeder's refusal of one task of a slice (`tasks[i].field: why`) as `line N:
    field: why`; None when it names no task."""
    match = _BATCH_INDEX.match(error.message)
    if match is None or int(match[1]) >= len(numbers):
        return None
    return f"line {numbers[int(match[1])]}: {error.message[match.end() :]}"
