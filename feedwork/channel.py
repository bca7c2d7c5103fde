"""The one place where feedwork's clients turn a feeder target into a gRPC channel.

`FeederClient`, `AsyncFeederClient`, the `Worker`, the CLI (through `FeederClient`) and the
healthcheck all build their channels here, so what a target may be, how calls spread over
several feeders, how soon a dead feeder is found again (reconnect backoff), how soon a
silent one is noticed (keepalive), and TLS and API keys (`feedwork.credentials`) are
decided once.

A target is one of:

- `HOST:PORT`: gRPC's DNS resolver (`dns:///HOST:PORT`). Every address the name resolves
  to gets calls, and gRPC looks the name up again when a connection fails.
- a list `HOST:PORT,HOST:PORT,...` (`[::1]:50051` for IPv6): names are looked up once,
  here, and the addresses become one of gRPC's static address lists (`ipv4:` or `ipv6:`,
  IPv4 written as `::ffff:a.b.c.d` when the families are mixed). gRPC has no resolver for
  several names, and Python cannot register one; a name whose addresses change is better
  given alone, as one DNS name with several addresses.
- a gRPC URI (`dns:`, `ipv4:`, `ipv6:`, `unix:`, `unix-abstract:`, `vsock:`), as is,
  once checked: a `dns:` name, `ipv4:` and `ipv6:` addresses need a port as well.

Every address needs its port (1 to 65535): a target without one is refused, never given
a default (gRPC's own default, for a `dns:` name without a port, is 443, and the feeder's
50051 would hide a typo). Targets are checked when a client or worker is made, so a bad
one fails at once with `TargetError`, not after retrying a connection that cannot work.

Calls spread over the addresses with gRPC's `round_robin` policy, which only picks
connections that are up: a dead feeder drops out as soon as its connection breaks, and
the retries of feedwork.retry land on the others. A feeder that is up but cannot serve
(it lost its database, or drains for shutdown) answers UNAVAILABLE, and the retry goes to
the next address in turn.

No client-side health checking (`healthCheckConfig`), although it would keep calls off
such a feeder before they fail: with grpcio 1.85.3 it crashed client processes
(a segmentation fault in gRPC's health client, on a connectivity change of a subchannel,
while feeders were killed and restarted under load; three crashes in a day of fault and
failover test runs). Its cost was one failed call and a retry per call sent to such a
feeder, which is what we pay now.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from feedwork.credentials import ClientSecurity, SyncMetadataInterceptor, aio_interceptors

log = logging.getLogger("feedwork.channel")

TARGET_FORMS = (
    "HOST:PORT, a list HOST:PORT,HOST:PORT,... ([::1]:PORT for IPv6), "
    "or a gRPC URI such as dns:///HOST:PORT, ipv4:IP:PORT,IP:PORT or unix:PATH"
)

# The port `python -m feeder` listens on by default. A target must name its port: it is
# never filled in (gRPC itself would dial 443).
DEFAULT_PORT = 50051

# Schemes of the resolvers grpcio ships: a target that starts with one is a gRPC URI.
URI_SCHEMES = frozenset({"dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock"})

SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

# Keepalive: while a call is open (a worker's Consume stream, a long poll), the client pings
# the feeder every KEEPALIVE_TIME seconds and drops the connection when a ping is not
# answered within KEEPALIVE_TIMEOUT, so a silent partition ends the call with UNAVAILABLE
# (and the client reconnects) within 40 s instead of hanging until TCP gives up (minutes
# to hours). The feeder accepts a ping at most every 10 s (MIN_CLIENT_PING_INTERVAL_MS in
# feeder/server/app.py) and sends GOAWAY "too_many_pings" to a client that pings more
# often: keep KEEPALIVE_TIME above that. No pings without a call: an idle producer's next
# call finds out (and is retried) instead. Read when each channel is made (tests shorten
# them).
KEEPALIVE_TIME = 30.0
KEEPALIVE_TIMEOUT = 10.0


def _keepalive() -> tuple[tuple[str, Any], ...]:
    return (
        ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
        ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        # Any ping in flight (gRPC's bandwidth probes too, which the keepalive ping waits
        # on rather than send its own) is given the same time: by default 60 s.
        ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
        # gRPC stops pinging after 2 pings without data by default: an idle stream
        # would be watched for a minute, then no longer.
        ("grpc.http2.max_pings_without_data", 0),
    )


CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # Payloads and results may be up to a few MiB each and come in batches.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # gRPC's own reconnect backoff grows to 2 minutes by default; a restarted feeder
    # should be found within seconds.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.service_config", SERVICE_CONFIG),
    # Ours, not one from a DNS TXT record: a record could switch spreading off.
    ("grpc.service_config_disable_resolution", 1),
    *_keepalive(),
)

# Host names as DNS and container runtimes spell them (underscores included).
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")

Lookup = Callable[[str, int], Sequence[str]]


class TargetError(ValueError):
    """A feeder target that is malformed, or whose feeders cannot be found."""


@dataclass(frozen=True, slots=True)
class Address:
    host: str  # a name or an IP address (IPv6 without brackets)
    port: int


def check_target(target: str) -> str:
    """`target` unchanged if it is well formed, else `TargetError`. Looks nothing up."""
    _parse(target)
    return target


def names_one_address(target: str) -> bool:
    """True when `target` can only ever mean one address (an IP address and port, a Unix
    socket): a client then has no choice of feeder to wait for. Looks nothing up."""
    parsed = _parse(target)
    if isinstance(parsed, list):
        return len(parsed) == 1 and _ip(parsed[0].host) is not None
    scheme, _, rest = parsed.partition(":")
    if scheme in ("ipv4", "ipv6"):
        return "," not in rest
    return scheme != "dns"  # unix, unix-abstract, vsock: one socket


def lookup_host(host: str, port: int) -> list[str]:
    """The IP addresses of `host`, from the system resolver (hosts file, DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


def resolve_target(target: str, *, lookup: Lookup = lookup_host) -> str:
    """The gRPC target URI for a feeder target (see the module docstring).

    Only the names in a list are looked up (with `lookup`, default `lookup_host`); a name
    that does not resolve is left out with a warning, and `TargetError` is raised when
    none does. A gRPC URI, this function's own result included, comes back unchanged.
    """
    parsed = _parse(target)
    if isinstance(parsed, str):
        return parsed
    if len(parsed) == 1:
        return f"dns:///{_host_port(parsed[0].host, parsed[0].port)}"
    found: dict[tuple[str, int], None] = {}  # ordered and without duplicates
    unresolved: list[str] = []
    for address in parsed:
        ip = _ip(address.host)
        if ip is not None:
            found[str(ip), address.port] = None
            continue
        try:
            hosts = lookup(address.host, address.port)
        except OSError as exc:
            unresolved.append(f"{address.host} ({exc.strerror or exc})")
            continue
        if not hosts:
            unresolved.append(f"{address.host} (no address)")
        found.update(((str(ipaddress.ip_address(host)), address.port), None) for host in hosts)
    if not found:
        raise TargetError(
            f"feeder target {target!r}: no address found for " + ", ".join(unresolved)
        )
    if unresolved:
        log.warning("feeder target %r: left out %s", target, ", ".join(unresolved))
    return _address_list(list(found))


def channel_options(extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """`CHANNEL_OPTIONS` (keepalive as KEEPALIVE_TIME and KEEPALIVE_TIMEOUT are now), with
    any of them replaced by `extra` (a later value wins)."""
    return list({**dict(CHANNEL_OPTIONS), **dict(_keepalive()), **dict(extra)}.items())


def sync_channel(
    target: str,
    *,
    security: ClientSecurity | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A blocking channel to the feeders of `target` (see the module docstring), with the
    TLS and API key of `security` (default: the FEEDWORK_* variables'). Raises
    `TargetError` or `feedwork.credentials.CredentialsError` on bad options."""
    plan = _Plan.make(target, security, options)
    if plan.credentials is None:
        channel = grpc.insecure_channel(plan.uri, options=plan.options)
    else:
        channel = grpc.secure_channel(plan.uri, plan.credentials, options=plan.options)
    if not plan.metadata:
        return channel
    return grpc.intercept_channel(channel, SyncMetadataInterceptor(plan.metadata))


def aio_channel(
    target: str,
    *,
    security: ClientSecurity | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """The asyncio twin of `sync_channel`; create it inside the loop that uses it. Names
    in a list are looked up here, blocking: call `resolve_target` in a thread first to
    avoid that (its result is passed through)."""
    plan = _Plan.make(target, security, options)
    interceptors = aio_interceptors(plan.metadata) if plan.metadata else None
    if plan.credentials is None:
        return grpc.aio.insecure_channel(plan.uri, options=plan.options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        plan.uri, plan.credentials, options=plan.options, interceptors=interceptors
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    uri: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]
    options: list[tuple[str, Any]]

    @classmethod
    def make(
        cls, target: str, security: ClientSecurity | None, options: Iterable[tuple[str, Any]]
    ) -> _Plan:
        uri = resolve_target(target)
        security = security if security is not None else ClientSecurity.from_env()
        return cls(
            uri,
            security.channel_credentials(uri),
            security.metadata(),
            channel_options([*security.channel_options(), *options]),
        )


# ---------------------------------------------------------------------------------------
# parsing


def _parse(target: str) -> str | list[Address]:
    """A gRPC URI as is, or the addresses of HOST:PORT[,HOST:PORT...]."""
    if not isinstance(target, str) or not target.strip():
        raise _error(target, "it is empty")
    text = target.strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme in URI_SCHEMES:
        if not rest.strip("/") or any(char.isspace() for char in text):
            raise _error(target, f"incomplete or malformed {scheme}: URI")
        try:
            _check_uri(scheme, rest)
        except ValueError as exc:
            raise _error(target, f"{scheme}: URI: {exc}") from None
        return text
    entries = [entry.strip() for entry in text.split(",")]
    if "" in entries:
        raise _error(target, "empty entry in the list")
    addresses = []
    for entry in entries:
        try:
            addresses.append(_address(entry))
        except ValueError as exc:
            where = f"{entry!r}: " if len(entries) > 1 else ""
            raise _error(target, f"{where}{exc}") from None
    return addresses


def _check_uri(scheme: str, rest: str) -> None:
    """Refuses what gRPC would take and then dial wrongly (dns: without a port dials 443)
    or only fail on at the first call (ipv4: without a port, a port out of range)."""
    if scheme == "dns":
        if rest.startswith("//"):  # dns://[DNS-SERVER]/HOST:PORT
            _server, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError("want dns:///HOST:PORT or dns://DNS-SERVER/HOST:PORT")
        _address(rest)
    elif scheme in ("ipv4", "ipv6"):
        family = ipaddress.IPv4Address if scheme == "ipv4" else ipaddress.IPv6Address
        for entry in rest.split(","):
            address = _address(entry)
            if not isinstance(_ip(address.host), family):
                raise ValueError(f"{address.host!r} is not an {scheme.upper()} address")
    elif scheme == "vsock":
        cid, colon, port = rest.partition(":")
        if not (cid.isdecimal() and colon and port.isdecimal()):
            raise ValueError("want vsock:CID:PORT")


def _address(entry: str) -> Address:
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket:
            raise ValueError("no closing ']'")
        if not isinstance(_ip(host), ipaddress.IPv6Address):
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
        colon, port = (":", rest[1:]) if rest.startswith(":") else ("", rest)
    else:
        host, colon, port = entry.rpartition(":")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets, as in [{host}]:{port}")
        if not host and colon:
            raise ValueError("no host")
        if host and _ip(host) is None and not _HOST_NAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name")
    if not colon:
        # Refused, not defaulted: gRPC would dial 443, and a guessed port hides a typo.
        example = _host_port(host or port, DEFAULT_PORT)
        raise ValueError(
            f"no port (feeders listen on {DEFAULT_PORT} unless told otherwise: {example})"
        )
    if not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return Address(host, int(port))


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _address_list(addresses: list[tuple[str, int]]) -> str:
    ips = [(ipaddress.ip_address(host), port) for host, port in addresses]
    if all(isinstance(ip, ipaddress.IPv4Address) for ip, _ in ips):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips)
    # One list holds one family: IPv4 addresses join IPv6 ones as IPv4-mapped addresses,
    # which gRPC connects to over IPv4 (its dual-stack socket code falls back to AF_INET
    # for them on a host without IPv6).
    return "ipv6:" + ",".join(f"[{_ipv6_text(ip)}]:{port}" for ip, port in ips)


def _ipv6_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    text = f"::ffff:{ip}" if isinstance(ip, ipaddress.IPv4Address) else str(ip)
    return text.replace("%", "%25")  # a zone (fe80::1%eth0), percent-encoded in the URI


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(target: object, reason: str) -> TargetError:
    return TargetError(f"bad feeder target {target!r}: {reason} (want {TARGET_FORMS})")
