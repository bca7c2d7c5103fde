"""Several feeders behind one target (`HOST:PORT,HOST:PORT,...`): calls spread over the
feeders that are up, and producers and workers carry on through the others within 2 s
when one of them stops or dies (see `feedwork.channel`).

Feeders come from `started_feeders` (in this process, as in tests/conftest.py, each on a
store from the factory it is given) or `FeederProcesses` (real `python -m feeder --db
:memory:` processes, for SIGKILL). Each feeder has a store of its own here, which is enough
to see where calls go and that clients carry on. It also shows where an ack went: a feeder
that did not issue a lease token answers INVALID_TOKEN, so an ack answered that way was
delivered through another feeder. Feeders on one database answer such an ack with ACKED
(`OTHER_FEEDER_ACK`); a test of that gives `started_feeders` a factory of stores on it, or
`FeederProcesses.start` its DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

import worker.runner
from feeder.config import Settings
from feeder.server.app import FeederServer, StartupError
from feeder.store.base import Store, StoreUnavailable
from feeder.store.memory import MemoryStore
from feedwork import AsyncFeederClient, FeederClient, TaskSpec
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.processes import die_with_parent
from worker import Task, Worker
from worker.acker import Acker

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "failover"
# How soon producers and workers must carry on through another feeder.
FAILOVER_LIMIT = 2.0
# How a feeder answers an ack of a task leased through another feeder: it did not issue
# the token. (ACKED with feeders on one database.)
OTHER_FEEDER_ACK = pb.ACK_OUTCOME_INVALID_TOKEN

StoreFactory = Callable[[], Store]


# ---------------------------------------------------------------------------------------
# feeders


@dataclass
class Feeders:
    """Feeders started in this process (see `started_feeders`)."""

    servers: list[FeederServer]

    @property
    def targets(self) -> list[str]:
        return [server.address for server in self.servers]

    @property
    def target(self) -> str:
        """All of them, as a client's target."""
        return ",".join(self.targets)


@contextlib.asynccontextmanager
async def started_feeders(
    count: int, *, store_factory: StoreFactory = MemoryStore
) -> AsyncIterator[Feeders]:
    """Starts `count` feeders on 127.0.0.1, each on `store_factory()`, and stops them all
    afterwards (also those a test stopped or replaced itself)."""
    feeders = Feeders([])
    try:
        for _ in range(count):
            feeders.servers.append(await start_feeder(store_factory()))
        yield feeders
    finally:
        for server in feeders.servers:
            await server.stop(0)


async def start_feeder(store: Store, *, listen: str = "127.0.0.1:0") -> FeederServer:
    server = FeederServer(Settings(listen=listen, db=":memory:", shutdown_grace=1.0), store=store)
    await server.start()
    return server


class FeederProcesses:
    """Real feeder processes on loopback, each with its own in-memory store unless `start`
    is given a database they share (a postgresql:// DSN)."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._processes: list[subprocess.Popen[bytes]] = []
        self.targets: list[str] = []

    @property
    def target(self) -> str:
        return ",".join(self.targets)

    def start(self, count: int, *, db: str = ":memory:") -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FEEDWORK_")}
        env["PYTHONPATH"] = str(ROOT)
        port_files = [self._workdir / f"feeder{index}.port" for index in range(count)]
        for index, port_file in enumerate(port_files):
            command = [
                sys.executable, "-m", "feeder", "--listen", "127.0.0.1:0", "--db", db,
                "--port-file", str(port_file), "--log-level", "warning", "--shutdown-grace", "1s",
            ]  # fmt: skip
            with (self._workdir / f"feeder{index}.log").open("wb") as log:
                self._processes.append(
                    subprocess.Popen(
                        die_with_parent(command), env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                )
        deadline = time.monotonic() + 30
        for process, port_file in zip(self._processes, port_files, strict=True):
            while not (port_file.exists() and port_file.read_text().strip()):
                assert process.poll() is None, f"a feeder exited with {process.returncode}"
                assert time.monotonic() < deadline, "a feeder did not start in 30 s"
                time.sleep(0.02)
            self.targets.append(f"127.0.0.1:{port_file.read_text().strip()}")

    def kill(self, index: int) -> None:
        """SIGKILL: no drain, no goodbye; the kernel resets its connections."""
        self._processes[index].send_signal(signal.SIGKILL)
        self._processes[index].wait(10)

    def stop_all(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def feeder_processes(tmp_path: Path) -> Iterator[FeederProcesses]:
    processes = FeederProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


async def stats_of(target: str) -> pb.GetStatsResponse:
    """The stats of the one feeder at `target`, asked directly."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = feeder_pb2_grpc.FeederStub(channel)
        return await stub.GetStats(pb.GetStatsRequest(), timeout=5)


