"""Development certificates: a CA of one's own, a feeder certificate, client certificates,
and (optionally) API keys with the auth file that grants them. For tests and local setups,
never for production: the CA's key sits next to the certificates it signed.

The functions make certificates in memory (`make_ca`, `make_server_cert`,
`make_client_cert`, each returning an `Issued`: certificate and key, PEM bytes out) so that
tests can make what they need, an expired or a wrongly signed certificate included;
`write_dev_dir` writes a directory of them for `feedwork dev-certs`.

Keys are ECDSA P-256: quick to make (a test makes dozens) and accepted by every TLS stack
gRPC uses. Validity starts five minutes back so that a host whose clock is a little behind
the one that made the certificate still accepts it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from feedwork import apikeys

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 365
CLOCK_SKEW = datetime.timedelta(minutes=5)
# The API keys `write_dev_dir(api_keys=True)` makes: one per role, each for every queue.
KEY_ROLES = ("worker", "producer", "admin")
# Client names become file names (client-NAME.pem): nothing that could leave the directory.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The key, PKCS#8, unencrypted (what gRPC and the feeder's --tls-key read)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class Written:
    """A file `write_dev_dir` wrote, and what it is for."""

    path: Path
    mode: int
    about: str


def make_ca(
    *,
    name: str = "feedwork development CA",
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0). Two calls
    make two unrelated CAs, even with the same name: each has its own key."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days, not_before, not_after)
    usage = _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    builder = (
        _builder(subject, subject, key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(aki, critical=False)
    )
    return Issued(builder.sign(key, hashes.SHA256()), key)


def make_server_cert(
    *,
    ca: Issued,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A feeder's certificate, signed by `ca`, valid for `hosts`: each an IP address (an
    iPAddress SAN) or a DNS name (a dNSName SAN, `*.example.com` allowed). The first host
    is its common name too."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    sans = x509.SubjectAlternativeName([_general_name(host) for host in dict.fromkeys(hosts)])
    return _leaf(
        ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, days, not_before, not_after, sans=sans
    )


def make_client_cert(
    *,
    ca: Issued,
    identity: str,
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A client certificate for mTLS, signed by `ca`: its common name is `identity`, the
    name a feeder's auth file grants roles to (`NAME cert:<identity> ROLE...`)."""
    if not identity:
        raise ValueError("a client certificate needs an identity")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)])
    return _leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, days, not_before, not_after)


def _leaf(
    ca: Issued,
    subject: x509.Name,
    purpose: x509.ObjectIdentifier,
    days: int,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    *,
    sans: x509.SubjectAlternativeName | None = None,
) -> Issued:
    key = _new_key()
    start, end = _validity(days, not_before, not_after)
    ca_key_id = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        _builder(subject, ca.certificate.subject, key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id.value),
            critical=False,
        )
    )
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _validity(
    days: int, not_before: datetime.datetime | None, not_after: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    if not_before is None:
        not_before = datetime.datetime.now(datetime.UTC) - CLOCK_SKEW
    if not_after is None:
        if days < 1:
            raise ValueError(f"days must be at least 1, not {days}")
        not_after = not_before + CLOCK_SKEW + datetime.timedelta(days=days)
    if not_after <= not_before:
        raise ValueError("not_after must come after not_before")
    return not_before, not_after


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() or c in "/:@" for c in host):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return x509.DNSName(host)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- a directory of them ------------------------------------------------------------------


