"""The feeder process: one `TaskService` behind a grpc.aio server, with the standard health
and reflection services, and an orderly shutdown.

Shutdown order matters: the service drains first (no new leases; long-polling Lease calls
return empty at once), health turns NOT_SERVING so load balancers stop sending, the server
finishes the RPCs in flight within the grace period, and only then is the store flushed and
closed, so no acknowledged write is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import signal
import socket
import sqlite3
import ssl
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from feeder.config import Settings, redact_url
from feeder.server import audit
from feeder.server.access import AccessError
from feeder.server.access_file import AccessSource
from feeder.server.admission import Admission
from feeder.server.auth import AccessInterceptor, Authenticator
from feeder.server.collector import scheduled_full_collections
from feeder.server.metrics import FeederMetrics, endpoint_guard, endpoint_tls
from feeder.server.servicer import FeederServicer, add_to_server
from feeder.server.tls import CertificateFiles, TlsError
from feeder.server.validate import Limits
from feeder.service.clock import SteadyClock
from feeder.service.loop_lag import LoopLagProbe
from feeder.service.observer import Observers, TaskLog
from feeder.service.tasks import TaskService
from feeder.service.token_keys import TokenKeyFileError
from feeder.store.base import Store, StoreUnavailable
from feeder.store.memory import MemoryStore
from feeder.store.postgres import PostgresStore, SchemaTooNew, is_postgres_url
from feeder.store.sqlite import SqliteStore
from feedwork.metrics import MetricsEndpoint
from feedwork.v1 import feeder_pb2

log = logging.getLogger("feedwork.feeder")

FEEDER_SERVICE = feeder_pb2.DESCRIPTOR.services_by_name["Feeder"].full_name
MEMORY_DB = ":memory:"
# Clients may send keepalive pings this often (with or without a call open); a client that
# pings more often is sent GOAWAY "too_many_pings" after two strikes, and its calls fail
# (RESOURCE_EXHAUSTED or UNAVAILABLE). The SDKs ping every 30 s (feedwork/channel.py);
# the limit is documented in the README and in feeder.proto next to Consume.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
MAX_PENDING_CALLS = 100_000
# Room left in a reply for gRPC's framing and the reply's own fields.
REPLY_MARGIN = 64 * 1024


class StartupError(Exception):
    """The feeder could not start: the store would not open, the address would not bind, or
    the token secret file is unusable."""


def open_store(settings: Settings) -> Store:
    """The store `settings.db` names: PostgreSQL for a postgresql:// URL, memory for
    ":memory:", else SQLite on a file."""
    if is_postgres_url(settings.db):
        return PostgresStore(settings.db, pool_size=settings.db_pool_size)
    if settings.db == MEMORY_DB:
        return MemoryStore(max_pending=settings.max_pending)
    return SqliteStore(
        settings.db,
        sync=settings.sync,
        payload_memory=settings.payload_memory,
        max_pending=settings.max_pending,
    )


class FeederServer:
    """A feeder in this process. `await start()` returns the bound port; `await stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`clock`: the feeder's time, by default wall-clock seconds that follow elapsed
        time (`SteadyClock`), the same for the service and the servicer."""
        try:
            self.access = (
                AccessSource(path=settings.auth_file, text=settings.auth)
                if settings.auth_file or settings.auth
                else None
            )
            self.certificates = (
                CertificateFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
                if settings.tls_cert and settings.tls_key
                else None
            )
        except (AccessError, TlsError) as exc:
            raise StartupError(str(exc)) from None
        clock = clock or SteadyClock()
        # No reply (a Lease's tasks, a page of dead tasks) may pass the message limit.
        max_reply_bytes = max(settings.max_message_bytes - REPLY_MARGIN, 1)
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        # How late the event loop runs: logs a warning when one piece of work stalls it.
        self.loop_lag = LoopLagProbe()
        self.metrics = (
            FeederMetrics(
                clock=clock, loop_lag=self.loop_lag, streams=lambda: len(self._servicer.streams)
            )
            if settings.metrics_listen
            else None
        )
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.service = TaskService(
            store=self.store,
            policies=settings.policy_for,
            clock=clock,
            rng=rng,
            retention=settings.retention,
            on_availability=self._store_availability,
            max_reply_bytes=max_reply_bytes,
            max_queues=settings.max_queues,
            max_unacked=settings.max_unacked_per_consumer,
            token_secret_file=settings.token_secret_file,
            observer=Observers([TaskLog(), *([self.metrics] if self.metrics else [])]),
        )
        limits = Limits(
            max_payload_bytes=settings.max_payload_bytes,
            max_result_bytes=settings.max_result_bytes,
            max_reply_bytes=max_reply_bytes,
        )
        self.admission = Admission(
            max_items=settings.max_in_flight, max_bytes=settings.max_in_flight_bytes
        )
        self._servicer = FeederServicer(
            self.service, limits=limits, clock=clock, admission=self.admission
        )
        self._servicer.metrics = self.metrics
        self.authenticator = Authenticator(
            self.access.current if self.access is not None else None,
            mtls=settings.tls_client_ca is not None,
        )
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._health_updates: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def servicer(self) -> FeederServicer:
        return self._servicer

    @property
    def address(self) -> str:
        """HOST:PORT as listening (the real port when `listen` asked for port 0)."""
        host = self.settings.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def _build(self) -> grpc.aio.Server:
        size = self.settings.max_message_bytes
        denied = self.metrics.denied if self.metrics is not None else None
        server = grpc.aio.server(
            interceptors=[
                AccessInterceptor(self.authenticator, self.service.queue_of, on_denied=denied)
            ],
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                # Without this a second feeder could bind the same port and share traffic.
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
                # Calls gRPC has received but the server loop has not picked up yet. Past
                # gRPC's defaults (1,000, hard 3,000) it cancels calls silently (a burst of
                # 4,000 Submits lost ~1,000 that way); the loop picks them all up and the
                # admission bound refuses the excess explicitly instead.
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
            ],
        )
        add_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (FEEDER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    async def start(self) -> int:
        refusal = exposure_refusal(self.settings)
        if refusal is not None:
            raise StartupError(refusal)
        try:
            await self.service.start()
        except TokenKeyFileError as exc:
            await self.service.stop()
            raise StartupError(str(exc)) from exc
        except (OSError, RuntimeError, sqlite3.Error, StoreUnavailable, SchemaTooNew) as exc:
            await self.service.stop()
            raise StartupError(f"cannot open store {redact_url(self.settings.db)}: {exc}") from exc
        server = self._build()
        try:
            if self.certificates is not None:
                credentials = self.certificates.server_credentials()
                port = int(server.add_secure_port(self.settings.listen, credentials))
            else:
                port = int(server.add_insecure_port(self.settings.listen))
        except RuntimeError:  # grpcio raises on bind failure; older versions return 0
            port = 0
        if port == 0:
            await self.service.stop()
            raise StartupError(f"cannot listen on {self.settings.listen}")
        await server.start()
        self._server, self.port = server, port
        self._servicer.name = f"{socket.gethostname()}:{port}"
        if self.metrics is not None and self.settings.metrics_listen:
            self.metrics.bind(self.service, asyncio.get_running_loop())
            try:
                self.metrics_endpoint = MetricsEndpoint(
                    self.settings.metrics_listen,
                    self.metrics.registry,
                    guard=endpoint_guard(self.authenticator),
                    tls=endpoint_tls(self.settings),
                )
            except (OSError, ssl.SSLError) as exc:
                await self.stop(0)
                raise StartupError(
                    f"cannot serve metrics on {self.settings.metrics_listen}: {exc}"
                ) from exc
        self._probing = asyncio.create_task(self.loop_lag.run(), name="feedwork-loop-lag")
        for name in ("", FEEDER_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.port_file:
            try:
                _write_atomically(self.settings.port_file, f"{port}\n")
            except OSError as exc:
                await self.stop(0)
                raise StartupError(f"cannot write port file: {exc}") from exc
        log.info(
            "feeder listening on %s (%s; store %s)",
            self.address,
            self.security_summary(),
            redact_url(self.settings.db),
        )
        if self.metrics_endpoint is not None:
            log.info(
                "metrics at %s://%s:%d/metrics",
                self.metrics_endpoint.scheme,
                self.settings.metrics_listen.rsplit(":", 1)[0],  # type: ignore[union-attr]
                self.metrics_endpoint.port,
            )
        return port

    def security_summary(self) -> str:
        transport = "plaintext"
        if self.certificates is not None:
            transport = "mTLS" if self.settings.tls_client_ca else "TLS"
        if self.access is not None:
            return f"{transport}, access list of {len(self.access.current())} entries"
        if self.settings.tls_client_ca:
            return f"{transport}, any client certificate of the CA"
        return f"{transport}, no auth"

    def _store_availability(self, available: bool) -> None:
        """Health follows the database: NOT_SERVING while it cannot be reached (the RPCs
        answer UNAVAILABLE meanwhile), SERVING again once it can, unless stopping."""
        if self._stopping is not None or self._server is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if available
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if not available:
            log.warning("the store is unavailable: health NOT_SERVING until it is back")
        else:
            log.info("the store is available again: health SERVING")

        async def update() -> None:
            for name in ("", FEEDER_SERVICE):
                await self._health.set(name, status)

        task = asyncio.get_running_loop().create_task(update())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Drains, finishes RPCs in flight (cancelling those still running after `grace`
        seconds, default `settings.shutdown_grace`), then flushes and closes the store.
        Safe to call more than once; later calls wait for the first."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        grace = self.settings.shutdown_grace if grace is None else grace
        log.info("feeder stopping (grace %gs)", grace)
        self.service.drain()
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self.service.stop()
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        if self.settings.port_file:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.port_file)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        log.info("feeder stopped")

    async def cancel_rpcs(self) -> None:
        """Cuts a graceful stop short: RPCs still in flight are cancelled now."""
        if self._server is not None:
            await self._server.stop(None)


def exposure_refusal(settings: Settings) -> str | None:
    """Why the feeder must not start as configured, or None: it would serve in clear text
    on an address other machines can reach (Redis's protected mode is the model). The
    metrics endpoint counts too: it names every queue and, with an access list, takes keys."""
    if settings.insecure or settings.tls_cert:
        return None
    if settings.metrics_listen and not is_loopback_listen(settings.metrics_listen):
        return (
            f"refusing to serve metrics on {settings.metrics_listen} without TLS: give"
            " --tls-cert and --tls-key (the metrics are then served over https), serve them"
            " on a loopback address, or pass --insecure on a network you trust"
        )
    if is_loopback_listen(settings.listen):
        return None
    keys = (
        " (its API keys would cross the network in clear text)"
        if (settings.auth_file or settings.auth)
        else " to anyone who can reach it, without auth"
    )
    return (
        f"refusing to listen on {settings.listen} without TLS: every payload, result and "
        f"call would be open{keys}. Give --tls-cert and --tls-key (and --auth-file for "
        "keys), listen on a loopback address (127.0.0.1:PORT), or pass --insecure "
        "(FEEDWORK_INSECURE=1) on a network you trust"
    )


def is_loopback_listen(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0 / [::] (every interface)


async def serve(settings: Settings, *, store: Store | None = None) -> None:
    """Runs a feeder until SIGTERM or SIGINT, then stops it gracefully. A second signal
    cancels the RPCs still in flight instead of waiting out the grace period."""
    audit.configure(settings.audit_log)
    server = FeederServer(settings, store=store)
    await server.start()
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    forcing: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if not stop_requested.is_set():
            log.info("received %s", signal.Signals(signum).name)
            stop_requested.set()
        elif not forcing:
            log.warning("received %s again: cancelling RPCs in flight", signal.Signals(signum).name)
            forcing.append(loop.create_task(server.cancel_rpcs()))

    installed = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
    try:
        async with scheduled_full_collections():
            await stop_requested.wait()
    finally:
        await server.stop()
        for signum in installed:
            loop.remove_signal_handler(signum)


def _write_atomically(path: str, text: str) -> None:
    # A reader polling for the file never sees it half written.
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(text)
    os.replace(temporary, path)