async def submitted(targets: list[str]) -> list[int]:
    """Tasks each feeder took (from any client)."""
    return [(await stats_of(target)).totals.submitted for target in targets]


async def submit_to(target: str, *payloads: bytes) -> None:
    """Submits straight to the one feeder at `target`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = feeder_pb2_grpc.FeederStub(channel)
        tasks = [pb.TaskSpec(queue=QUEUE, payload=payload) for payload in payloads]
        await stub.Submit(pb.SubmitRequest(tasks=tasks), timeout=5)


async def eventually(condition: Callable[[], object], within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------
# producers


class Producer:
    """Submits one task after another through a `FeederClient` in a thread until closed,
    noting when each Submit returned and how long it took. (In an async test, close it
    through `asyncio.to_thread`: it waits for the call under way, which needs the loop.)"""

    def __init__(self, target: str) -> None:
        self._client = FeederClient(target, timeout=5.0, max_retry_delay=10.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-producer")
        self.returned: list[tuple[float, float]] = []  # (when, took), monotonic seconds
        self.error: BaseException | None = None

    def start(self) -> Producer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._client.submit(b"p", queue=QUEUE)
                now = time.monotonic()
                self.returned.append((now, now - started))
                time.sleep(0.005)
        except BaseException as exc:  # the test reports it
            self.error = exc

    def wait_for(self, count: int, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while len(self.returned) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "the producer made no progress"
            time.sleep(0.01)

    def carried_on(self, moment: float) -> tuple[float, float]:
        """Seconds from `moment` to the end of the first Submit begun after it, and the
        longest Submit still under way at `moment` or begun after it."""
        first = min(when for when, took in self.returned if when - took > moment)
        longest = max(took for when, took in self.returned if when > moment)
        return first - moment, longest


# ---------------------------------------------------------------------------------------
# workers


@dataclass
class Recorder:
    """The handlers of several workers: tasks whose payload starts with "hold" wait for
    `release`, others take 20 ms; each task is noted as (worker, payload, lease token,
    monotonic time) when it starts."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    handled: list[tuple[int, bytes, str, float]] = field(default_factory=list)

    def handler(self, worker: int) -> Callable[[Task], Awaitable[bytes]]:
        async def handle(task: Task) -> bytes:
            self.handled.append((worker, task.payload, task.lease_token, time.monotonic()))
            if task.payload.startswith(b"hold"):
                await self.release.wait()
            else:
                await asyncio.sleep(0.02)
            return b"done"

        return handle

    def workers_with(self, prefix: bytes) -> set[int]:
        return {worker for worker, payload, _, _ in self.handled if payload.startswith(prefix)}

    def tokens_of(self, prefix: bytes) -> set[str]:
        return {token for _, payload, token, _ in self.handled if payload.startswith(prefix)}

    def first_after(self, worker: int, moment: float) -> float | None:
        return min(
            (at for w, _, _, at in self.handled if w == worker and at > moment), default=None
        )

    async def carried_on(self, worker: int, moment: float, within: float = 10.0) -> float:
        """Seconds from `moment` until `worker` started a task."""
        await eventually(lambda: self.first_after(worker, moment), within)
        return self.first_after(worker, moment) - moment  # type: ignore[operator]


