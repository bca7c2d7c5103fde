"""The common workload API: cases, consumers, and the runner that times a drain.

A *case* is one queue system (or one configuration of one). For every workload the runner
asks it for a fresh queue (``setup``), fills it with N tasks (``preload``), opens one
*consumer* per concurrent worker, and then times only the drain: every consumer loops
``lease()`` then ``ack()`` until N tasks have been leased, and the clock stops once all N
are acked and every consumer's ``finish()`` (e.g. a flush of fire-and-forget acks) has
returned. ``teardown`` always runs, and every phase is bounded by a timeout.

To add a case: subclass :class:`Case` and :class:`Consumer` in a module under
``bench/cases/`` and list that module in ``bench/cases/__init__.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent

PAYLOAD_SIZE = 64
CONSUMERS = 4
# Bounds every phase (preload, drain) of one workload; teardown gets its own bound.
PHASE_TIMEOUT = 60.0
TEARDOWN_TIMEOUT = 15.0
# After an empty lease (the tail of the drain, when other consumers hold the last tasks).
EMPTY_LEASE_PAUSE = 0.001


class Skip(Exception):
    """Raised by a case whose peer server is unavailable; the runner reports SKIPPED."""


@dataclass(frozen=True)
class Workload:
    """`drain`: preload N, then N lease+ack with `consumers` consumers (only the drain is
    timed). `submit`: N tasks put in by `consumers` concurrent producers, `batch` a call."""

    name: str
    batch: int
    consumers: int = CONSUMERS
    payload_size: int = PAYLOAD_SIZE
    kind: str = "drain"

    @classmethod
    def drain(cls, batch: int, consumers: int = CONSUMERS) -> Workload:
        return cls(name=f"drain-b{batch}", batch=batch, consumers=consumers)

    @classmethod
    def submit(cls, batch: int, producers: int = CONSUMERS) -> Workload:
        return cls(name=f"submit-b{batch}", batch=batch, consumers=producers, kind="submit")


DEFAULT_WORKLOADS: tuple[Workload, ...] = (Workload.drain(1), Workload.drain(64))
SUBMIT_BATCH = 100


def make_payload(size: int = PAYLOAD_SIZE) -> bytes:
    """A fixed, non-compressible-looking payload of `size` bytes."""
    pattern = b"feedwork-bench-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return (pattern * (size // len(pattern) + 1))[:size]


class Consumer(ABC):
    """One concurrent worker of a drain, with its own connection."""

    @abstractmethod
    async def lease(self) -> Sequence[Any]:
        """Leases up to the workload's batch size; returns opaque items (empty if none)."""

    @abstractmethod
    async def ack(self, items: Sequence[Any]) -> None:
        """Acknowledges items returned by :meth:`lease`."""

    async def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once after the last ack, inside the timed window (e.g. flush)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the connection; outside the timed window."""


class Producer(ABC):
    """One concurrent producer of a submit workload, with its own connection."""

    @abstractmethod
    async def submit(self, payloads: Sequence[bytes]) -> None:
        """Puts one batch of tasks in (one call / one pipeline / one transaction); returns
        once the system has accepted them (as durably as it is configured to)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the connection; outside the timed window."""


class DbServer(Protocol):
    """A database server on this machine that a case uses (e.g. the local PostgreSQL,
    `bench.postgres_cpu.PostgresServer`), whose CPU the timed phases record."""

    def cpu_seconds(self) -> Mapping[str, float] | None:
        """CPU seconds the server has used so far: ``total``, and any parts (by kind of
        process); None if it cannot be read."""


class Case(ABC):
    """One system under test. A new instance is made per run; state may live on it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    # A case that times its own drain (e.g. through a worker SDK rather than consumers
    # the runner drives) sets this and implements `drain`.
    drives_drain: ClassVar[bool] = False

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raises :class:`Skip` (quickly) if the system is not reachable."""

    async def info(self) -> dict[str, Any]:
        """Server version and durability settings, recorded with the results."""
        return {}

    @abstractmethod
    async def setup(self, n: int, workload: Workload) -> None:
        """Creates a fresh, empty queue for one workload (or starts a server)."""

    @abstractmethod
    async def preload(self, n: int, payload: bytes) -> None:
        """Puts n tasks with this payload into the queue."""

    @abstractmethod
    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        """Opens (and connects) one consumer; called before the clock starts."""

    async def verify(self, n: int) -> dict[str, Any]:
        """After the drain, outside the timed window: what is left (should be nothing)."""
        return {}

    async def drain(self, n: int, workload: Workload, state: DrainState) -> float:
        """Only for `drives_drain` cases: drains the n preloaded tasks, fills `state`
        (leased, acked, ...) and returns the timed seconds."""
        raise NotImplementedError

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        """For submit workloads: one connected producer. Cases without it skip them."""
        raise NotImplementedError

    @classmethod
    def supports(cls, workload: Workload) -> bool:
        if workload.kind == "submit":
            return cls.open_producer is not Case.open_producer
        return True

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        """After a submit workload, outside the timed window: what was stored (n)."""
        return {}

    def server_pids(self) -> Sequence[int]:
        """Server processes whose CPU time the drain should record (ours, e.g. a feeder)."""
        return ()

    def client_pids(self) -> Sequence[int]:
        """Client processes other than this one (e.g. worker processes), whose CPU time is
        the client CPU of the drain. Empty: the client is this benchmark process."""
        return ()

    def db_server(self) -> DbServer | None:
        """The database server this case stores its tasks in, if it runs on this machine
        and its CPU can be read (``db_cpu_s`` of the result); called after `setup`."""
        return None

    @abstractmethod
    async def teardown(self) -> None:
        """Deletes what setup created / stops servers. Must be safe after a partial setup."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Once after all workloads (and after a skip): releases what check() opened."""


