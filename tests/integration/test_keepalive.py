"""Keepalive between the SDKs' channels (feedwork.channel) and the feeder, at a scale of
1/20 (the client pings every 1.5 s instead of 30 s and gives a ping 1 s instead of 10 s;
the feeder accepts a ping every 0.5 s instead of 10 s): an idle stream stays up, a client
pinging more often than the feeder allows is cut off, and a silent partition is noticed
within the keepalive time plus its timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

import feeder.server.app
import feedwork.channel
from feedwork.channel import aio_channel
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.proxy import ChaosProxy
from tests.integration.test_consume import read_tasks, start, submit

KEEPALIVE_TIME = 1.5
KEEPALIVE_TIMEOUT = 1.0
MIN_PING_INTERVAL_MS = 500


@pytest.fixture
def short_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feedwork.channel, "KEEPALIVE_TIME", KEEPALIVE_TIME)
    monkeypatch.setattr(feedwork.channel, "KEEPALIVE_TIMEOUT", KEEPALIVE_TIMEOUT)
    monkeypatch.setattr(feeder.server.app, "MIN_CLIENT_PING_INTERVAL_MS", MIN_PING_INTERVAL_MS)


def test_the_sdks_ping_less_often_than_the_feeder_allows() -> None:
    options = dict(feedwork.channel.channel_options())
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_time_ms"] >= 2 * feeder.server.app.MIN_CLIENT_PING_INTERVAL_MS
    assert options["grpc.keepalive_timeout_ms"] == 10_000


async def idle_stream_outlives(target: str, seconds: float, *, options: Any = ()) -> Any:
    """Opens a Consume stream with no credits and waits `seconds` on it: the error it
    ended with, or None if it is still up."""
    async with aio_channel(target, options=options) as channel:
        stub = feeder_pb2_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Consume()
        await call.write(start(credits=0))
        try:
            await asyncio.wait_for(call.read(), seconds)
        except TimeoutError:
            return None  # (the timed-out read cancelled the call)
        except grpc.aio.AioRpcError as exc:
            return exc
        raise AssertionError("a message came on a stream without credits")


@pytest.mark.usefixtures("short_keepalive")
async def test_an_idle_stream_longer_than_the_keepalive_time_stays_up(feeder_factory: Any) -> None:
    feeder = await feeder_factory()
    # Three pings at least, and the stream still carries tasks afterwards.
    async with aio_channel(feeder.target) as channel:
        stub = feeder_pb2_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Consume()
        await call.write(start(credits=0))
        await asyncio.sleep(3 * KEEPALIVE_TIME + 0.5)
        assert not call.done()
        await submit(feeder, 1)
        await call.write(pb.ConsumeRequest(credits=1))
        assert len(await read_tasks(call, 1)) == 1
        call.cancel()


@pytest.mark.usefixtures("short_keepalive")
async def test_a_client_pinging_more_often_than_allowed_is_cut_off(feeder_factory: Any) -> None:
    # The same check with a client that pings every 0.1 s: the feeder sends GOAWAY
    # (too_many_pings). This is why the SDKs' interval must stay above the feeder's.
    feeder = await feeder_factory()
    ended = await idle_stream_outlives(
        feeder.target, 3 * KEEPALIVE_TIME, options=[("grpc.keepalive_time_ms", 100)]
    )
    assert ended is not None
    assert ended.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


@pytest.mark.usefixtures("short_keepalive")
async def test_a_silent_partition_ends_the_stream_within_keepalive_time_and_timeout(
    feeder_factory: Any,
) -> None:
    feeder = await feeder_factory()
    with ChaosProxy(("127.0.0.1", int(feeder.target.rsplit(":", 1)[1]))) as proxy:
        async with aio_channel(proxy.target) as channel:
            stub = feeder_pb2_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
            call = stub.Consume()
            await call.write(start(credits=1))
            await submit(feeder, 1)
            assert len(await read_tasks(call, 1)) == 1  # the stream is up, through the proxy
            proxy.stall(30.0)  # nothing gets through, and nothing says so
            began = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await asyncio.wait_for(call.read(), KEEPALIVE_TIME + KEEPALIVE_TIMEOUT + 3.0)
            noticed = time.monotonic() - began
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert noticed < KEEPALIVE_TIME + KEEPALIVE_TIMEOUT + 1.0