class AckSpy(Acker):
    """The workers' Acker, keeping the future of every ack by lease token."""

    outcomes: dict[str, asyncio.Future[int]] = {}

    def ack(self, *, lease_token: str, task_id: str, result: bytes) -> asyncio.Future[int]:
        future = super().ack(lease_token=lease_token, task_id=task_id, result=result)
        AckSpy.outcomes[lease_token] = future
        return future


@pytest.fixture
def ack_spy(monkeypatch: pytest.MonkeyPatch) -> type[AckSpy]:
    monkeypatch.setattr(AckSpy, "outcomes", {})
    monkeypatch.setattr(worker.runner, "Acker", AckSpy)
    return AckSpy


async def ack_outcomes(tokens: set[str], *, within: float) -> dict[str, int]:
    """The feeders' answers to the acks of these lease tokens, once all have come. An
    ack that was given up on (its future failed or was cancelled) raises here."""

    def answered() -> bool:
        return all(token in AckSpy.outcomes and AckSpy.outcomes[token].done() for token in tokens)

    await eventually(answered, within)
    return {token: AckSpy.outcomes[token].result() for token in tokens}


@contextlib.asynccontextmanager
async def running_workers(
    target: str, recorder: Recorder, count: int, **options: Any
) -> AsyncIterator[list[Worker]]:
    """`count` workers on the test's loop, stopped (and their holds released) afterwards."""
    options = {"grace": 0.0, "flush_timeout": 5.0, **options}
    workers = [
        Worker(target=target, queue=QUEUE, handler=recorder.handler(index), **options)
        for index in range(count)
    ]
    runs = [asyncio.create_task(one.run_async()) for one in workers]
    try:
        yield workers
    finally:
        recorder.release.set()
        for one in workers:
            one.stop()
        results = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
        assert results == [None] * count


# ---------------------------------------------------------------------------------------
# spreading


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_calls_spread_over_every_feeder_in_the_list(kind: str) -> None:
    async with started_feeders(3) as feeders:
        if kind == "sync":

            def produce() -> None:
                with FeederClient(feeders.target) as client:
                    for _ in range(60):
                        client.submit(b"x", queue=QUEUE)

            await asyncio.to_thread(produce)
        else:
            async with AsyncFeederClient(feeders.target) as client:
                for _ in range(60):
                    await client.submit(b"x", queue=QUEUE)
        counts = await submitted(feeders.targets)
    # round_robin takes turns once all connections are up (the very first calls go to
    # whichever came up first).
    assert sum(counts) == 60 and min(counts) >= 10, counts


async def test_a_name_with_several_addresses_spreads_over_all() -> None:
    # gRPC's resolver gives 127.0.0.1 and ::1 for "localhost": one feeder on each, on one
    # port, behind one name.
    if os.environ.get("GRPC_DNS_RESOLVER") == "native":
        pytest.skip("the native resolver follows /etc/hosts, which may lack ::1")
    async with contextlib.AsyncExitStack() as stack:
        v4 = await start_feeder(MemoryStore())
        stack.push_async_callback(v4.stop, 0)
        try:
            v6 = await start_feeder(MemoryStore(), listen=f"[::1]:{v4.port}")
        except StartupError:
            pytest.skip(f"cannot listen on [::1]:{v4.port}")
        stack.push_async_callback(v6.stop, 0)
        async with AsyncFeederClient(f"localhost:{v4.port}") as client:
            for _ in range(40):
                await client.submit(b"x", queue=QUEUE)
        counts = await submitted([v4.address, v6.address])
    assert sum(counts) == 40 and min(counts) >= 5, counts


class UnavailableStore(MemoryStore):
    """A store that has lost its database while `down`: every submit fails as
    PostgreSQL's store fails then (the feeder answers UNAVAILABLE)."""

    down = False

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise StoreUnavailable("the database cannot be reached")
        return await super().submit(*args, **kwargs)