# ---------------------------------------------------------------------------------------
# Running


@dataclass
class DrainState:
    n: int
    leased: int = 0
    acked: int = 0
    leases: int = 0
    empty_leases: int = 0
    lease_lat: list[float] = field(default_factory=list)
    ack_lat: list[float] = field(default_factory=list)
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max in ms, and the count, of latencies in seconds."""
    ms = sorted(s * 1000.0 for s in seconds)
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": ms[-1] if ms else None,
        "count": len(ms),
    }


async def _consume(consumer: Consumer, state: DrainState, start: asyncio.Event) -> None:
    await start.wait()
    clock = time.perf_counter
    while state.leased < state.n:
        t0 = clock()
        items = await consumer.lease()
        t1 = clock()
        state.leases += 1
        if not items:
            state.empty_leases += 1
            await asyncio.sleep(EMPTY_LEASE_PAUSE)
            continue
        state.leased += len(items)
        await consumer.ack(items)
        t2 = clock()
        state.acked += len(items)
        state.lease_lat.append(t1 - t0)
        state.ack_lat.append(t2 - t1)
        if state.acked >= state.n:
            state.all_acked.set()


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)


async def _drain(consumers: Sequence[Consumer], state: DrainState) -> float:
    """Runs the consumers until n tasks are acked; returns the drain time in seconds."""
    start = asyncio.Event()
    workers = [asyncio.create_task(_consume(c, state, start)) for c in consumers]
    waiter = asyncio.create_task(state.all_acked.wait())
    try:
        await asyncio.sleep(0)  # let every worker reach start.wait()
        t0 = time.perf_counter()
        start.set()
        pending: set[asyncio.Task[Any]] = {*workers, waiter}
        while not waiter.done() and not all(w.done() for w in workers):
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        # Everything is acked. Consumers still inside lease() hold nothing (every task was
        # leased), e.g. a long-poll at the tail: stop them rather than wait out the poll.
        await _cancel_all([w for w in workers if not w.done()])
        await asyncio.gather(*(c.finish() for c in consumers))
        return time.perf_counter() - t0
    finally:
        await _cancel_all([*workers, waiter])


def process_cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc; None where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _CpuSnapshot:
    client: float | None
    servers: dict[int, float | None]
    db: Mapping[str, float] | None


def _cpu_snapshot(
    server_pids: Sequence[int], client_pids: Sequence[int], db: DbServer | None, *, end: bool
) -> _CpuSnapshot:
    """CPU times so far. The client is read closest to the phase (last before it, first
    after it), so that reading the others (a scan of /proc for the database server) is
    not counted as client CPU."""

    def client() -> float | None:
        if not client_pids:
            return time.process_time()
        times = [process_cpu_seconds(pid) for pid in client_pids]
        return None if None in times else sum(t for t in times if t is not None)

    first = client() if end else None
    servers = {pid: process_cpu_seconds(pid) for pid in server_pids}
    db_times = None if db is None else db.cpu_seconds()
    return _CpuSnapshot(first if end else client(), servers, db_times)


def _per_task_us(cpu_s: float, n: int) -> float | None:
    return cpu_s / n * 1e6 if n > 0 else None


def _cpu_usage(before: _CpuSnapshot, after: _CpuSnapshot, seconds: float, n: int) -> dict[str, Any]:
    """CPU seconds used during the phase, as a share of one core (1.0 = saturated) and
    in microseconds per task, for the client, the case's servers and its database."""
    usage: dict[str, Any] = {}

    def share(cpu_s: float) -> float | None:
        return cpu_s / seconds if seconds > 0 else None

    if before.client is not None and after.client is not None:
        client = after.client - before.client
        usage["client_cpu_s"] = client
        usage["client_core_share"] = share(client)
        usage["client_cpu_us_per_task"] = _per_task_us(client, n)
    server = 0.0
    for pid, start in before.servers.items():
        end = after.servers.get(pid)
        if start is None or end is None:
            break
        server += end - start
    else:
        if before.servers:
            usage["server_cpu_s"] = server
            usage["server_core_share"] = share(server)
            usage["server_cpu_us_per_task"] = _per_task_us(server, n)
    if before.db is not None and after.db is not None and after.db.keys() == before.db.keys():
        parts = {key: after.db[key] - before.db[key] for key in before.db}
        db = parts.pop("total")
        usage["db_cpu_s"] = db
        usage["db_core_share"] = share(db)
        usage["db_cpu_us_per_task"] = _per_task_us(db, n)
        usage["db_cpu_parts_s"] = parts
    return usage


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (the machine is shared: record them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _base_result(case: type[Case], workload: Workload, n: int) -> dict[str, Any]:
    return {
        "case": case.name,
        "workload": workload.name,
        "batch": workload.batch,
        "consumers": workload.consumers,
        "payload_bytes": workload.payload_size,
        "tasks": n,
        "run": 1,
        "status": "ok",
        "reason": None,
        "preload_seconds": None,
        "seconds": None,
        "tasks_per_s": None,
        "leased": None,
        "acked": None,
        "leases": None,
        "empty_leases": None,
        "latency_ms": None,
        "cpu": None,
        "verify": None,
        "info": None,
        "kind": workload.kind,
        "load_avg": load_average(),
    }


async def _close_consumers(consumers: Sequence[Consumer | Producer]) -> None:
    for consumer in consumers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.close(), 5.0)


