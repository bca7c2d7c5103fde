"""CPU time of a local PostgreSQL server, read from /proc: what the database spends on a phase.

Counted, for one server (the postmaster that forked the case's own backend, found from
``pg_backend_pid()``): the CPU time (user + system) of the postmaster and of every process
it forked that is alive when the snapshot is taken (client backends, autovacuum, WAL
writer, checkpointer, ...), plus the postmaster's cutime + cstime, where the kernel adds
the CPU of the children it has reaped: a backend that exits during a phase still counts.
Another cluster on the machine (another postmaster) is not counted.

A live process's CPU time is the run time of /proc/PID/schedstat, in nanoseconds (the
same total as utime + stime of /proc/PID/stat, which are in clock ticks of 10 ms: too
coarse for a phase of a fraction of a second spread over a dozen backends); PostgreSQL
processes have one thread, so that is the whole process. Where schedstat is missing,
utime + stime. Reaped children are only in ticks (cutime + cstime).

The parts split the total by process title (``postgres: [cluster: ]USER DB HOST(PORT)
activity`` for a client backend): backends of the case's database, backends of other
databases (someone else using the server meanwhile: the total then overstates the
case), everything else (postmaster, background processes) and the reaped children. The
total of a phase is exact to a clock tick per process; the parts are approximate when
processes exit during it (a backend's whole CPU moves from its part to ``exited``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
COMM = "postgres"
# A client backend's title; group 1 is its database. The cluster name, if set, comes first.
_CLIENT_BACKEND = re.compile(r"^postgres: (?:\S+: )?\S+ (\S+) (?:\S+\(\d+\)|\[local\])")


@dataclass(frozen=True, slots=True)
class _Stat:
    comm: str
    ppid: int
    own_ticks: int  # utime + stime
    children_ticks: int  # cutime + cstime: reaped children


def _stat(pid: int) -> _Stat | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    try:
        # Fields 4 (ppid), 14-17 (utime, stime, cutime, cstime) of proc(5), after "pid (comm)".
        return _Stat(
            comm=head.partition("(")[2],
            ppid=int(fields[1]),
            own_ticks=int(fields[11]) + int(fields[12]),
            children_ticks=int(fields[13]) + int(fields[14]),
        )
    except (IndexError, ValueError):
        return None


def _run_seconds(pid: int, stat: _Stat, tick: float) -> float:
    """CPU seconds of a one-thread process: schedstat's run time (ns), else stat's ticks."""
    try:
        return int((PROC / str(pid) / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return stat.own_ticks / tick


def _title(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of the backend `backend_pid` (from ``SELECT pg_backend_pid()``), if
    both are PostgreSQL processes visible in this machine's /proc (not a remote server,
    not one in a container's pid namespace)."""
    backend = _stat(backend_pid)
    if backend is None or backend.comm != COMM:
        return None
    parent = _stat(backend.ppid)
    if parent is None or parent.comm != COMM:
        return None
    return backend.ppid


@dataclass(frozen=True)
class PostgresServer:
    """One local PostgreSQL server (its postmaster) and the database a case uses on it."""

    postmaster: int
    database: str

    def cpu_seconds(self) -> dict[str, float] | None:
        """Cumulative CPU seconds of the server: ``total`` and its parts (see the module
        docstring). None if the postmaster is gone."""
        tick = float(os.sysconf("SC_CLK_TCK"))
        own = other = background = 0.0
        # Children first, the postmaster (and the children it reaped) last: a backend that
        # exits in between is then counted twice rather than not at all.
        for pid, stat in _children(self.postmaster):
            if stat.comm != COMM:
                continue
            seconds = _run_seconds(pid, stat, tick)
            match = _CLIENT_BACKEND.match(_title(pid))
            if match is None:
                background += seconds
            elif match.group(1) == self.database:
                own += seconds
            else:
                other += seconds
        main = _stat(self.postmaster)
        if main is None or main.comm != COMM:
            return None
        background += _run_seconds(self.postmaster, main, tick)
        exited = main.children_ticks / tick
        return {
            "total": own + other + background + exited,
            "own_database": own,
            "other_databases": other,
            "background": background,
            "exited": exited,
        }


def _children(ppid: int) -> list[tuple[int, _Stat]]:
    """The processes whose parent is `ppid`, with their stat (a scan of /proc: every kernel
    has it, unlike /proc/PID/task/TID/children). One that exits during the scan is left
    out: its CPU is in the postmaster's cutime once reaped."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.ppid == ppid:
                found.append((int(entry.name), stat))
    return found