async def test_a_feeder_that_cannot_serve_does_not_hold_producers_up() -> None:
    stores = [UnavailableStore() for _ in range(3)]
    made = iter(stores)
    async with (
        started_feeders(3, store_factory=lambda: next(made)) as feeders,
        AsyncFeederClient(feeders.target) as client,
    ):
        for _ in range(30):  # every connection up
            await client.submit(b"x", queue=QUEUE)
        before = await submitted(feeders.targets)
        stores[0].down = True
        started = time.monotonic()
        for _ in range(30):
            await client.submit(b"x", queue=QUEUE)
        took = time.monotonic() - started
        after = await submitted(feeders.targets)
    # Every submit went through, on the other two; those sent to the first failed and
    # were sent again (round_robin takes the next address), at the cost of a retry each.
    assert after[0] == before[0], (before, after)
    assert sum(after) - sum(before) == 30
    assert took < 10, took


@pytest.mark.parametrize("transport", ["stream", "unary"])
async def test_workers_spread_over_the_feeders(transport: str) -> None:
    recorder = Recorder()
    async with started_feeders(3) as feeders:
        for index, target in enumerate(feeders.targets):
            await submit_to(target, *[f"f{index}-{n}".encode() for n in range(30)])
        # Workers started together, a stream each: all streams on one feeder would be a
        # 1 in 20,000 chance (once connected, each stream goes to a feeder picked at
        # random). The Lease calls of one worker take turns over all feeders.
        workers, spread = (10, 2) if transport == "stream" else (1, 3)
        async with running_workers(
            feeders.target, recorder, workers, transport=transport, concurrency=2, wait=0.5
        ):

            def feeders_reached() -> int:
                return len({payload[:2] for _, payload, _, _ in recorder.handled})

            await eventually(lambda: feeders_reached() >= spread, within=5.0)


# ---------------------------------------------------------------------------------------
# producers carrying on


async def test_producer_carries_on_when_a_feeder_stops() -> None:
    async with started_feeders(3) as feeders:
        producer = Producer(feeders.target).start()
        try:
            await asyncio.to_thread(producer.wait_for, 30)
            before = await submitted(feeders.targets[1:])
            stopped_at = time.monotonic()
            await feeders.servers[0].stop(0)  # drains, reports NOT_SERVING, closes
            await asyncio.to_thread(producer.wait_for, len(producer.returned) + 60)
        finally:
            await asyncio.to_thread(producer.close)
        after = await submitted(feeders.targets[1:])
    assert producer.error is None, producer.error
    first, longest = producer.carried_on(stopped_at)
    print(f"\nfeeder stopped: next Submit done after {first:.3f} s, longest {longest:.3f} s")
    assert first < FAILOVER_LIMIT and longest < FAILOVER_LIMIT
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_producer_carries_on_when_a_feeder_is_killed(feeder_processes: FeederProcesses) -> None:
    feeder_processes.start(3)
    producer = Producer(feeder_processes.target).start()
    try:
        producer.wait_for(30)
        before = asyncio.run(submitted(feeder_processes.targets[1:]))
        killed_at = time.monotonic()
        feeder_processes.kill(0)
        producer.wait_for(len(producer.returned) + 60)
    finally:
        producer.close()
    after = asyncio.run(submitted(feeder_processes.targets[1:]))
    assert producer.error is None, producer.error
    first, longest = producer.carried_on(killed_at)
    print(f"\nfeeder killed: next Submit done after {first:.3f} s, longest {longest:.3f} s")
    assert first < FAILOVER_LIMIT and longest < FAILOVER_LIMIT
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


# ---------------------------------------------------------------------------------------
# workers carrying on


