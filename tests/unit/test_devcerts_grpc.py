"""The development certificates work for gRPC: real TLS and mTLS handshakes with a gRPC
server on 127.0.0.1 (the standard health service, and a method that answers with the
caller's certificate identity), and the handshakes that must fail do fail: another CA,
an expired certificate, a name the certificate is not for, no client certificate."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from feedwork import devcerts

pytestmark = pytest.mark.timeout(60)

NOW = datetime.datetime.now(datetime.UTC)
EXPIRED_FROM = NOW - datetime.timedelta(days=10)
EXPIRED_UNTIL = NOW - datetime.timedelta(days=1)
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def ca() -> devcerts.Issued:
    return devcerts.make_ca()


@pytest.fixture(scope="module")
def other_ca() -> devcerts.Issued:
    return devcerts.make_ca()


@pytest.fixture(scope="module")
def server_cert(ca: devcerts.Issued) -> devcerts.Issued:
    return devcerts.make_server_cert(ca=ca, hosts=["localhost", "127.0.0.1", "::1", "feeder"])


def _identity(request: bytes, context: grpc.ServicerContext) -> bytes:
    names: list[bytes] = context.auth_context().get("x509_common_name", [b""])
    return names[0]


@contextmanager
def serving(
    server_cert: devcerts.Issued, *, client_ca: devcerts.Issued | None = None
) -> Iterator[int]:
    """A TLS gRPC server on 127.0.0.1; with `client_ca`, one that requires client
    certificates signed by it. Yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    identity = grpc.unary_unary_rpc_method_handler(_identity)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Identity", {"Get": identity})]
    )
    credentials = grpc.ssl_server_credentials(
        [(server_cert.key_pem, server_cert.cert_pem)],
        root_certificates=client_ca.cert_pem if client_ca else None,
        require_client_auth=client_ca is not None,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def call(
    port: int,
    *,
    trust: devcerts.Issued,
    client: devcerts.Issued | None = None,
    target: str | None = None,
    name: str | None = None,
) -> bytes:
    """The caller identity the server saw, after a health check that must say SERVING.
    Raises grpc.RpcError when the handshake fails."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    with grpc.secure_channel(target or f"127.0.0.1:{port}", credentials, options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=TIMEOUT
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        identity: bytes = channel.unary_unary("/test.Identity/Get")(b"", timeout=TIMEOUT)
        return identity


def refused(attempt: Callable[[], object]) -> grpc.StatusCode:
    """The status of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        attempt()
    code: grpc.StatusCode = caught.value.code()
    return code


def test_tls_with_the_generated_ca(ca: devcerts.Issued, server_cert: devcerts.Issued) -> None:
    with serving(server_cert) as port:
        assert call(port, trust=ca) == b""  # verified as 127.0.0.1, an iPAddress SAN
        assert call(port, trust=ca, target=f"localhost:{port}") == b""
        assert call(port, trust=ca, name="feeder") == b""


def test_a_list_of_addresses_verifies_against_one_shared_name(
    ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    # gRPC checks a list target against its whole text ("127.0.0.1:P,127.0.0.1:P"),
    # which no certificate names: such targets need a server name, as the compose TLS
    # profile's workers get one (FEEDWORK_TLS_SERVER_NAME=feeder).
    with serving(server_cert) as port:
        target = f"ipv4:127.0.0.1:{port},127.0.0.1:{port}"
        assert refused(lambda: call(port, trust=ca, target=target)) == grpc.StatusCode.UNAVAILABLE
        assert call(port, trust=ca, target=target, name="feeder") == b""


def test_tls_fails_with_another_ca(other_ca: devcerts.Issued, server_cert: devcerts.Issued) -> None:
    with serving(server_cert) as port:
        assert refused(lambda: call(port, trust=other_ca)) == grpc.StatusCode.UNAVAILABLE


def test_tls_fails_for_a_name_the_certificate_is_not_for(
    ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    with serving(server_cert) as port:
        assert (
            refused(lambda: call(port, trust=ca, name="elsewhere")) == grpc.StatusCode.UNAVAILABLE
        )


def test_tls_fails_with_an_expired_server_certificate(ca: devcerts.Issued) -> None:
    expired = devcerts.make_server_cert(ca=ca, not_before=EXPIRED_FROM, not_after=EXPIRED_UNTIL)
    with serving(expired) as port:
        assert refused(lambda: call(port, trust=ca)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_a_generated_client_certificate(
    ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    alice = devcerts.make_client_cert(ca=ca, identity="alice")
    with serving(server_cert, client_ca=ca) as port:
        assert call(port, trust=ca, client=alice) == b"alice"


def test_mtls_fails_without_a_client_certificate(
    ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    with serving(server_cert, client_ca=ca) as port:
        assert refused(lambda: call(port, trust=ca)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_fails_with_a_client_certificate_of_another_ca(
    ca: devcerts.Issued, other_ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    mallory = devcerts.make_client_cert(ca=other_ca, identity="alice")
    with serving(server_cert, client_ca=ca) as port:
        assert refused(lambda: call(port, trust=ca, client=mallory)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_fails_with_an_expired_client_certificate(
    ca: devcerts.Issued, server_cert: devcerts.Issued
) -> None:
    late = devcerts.make_client_cert(
        ca=ca, identity="alice", not_before=EXPIRED_FROM, not_after=EXPIRED_UNTIL
    )
    with serving(server_cert, client_ca=ca) as port:
        assert refused(lambda: call(port, trust=ca, client=late)) == grpc.StatusCode.UNAVAILABLE