class PhaseProfiler(ABC):
    """Samples processes during a timed phase (py-spy: bench.profiling.PySpyProfiler)."""

    @abstractmethod
    async def start(self, label: str, pid: int) -> Any:
        """Starts sampling `pid` into a profile named `label`; returns a handle."""

    @abstractmethod
    async def stop(self, handle: Any) -> None:
        """Stops a recording and writes it."""

    @contextlib.asynccontextmanager
    async def record(self, label: str, pids: Mapping[str, Sequence[int]]) -> AsyncIterator[None]:
        """Samples every pid (role -> processes) while the block runs."""
        handles = []
        for role, role_pids in pids.items():
            for i, pid in enumerate(role_pids):
                name = f"{label}.{role}" if len(role_pids) == 1 else f"{label}.{role}-{i}"
                handles.append(await self.start(name, pid))
        await asyncio.sleep(0.05)  # let the samplers attach
        try:
            yield
        finally:
            for handle in handles:
                await self.stop(handle)


def _profile_roles(case: Case) -> dict[str, Sequence[int]]:
    return {
        "server": tuple(case.server_pids()),
        "client": tuple(case.client_pids()) or (os.getpid(),),
    }


async def _timed_phase(
    case: Case,
    label: str,
    profiler: PhaseProfiler | None,
    body: Any,
    n: int,
) -> tuple[float, dict[str, Any]]:
    """Runs `body()` (returns seconds) of n tasks with CPU accounting and the optional
    profiler."""
    pids = case.server_pids()
    clients = case.client_pids()
    db = case.db_server()
    cpu_before = _cpu_snapshot(pids, clients, db, end=False)
    if profiler is None:
        seconds = await body()
    else:
        async with profiler.record(label, _profile_roles(case)):
            seconds = await body()
    cpu_after = _cpu_snapshot(pids, clients, db, end=True)
    return seconds, _cpu_usage(cpu_before, cpu_after, seconds, n)


