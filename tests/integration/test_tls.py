"""TLS and mTLS on a real feeder, with the clients' own channel factory: what connects,
what does not (plaintext, another CA, an expired certificate, no client certificate), a
certificate renewed without a restart, and client certificates as identities."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from feeder.config import Settings
from feeder.server import tls
from feeder.server.app import FeederServer, StartupError
from feedwork import AsyncFeederClient, PermissionDenied, Unauthenticated, Unavailable, devcerts
from feedwork.channel import aio_channel
from feedwork.credentials import ClientSecurity

pytestmark = pytest.mark.timeout(60)

NOW = datetime.datetime.now(datetime.UTC)
EXPIRED = {
    "not_before": NOW - datetime.timedelta(days=10),
    "not_after": NOW - datetime.timedelta(days=1),
}


@dataclasses.dataclass
class Pki:
    """Files of a CA, a feeder certificate for localhost, and client certificates."""

    dir: Path
    ca: devcerts.Issued

    def write(self, name: str, issued: devcerts.Issued) -> tuple[str, str]:
        cert, key = self.dir / f"{name}.pem", self.dir / f"{name}-key.pem"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        os.chmod(key, 0o600)
        return str(cert), str(key)

    def client(self, identity: str, **validity: datetime.datetime) -> tuple[str, str]:
        return self.write(
            f"client-{identity}",
            devcerts.make_client_cert(ca=self.ca, identity=identity, **validity),
        )

    @property
    def ca_file(self) -> str:
        path = self.dir / "ca.pem"
        if not path.exists():
            path.write_bytes(self.ca.cert_pem)
        return str(path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    made = Pki(tmp_path, devcerts.make_ca())
    made.write("feeder", devcerts.make_server_cert(ca=made.ca))
    return made


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[object]:
    servers: list[FeederServer] = []

    async def run(**fields: object) -> str:
        settings = Settings(listen="127.0.0.1:0", db=":memory:", shutdown_grace=0.5, **fields)
        server = FeederServer(settings)
        port = await server.start()
        servers.append(server)
        return f"localhost:{port}"

    yield run
    for server in servers:
        await server.stop(0)


def tls_settings(pki: Pki, **more: object) -> dict[str, object]:
    return {
        "tls_cert": str(pki.dir / "feeder.pem"),
        "tls_key": str(pki.dir / "feeder-key.pem"),
        **more,
    }


async def submit(target: str, **security: object) -> str:
    async with AsyncFeederClient(target, max_retry_delay=0.5, timeout=2.0, **security) as client:
        return (await client.submit(b"x", queue="jobs")).task_id


async def test_tls_client_connects_and_plaintext_or_wrong_ca_does_not(
    pki: Pki, start: object, tmp_path: Path
) -> None:
    target = await start(**tls_settings(pki))
    assert await submit(target, tls_ca=pki.ca_file) == "1"
    with pytest.raises(Unavailable):
        await submit(target)  # plaintext against TLS: the handshake fails
    other = Pki(tmp_path / "other", devcerts.make_ca())
    other.dir.mkdir()
    with pytest.raises(Unavailable):
        await submit(target, tls_ca=other.ca_file)
    # Nothing got in but the first task.
    async with AsyncFeederClient(target, tls_ca=pki.ca_file) as client:
        assert (await client.stats()).totals.submitted == 1


async def test_expired_feeder_certificate_is_refused_by_clients(pki: Pki, start: object) -> None:
    pki.write("feeder", devcerts.make_server_cert(ca=pki.ca, **EXPIRED))
    target = await start(**tls_settings(pki))
    with pytest.raises(Unavailable):
        await submit(target, tls_ca=pki.ca_file)


async def test_certificate_renewed_without_restart(pki: Pki, start: object, tmp_path: Path) -> None:
    target = await start(**tls_settings(pki))
    assert await submit(target, tls_ca=pki.ca_file)
    renewed = Pki(tmp_path / "renewed", devcerts.make_ca())
    renewed.dir.mkdir()
    issued = devcerts.make_server_cert(ca=renewed.ca)
    # The key first, then the certificate: in between the pair does not match, and the
    # feeder keeps serving the old one.
    (pki.dir / "feeder-key.pem").write_bytes(issued.key_pem)
    await asyncio.sleep(tls.RECHECK_SECONDS + 0.2)
    assert await submit(target, tls_ca=pki.ca_file)
    (pki.dir / "feeder.pem").write_bytes(issued.cert_pem)
    await asyncio.sleep(tls.RECHECK_SECONDS + 0.2)
    assert await submit(target, tls_ca=renewed.ca_file)  # a new connection, the new cert
    with pytest.raises(Unavailable):
        await submit(target, tls_ca=pki.ca_file)


async def test_mtls_requires_a_client_certificate_of_the_ca(
    pki: Pki, start: object, tmp_path: Path
) -> None:
    target = await start(**tls_settings(pki, tls_client_ca=pki.ca_file))
    cert, key = pki.client("anyone")
    # mTLS without an access list: any certificate of the client CA may do everything.
    assert await submit(target, tls_ca=pki.ca_file, tls_client_cert=cert, tls_client_key=key)
    with pytest.raises(Unavailable):
        await submit(target, tls_ca=pki.ca_file)  # no client certificate
    expired_cert, expired_key = pki.client("late", **EXPIRED)
    with pytest.raises(Unavailable):
        await submit(
            target, tls_ca=pki.ca_file, tls_client_cert=expired_cert, tls_client_key=expired_key
        )
    stranger = Pki(tmp_path / "stranger", devcerts.make_ca())
    stranger.dir.mkdir()
    cert, key = stranger.client("anyone")
    with pytest.raises(Unavailable):
        await submit(target, tls_ca=pki.ca_file, tls_client_cert=cert, tls_client_key=key)


async def test_certificate_identities_take_their_roles_from_the_access_list(
    pki: Pki, start: object
) -> None:
    access = "ingest cert:ingest producer:jobs\nreader cert:reader producer:elsewhere"
    target = await start(**tls_settings(pki, tls_client_ca=pki.ca_file, auth=access))
    ca = pki.ca_file
    cert, key = pki.client("ingest")
    assert await submit(target, tls_ca=ca, tls_client_cert=cert, tls_client_key=key)
    cert, key = pki.client("reader")
    with pytest.raises(PermissionDenied, match='"reader"'):
        await submit(target, tls_ca=ca, tls_client_cert=cert, tls_client_key=key)
    cert, key = pki.client("nobody")
    with pytest.raises(Unauthenticated, match='"nobody" has no entry'):
        await submit(target, tls_ca=ca, tls_client_cert=cert, tls_client_key=key)


async def test_health_is_open_over_tls_without_a_key(pki: Pki, start: object) -> None:
    from feedwork.healthcheck import check

    target = await start(**tls_settings(pki, auth="x sha256:" + "0" * 64 + " admin"))
    security = ClientSecurity(tls_ca=pki.ca_file)
    assert await asyncio.to_thread(check, target, security=security)
    assert not await asyncio.to_thread(check, target, security=ClientSecurity())


def test_bad_certificate_files_stop_the_feeder_at_start(pki: Pki) -> None:
    (pki.dir / "feeder-key.pem").write_bytes(devcerts.make_ca().key_pem)  # not the cert's key
    with pytest.raises(StartupError, match="not a PEM certificate chain and its private key"):
        FeederServer(Settings(listen="127.0.0.1:0", db=":memory:", **tls_settings(pki)))
    with pytest.raises(StartupError, match="No such file"):
        FeederServer(
            Settings(listen="127.0.0.1:0", db=":memory:", tls_cert="/nonexistent", tls_key="/x")
        )


async def test_a_list_of_feeders_over_tls_needs_a_server_name(pki: Pki, start: object) -> None:
    one = await start(**tls_settings(pki))
    two = await start(**tls_settings(pki))
    ports = [t.rsplit(":", 1)[1] for t in (one, two)]
    target = f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    from feedwork.credentials import CredentialsError

    with pytest.raises(CredentialsError, match="tls_server_name"):
        await submit(target, tls_ca=pki.ca_file)
    assert await submit(target, tls_ca=pki.ca_file, tls_server_name="localhost")
    async with aio_channel(
        target, security=ClientSecurity(tls_ca=pki.ca_file, tls_server_name="localhost")
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 5)
        assert channel.get_state() == grpc.ChannelConnectivity.READY
