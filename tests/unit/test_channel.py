"""Feeder targets (feedwork.channel): what each form becomes for gRPC, and what is refused."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence

import pytest

from feedwork.channel import (
    CHANNEL_OPTIONS,
    TargetError,
    channel_options,
    check_target,
    lookup_host,
    names_one_address,
    resolve_target,
)

HOSTS = {
    "feeder-a": ["10.0.0.1", "10.0.0.2"],
    "feeder-b": ["10.0.0.3"],
    "feeder-v6": ["fd00::3"],
    "nowhere": [],
}


def fake_lookup(host: str, port: int) -> Sequence[str]:
    if host not in HOSTS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return HOSTS[host]


def no_lookup(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"looked up {host}")


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        # One address: gRPC's DNS resolver, which spreads over every address of the name.
        ("localhost:50051", "dns:///localhost:50051"),
        ("feeder.example.com:50051", "dns:///feeder.example.com:50051"),
        ("10.0.0.1:50051", "dns:///10.0.0.1:50051"),
        ("[::1]:50051", "dns:///[::1]:50051"),
        ("  feeder_1:7  ", "dns:///feeder_1:7"),
        # A list of addresses: one static list, IPv4 on its own, else all as IPv6.
        ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("10.0.0.1:1, [::1]:2", "ipv6:[::ffff:10.0.0.1]:1,[::1]:2"),
        ("[fe80::1%eth0]:1,[::1]:2", "ipv6:[fe80::1%25eth0]:1,[::1]:2"),
        # Names in a list: their addresses, in order, each once.
        ("feeder-a:1,feeder-b:2", "ipv4:10.0.0.1:1,10.0.0.2:1,10.0.0.3:2"),
        ("feeder-a:1,10.0.0.1:1,feeder-a:1", "ipv4:10.0.0.1:1,10.0.0.2:1"),
        ("feeder-b:1,feeder-v6:1", "ipv6:[::ffff:10.0.0.3]:1,[fd00::3]:1"),
        # gRPC URIs, as they are.
        ("dns:///feeder:50051", "dns:///feeder:50051"),
        ("dns://10.0.0.53/feeder:50051", "dns://10.0.0.53/feeder:50051"),
        ("ipv4:10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
        ("ipv6:[::1]:1", "ipv6:[::1]:1"),
        ("unix:/run/feedwork.sock", "unix:/run/feedwork.sock"),
        ("unix-abstract:feedwork", "unix-abstract:feedwork"),
        ("unix:///run/feedwork.sock", "unix:///run/feedwork.sock"),
        ("dns:feeder:50051", "dns:feeder:50051"),
        ("dns:///[::1]:50051", "dns:///[::1]:50051"),
        ("ipv6:[fe80::1%25eth0]:1,[::1]:2", "ipv6:[fe80::1%25eth0]:1,[::1]:2"),
        ("vsock:3:50051", "vsock:3:50051"),
    ],
)
def test_targets_become_grpc_uris(target: str, uri: str) -> None:
    assert resolve_target(target, lookup=fake_lookup) == uri
    assert check_target(target) == target  # accepted as given, nothing looked up
    # A resolved target is a URI, and comes back as it is (the worker resolves in a
    # thread first, then builds its channel from the result).
    assert resolve_target(uri, lookup=no_lookup) == uri


@pytest.mark.parametrize(
    "target", ["feeder:1", "10.0.0.1:1,[::1]:2", "dns:///feeder:1", "ipv4:10.0.0.1:1"]
)
def test_only_names_in_a_list_are_looked_up(target: str) -> None:
    resolve_target(target, lookup=no_lookup)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("", "it is empty"),
        ("   ", "it is empty"),
        ("feeder", "no port (feeders listen on 50051 unless told otherwise: feeder:50051)"),
        ("127.0.0.1", "no port (feeders listen on 50051 unless told otherwise: 127.0.0.1:50051)"),
        ("localhost:99999", "port '99999' is not a number from 1 to 65535"),
        ("127.0.0.1:notaport", "port 'notaport' is not a number from 1 to 65535"),
        ("[::1]", "no port"),
        ("feeder:", "port '' is not a number"),
        ("feeder:0", "port '0' is not a number from 1 to 65535"),
        ("feeder:65536", "port '65536'"),
        ("feeder:http", "port 'http'"),
        (":50051", "no host"),
        ("::1:50051", "write IPv6 addresses in brackets, as in [::1]:50051"),
        ("[::1:50051", "no closing ']'"),
        ("[10.0.0.1]:1", "'10.0.0.1' in brackets is not an IPv6 address"),
        ("fee der:1", "'fee der' is not a host name"),
        ("feeder/x:1", "'feeder/x' is not a host name"),
        ("a:1,,b:2", "empty entry in the list"),
        ("a:1,", "empty entry in the list"),
        ("a:1,b", "'b': no port"),
        ("dns:///", "incomplete or malformed dns: URI"),
        ("unix:", "incomplete or malformed unix: URI"),
        ("ipv4:10.0.0.1:1, 10.0.0.2:2", "incomplete or malformed ipv4: URI"),
        # gRPC URIs are checked too: gRPC would dial port 443 for the first, and fail the
        # others only at the first call (or, for the dns: ones, retry until the deadline).
        ("dns:///127.0.0.1", "dns: URI: no port (feeders listen on 50051"),
        ("dns:feeder", "dns: URI: no port"),
        ("dns://10.0.0.53/feeder", "dns: URI: no port"),
        ("dns://10.0.0.53", "dns: URI: want dns:///HOST:PORT or dns://DNS-SERVER/HOST:PORT"),
        ("dns:///feeder:99999", "dns: URI: port '99999' is not a number from 1 to 65535"),
        ("dns:///127.0.0.1:notaport", "dns: URI: port 'notaport'"),
        ("ipv4:127.0.0.1", "ipv4: URI: no port"),
        ("ipv4:127.0.0.1:notaport", "ipv4: URI: port 'notaport'"),
        ("ipv4:10.0.0.1:1,10.0.0.2", "ipv4: URI: no port"),
        ("ipv4:feeder:1", "ipv4: URI: 'feeder' is not an IPV4 address"),
        ("ipv4:[::1]:1", "ipv4: URI: '::1' is not an IPV4 address"),
        ("ipv6:[::1]", "ipv6: URI: no port"),
        ("ipv6:10.0.0.1:1", "ipv6: URI: '10.0.0.1' is not an IPV6 address"),
        ("vsock:3", "vsock: URI: want vsock:CID:PORT"),
    ],
)
def test_malformed_targets_are_refused_with_the_reason(target: str, reason: str) -> None:
    for attempt in (check_target, resolve_target):
        with pytest.raises(TargetError) as refused:
            attempt(target)
        message = str(refused.value)
        assert message.startswith(f"bad feeder target {target!r}: {reason}")
        assert "want HOST:PORT, a list HOST:PORT,HOST:PORT" in message
    assert issubclass(TargetError, ValueError)


def test_names_that_do_not_resolve_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_target("gone:1,feeder-b:2,nowhere:3", lookup=fake_lookup) == "ipv4:10.0.0.3:2"
    [warning] = caplog.records
    assert "left out gone (Name or service not known), nowhere (no address)" in warning.message


def test_a_list_of_names_none_of_which_resolves_is_refused() -> None:
    with pytest.raises(TargetError, match=r"no address found for gone \(Name or service"):
        resolve_target("gone:1,nowhere:2", lookup=fake_lookup)


def test_the_system_resolver_finds_localhost() -> None:
    assert "127.0.0.1" in lookup_host("localhost", 50051)
    assert resolve_target("localhost:1,127.0.0.2:2").startswith(("ipv4:", "ipv6:"))


@pytest.mark.parametrize(
    ("target", "one"),
    [
        ("10.0.0.1:1", True),
        ("[::1]:1", True),
        ("ipv4:10.0.0.1:1", True),
        ("unix:/run/feedwork.sock", True),
        ("feeder:1", False),  # a name may have several addresses
        ("dns:///10.0.0.1:1", False),
        ("10.0.0.1:1,10.0.0.2:1", False),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", False),
    ],
)
def test_targets_that_name_one_address(target: str, one: bool) -> None:
    assert names_one_address(target) is one


def test_every_channel_spreads_calls() -> None:
    options = dict(channel_options())
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    # No client-side health checking: it crashes grpcio 1.85.3 (see feedwork.channel).
    assert "healthCheckConfig" not in config
    assert options["grpc.service_config_disable_resolution"] == 1
    # A dead feeder's address is tried again within 2 s, not gRPC's default 2 minutes.
    assert options["grpc.max_reconnect_backoff_ms"] <= 2000


def test_channel_options_may_be_replaced_one_by_one() -> None:
    options = channel_options([("grpc.max_receive_message_length", 1024), ("grpc.x", 1)])
    assert len(options) == len(CHANNEL_OPTIONS) + 1
    assert dict(options)["grpc.max_receive_message_length"] == 1024
    assert dict(options)["grpc.max_reconnect_backoff_ms"] == 2000
