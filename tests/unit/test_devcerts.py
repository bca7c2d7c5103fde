"""Development certificates and API keys (feedwork.devcerts, feedwork.apikeys,
`feedwork dev-certs`): what is signed by whom, for which names and purposes, until when;
the files written, their modes, and that nothing is overwritten unasked."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from feedwork import apikeys, devcerts
from feedwork.cli import main

NOW = datetime.datetime.now(datetime.UTC)
CERT_FILES = ("ca.pem", "feeder.pem")
KEY_FILES = ("ca-key.pem", "feeder-key.pem")


@pytest.fixture(scope="module")
def ca() -> devcerts.Issued:
    return devcerts.make_ca(name="test CA")


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def purposes(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def is_ca(certificate: x509.Certificate) -> bool:
    return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# -- certificates ---------------------------------------------------------------------------


def test_the_ca_is_a_ca_and_signs_itself(ca: devcerts.Issued) -> None:
    assert is_ca(ca.certificate)
    assert ca.certificate.issuer == ca.certificate.subject
    assert common_name(ca.certificate) == "test CA"
    ca.certificate.verify_directly_issued_by(ca.certificate)


def test_the_ca_signs_the_server_certificate(ca: devcerts.Issued) -> None:
    server = devcerts.make_server_cert(ca=ca)
    server.certificate.verify_directly_issued_by(ca.certificate)
    assert server.certificate.issuer == ca.certificate.subject
    assert not is_ca(server.certificate)
    assert purposes(server.certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert server.certificate.public_key() == server.key.public_key()


def test_an_unrelated_ca_did_not_sign_it(ca: devcerts.Issued) -> None:
    other = devcerts.make_ca(name="test CA")  # the same name, another key
    server = devcerts.make_server_cert(ca=ca)
    with pytest.raises(InvalidSignature):
        server.certificate.verify_directly_issued_by(other.certificate)


def sans(certificate: x509.Certificate) -> tuple[list[str], Sequence[object]]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName), names.get_values_for_type(x509.IPAddress)


def test_the_server_certificate_is_for_loopback_by_default(ca: devcerts.Issued) -> None:
    server = devcerts.make_server_cert(ca=ca)
    dns, ips = sans(server.certificate)
    assert dns == ["localhost"]
    assert ips == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert common_name(server.certificate) == "localhost"


def test_the_server_certificate_names_every_host_once(ca: devcerts.Issued) -> None:
    hosts = ["feeder-1", "*.feeders.internal", "10.1.2.3", "fd00::7", "feeder-1"]
    dns, ips = sans(devcerts.make_server_cert(ca=ca, hosts=hosts).certificate)
    assert dns == ["feeder-1", "*.feeders.internal"]
    assert ips == [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("fd00::7")]


@pytest.mark.parametrize("host", ["", "feeder:50051", "a b", "http://x"])
def test_a_bad_host_is_refused(ca: devcerts.Issued, host: str) -> None:
    with pytest.raises(ValueError):
        devcerts.make_server_cert(ca=ca, hosts=[host])
    with pytest.raises(ValueError):
        devcerts.make_server_cert(ca=ca, hosts=[])


def test_the_client_certificate_names_its_identity_for_client_auth(ca: devcerts.Issued) -> None:
    client = devcerts.make_client_cert(ca=ca, identity="billing-worker")
    client.certificate.verify_directly_issued_by(ca.certificate)
    assert common_name(client.certificate) == "billing-worker"
    assert purposes(client.certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not is_ca(client.certificate)
    with pytest.raises(ValueError):
        devcerts.make_client_cert(ca=ca, identity="")


def test_validity_is_days_from_a_little_before_now(ca: devcerts.Issued) -> None:
    server = devcerts.make_server_cert(ca=ca, days=30).certificate
    now = datetime.datetime.now(datetime.UTC)  # not NOW: the module may be collected long before
    assert server.not_valid_before_utc <= now <= server.not_valid_after_utc
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert datetime.timedelta(days=30) <= lifetime <= datetime.timedelta(days=30, minutes=10)


def test_an_expired_certificate_is_expired(ca: devcerts.Issued) -> None:
    expired = devcerts.make_client_cert(
        ca=ca,
        identity="late",
        not_before=NOW - datetime.timedelta(days=10),
        not_after=NOW - datetime.timedelta(days=1),
    ).certificate
    assert expired.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    expired.verify_directly_issued_by(ca.certificate)  # expired, not forged


def test_validity_must_make_sense(ca: devcerts.Issued) -> None:
    with pytest.raises(ValueError):
        devcerts.make_ca(days=0)
    with pytest.raises(ValueError):
        devcerts.make_server_cert(ca=ca, not_before=NOW, not_after=NOW)


def test_pem_round_trips(ca: devcerts.Issued) -> None:
    assert x509.load_pem_x509_certificate(ca.cert_pem) == ca.certificate
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert key.public_key() == ca.certificate.public_key()
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


# -- API keys -------------------------------------------------------------------------------


def test_an_api_key_round_trips() -> None:
    key = apikeys.new_key()
    prefix, key_id, secret = key.split("_", 2)
    assert prefix == "fwk"
    assert apikeys.key_id(key) == key_id
    assert len(key_id) == 8 and int(key_id, 16) >= 0
    assert len(secret) >= 43  # 32 random bytes, base64
    assert apikeys.key_hash(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert apikeys.new_key() != key


def test_a_secret_may_hold_underscores() -> None:
    key = "fwk_0123abcd_with_under_scores-and-dashes"
    assert apikeys.key_id(key) == "0123abcd"


@pytest.mark.parametrize(
    "text", ["", "fwk_0123abcd", "fwk_0123abc_" + "s" * 43, "xyz_0123abcd_" + "s" * 43]
)
def test_text_that_is_no_key_has_no_id(text: str) -> None:
    with pytest.raises(ValueError):
        apikeys.key_id(text)


# -- the directory --------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o077, 0o000])
def test_the_directory_has_every_file_with_its_mode(tmp_path: Path, mask: int) -> None:
    out = tmp_path / "certs"
    previous = os.umask(mask)
    try:
        written = devcerts.write_dev_dir(out=out, clients=["alice", "bob"], api_keys=True)
    finally:
        os.umask(previous)
    keys = [*KEY_FILES, *(f"client-{n}-key.pem" for n in ("alice", "bob"))]
    keys += ["worker.key", "producer.key", "admin.key", "auth.txt"]
    certs = [*CERT_FILES, "client-alice.pem", "client-bob.pem"]
    assert sorted(p.name for p in out.iterdir()) == sorted(keys + certs)
    assert sorted(item.path.name for item in written) == sorted(keys + certs)
    for name in keys:
        assert mode(out / name) == 0o600, name
    for name in certs:
        assert mode(out / name) == 0o644, name


def test_the_files_belong_together(tmp_path: Path) -> None:
    devcerts.write_dev_dir(out=tmp_path, hosts=["feeder-1", "::1"], clients=["alice"])
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for name in ("feeder", "client-alice"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.not_valid_after_utc <= ca.not_valid_after_utc
        key = serialization.load_pem_private_key(
            (tmp_path / f"{name}-key.pem").read_bytes(), password=None
        )
        assert key.public_key() == cert.public_key()
    feeder = x509.load_pem_x509_certificate((tmp_path / "feeder.pem").read_bytes())
    assert sans(feeder) == (["feeder-1"], [ipaddress.ip_address("::1")])


def test_the_auth_file_grants_each_key_its_role(tmp_path: Path) -> None:
    devcerts.write_dev_dir(out=tmp_path, api_keys=True)
    lines = (tmp_path / "auth.txt").read_text().splitlines()
    assert len(lines) == 3
    for line, role in zip(lines, ("worker", "producer", "admin"), strict=True):
        key = (tmp_path / f"{role}.key").read_text()
        apikeys.key_id(key)  # a key, with nothing around it
        assert line.split() == [role, apikeys.key_hash(key), f"{role}:*"]
    assert len({(tmp_path / f"{r}.key").read_text() for r in devcerts.KEY_ROLES}) == 3


def test_without_keys_there_is_no_auth_file(tmp_path: Path) -> None:
    devcerts.write_dev_dir(out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CERT_FILES + KEY_FILES)


def test_nothing_is_overwritten_unasked(tmp_path: Path) -> None:
    (tmp_path / "feeder-key.pem").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"feeder-key\.pem"):
        devcerts.write_dev_dir(out=tmp_path, api_keys=True)
    # Refused before anything was written.
    assert [p.name for p in tmp_path.iterdir()] == ["feeder-key.pem"]
    assert (tmp_path / "feeder-key.pem").read_bytes() == b"mine"


def test_force_replaces_files_with_the_right_modes(tmp_path: Path) -> None:
    first = tmp_path / "feeder-key.pem"
    first.write_bytes(b"mine")
    first.chmod(0o644)
    devcerts.write_dev_dir(out=tmp_path, force=True)
    assert first.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert mode(first) == 0o600
    ca = (tmp_path / "ca.pem").read_bytes()
    devcerts.write_dev_dir(out=tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != ca
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", "-flag", "", "x" * 65])
def test_a_client_name_stays_a_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        devcerts.write_dev_dir(out=tmp_path / "certs", clients=[name])
    assert not (tmp_path / "certs").exists()


# -- the command ----------------------------------------------------------------------------


def test_the_command_writes_and_says_how_to_use_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    argv = ["dev-certs", "--out", str(out), "--host", "feeder-1", "--client", "alice", "--keys"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("ca.pem", "feeder-key.pem", "client-alice.pem", "auth.txt", "admin.key"):
        assert str(out / name) in printed
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--auth-file"):
        assert flag in printed
    for variable in ("FEEDWORK_TLS_CA=", "FEEDWORK_TLS_CLIENT_CERT=", "FEEDWORK_API_KEY_FILE="):
        assert variable in printed
    feeder = x509.load_pem_x509_certificate((out / "feeder.pem").read_bytes())
    assert sans(feeder)[0] == ["localhost", "feeder-1"]

    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


@pytest.mark.parametrize("bad", [["--days", "0"], ["--client", "../x"], ["--host", "a b"]])
def test_the_command_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    assert main(["dev-certs", "--out", str(tmp_path / "certs"), *bad]) == 2
    assert "feedwork: error:" in capsys.readouterr().err
    assert not (tmp_path / "certs").exists()


def test_other_commands_do_not_load_cryptography() -> None:
    code = (
        "import sys\n"
        "from feedwork.cli import build_parser\n"
        "build_parser().parse_args(['stats'])\n"
        "assert 'cryptography' not in sys.modules, 'cryptography was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
