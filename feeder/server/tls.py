"""The feeder's TLS: its certificate and key, and the client CA for mTLS, read again when
the files change, so a renewed certificate is served without a restart.

gRPC asks `CertificateFiles.fetch` before each new TLS handshake (its "dynamic" server
credentials); the files are looked at (one `stat` each) at most once a second, and read
again only when one has changed. A new pair is checked with Python's `ssl` before it is
used (the key must match the certificate): a half-written or broken renewal is logged
and the certificates in use are kept, so connections keep working while it is fixed.
Connections already open keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from feeder.service.file_versions import FileVersion

log = logging.getLogger("feedwork.feeder.tls")

RECHECK_SECONDS = 1.0


class TlsError(Exception):
    """The certificate, key or CA file cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    versions: tuple[FileVersion, ...]
    configuration: object  # grpc.ServerCertificateConfiguration


class CertificateFiles:
    """The feeder's certificate chain and key files, and the client CA file (mTLS)."""

    def __init__(
        self,
        cert: str,
        key: str,
        client_ca: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = (cert, key, *((client_ca,) if client_ca else ()))
        self.client_ca = client_ca
        self._clock = clock
        self._lock = threading.Lock()  # gRPC may call fetch from its own threads
        self._checked_at = clock()
        self._loaded = self._load()  # raises TlsError: a feeder starts with good files
        self.reloads = 0

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._loaded.configuration,
            self.fetch,
            require_client_authentication=self.client_ca is not None,
        )

    def fetch(self) -> object | None:
        """gRPC's certificate configuration fetcher: a new configuration when the files
        changed (and are good), else None (keep the current one)."""
        with self._lock:
            now = self._clock()
            if now - self._checked_at < RECHECK_SECONDS:
                return None
            self._checked_at = now
            try:
                if self._versions() == self._loaded.versions:
                    return None
                loaded = self._load()
            except TlsError as exc:
                log.error("TLS files changed but cannot be used (keeping the old ones): %s", exc)
                return None
            except Exception:  # never let an exception into gRPC's handshake
                log.exception("TLS files: reload failed (keeping the old ones)")
                return None
            self._loaded = loaded
            self.reloads += 1
            log.info("TLS: certificate files changed; new connections use them")
            return loaded.configuration

    def _versions(self) -> tuple[FileVersion, ...]:
        try:
            return tuple(FileVersion.of_path(path) for path in self.paths)
        except OSError as exc:
            raise TlsError(f"{exc.filename}: {exc.strerror or exc}") from None

    def _load(self) -> _Loaded:
        versions = self._versions()
        cert, key = _read(self.paths[0]), _read(self.paths[1])
        client_ca = _read(self.client_ca) if self.client_ca else None
        _check_pair(self.paths[0], self.paths[1], client_ca)
        if self._versions() != versions:  # changed while read: try again next time
            raise TlsError("the files changed while being read")
        configuration = grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=client_ca
        )
        return _Loaded(versions, configuration)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise TlsError(f"{path}: {exc.strerror or exc}") from None


def _check_pair(cert: str, key: str, client_ca: bytes | None) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"{cert} and {key}: not a PEM certificate chain and its private key ({exc.reason})"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"client CA: not PEM certificates ({exc})") from None
