"""Shared fixtures: a real feeder served in-process over grpc.aio on an ephemeral port.

Async tests run under pytest-asyncio in auto mode (`asyncio_mode = "auto"` in
pyproject.toml): write `async def test_...` and use the async fixtures below directly.

    async def test_submit(feeder):
        reply = await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")]))

`feeder` runs on a MemoryStore unless parametrized indirectly with a store kind
("memory", "sqlite", "postgres"; `ALL_STORES` is all three):

    @pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)

Override `feeder_settings` (limits, policies) or `feeder_clock` (a fake clock) in a test
module to change how the feeder is built; `feeder_factory` starts more feeders, e.g. a
second one on the same SQLite file after the first stopped.

`node_sdk` is the Node.js SDK (clients/node), built for the session if it is missing or
stale, for tests that run Node processes (tests/node_sdk.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from feeder.config import Settings
from feeder.server.app import MEMORY_DB, FeederServer, open_store
from feeder.service.tasks import TaskService
from feeder.store.base import Store
from feeder.store.postgres import PostgresStore
from feedwork.v1 import feeder_pb2_grpc
from tests import postgres
from tests.node_sdk import NodeSdk, NodeSdkError, ensure_built

# Hypothesis keeps its example database and a cache of constants in `.hypothesis/` of the
# directory the tests run in (the checkout): here they go to a directory of this run's own,
# removed at exit. A failing example is printed, which is what reproduces it.
_HYPOTHESIS_HOME = tempfile.TemporaryDirectory(prefix="feedwork-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME.name)

STORE_KINDS = ("memory", "sqlite", "postgres")
# Every store kind: the parametrization of tests that must hold on each backend.
ALL_STORES = pytest.mark.parametrize("feeder", list(STORE_KINDS), indirect=True)


@dataclass
class RunningFeeder:
    """A started feeder and an async client channel to it."""

    target: str
    stub: feeder_pb2_grpc.FeederStub
    channel: grpc.aio.Channel
    server: FeederServer

    @property
    def service(self) -> TaskService:
        return self.server.service

    @property
    def store(self) -> Store:
        return self.server.store


FeederFactory = Callable[..., Awaitable[RunningFeeder]]


def make_store(kind: str, settings: Settings) -> Store:
    """A store of `kind` on `settings.db` (a SQLite path, or for "postgres" a DSN), with
    the settings' bounds."""
    if kind == "memory":
        return open_store(dataclasses.replace(settings, db=MEMORY_DB))
    if kind == "sqlite":
        return open_store(settings)
    if kind == "postgres":
        db = settings.db
        return PostgresStore(db, pool_size=4, startup_wait=5.0)
    raise ValueError(f"unknown store kind {kind!r} (want one of {STORE_KINDS})")


@pytest.fixture(scope="session")
def node_sdk() -> NodeSdk:
    """The Node.js SDK (clients/node), built first when clients/node/dist is missing or
    older than its sources (tests/node_sdk.py). Fails, never skips, when node is missing or
    the build fails: the message says how to build it."""
    try:
        return ensure_built()
    except NodeSdkError as exc:
        problem = str(exc)
    pytest.fail(f"the Node.js SDK is needed: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database with feedwork's schema, that test databases are copied from."""
    name = postgres.create_template()
    try:
        yield name
    finally:
        postgres.drop_database(name)


@pytest.fixture
def postgres_dsn(postgres_template: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, with the schema; dropped afterwards."""
    yield from postgres.databases(postgres_template)


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(listen="127.0.0.1:0", db=str(tmp_path / "feedwork.db"), shutdown_grace=1.0)


@pytest.fixture
def feeder_clock() -> Callable[[], float]:
    return time.time


@pytest.fixture
async def feeder_factory(
    request: pytest.FixtureRequest,
    feeder_settings: Settings,
    feeder_clock: Callable[[], float],
) -> AsyncIterator[FeederFactory]:
    """`await feeder_factory(store_kind="memory", settings=None)` starts a feeder; every
    feeder started is stopped (and its channel closed) after the test. Every "postgres"
    feeder of a test is on one database of the test's own (several feeders, one cluster);
    every "sqlite" feeder on the file `settings.db` names."""
    started: list[RunningFeeder] = []
    # The test's PostgreSQL database, made on the first "postgres" feeder and dropped after
    # every feeder stopped (a database dropped under a running feeder makes it reconnect).
    databases: list[str] = []

    async def postgres_dsn() -> str:
        if not databases:
            template = request.getfixturevalue("postgres_template")
            databases.append(await asyncio.to_thread(postgres.create_database, template))
        return postgres.dsn_of(databases[0])

    async def start(
        *, store_kind: str = "memory", settings: Settings | None = None, db: str | None = None
    ) -> RunningFeeder:
        """`db` overrides the database of a "postgres" feeder (e.g. the test's own database
        through a proxy: `await feeder_factory.postgres_dsn()` gives its DSN)."""
        settings = settings or feeder_settings
        if store_kind == "postgres":
            settings = dataclasses.replace(settings, db=db or await postgres_dsn())
        store = make_store(store_kind, settings)
        server = FeederServer(settings, store=store, clock=feeder_clock)
        port = await server.start()
        target = f"127.0.0.1:{port}"
        size = settings.max_message_bytes
        channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ],
        )
        running = RunningFeeder(target, feeder_pb2_grpc.FeederStub(channel), channel, server)
        started.append(running)
        return running

    start.postgres_dsn = postgres_dsn  # type: ignore[attr-defined]
    yield start
    for running in reversed(started):
        await running.channel.close()
        await running.server.stop(0)
    for name in databases:
        await asyncio.to_thread(postgres.drop_database, name)


@pytest.fixture
async def feeder(request: pytest.FixtureRequest, feeder_factory: FeederFactory) -> RunningFeeder:
    return await feeder_factory(store_kind=getattr(request, "param", "memory"))
