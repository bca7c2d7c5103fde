"""`python -m feedwork.healthcheck [TARGET]`: exit 0 when the feeder reports SERVING.

Asks the standard gRPC health service (grpc.health.v1), for container health checks.
TARGET is what clients take (default localhost:50051); given several feeders, any one
of them that serves will do. Exit status 1: not serving or unreachable; 2: bad TARGET.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedwork.channel import TargetError, sync_channel

DEFAULT_TARGET = "localhost:50051"


def check(target: str, *, timeout: float = 2.0) -> bool:
    """True when the server at `target` answers SERVING for the whole server ("")."""
    with sync_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = args[0] if args else DEFAULT_TARGET
    try:
        return 0 if check(target) else 1
    except TargetError as exc:
        print(f"feedwork.healthcheck: TARGET: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
