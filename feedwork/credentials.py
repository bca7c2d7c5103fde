"""How a client proves who it is and checks whom it talks to: TLS and API keys.

Part of the one channel factory (`feedwork.channel` builds every channel with these
credentials). Every client takes the same options, under the same names: keyword
arguments of `FeederClient`, `AsyncFeederClient` and `Worker`, flags of `python -m worker`,
the `feedwork` CLI and the healthcheck, and `FEEDWORK_*` environment variables, which
fill in whatever a keyword or flag leaves unset:

=================  ===================  ==========================  ==========================
keyword            flag                 variable                    meaning
=================  ===================  ==========================  ==========================
tls                --tls                FEEDWORK_TLS=1              TLS, the system's CAs
tls_ca             --tls-ca             FEEDWORK_TLS_CA             CA file to verify feeders
tls_client_cert    --tls-client-cert    FEEDWORK_TLS_CLIENT_CERT    certificate, for mTLS
tls_client_key     --tls-client-key     FEEDWORK_TLS_CLIENT_KEY     its private key
tls_server_name    --tls-server-name    FEEDWORK_TLS_SERVER_NAME    name the feeder's cert has
api_key            --api-key            FEEDWORK_API_KEY            the key itself
api_key_file       --api-key-file       FEEDWORK_API_KEY_FILE       a file holding the key
=================  ===================  ==========================  ==========================

Any `tls_*` option turns TLS on. The API key travels as `authorization: Bearer KEY` call
metadata, added to every call by the channel's interceptors (`feedwork.channel`), and only
over a connection that protects it: TLS, or a loopback connection (gRPC's local
credentials, which refuse to connect anywhere else). A key for a feeder across the
network without TLS is refused here, at once, instead of being sent in clear text.
(gRPC's own call credentials, `access_token_call_credentials`, would do the same but
add 0.5-0.9 ms to every call: they fetch the metadata on another thread.)
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

import grpc

ENV_PREFIX = "FEEDWORK_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class CredentialsError(ValueError):
    """A TLS or API key option is wrong: a file that cannot be read, a key without the
    TLS it needs. The message names the option."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSecurity:
    """The TLS and API key options of one client (see the module docstring)."""

    tls: bool = False
    tls_ca: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_server_name: str | None = None
    api_key: str | None = None
    api_key_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> ClientSecurity:
        """The options in `given` (keyword name -> value; None means not given), each
        one not given taken from its FEEDWORK_* variable."""
        environ = os.environ if environ is None else environ
        unknown = set(given) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(f"unknown security options: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name in OPTION_NAMES:
            value = given.get(name)
            if value is None:
                value = environ.get(env_name(name)) or None
                if name == "tls" and value is not None:
                    value = _flag(env_name(name), value)
            values[name] = value if value is not None else _DEFAULTS[name]
        return cls(**values)

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(
            (self.tls_ca, self.tls_client_cert, self.tls_client_key, self.tls_server_name)
        )

    def key(self) -> str | None:
        """The API key, read from `api_key_file` when that is how it was given."""
        if self.api_key and self.api_key_file:
            raise CredentialsError("give api_key or api_key_file, not both")
        if self.api_key_file:
            text = _read(self.api_key_file, "api_key_file").decode("utf-8", "replace").strip()
            if not text or any(char.isspace() for char in text):
                raise CredentialsError(
                    f"api_key_file {self.api_key_file!r}: want one key on one line"
                )
            return text
        if self.api_key is not None and (
            not self.api_key.strip() or self.api_key != self.api_key.strip()
        ):
            raise CredentialsError("api_key is empty or has spaces around it")
        return self.api_key

    def check(self, target: str | None = None) -> None:
        """Raises `CredentialsError` now for what `channel_credentials` would fail on
        later (a file that cannot be read, options that do not go together), short of
        where the key may be sent."""
        self.key()
        self._check_tls(target)
        for name in ("tls_ca", "tls_client_cert", "tls_client_key"):
            path = getattr(self, name)
            if path:
                _read(path, name)

    def channel_credentials(self, target: str) -> grpc.ChannelCredentials | None:
        """The transport credentials of a channel to `target` (a resolved gRPC URI): TLS,
        gRPC's local credentials for a key on loopback, or None (plaintext, no key). The
        key itself goes in each call's metadata (`metadata`, added by the channel)."""
        key = self.key()
        if self.uses_tls:
            self._check_tls(target)  # the files are read just below
            return grpc.ssl_channel_credentials(
                root_certificates=_read(self.tls_ca, "tls_ca") if self.tls_ca else None,
                private_key=(
                    _read(self.tls_client_key, "tls_client_key") if self.tls_client_key else None
                ),
                certificate_chain=(
                    _read(self.tls_client_cert, "tls_client_cert") if self.tls_client_cert else None
                ),
            )
        if key is None:
            return None
        if not is_loopback_target(target):
            raise CredentialsError(
                f"api_key: refusing to send a key in clear text to {target}; turn TLS on "
                "(tls_ca or tls), or reach the feeder on a loopback address"
            )
        # Local credentials: gRPC itself refuses to connect to a peer not on this host.
        return grpc.local_channel_credentials(_local_type(target))

    def _check_tls(self, target: str | None) -> None:
        if target and self.uses_tls and not self.tls_server_name and _several_addresses(target):
            raise CredentialsError(
                f"tls_server_name is needed with TLS to several feeders ({target}): gRPC "
                "checks each feeder's certificate against one name, the one they share"
            )
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise CredentialsError("tls_client_cert and tls_client_key go together")

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that carries the key (none without one)."""
        key = self.key()
        return () if key is None else (("authorization", f"Bearer {key}"),)

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.uses_tls and self.tls_server_name:
            return [("grpc.ssl_target_name_override", self.tls_server_name)]
        return []


class SecurityOptions(TypedDict, total=False):
    """The security keyword arguments of `FeederClient`, `AsyncFeederClient` and `Worker`
    (`**security: Unpack[SecurityOptions]`): the fields of `ClientSecurity`."""

    tls: bool | None
    tls_ca: str | None
    tls_client_cert: str | None
    tls_client_key: str | None
    tls_server_name: str | None
    api_key: str | None
    api_key_file: str | None


OPTION_NAMES = tuple(field.name for field in fields(ClientSecurity))
_DEFAULTS = {field.name: field.default for field in fields(ClientSecurity)}
_HELP = {
    "tls": "connect with TLS, verifying the feeder with the system's CAs",
    "tls_ca": "CA certificate file (PEM) to verify the feeder with; turns TLS on",
    "tls_client_cert": "client certificate file (PEM), for feeders that require mTLS",
    "tls_client_key": "the client certificate's private key file (PEM)",
    "tls_server_name": "name to expect in the feeder's certificate instead of the target's",
    "api_key": "API key sent with every call (prefer --api-key-file: flags show in ps)",
    "api_key_file": "file holding the API key",
}


_METAVARS = {"tls_server_name": "NAME", "api_key": "KEY"}


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def add_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Adds the security flags (--tls, --tls-ca, ..., --api-key-file) to `parser` (or an
    argument group). Unset flags stay None, for `from_args` to fill from the variables."""
    for name in OPTION_NAMES:
        flag = "--" + name.replace("_", "-")
        help_text = f"{_HELP[name]} [env {env_name(name)}]"
        if name == "tls":
            parser.add_argument(
                flag, dest=name, action="store_const", const=True, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag, dest=name, metavar=_METAVARS.get(name, "FILE"), help=help_text
            )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientSecurity:
    """The options `add_arguments` parsed, with variables for those not given."""
    return ClientSecurity.from_env(environ, **{name: getattr(args, name) for name in OPTION_NAMES})


def is_loopback_target(target: str) -> bool:
    """True when every address of the resolved gRPC URI `target` is a loopback address
    or a Unix socket (a `dns:` name counts only as `localhost`)."""
    scheme, _, rest = target.partition(":")
    if scheme in ("unix", "unix-abstract"):
        return True
    if scheme == "dns":
        host = rest.lstrip("/").rsplit(":", 1)[0].strip("[]")
        return host == "localhost" or _loopback_ip(host)
    if scheme in ("ipv4", "ipv6"):
        return all(_loopback_ip(entry.rsplit(":", 1)[0].strip("[]")) for entry in rest.split(","))
    return False


def _several_addresses(target: str) -> bool:
    # A list (HOST:PORT,HOST:PORT) or an ipv4:/ipv6: URI of several addresses; a DNS name
    # never holds a comma.
    return "," in target


def _loopback_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _local_type(target: str) -> grpc.LocalConnectionType:
    if target.startswith(("unix:", "unix-abstract:")):
        return grpc.LocalConnectionType.UDS
    return grpc.LocalConnectionType.LOCAL_TCP


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise CredentialsError(f"{option} {path!r}: {exc.strerror or exc}") from None


def _flag(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CredentialsError(f"{name}={value!r}: want 1 or 0 (true or false)")


# ---------------------------------------------------------------------------------------
# the key in every call's metadata


def aio_interceptors(metadata: tuple[tuple[str, str], ...]) -> list[Any]:
    """Interceptors that add `metadata` to every call of a `grpc.aio` channel: one per
    kind of call (grpc.aio files each interceptor under the first kind it is)."""
    return [kind(metadata) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


class _AddsMetadata:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(
            metadata=grpc.aio.Metadata(*self._metadata, *(details.metadata or ()))
        )


# grpc's type stubs make these bases Any (hence the ignores).
class _UnaryUnary(_AddsMetadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_AddsMetadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_AddsMetadata, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_AddsMetadata, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class SyncMetadataInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds `metadata` to every call of a blocking channel (`grpc.intercept_channel`)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*self._metadata, *(details.metadata or ())])

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
