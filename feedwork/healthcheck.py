"""`python -m feedwork.healthcheck [TLS OPTIONS] [TARGET]`: exit 0 when the feeder reports
SERVING.

Asks the standard gRPC health service (grpc.health.v1), for container health checks.
TARGET is what clients take (default localhost:50051); given several feeders, any one
of them that serves will do. The health service needs no API key; a feeder with TLS needs
the TLS options every client takes (--tls-ca, or FEEDWORK_TLS_CA...; a client
certificate too when the feeder requires mTLS). Exit status 1: not serving or
unreachable; 2: bad TARGET or options.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedwork import credentials
from feedwork.channel import TargetError, sync_channel

DEFAULT_TARGET = "localhost:50051"


def check(
    target: str, *, timeout: float = 2.0, security: credentials.ClientSecurity | None = None
) -> bool:
    """True when the server at `target` answers SERVING for the whole server ("")."""
    with sync_channel(target, security=security) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m feedwork.healthcheck",
        description="Exit 0 when the feeder at TARGET reports SERVING, 1 when not.",
    )
    parser.add_argument("target", nargs="?", default=DEFAULT_TARGET, metavar="TARGET")
    credentials.add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        security = credentials.from_args(args)
        return 0 if check(args.target, security=security) else 1
    except TargetError as exc:
        print(f"feedwork.healthcheck: TARGET: {exc}", file=sys.stderr)
        return 2
    except credentials.CredentialsError as exc:
        print(f"feedwork.healthcheck: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