@pytest.mark.parametrize("transport", ["stream", "unary"])
async def test_workers_carry_on_and_deliver_acks_when_a_feeder_is_killed(
    feeder_processes: FeederProcesses, ack_spy: type[AckSpy], transport: str
) -> None:
    feeder_processes.start(3)
    recorder = Recorder()
    for index, target in enumerate(feeder_processes.targets):
        await submit_to(target, *[f"hold{index}-{n}".encode() for n in range(4)])
    async with running_workers(
        feeder_processes.target, recorder, 6, transport=transport, concurrency=2, wait=0.5
    ):
        # Kill the feeder whose tasks most workers hold (with streams, a feeder may have
        # none on it; the Lease calls of unary workers reach every feeder).
        await eventually(lambda: recorder.workers_with(b"hold"), within=5.0)
        await asyncio.sleep(0.2)  # the other holds, if any, arrive
        victim = max(range(3), key=lambda i: len(recorder.workers_with(f"hold{i}-".encode())))
        held_by = recorder.workers_with(f"hold{victim}-".encode())
        tokens = recorder.tokens_of(f"hold{victim}-".encode())
        killed_at = time.monotonic()
        feeder_processes.kill(victim)
        recorder.release.set()  # those handlers return now: acks for the dead feeder
        async with AsyncFeederClient(feeder_processes.target) as client:
            # More work than the workers can do, so that a worker takes a task as soon as
            # its stream (or Lease call) reaches a feeder that is up.
            for _ in range(300):
                await client.submit_many([TaskSpec(QUEUE, payload=b"after")] * 20)
                if all(recorder.first_after(w, killed_at) for w in held_by):
                    break
                await asyncio.sleep(0.01)
        outcomes = await ack_outcomes(tokens, within=5.0)
    carried_on = {w: (recorder.first_after(w, killed_at) or 99.0) - killed_at for w in held_by}
    print(f"\nfeeder killed: its workers took a task again after {carried_on} s")
    assert max(carried_on.values()) < FAILOVER_LIMIT, carried_on
    assert outcomes == dict.fromkeys(tokens, OTHER_FEEDER_ACK)


@pytest.mark.parametrize("transport", ["stream", "unary"])
async def test_a_stopping_worker_delivers_its_acks_through_another_feeder(
    feeder_processes: FeederProcesses, ack_spy: type[AckSpy], transport: str
) -> None:
    feeder_processes.start(2)
    recorder = Recorder()
    for target in feeder_processes.targets:
        await submit_to(target, b"hold")
    async with running_workers(
        feeder_processes.target, recorder, 1, transport=transport, wait=0.5, grace=5.0
    ) as [one]:
        await eventually(lambda: recorder.handled, within=5.0)
        [(_, _, token, _)] = recorder.handled
        leased = [(await stats_of(target)).queues[0].leased for target in feeder_processes.targets]
        feeder_processes.kill(leased.index(1))  # the feeder the task came from
        recorder.release.set()
        one.stop()  # the ack is still to be sent: stopping flushes it
    # The worker has stopped: its ack was answered, not dropped or left behind.
    assert await ack_outcomes({token}, within=0) == {token: OTHER_FEEDER_ACK}


async def test_stream_reconnects_at_once_however_often_it_broke_before() -> None:
    # A worker's stream breaks whenever its feeder goes away. Through ten of them (each
    # time the feeder the stream is on stops, out of eleven) the worker must find another
    # feeder within the limit every time, not only the first few times.
    recorder = Recorder()

    def feeder_of(payload: bytes) -> int:
        return int(payload.split(b"-")[1])

    async with (
        started_feeders(11) as feeders,
        running_workers(feeders.target, recorder, 1),
    ):
        for index, target in enumerate(feeders.targets):
            await submit_to(target, f"on-{index}".encode())
        await eventually(lambda: recorder.handled, within=5.0)
        times = []
        for _ in range(10):
            current = feeder_of(recorder.handled[-1][1])  # the feeder the stream is on
            await feeders.servers[current].stop(0)
            # Every feeder still up holds a task: the next stream brings one at once.
            times.append(await recorder.carried_on(0, time.monotonic()))
    print(f"\nreconnected after each stop in {[round(t, 3) for t in times]} s")
    assert max(times) < FAILOVER_LIMIT, times