def write_dev_dir(
    *,
    out: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    clients: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    api_keys: bool = False,
    force: bool = False,
) -> list[Written]:
    """Writes a CA, a feeder certificate for `hosts`, a certificate per client name and,
    with `api_keys`, a key per role of `KEY_ROLES` and the auth file granting them. Keys
    are 0600 and certificates 0644 whatever the umask. Raises FileExistsError, before
    writing anything, if a file to write exists and `force` is false; ValueError for a
    bad client name or host."""
    for name in clients:
        if not _CLIENT_NAME.fullmatch(name):
            raise ValueError(
                f"client name {name!r}: letters, digits, '.', '_' and '-' only "
                "(at most 64, not starting with '.', '_' or '-')"
            )
    clients = list(dict.fromkeys(clients))
    plan = _plan(out, hosts, clients, days, api_keys)
    existing = [item.path for item, _ in plan if os.path.lexists(item.path)]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        raise FileExistsError(f"would overwrite {names} (add --force to replace them)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    for item, content in plan:
        _write(item.path, content, item.mode, replace=force)
    return [item for item, _ in plan]


def _plan(
    out: Path, hosts: Sequence[str], clients: Sequence[str], days: int, api_keys: bool
) -> list[tuple[Written, bytes]]:
    """Every file to write and its content, all made before any is written."""
    files: list[tuple[Written, bytes]] = []

    def add(name: str, mode: int, about: str, content: bytes) -> None:
        files.append((Written(out / name, mode, about), content))

    # One validity for all, so that no certificate outlives the CA that signed it.
    start, end = _validity(days, None, None)
    ca = make_ca(not_before=start, not_after=end)
    feeder = make_server_cert(ca=ca, hosts=hosts, not_before=start, not_after=end)
    add("ca.pem", PUBLIC, "CA certificate: clients verify feeders with it", ca.cert_pem)
    add("ca-key.pem", PRIVATE, "CA key: signs more certificates; keep it here", ca.key_pem)
    names = ", ".join(dict.fromkeys(hosts))
    add("feeder.pem", PUBLIC, f"feeder certificate for {names}", feeder.cert_pem)
    add("feeder-key.pem", PRIVATE, "feeder key", feeder.key_pem)
    for name in clients:
        client = make_client_cert(ca=ca, identity=name, not_before=start, not_after=end)
        about = f"client certificate, identity {name} (auth line: NAME cert:{name} ROLE)"
        add(f"client-{name}.pem", PUBLIC, about, client.cert_pem)
        add(f"client-{name}-key.pem", PRIVATE, "its key", client.key_pem)
    if api_keys:
        lines = []
        for role in KEY_ROLES:
            key = apikeys.new_key()
            about = f"API key {apikeys.key_id(key)}, role {role} on every queue"
            # No newline: the file is the key, whether its reader trims it or not.
            add(f"{role}.key", PRIVATE, about, key.encode())
            lines.append(f"{role} {apikeys.key_hash(key)} {role}:*\n")
        about = "the keys' hashes and roles, for the feeder's --auth-file"
        add("auth.txt", PRIVATE, about, "".join(lines).encode())
    return files


def _write(path: Path, content: bytes, mode: int, *, replace: bool) -> None:
    """Writes `content` to a new file of exactly `mode` (the umask only ever removes
    bits, and fchmod sets them all). With `replace`, through a temporary file renamed
    over `path`, so that a reader sees the old file or the new one, never half of one;
    without, O_EXCL: an existing file is never touched."""
    if replace:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            _fill(fd, content, mode)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    else:
        _fill(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), content, mode)


def _fill(fd: int, content: bytes, mode: int) -> None:
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)
        file.write(content)


def usage(*, out: Path, clients: Sequence[str], api_keys: bool) -> str:
    """How to use a directory `write_dev_dir` wrote: the feeder's flags, the clients'
    variables."""
    d = str(out).rstrip("/") or "/"

    def path(name: str) -> str:
        return shlex.quote(os.path.join(d, name))

    feeder = ["python -m feeder --listen 0.0.0.0:50051"]
    feeder.append(f"--tls-cert {path('feeder.pem')} --tls-key {path('feeder-key.pem')}")
    if clients:
        feeder.append(f"--tls-client-ca {path('ca.pem')}")
    if api_keys:
        feeder.append(f"--auth-file {path('auth.txt')}")
    lines = ["feeder:", "  " + " \\\n      ".join(feeder), "clients:"]
    lines.append(f"  export FEEDWORK_TLS_CA={path('ca.pem')}")
    lines.append(
        "  # a target listing several feeders: FEEDWORK_TLS_SERVER_NAME=<a name of feeder.pem>"
    )
    if clients:
        lines.append(f"  export FEEDWORK_TLS_CLIENT_CERT={path(f'client-{clients[0]}.pem')}")
        lines.append(f"  export FEEDWORK_TLS_CLIENT_KEY={path(f'client-{clients[0]}-key.pem')}")
    if api_keys:
        lines.append(
            f"  export FEEDWORK_API_KEY_FILE={path('producer.key')}   # or worker.key, admin.key"
        )
    if not clients:
        lines.append("mTLS: add --client NAME for client certificates")
    if not api_keys:
        lines.append("API keys: add --keys for worker, producer and admin keys and auth.txt")
    return "\n".join(lines)
