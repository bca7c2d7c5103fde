"""The web dashboard (`feedwork dashboard`): a small server in front of the feeders, talking
to them as a gRPC client, so it works the same with a feeder on SQLite and with several on
PostgreSQL, behind the same keys.

    feedwork dashboard --target 127.0.0.1:50051 --listen 127.0.0.1:8080

Pages: the queues with live numbers, rates and depth charts; a queue with its totals and
dead letters (redrive, purge); a task with its attempts, errors, result and payload
(cancel). The HTML is rendered here (`pages.py`); a little script refreshes the numbers
from `/api/stats` every two seconds.

Keys: when the feeder asks for API keys, each user logs in with theirs (kept in an
HttpOnly cookie) and the dashboard makes every call with it, so a user sees and does here
exactly what their key allows. `--api-key` instead makes the dashboard act with one key
for whoever reaches it. Every form carries a token that must match a cookie (no
cross-site request can act), and cookies are SameSite=Strict.

Exposure: like the feeder, the dashboard serves in clear text only on a loopback address,
unless given a certificate (`--tls-cert`, `--tls-key`) or `--insecure`.
"""

from __future__ import annotations

import dataclasses
import http.server
import ipaddress
import json
import logging
import secrets
import ssl
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from feedwork.client import FeederClient
from feedwork.credentials import ClientSecurity
from feedwork.dashboard import pages
from feedwork.errors import (
    FeedworkError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

log = logging.getLogger("feedwork.dashboard")

KEY_COOKIE = "feedwork_key"
CSRF_COOKIE = "feedwork_csrf"
# Feeder clients kept, one per key in use (the least recently used is closed past this).
MAX_CLIENTS = 16
MAX_FORM_BYTES = 64 * 1024
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}


class DashboardError(Exception):
    """A setting the dashboard cannot serve with."""


def exposure_refusal(listen: str, *, tls: bool, insecure: bool) -> str | None:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if tls or insecure or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"refusing to serve the dashboard on {listen} without TLS: API keys and every "
        "task's payload would cross the network in clear text. Give --tls-cert and "
        "--tls-key, listen on a loopback address, or pass --insecure on a network you trust"
    )


class Dashboard:
    """The dashboard on `listen` (HOST:PORT; port 0 picks one, see `port`), until `close()`."""

    def __init__(
        self,
        *,
        target: str,
        listen: str = "127.0.0.1:8080",
        security: ClientSecurity | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        insecure: bool = False,
        timeout: float = 5.0,
    ) -> None:
        refusal = exposure_refusal(listen, tls=bool(tls_cert), insecure=insecure)
        if refusal is not None:
            raise DashboardError(refusal)
        self.target = target
        self.security = security or ClientSecurity()
        # With a key of its own the dashboard needs no login; else each user brings one.
        self.own_key = self.security.key()
        self._timeout = timeout
        self._clients: OrderedDict[str, FeederClient] = OrderedDict()
        self._lock = threading.Lock()
        host, _, port = listen.rpartition(":")
        handler = _handler_class(self)
        self._httpd = http.server.ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self._httpd.daemon_threads = True
        self.scheme = "http"
        if tls_cert and tls_key:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert, tls_key)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._served = False

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        name = host.decode() if isinstance(host, bytes) else host
        return f"{self.scheme}://{name}:{self.port}/"

    def start(self) -> None:
        """Serves in a daemon thread."""
        self._served = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="feedwork-dashboard", daemon=True
        )
        self._thread.start()

    def serve_forever(self) -> None:
        self._served = True
        self._httpd.serve_forever()

    def close(self) -> None:
        if self._served:  # shutdown() waits for a serve_forever that never ran otherwise
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def client(self, key: str | None) -> FeederClient:
        """A feeder client acting with `key` (the dashboard's own key when it has one)."""
        key = self.own_key or key
        name = key or ""
        with self._lock:
            client = self._clients.get(name)
            if client is not None:
                self._clients.move_to_end(name)
                return client
        options = dataclasses.asdict(self.security)
        options.update(api_key=key, api_key_file=None)
        client = FeederClient(self.target, timeout=self._timeout, max_retry_delay=2.0, **options)
        with self._lock:
            self._clients[name] = client
            while len(self._clients) > MAX_CLIENTS:
                _, old = self._clients.popitem(last=False)
                old.close()
        return client


def _handler_class(dashboard: Dashboard) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.dashboard = dashboard
    return Handler


