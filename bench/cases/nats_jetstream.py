"""nats-jetstream: a work-queue stream on file storage, one durable pull consumer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from bench.core import Case, Consumer, Producer, Skip, Workload, probe_tcp

HOST, PORT = "127.0.0.1", 4222
URL = f"nats://{HOST}:{PORT}"
STREAM = "FEEDWORK_BENCH"
SUBJECT = "feedwork-bench.tasks"
DURABLE = "feedwork-bench"
# How long one fetch may wait for messages. Preloaded tasks arrive at once; the wait only
# matters at the tail, where the runner cancels fetches once every task is acked.
FETCH_TIMEOUT = 2.0
ACK_WAIT = 60.0
MAX_PENDING = 4000


async def _quiet(exc: Exception) -> None:
    """nats-py logs every connection error with a traceback by default; we raise instead."""


async def _connect() -> Client:
    # max_reconnect_attempts=0 would mean "forever" in nats-py: try twice, then fail.
    return await nats.connect(
        URL,
        connect_timeout=3,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        error_cb=_quiet,
    )


class NatsConsumer(Consumer):
    def __init__(self, nc: Client, sub: Any, batch: int) -> None:
        self.nc = nc
        self.sub = sub
        self.batch = batch

    async def lease(self) -> Sequence[Msg]:
        try:
            return await self.sub.fetch(self.batch, timeout=FETCH_TIMEOUT)
        except nats.errors.TimeoutError:
            return []

    async def ack(self, items: Sequence[Msg]) -> None:
        # msg.ack() only queues "+ACK" on the connection (no reply awaited). finish() flushes
        # and round-trips a PING so the server has read every ack before the clock stops.
        for msg in items:
            await msg.ack()

    async def finish(self) -> None:
        await self.nc.flush(timeout=10)

    async def close(self) -> None:
        await self.nc.close()


class NatsProducer(Producer):
    """b `publish_async` calls, then all their PubAcks awaited: one batch in flight."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream(publish_async_max_pending=MAX_PENDING)

    async def submit(self, payloads: Sequence[bytes]) -> None:
        futures = [await self.js.publish_async(SUBJECT, p) for p in payloads]
        await asyncio.gather(*futures)

    async def close(self) -> None:
        await self.nc.close()


class NatsJetStreamCase(Case):
    name = "nats-jetstream"
    summary = "work-queue stream (file storage), durable pull consumer, fetch(b) + msg.ack()"

    def __init__(self) -> None:
        self.nc: Client | None = None

    async def check(self) -> None:
        await probe_tcp(HOST, PORT, "nats")
        try:
            self.nc = await _connect()
            await self.nc.jetstream().account_info()
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            await self.close()
            raise Skip(f"nats at {URL}: {type(exc).__name__}: {exc}") from exc

    async def info(self) -> dict[str, Any]:
        assert self.nc is not None
        v = self.nc.connected_server_version
        return {
            "server": f"nats-server {v.major}.{v.minor}.{v.patch}",
            "client": f"nats-py {nats.aio.client.__version__}",
            "durability": "file storage, server default sync (fsync every 2 min, not per "
            "message); acks are fire-and-forget, flushed at the end of the drain",
        }

    async def _delete_stream(self) -> None:
        assert self.nc is not None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.nc.jetstream().delete_stream(STREAM)

    async def setup(self, n: int, workload: Workload) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        await self._delete_stream()
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=SUBJECT,
                ack_wait=ACK_WAIT,
                max_ack_pending=max(1000, 4 * workload.consumers * workload.batch),
            ),
        )

    async def preload(self, n: int, payload: bytes) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        futures = [await js.publish_async(SUBJECT, payload) for _ in range(n)]
        await asyncio.gather(*futures)
        stored = (await js.stream_info(STREAM)).state.messages
        if stored != n:
            raise RuntimeError(f"stream holds {stored} messages after preloading {n}")

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        return NatsProducer(await _connect())

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        assert self.nc is not None
        stored = (await self.nc.jetstream().stream_info(STREAM)).state.messages
        if stored != n:
            raise RuntimeError(f"stream holds {stored} messages, not {n}")
        return {"stream_messages": stored}

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        nc = await _connect()
        sub = await nc.jetstream().pull_subscribe_bind(durable=DURABLE, stream=STREAM)
        return NatsConsumer(nc, sub, workload.batch)

    async def verify(self, n: int) -> dict[str, Any]:
        assert self.nc is not None
        js = self.nc.jetstream()
        # Work-queue retention removes a message once its ack is processed; give the
        # server a moment (outside the timed window) in case acks are still being applied.
        for _ in range(50):
            state = (await js.stream_info(STREAM)).state
            if state.messages == 0:
                break
            await asyncio.sleep(0.1)
        consumer = await js.consumer_info(STREAM, DURABLE)
        return {
            "stream_messages": state.messages,
            "num_ack_pending": consumer.num_ack_pending,
            "num_redelivered": consumer.num_redelivered,
            "num_pending": consumer.num_pending,
        }

    async def teardown(self) -> None:
        if self.nc is not None:
            await self._delete_stream()

    async def close(self) -> None:
        if self.nc is not None:
            nc, self.nc = self.nc, None
            with contextlib.suppress(Exception):
                await nc.close()
