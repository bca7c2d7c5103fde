"""Clients' TLS and API key options (feedwork/credentials.py): keywords over FEEDWORK_*
variables, files read and checked at once, and no key sent in clear text off loopback."""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
import pytest

from feedwork import credentials
from feedwork.credentials import ClientSecurity, CredentialsError, is_loopback_target


def test_keywords_beat_variables_and_unset_ones_come_from_them(tmp_path: Path) -> None:
    env = {"FEEDWORK_TLS_CA": "/env/ca.pem", "FEEDWORK_API_KEY": "env-key", "FEEDWORK_TLS": "0"}
    security = ClientSecurity.from_env(env, api_key="given", tls_server_name=None)
    assert security.tls_ca == "/env/ca.pem" and security.api_key == "given"
    assert security.uses_tls and not security.tls
    assert ClientSecurity.from_env({"FEEDWORK_TLS": "yes"}).uses_tls
    with pytest.raises(CredentialsError, match="FEEDWORK_TLS='maybe'"):
        ClientSecurity.from_env({"FEEDWORK_TLS": "maybe"})
    with pytest.raises(TypeError, match="tls_cafile"):
        ClientSecurity.from_env({}, tls_cafile="x")


def test_flags_fill_in_from_variables() -> None:
    parser = argparse.ArgumentParser()
    credentials.add_arguments(parser)
    args = parser.parse_args(["--tls-ca", "ca.pem", "--tls"])
    security = credentials.from_args(args, {"FEEDWORK_API_KEY_FILE": "/run/key"})
    assert (security.tls, security.tls_ca, security.api_key_file) == (True, "ca.pem", "/run/key")


def test_key_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("fwk_0000aaaa_secret\n")
    assert ClientSecurity(api_key_file=str(path)).key() == "fwk_0000aaaa_secret"
    path.write_text("two words\n")
    with pytest.raises(CredentialsError, match="one key on one line"):
        ClientSecurity(api_key_file=str(path)).key()
    with pytest.raises(CredentialsError, match="api_key_file '/nonexistent'"):
        ClientSecurity(api_key_file="/nonexistent").check()
    with pytest.raises(CredentialsError, match="not both"):
        ClientSecurity(api_key="a", api_key_file=str(path)).key()
    with pytest.raises(CredentialsError, match="tls_ca '/nonexistent'"):
        ClientSecurity(tls_ca="/nonexistent").check()
    with pytest.raises(CredentialsError, match="go together"):
        ClientSecurity(tls_client_cert=str(path)).check()


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("dns:///localhost:50051", True),
        ("dns:///127.0.0.1:50051", True),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", True),
        ("ipv6:[::1]:1,[::ffff:127.0.0.1]:2", True),
        ("unix:/run/feeder.sock", True),
        ("dns:///feeder:50051", False),
        ("ipv4:127.0.0.1:1,10.0.0.1:2", False),
        ("ipv6:[::ffff:10.0.0.1]:2", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback_target(target) is loopback


def test_a_key_goes_only_over_tls_or_loopback() -> None:
    key_only = ClientSecurity(api_key="fwk_0000aaaa_secret")
    assert key_only.channel_credentials("dns:///localhost:1") is not None
    with pytest.raises(CredentialsError, match="refusing to send a key in clear text"):
        key_only.channel_credentials("dns:///feeder.example.com:50051")
    assert ClientSecurity().channel_credentials("dns:///feeder.example.com:1") is None
    with_tls = ClientSecurity(api_key="fwk_0000aaaa_secret", tls=True)
    assert isinstance(
        with_tls.channel_credentials("dns:///feeder.example.com:1"), grpc.ChannelCredentials
    )
    with pytest.raises(CredentialsError, match="tls_server_name is needed"):
        with_tls.channel_credentials("ipv4:10.0.0.1:1,10.0.0.2:1")