class _Handler(http.server.BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "feedwork-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- plumbing -------------------------------------------------------------------------

    def _cookies(self) -> dict[str, str]:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except Exception:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    def _csrf(self) -> tuple[str, bool]:
        """The form token for this browser, and whether it is new (a cookie to set): the
        same for the whole request."""
        found = getattr(self, "_token", None)
        if found is None:
            token = self._cookies().get(CSRF_COOKIE, "")
            found = (token, False) if len(token) == 43 else (secrets.token_urlsafe(32), True)
            self._token: tuple[str, bool] = found
        return found

    def _cookie(self, name: str, value: str, *, max_age: int | None = None) -> str:
        secure = "; Secure" if self.dashboard.scheme == "https" else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
        )
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _page(
        self,
        title: str,
        body: str,
        *,
        status: int = 200,
        flash: tuple[str, bool] | None = None,
        poll: str | None = None,
    ) -> None:
        csrf, new = self._csrf()
        who = "" if self.dashboard.own_key else ("logged in" if self._key() else "")
        document = pages.layout(title, body, who=who, flash=flash, poll=poll, csrf=csrf)
        headers = [("Set-Cookie", self._cookie(CSRF_COOKIE, csrf))] if new else []
        self._send(status, document.encode(), "text/html; charset=utf-8", headers=headers)

    def _redirect(self, location: str, *, cookies: list[str] = ()) -> None:  # type: ignore[assignment]
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()

    def _key(self) -> str | None:
        return self._cookies().get(KEY_COOKIE) or None

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FORM_BYTES:
            raise InvalidArgument("the form is too large")
        data = self.rfile.read(length).decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(data, keep_blank_values=True).items()}

    def _fail(self, exc: FeedworkError) -> None:
        if isinstance(exc, Unauthenticated) and not self.dashboard.own_key:
            self._redirect("/login")
            return
        status = (
            403
            if isinstance(exc, PermissionDenied | Unauthenticated)
            else 404
            if isinstance(exc, NotFound)
            else 400
            if isinstance(exc, InvalidArgument)
            else 503
        )
        self._page(str(status), pages.error_page(status, exc.message), status=status)

    # -- routing --------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            self._get(parts, query)
        except FeedworkError as exc:
            self._fail(exc)

    def _get(self, parts: list[str], query: dict[str, str]) -> None:
        client = self.dashboard.client(self._key())
        match parts:
            case []:
                stats = client.stats()
                paused = {info.queue: info.paused for info in client.list_queues()}
                body = pages.queues_page(stats, paused)
                self._page("Queues", body, poll="", flash=_flash(query))
            case ["queues", queue]:
                self._queue(client, queue, query)
            case ["workers"]:
                self._page("Workers", pages.workers_page(client.list_workers()))
            case ["tasks", task_id]:
                task = client.get(task_id)
                body = pages.task_page(task, csrf=self._csrf()[0])
                self._page(f"Task {task_id}", body, flash=_flash(query))
            case ["api", "stats"]:
                names = [n for n in query.get("queue", "").split(",") if n]
                stats = client.stats(names or None)
                answer = json.dumps(pages.stats_json(stats, names)).encode()
                self._send(200, answer, "application/json")
            case ["static", name] if name in STATIC:
                data = resources.files("feedwork.dashboard").joinpath("static", name).read_bytes()
                self._send(200, data, STATIC[name])
            case ["login"]:
                self._page("Log in", pages.login_page(csrf=self._csrf()[0]))
            case _:
                self._page("404", pages.error_page(404, "no such page"), status=404)

    def _queue(self, client: FeederClient, queue: str, query: dict[str, str]) -> None:
        stats = client.stats([queue])
        dead = client.dead_list(queue, page_token=query.get("dead_page", ""))
        state = query.get("state", "").upper()
        if state and state not in pages.STATES:
            raise InvalidArgument(f"state: want one of {', '.join(pages.STATES)}")
        newest = query.get("order") == "newest"
        tasks = client.list_tasks(
            queue,
            states=[state] if state else None,
            newest_first=newest,
            page_size=50,
            page_token=query.get("page", ""),
        )
        try:  # a key with admin on this queue only may not list every queue
            paused = next((i.paused for i in client.list_queues() if i.queue == queue), False)
        except PermissionDenied:
            paused = None
        body = pages.queue_page(
            stats.queue(queue),
            dead,
            tasks,
            paused=paused,
            state=state,
            newest=newest,
            csrf=self._csrf()[0],
        )
        self._page(f"Queue {queue}", body, poll=queue, flash=_flash(query))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            form = self._form()
            token = self._cookies().get(CSRF_COOKIE, "")
            if not token or not secrets.compare_digest(form.get("csrf", ""), token):
                self._page("403", pages.error_page(403, "stale form: reload the page"), status=403)
                return
            self._post(parts, form)
        except FeedworkError as exc:
            self._fail(exc)

    def _post(self, parts: list[str], form: dict[str, str]) -> None:
        match parts:
            case ["login"]:
                self._login(form.get("key", "").strip())
                return
            case ["logout"]:
                self._redirect("/login", cookies=[self._cookie(KEY_COOKIE, "", max_age=0)])
                return
        client = self.dashboard.client(self._key())
        match parts:
            case ["queues", queue, "dead", ("redrive" | "purge") as action]:
                ids = [form["task_id"]] if form.get("task_id") else None
                act = client.dead_redrive if action == "redrive" else client.dead_purge
                count = act(queue, task_ids=ids, limit=0 if ids else 1000)
                verb = "redriven" if action == "redrive" else "purged"
                self._redirect(f"/queues/{pages.q(queue)}?done={count}+{verb}")
            case ["queues", queue, ("pause" | "resume") as action]:
                changed = (client.pause_queue if action == "pause" else client.resume_queue)(queue)
                done = f"{action}d" if changed else f"already {action}d"
                self._redirect(f"/queues/{pages.q(queue)}?done={done.replace(' ', '+')}")
            case ["tasks", task_id, "cancel"]:
                result = client.cancel(task_id)
                self._redirect(f"/tasks/{pages.q(task_id)}?done={result.outcome.lower()}")
            case _:
                self._page("404", pages.error_page(404, "no such action"), status=404)

    def _login(self, key: str) -> None:
        if not key or any(c.isspace() for c in key):
            body = pages.login_page(error="give an API key", csrf=self._csrf()[0])
            self._page("Log in", body, status=400)
            return
        try:
            # Any call proves the key; GetStats of one queue is the cheapest that needs one.
            self.dashboard.client(key).stats(["-"])
        except Unauthenticated:
            body = pages.login_page(error="the feeder does not know this key", csrf=self._csrf()[0])
            self._page("Log in", body, status=401)
            return
        except PermissionDenied:
            pass  # a known key without admin on every queue: its pages say what it may not
        self._redirect("/", cookies=[self._cookie(KEY_COOKIE, key, max_age=12 * 3600)])


def _flash(query: dict[str, str]) -> tuple[str, bool] | None:
    done = query.get("done")
    return (f"Done: {done}.", True) if done else None
