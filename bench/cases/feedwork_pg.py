"""feedwork on PostgreSQL: 1, 2 and 3 real feeders (`python -m feeder --db postgresql://...`)
sharing one fresh database of the local server per workload (`bench.postgres_feeders`).

As feedwork-raw, on raw grpc.aio stubs: consumer (and producer) i talks to feeder i % N
through a channel of its own, Lease(max_tasks=b) then one Ack of the leased tokens
(batched drains only: batch 1 runs at a few hundred tasks/s, see `supports`); the
preload is Submit batches of 100 from 4 clients spread the same way; submit-b100 is raw
Submits of 100 tasks (no idempotency keys). Verify reads GetStats of one feeder (the
counts are the database's). Feeder CPU is the sum over the N feeder processes, and the
PostgreSQL server's CPU is recorded as ``db_cpu_s`` (`bench.postgres_cpu`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import grpc

from bench.cases.feedwork import RawProducer, _FeederCase, _git_describe
from bench.core import Consumer, DbServer, Producer, Workload
from bench.feeder_process import FeederClient, preload
from bench.grpc_client import FeederConsumer
from bench.postgres_feeders import PostgresFeeders, settings

PRELOAD_BATCH = 100
PRELOAD_PRODUCERS = 4


class _PostgresFeedersCase(_FeederCase):
    """N feeders on a fresh database per workload; see the module docstring."""

    @property
    @abstractmethod
    def feeder_count(self) -> int:
        """How many feeders share the database."""

    @classmethod
    def supports(cls, workload: Workload) -> bool:
        # Batch 1 costs 2-3 ms of feeder CPU a task (about 250 tasks/s on 2 loaded cores):
        # 20,000 tasks would outlast the phase bound, three times over.
        return workload.kind == "submit" or workload.batch > 1

    def __init__(self) -> None:
        super().__init__()
        self.cluster: PostgresFeeders | None = None
        self.settings: dict[str, Any] = {}

    async def check(self) -> None:
        self.settings = await settings()

    async def info(self) -> dict[str, Any]:
        config = dict(self.settings)
        version = config.pop("server_version", "?")
        return {
            "server": f"feedwork {_git_describe()}, {self.feeder_count} x python -m feeder "
            f"--db postgresql://... (grpcio {grpc.__version__}) on postgres {version}",
            "client": f"grpcio {grpc.__version__}",
            "config": config,
            "durability": f"PostgreSQL WAL, fsync={config.get('fsync')}, synchronous_commit="
            f"{config.get('synchronous_commit')}: every Submit, lease and Ack committed "
            "before its reply",
        }

    @property
    def targets(self) -> list[str]:
        assert self.cluster is not None
        return self.cluster.targets

    @property
    def target(self) -> str:
        return self.targets[0]

    async def setup(self, n: int, workload: Workload) -> None:
        self.consumers = []
        self.cluster = await PostgresFeeders.start(
            self.feeder_count, f"{self.name}-{workload.name}"
        )

    async def preload(self, n: int, payload: bytes) -> None:
        await preload(self.targets, n, payload, batch=PRELOAD_BATCH, producers=PRELOAD_PRODUCERS)

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        target = self.targets[index % len(self.targets)]
        consumer = FeederConsumer(target, index, workload.batch)
        self.consumers.append(consumer)
        return await consumer.connect()

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        target = self.targets[index % len(self.targets)]
        return RawProducer(await FeederClient(target).connect())

    def server_pids(self) -> Sequence[int]:
        return () if self.cluster is None else self.cluster.pids

    def db_server(self) -> DbServer | None:
        return None if self.cluster is None else self.cluster.server

    async def teardown(self) -> None:
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await cluster.stop()


class FeedworkPg1Case(_PostgresFeedersCase):
    name = "feedwork-pg-1"
    summary = "1 x python -m feeder on PostgreSQL, raw grpc.aio stubs: Lease(max_tasks=b) + Ack"
    feeder_count = 1


class FeedworkPg2Case(_PostgresFeedersCase):
    name = "feedwork-pg-2"
    summary = "2 feeders on one PostgreSQL database, consumer/producer i on feeder i % 2"
    feeder_count = 2


class FeedworkPg3Case(_PostgresFeedersCase):
    name = "feedwork-pg-3"
    summary = "3 feeders on one PostgreSQL database, consumer/producer i on feeder i % 3"
    feeder_count = 3
