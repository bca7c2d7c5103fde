"""redis-streams: a Redis stream with a consumer group (XREADGROUP then XACK)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.core import Case, Consumer, Producer, Skip, Workload, probe_tcp

HOST, PORT = "127.0.0.1", 6379
KEY = "feedwork-bench:tasks"
GROUP = "feedwork-bench"
PIPELINE_CHUNK = 1000


def _client() -> aioredis.Redis:
    # One connection per client, like one worker process each.
    return aioredis.Redis(
        host=HOST, port=PORT, single_connection_client=True, socket_connect_timeout=3
    )


class RedisConsumer(Consumer):
    def __init__(self, client: aioredis.Redis, index: int, batch: int) -> None:
        self.client = client
        self.name = f"consumer-{index}"
        self.batch = batch

    async def lease(self) -> Sequence[bytes]:
        # ">" = entries never delivered to this group; no BLOCK, so empty means none left.
        reply = await self.client.xreadgroup(GROUP, self.name, {KEY: ">"}, count=self.batch)
        if not reply:
            return []
        return [entry_id for entry_id, _fields in reply[0][1]]

    async def ack(self, items: Sequence[bytes]) -> None:
        await self.client.xack(KEY, GROUP, *items)

    async def close(self) -> None:
        await self.client.aclose()


class RedisProducer(Producer):
    """One pipeline (no transaction) of b XADDs: one round trip per batch."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def submit(self, payloads: Sequence[bytes]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(KEY, {"p": payload})
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


class RedisStreamsCase(Case):
    name = "redis-streams"
    summary = "redis.asyncio XREADGROUP COUNT b, then XACK of the ids; consumer group"

    def __init__(self) -> None:
        self.admin: aioredis.Redis | None = None

    async def check(self) -> None:
        await probe_tcp(HOST, PORT, "redis")
        self.admin = _client()
        try:
            await self.admin.ping()
        except (OSError, redis.RedisError) as exc:
            await self.admin.aclose()
            self.admin = None
            raise Skip(f"redis at {HOST}:{PORT}: {exc}") from exc

    async def info(self) -> dict[str, Any]:
        assert self.admin is not None
        server = await self.admin.info("server")
        persistence = await self.admin.config_get("appendonly")
        persistence.update(await self.admin.config_get("appendfsync"))
        persistence.update(await self.admin.config_get("save"))
        aof = persistence.get("appendonly") == "yes"
        return {
            "server": f"redis {server.get('redis_version')}",
            "client": f"redis-py {redis.__version__}",
            "config": persistence,
            "durability": (
                f"AOF appendfsync={persistence.get('appendfsync')}"
                if aof
                else f"in-memory only (appendonly=no, save={persistence.get('save')!r})"
            ),
        }

    async def setup(self, n: int, workload: Workload) -> None:
        assert self.admin is not None
        await self.admin.delete(KEY)
        await self.admin.xgroup_create(KEY, GROUP, id="0", mkstream=True)

    async def preload(self, n: int, payload: bytes) -> None:
        assert self.admin is not None
        fields = {"p": payload}
        for start in range(0, n, PIPELINE_CHUNK):
            async with self.admin.pipeline(transaction=False) as pipe:
                for _ in range(min(PIPELINE_CHUNK, n - start)):
                    pipe.xadd(KEY, fields)
                await pipe.execute()

    async def open_producer(self, index: int, workload: Workload) -> Producer:
        client = _client()
        await client.ping()
        return RedisProducer(client)

    async def verify_submitted(self, n: int) -> dict[str, Any]:
        assert self.admin is not None
        length = await self.admin.xlen(KEY)
        if length != n:
            raise RuntimeError(f"stream holds {length} entries, not {n}")
        return {"stream_length": length}

    async def open_consumer(self, index: int, workload: Workload) -> Consumer:
        client = _client()
        await client.ping()
        return RedisConsumer(client, index, workload.batch)

    async def verify(self, n: int) -> dict[str, Any]:
        assert self.admin is not None
        pending = await self.admin.xpending(KEY, GROUP)
        groups = await self.admin.xinfo_groups(KEY)
        return {
            "stream_length": await self.admin.xlen(KEY),
            "pending": pending["pending"],
            "lag": groups[0].get("lag") if groups else None,
        }

    async def teardown(self) -> None:
        if self.admin is not None:
            await self.admin.delete(KEY)

    async def close(self) -> None:
        if self.admin is not None:
            admin, self.admin = self.admin, None
            await admin.aclose()