async def _submit_all(
    producers: Sequence[Producer], n: int, batch: int, payload: bytes, latencies: list[float]
) -> float:
    """Every producer submits batches until n tasks are in; returns the seconds taken."""
    left = [n]

    async def produce(producer: Producer) -> None:
        clock = time.perf_counter
        while left[0] > 0:
            k = min(batch, left[0])
            left[0] -= k
            t0 = clock()
            await producer.submit([payload] * k)
            latencies.append(clock() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(produce(p) for p in producers))
    return time.perf_counter() - t0


async def run_workload(
    case: Case,
    n: int,
    workload: Workload,
    phase_timeout: float = PHASE_TIMEOUT,
    profiler: PhaseProfiler | None = None,
) -> dict[str, Any]:
    """Runs one workload of one case; never raises except for Skip and cancellation."""
    result = _base_result(type(case), workload, n)
    consumers: list[Consumer] = []
    producers: list[Producer] = []
    submit_lat: list[float] = []
    state = DrainState(n=n)
    phase = "setup"
    label = f"{case.name}.{workload.name}"
    try:
        async with asyncio.timeout(phase_timeout):
            await case.setup(n, workload)
            if workload.kind == "submit":
                phase = "connect"
                for i in range(workload.consumers):
                    producers.append(await case.open_producer(i, workload))
            else:
                phase = "preload"
                t0 = time.perf_counter()
                await case.preload(n, make_payload(workload.payload_size))
                result["preload_seconds"] = time.perf_counter() - t0
                phase = "connect"
                if not case.drives_drain:
                    for i in range(workload.consumers):
                        consumers.append(await case.open_consumer(i, workload))

        async def timed() -> float:
            async with asyncio.timeout(phase_timeout):
                if workload.kind == "submit":
                    payload = make_payload(workload.payload_size)
                    return await _submit_all(producers, n, workload.batch, payload, submit_lat)
                if case.drives_drain:
                    return await case.drain(n, workload, state)
                return await _drain(consumers, state)

        phase = "submit" if workload.kind == "submit" else "drain"
        seconds, result["cpu"] = await _timed_phase(case, label, profiler, timed, n)
        result["seconds"] = seconds
        result["tasks_per_s"] = n / seconds if seconds > 0 else None
        phase = "verify"
        async with asyncio.timeout(phase_timeout):
            if workload.kind == "submit":
                result["verify"] = await case.verify_submitted(n)
            else:
                result["verify"] = await case.verify(n)
        if workload.kind != "submit" and (state.leased != n or state.acked != n):
            result["status"] = "error"
            result["reason"] = f"leased {state.leased}, acked {state.acked}, expected {n}"
    except Skip:
        raise
    except TimeoutError:
        result["status"] = "timeout"
        result["reason"] = f"{phase} did not finish within {phase_timeout:g}s"
    except Exception as exc:
        result["status"] = "error"
        result["reason"] = f"{phase}: {type(exc).__name__}: {exc}"
    finally:
        await _close_consumers([*consumers, *producers])
        try:
            await asyncio.wait_for(case.teardown(), TEARDOWN_TIMEOUT)
        except Exception as exc:
            note = f"teardown: {type(exc).__name__}: {exc}"
            result["reason"] = f"{result['reason']}; {note}" if result["reason"] else note
    if workload.kind == "submit":
        result["latency_ms"] = {"submit": latency_summary(submit_lat)}
        return result
    result["leased"] = state.leased
    result["acked"] = state.acked
    result["leases"] = state.leases
    result["empty_leases"] = state.empty_leases
    cycle = [a + b for a, b in zip(state.lease_lat, state.ack_lat, strict=True)]
    result["latency_ms"] = {
        "lease": latency_summary(state.lease_lat),
        "ack": latency_summary(state.ack_lat),
        "cycle": latency_summary(cycle),
    }
    return result


