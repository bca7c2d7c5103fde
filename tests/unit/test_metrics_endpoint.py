"""feedwork.metrics: `parse_listen` and the endpoint on IPv4 and IPv6 addresses."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from feedwork.listen import parse_listen
from feedwork.metrics import MetricsEndpoint


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:9100", "[::1]:0", "0.0.0.0:65535"])
def test_parse_listen_accepts_host_and_port(listen: str) -> None:
    assert parse_listen(f" {listen} ") == listen


@pytest.mark.parametrize("listen", ["", "9100", ":9100", "host", "host:", "h:65536", "::1:9100"])
def test_parse_listen_refuses_anything_else(listen: str) -> None:
    with pytest.raises(ValueError, match="want HOST:PORT"):
        parse_listen(listen)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("127.0.0.1:0", "127.0.0.1"),
        pytest.param(
            "[::1]:0",
            "[::1]",
            marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"),
        ),
    ],
)
def test_the_endpoint_serves_on_ipv4_and_ipv6(listen: str, host: str) -> None:
    endpoint = MetricsEndpoint(listen, CollectorRegistry())
    try:
        with urllib.request.urlopen(f"http://{host}:{endpoint.port}/metrics", timeout=5) as reply:
            assert reply.status == 200
    finally:
        endpoint.close()
