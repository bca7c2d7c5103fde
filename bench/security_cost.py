"""``python -m bench.security_cost``: what TLS and API keys cost per call.

Starts a real feeder (``python -m feeder``, SQLite) in each of four setups, in a process of
its own, and times sequential unary calls through the clients' one channel factory
(`feedwork.channel.aio_channel`) from this process:

- ``plain``: no TLS, no access list;
- ``keys``: an access list, the key sent on loopback (gRPC's local credentials);
- ``tls``: TLS, no access list;
- ``tls+keys``: TLS and an access list.

The calls: Ack of one item with a token no feeder issued (the feeder decides it without a
write: the cost of the call itself) and GetStats of one queue (a read). Rounds interleave
the setups (noise on a shared machine hits all of them alike); the table shows each
setup's best round, in microseconds per call, and its ratio to ``plain``.
``--grpc-call-credentials`` adds a client that sends the key with gRPC's own call
credentials (`access_token_call_credentials`), which the SDK does not use: it shows why.

Certificates and keys come from `feedwork.devcerts` (a temporary directory); bounded: a few
thousand calls per setup and round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.feeder_process import FeederProcess
from feedwork import devcerts
from feedwork.apikeys import key_hash, new_key
from feedwork.channel import aio_channel
from feedwork.credentials import ClientSecurity
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

SETUPS = ("plain", "keys", "tls", "tls+keys")
CALLS = 2000
WARM_UP = 200


def _files(directory: Path) -> tuple[Path, str]:
    ca = devcerts.make_ca()
    feeder = devcerts.make_server_cert(ca=ca)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "feeder.pem").write_bytes(feeder.cert_pem)
    (directory / "feeder-key.pem").write_bytes(feeder.key_pem)
    key = new_key()
    (directory / "access.txt").write_text(f"bench {key_hash(key)} admin\n")
    return directory, key


def _feeder_args(setup: str, files: Path) -> list[str]:
    args = []
    if "tls" in setup:
        args += [
            "--tls-cert",
            str(files / "feeder.pem"),
            "--tls-key",
            str(files / "feeder-key.pem"),
        ]
    if "keys" in setup:
        args += ["--auth-file", str(files / "access.txt")]
    return args


def _security(setup: str, files: Path, key: str) -> ClientSecurity:
    return ClientSecurity(
        tls_ca=str(files / "ca.pem") if "tls" in setup else None,
        api_key=key if "keys" in setup else None,
    )


async def _time_calls(call: Callable[[], Awaitable[object]]) -> float:
    for _ in range(WARM_UP):
        await call()
    started = time.perf_counter()
    for _ in range(CALLS):
        await call()
    return (time.perf_counter() - started) / CALLS * 1e6


async def _round(channel: grpc.aio.Channel) -> dict[str, float]:
    stub = pb_grpc.FeederStub(channel)  # type: ignore[no-untyped-call]
    ack = pb.AckRequest(items=[pb.AckItem(lease_token="not-a-token")])
    stats = pb.GetStatsRequest(queues=["bench"])
    await stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="bench")]))
    return {
        "Ack": await _time_calls(lambda: stub.Ack(ack, timeout=10)),
        "GetStats": await _time_calls(lambda: stub.GetStats(stats, timeout=10)),
    }


def _call_credentials_channel(target: str, files: Path, key: str) -> grpc.aio.Channel:
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials((files / "ca.pem").read_bytes()),
        grpc.access_token_call_credentials(key),
    )
    return grpc.aio.secure_channel(target, credentials)


async def main(rounds: int, call_credentials: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="feedwork-security-cost-") as temporary:
        files, key = _files(Path(temporary))
        feeders: dict[str, FeederProcess] = {}
        results: dict[str, list[dict[str, float]]] = {}
        try:
            for setup in SETUPS:
                directory = Path(temporary) / setup.replace("+", "-")
                directory.mkdir()
                feeders[setup] = await FeederProcess.start(directory, *_feeder_args(setup, files))
            clients = {
                setup: (
                    lambda s=setup: aio_channel(
                        f"localhost:{feeders[s].port}", security=_security(s, files, key)
                    )
                )
                for setup in SETUPS
            }
            if call_credentials:
                port = feeders["tls+keys"].port
                clients["tls+keys, call credentials"] = lambda: _call_credentials_channel(
                    f"localhost:{port}", files, key
                )
            for number in range(rounds):
                for name, make in clients.items():
                    async with make() as channel:
                        results.setdefault(name, []).append(await _round(channel))
                print(f"round {number + 1} of {rounds} done", flush=True)
        finally:
            for feeder in feeders.values():
                await feeder.stop(5.0)
    _print(results)


def _print(results: dict[str, list[dict[str, float]]]) -> None:
    print(f"\n{'setup':28} {'Ack us/call':>12} {'ratio':>6} {'GetStats us/call':>17} {'ratio':>6}")
    best = {
        name: {m: min(r[m] for r in rounds) for m in ("Ack", "GetStats")}
        for name, rounds in results.items()
    }
    for name, figures in best.items():
        ack, stats = figures["Ack"], figures["GetStats"]
        print(
            f"{name:28} {ack:12.0f} {ack / best['plain']['Ack']:5.2f}x"
            f" {stats:17.0f} {stats / best['plain']['GetStats']:5.2f}x"
        )
    spread = {
        name: statistics.pstdev([r["Ack"] for r in rounds])
        / statistics.mean([r["Ack"] for r in rounds])
        for name, rounds in results.items()
    }
    print(
        "round-to-round spread of Ack (stdev/mean): "
        + ", ".join(f"{n} {s:.0%}" for n, s in spread.items())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.security_cost", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--grpc-call-credentials",
        action="store_true",
        help="also a client sending the key with gRPC's call credentials",
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.grpc_call_credentials))