def skipped_result(case: type[Case], workload: Workload, n: int, reason: str) -> dict[str, Any]:
    result = _base_result(case, workload, n)
    result["status"] = "skipped"
    result["reason"] = reason
    return result


async def run_case(
    case_cls: type[Case],
    n: int,
    workloads: Sequence[Workload] = DEFAULT_WORKLOADS,
    phase_timeout: float = PHASE_TIMEOUT,
    repeat: int = 1,
    profiler: PhaseProfiler | None = None,
) -> list[dict[str, Any]]:
    """Runs every workload of one case (a fresh instance) `repeat` times; one result each.

    A case that raises :class:`Skip` (from check, info or setup) is reported with a loud
    ``SKIPPED`` line and yields ``status: skipped`` results.
    """
    case = case_cls()
    workloads = [w for w in workloads if case_cls.supports(w)]
    results: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(phase_timeout):
            await case.check()
            info = await case.info()
        for workload in workloads:
            for run in range(1, repeat + 1):
                result = await run_workload(case, n, workload, phase_timeout, profiler)
                result["run"] = run
                result["info"] = info
                results.append(result)
    except (Skip, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"not reachable within {phase_timeout:g}s"
        print(f"!!! SKIPPED {case_cls.name}: {reason}", flush=True)
        done = {r["workload"] for r in results}
        results.extend(
            skipped_result(case_cls, w, n, reason) for w in workloads if w.name not in done
        )
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(case.close(), TEARDOWN_TIMEOUT)
    return results


# ---------------------------------------------------------------------------------------
# Helpers for cases


async def probe_tcp(host: str, port: int, what: str, connect_timeout: float = 2.0) -> None:
    """Raises :class:`Skip` unless something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise Skip(f"{what} at {host}:{port} is not reachable ({reason})") from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def subprocess_env() -> dict[str, str]:
    """The environment for a helper process: the repo root importable."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` prefixed so that the helper gets SIGKILL when the benchmark process dies
    (PR_SET_PDEATHSIG through util-linux `setpriv`, which then execs it): nothing outlives
    a killed benchmark. (A preexec_fn would force a fork of a process with gRPC threads.)"""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


class ServerProcess:
    """A Python server started as ``python -m module ...`` in its own process (or another
    program, `spawn`).

    The server must print one line ``READY {json}`` on stdout once it listens (the JSON
    holds at least ``port``), and should exit when its stdin reaches EOF, so it cannot
    outlive the benchmark. Its stderr is passed through.
    """

    def __init__(self, proc: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.ready = ready

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @classmethod
    async def start(cls, module: str, *args: str, ready_timeout: float = 30.0) -> ServerProcess:
        argv = [sys.executable, "-m", module, *args]
        return await cls.spawn(argv, module, ready_timeout=ready_timeout)

    @classmethod
    async def spawn(
        cls, argv: Sequence[str], what: str, ready_timeout: float = 30.0
    ) -> ServerProcess:
        """Any program that keeps the same contract (the READY line, EOF on stdin), e.g.
        ``node bench/cases/node_worker.js ...``; `what` names it in errors."""
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(argv),
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        server = cls(proc, {})
        try:
            assert proc.stdout is not None
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout)
                if not line:
                    raise RuntimeError(f"{what} exited before READY (rc={await proc.wait()})")
                text = line.decode().strip()
                if text.startswith("READY "):
                    server.ready = json.loads(text[len("READY ") :])
                    return server
        except BaseException:
            await server.stop()
            raise

    async def stop(self, grace: float = 5.0, *, terminate: bool = True) -> int | None:
        """Closes stdin and (with `terminate`) sends SIGTERM; SIGKILL after `grace`."""
        proc = self.proc
        if proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            if terminate:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode
