"""Feeder settings: flags > FEEDWORK_* environment variables > TOML config file > defaults.

Every option is declared once in `OPTIONS`; the command line (`python -m feeder --help`),
the environment variable names and the config file keys all come from that table.

The config file has one `[feeder]` table for the process options, `[queues.default]` for
the policy every queue starts from, and `[queues.NAME]` for what one queue changes::

    [feeder]
    listen = "0.0.0.0:50051"
    db = "/data/feedwork.db"

    [queues.default]
    max_attempts = 5

    [queues.images]
    lease_duration = "2m"   # seconds, or "500ms", "30s", "2m", "1h", "1h30m"
    max_depth = 100000

A queue's own table beats the default policy whatever the source of the default: with
`--max-attempts 3`, every queue gets 3 except one whose table sets max_attempts.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from feeder.core.policy import QueuePolicy
from feedwork.durations import parse_duration
from feedwork.listen import parse_listen

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
ENV_PREFIX = "FEEDWORK_"
# gRPC takes message limits as a C int.
MAX_MESSAGE_LIMIT = 2**31 - 1
_QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


class ConfigError(ValueError):
    """A setting is invalid. `str()` names where it came from: flag, variable or file key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the feeder process is configured with. Durations in seconds."""

    listen: str = "127.0.0.1:50051"
    db: str = "./feedwork.db"
    sync: str = "full"
    # Connections per feeder to a PostgreSQL database (plus two: listen, maintenance role).
    db_pool_size: int = 10
    max_message_bytes: int = 8 * MiB
    max_payload_bytes: int = 1 * MiB
    max_result_bytes: int = 1 * MiB
    # Work in flight past which calls are refused (UNAVAILABLE, retried by the clients).
    max_in_flight: int = 10_000
    max_in_flight_bytes: int = 128 * MiB
    # Queues a database may know; a submit that would make a new one past it is refused.
    max_queues: int = 10_000
    # Payload bytes of pending tasks a SQLite feeder holds in memory (the rest stay on disk).
    payload_memory: int = 64 * MiB
    # Pending tasks a SQLite (or memory) feeder holds in memory, of every queue (~650 B each).
    max_pending: int = 5_000_000
    # How long completed and cancelled tasks (and their idempotency keys) are kept.
    retention: float = 86400.0
    # How long a shutdown waits for RPCs in flight before cancelling them.
    shutdown_grace: float = 10.0
    # The most leases one Consume stream or one Lease caller (worker_id) holds unacked.
    max_unacked_per_consumer: int = 1000
    log_level: str = "INFO"
    # "text" for people, "json" for a log pipeline (feedwork/logs.py).
    log_format: str = "text"
    # Where to write the bound port once listening (for `listen` with port 0).
    port_file: str | None = None
    # TLS: the feeder's certificate chain and key (PEM); a client CA makes it mTLS.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # The access list (feeder/server/access.py): a file read again when it changes, and
    # entries given inline (FEEDWORK_AUTH). With neither (and no client CA), no auth.
    auth_file: str | None = None
    auth: str | None = None
    # Listen on a non-loopback address without TLS all the same.
    insecure: bool = False
    # Where the audit log's JSON lines go: "-" for standard error, or a file.
    audit_log: str = "-"
    # Lease-token keys kept outside the database, rotatable (feeder.service.token_keys).
    token_secret_file: str | None = None
    # Prometheus metrics over HTTP(S) at /metrics on this address (feeder/server/metrics.py).
    metrics_listen: str | None = None
    default_policy: QueuePolicy = field(default_factory=QueuePolicy)
    queue_policies: Mapping[str, QueuePolicy] = field(default_factory=dict)

    def policy_for(self, queue: str) -> QueuePolicy:
        return self.queue_policies.get(queue, self.default_policy)


# -- value parsers ------------------------------------------------------------------------
# Each takes a value as the source gave it (a string from a flag or variable; a string,
# number or bool from TOML) and returns it typed, or raises ValueError saying what it wants.

_SIZE = re.compile(r"([0-9]+)\s*(B|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": KiB, "mib": MiB, "gib": GiB}


def parse_size(value: object) -> int:
    """Bytes from an integer, or a string like "1048576", "512KiB", "8MiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
    else:
        raise ValueError(f"invalid size {value!r} (use bytes, or e.g. 512KiB, 8MiB)")
    if not 1 <= size <= MAX_MESSAGE_LIMIT:
        raise ValueError(f"size {value!r} must be between 1 byte and 2 GiB")
    return size


def parse_count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    raise ValueError(f"invalid number {value!r} (want a whole number)")


def parse_positive(value: object) -> int:
    count = parse_count(value)
    if count < 1:
        raise ValueError(f"invalid number {value!r} (want 1 or more)")
    return count


def parse_sync(value: object) -> str:
    if value not in ("normal", "full"):
        raise ValueError(f"invalid sync mode {value!r} (want normal or full)")
    return str(value)


def parse_log_format(value: object) -> str:
    if value not in ("text", "json"):
        raise ValueError(f"invalid log format {value!r} (want text or json)")
    return str(value)


def parse_log_level(value: object) -> str:
    level = str(value).strip().upper()
    if not isinstance(value, str) or level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"invalid log level {value!r} (want debug, info, warning or error)")
    return level


def parse_db(value: object) -> str:
    """A SQLite path, ":memory:", or a postgresql:// (postgres://) URL with a database."""
    text = parse_path(value)
    if text.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"invalid PostgreSQL URL {redact_url(text)!r}: bad port") from None
        if not parts.hostname or parts.path in ("", "/"):
            raise ValueError(
                f"invalid PostgreSQL URL {redact_url(text)!r}"
                " (want postgresql://USER@HOST:PORT/DBNAME)"
            )
    elif "://" in text:
        raise ValueError(
            f"unsupported database URL {redact_url(text)!r} (want a SQLite path, :memory:"
            " or postgresql://USER@HOST:PORT/DBNAME)"
        )
    return text


def redact_url(url: str) -> str:
    """`url` without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def parse_pool_size(value: object) -> int:
    size = parse_count(value)
    if not 1 <= size <= 1000:
        raise ValueError(f"invalid pool size {value!r} (want 1 to 1000)")
    return size


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"invalid switch {value!r} (want true or false)")


def parse_text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid text {value!r} (want a string)")
    return value


def parse_path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid path {value!r} (want a non-empty string)")
    return value


# -- the option table ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: `name` is the Settings (or QueuePolicy) field and the config file key."""

    name: str
    parse: Callable[[object], Any]
    help: str
    metavar: str
    # "feeder" options live in [feeder]; "policy" options in [queues.*].
    table: str = "feeder"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


CONFIG_OPTION = Option("config", parse_path, "TOML config file", "PATH", table="")
OPTIONS: tuple[Option, ...] = (
    Option("listen", parse_listen, "address to listen on; port 0 picks a free port", "HOST:PORT"),
    Option(
        "db",
        parse_db,
        "SQLite database file, :memory: (nothing kept), or a PostgreSQL URL"
        " postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME shared by several feeders",
        "PATH|URL",
    ),
    Option(
        "sync",
        parse_sync,
        "SQLite durability: full (default: fsync each group commit before its replies), or"
        " normal (no fsync: survives a crash of the feeder, not of the machine)",
        "MODE",
    ),
    Option("db_pool_size", parse_pool_size, "PostgreSQL connections per feeder", "N"),
    Option("max_message_bytes", parse_size, "largest gRPC message sent or received", "SIZE"),
    Option("max_payload_bytes", parse_size, "largest task payload accepted", "SIZE"),
    Option("max_result_bytes", parse_size, "largest Ack result accepted", "SIZE"),
    Option(
        "max_in_flight",
        parse_positive,
        "work in flight (tasks submitted, items acked, nacked or extended, 1 per other call)"
        " past which calls are refused with UNAVAILABLE, retried by the clients",
        "N",
    ),
    Option(
        "max_in_flight_bytes",
        parse_size,
        "request bytes in flight past which calls are refused the same way",
        "SIZE",
    ),
    Option(
        "max_queues",
        parse_positive,
        "queues the database may know; a submit to a new queue past it is refused"
        " (RESOURCE_EXHAUSTED)",
        "N",
    ),
    Option(
        "payload_memory",
        parse_size,
        "payload bytes of pending tasks held in memory (SQLite); past it, payloads stay on"
        " disk and are read when leased",
        "SIZE",
    ),
    Option(
        "max_pending",
        parse_positive,
        "pending tasks of every queue a SQLite feeder holds (about 650 bytes of memory"
        " each); a submit past it is refused (RESOURCE_EXHAUSTED)",
        "N",
    ),
    Option("retention", parse_duration, "how long completed/cancelled tasks are kept", "DUR"),
    Option("shutdown_grace", parse_duration, "how long shutdown waits for RPCs", "DUR"),
    Option(
        "max_unacked_per_consumer",
        parse_positive,
        "most leases one Consume stream or Lease caller (worker_id) holds unacked",
        "N",
    ),
    Option("log_level", parse_log_level, "debug, info, warning or error", "LEVEL"),
    Option(
        "log_format",
        parse_log_format,
        "text, or json: one JSON object a line, with task_id, queue and attempt on lines"
        " about a task",
        "FORMAT",
    ),
    Option("port_file", parse_path, "write the bound port to this file once listening", "PATH"),
    Option(
        "tls_cert",
        parse_path,
        "TLS certificate chain (PEM) to serve with; read again when it changes",
        "PATH",
    ),
    Option("tls_key", parse_path, "the TLS certificate's private key (PEM)", "PATH"),
    Option(
        "tls_client_ca",
        parse_path,
        "CA (PEM) that client certificates must be signed by: mTLS, required of every client",
        "PATH",
    ),
    Option(
        "auth_file",
        parse_path,
        "access list: API key hashes and certificate identities with their roles per queue"
        " (docs/SECURITY.md); read again when it changes",
        "PATH",
    ),
    Option("auth", parse_text, "access list entries given inline, ';' between them", "TEXT"),
    Option(
        "insecure",
        parse_bool,
        "listen on a non-loopback address without TLS (refused otherwise)",
        "",
    ),
    Option("audit_log", parse_path, "where audit lines go: - (stderr) or a file", "PATH"),
    Option(
        "token_secret_file",
        parse_path,
        "sign lease tokens with the current key of this file (lines KEY_ID HEX-SECRET"
        " [current]; re-read when it changes) instead of the database's secret, which"
        " still verifies the tokens it signed; every feeder of a database needs the same keys",
        "FILE",
    ),
    Option(
        "metrics_listen",
        parse_listen,
        "serve Prometheus metrics at http://HOST:PORT/metrics (https with --tls-cert; an"
        " admin key with --auth-file); off by default",
        "HOST:PORT",
    ),
    Option("max_attempts", parse_count, "default failures before a task is dead", "N", "policy"),
    Option("backoff_base", parse_duration, "default first retry delay", "DUR", "policy"),
    Option("backoff_cap", parse_duration, "default longest retry delay", "DUR", "policy"),
    Option("lease_duration", parse_duration, "default lease duration", "DUR", "policy"),
    Option("max_depth", parse_count, "default most pending tasks per queue", "N", "policy"),
)
_FEEDER_KEYS = {o.name: o for o in OPTIONS if o.table == "feeder"}
_POLICY_KEYS = {o.name: o for o in OPTIONS if o.table == "policy"}


def default_text(option: Option) -> str | None:
    """The built-in default as a user would write it, for --help."""
    source = QueuePolicy() if option.table == "policy" else Settings()
    value = getattr(source, option.name, None)
    if value is None:
        return None
    if option.parse is parse_duration:
        return f"{value:g}s"
    if option.parse is parse_size and value % MiB == 0:
        return f"{value // MiB}MiB"
    return str(value)


# -- loading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ConfigFile:
    path: str
    feeder: Mapping[str, object]
    # Raw policy values per table under [queues]; "default" is the base of every queue.
    queues: Mapping[str, Mapping[str, object]]

    def key(self, *parts: str) -> str:
        return f"{self.path}: {'.'.join(parts)}"


_NO_FILE = _ConfigFile("", {}, {})


def load_settings(
    flags: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (option name -> value, None when not given), environment
    variables and the config file they name. Raises ConfigError naming the bad key."""
    flags = flags or {}
    env = os.environ if env is None else env
    path = _lookup(CONFIG_OPTION, flags, env, _NO_FILE)
    config = _read_config(str(path[0])) if path else _NO_FILE
    values: dict[str, Any] = {}
    policy: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for option in OPTIONS:
        found = _lookup(option, flags, env, config)
        if found is None:
            continue
        raw, key = found
        target = values if option.table == "feeder" else policy
        target[option.name] = _parse(option, raw, key)
        keys[option.name] = key
    # QueuePolicy checks fields together (backoff_base <= backoff_cap): name every source.
    default_policy = _policy(QueuePolicy(), policy, ", ".join(keys[name] for name in policy))
    queue_policies = {
        name: _policy(
            default_policy,
            {k: _parse(_POLICY_KEYS[k], v, config.key("queues", name, k)) for k, v in raw.items()},
            config.key("queues", name),
        )
        for name, raw in config.queues.items()
        if name != "default"
    }
    settings = Settings(**values, default_policy=default_policy, queue_policies=queue_policies)
    _check_tls(settings, keys)
    for name in ("max_payload_bytes", "max_result_bytes"):
        if getattr(settings, name) > settings.max_message_bytes:
            raise ConfigError(
                keys.get(name, name),
                f"{getattr(settings, name)} bytes exceeds max_message_bytes "
                f"({settings.max_message_bytes}); raise that too",
            )
    return settings


def _check_tls(settings: Settings, keys: Mapping[str, str]) -> None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        given = "tls_cert" if settings.tls_cert else "tls_key"
        raise ConfigError(keys[given], "tls_cert and tls_key go together")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ConfigError(keys["tls_client_ca"], "mTLS needs TLS: give tls_cert and tls_key too")


def _lookup(
    option: Option, flags: Mapping[str, object], env: Mapping[str, str], config: _ConfigFile
) -> tuple[object, str] | None:
    """The raw value of `option` from the strongest source that sets it, and its key."""
    if flags.get(option.name) is not None:
        return flags[option.name], option.flag
    if env.get(option.env):
        return env[option.env], option.env
    if option.table == "feeder" and option.name in config.feeder:
        return config.feeder[option.name], config.key("feeder", option.name)
    default = config.queues.get("default", {})
    if option.table == "policy" and option.name in default:
        return default[option.name], config.key("queues", "default", option.name)
    return None


def _parse(option: Option, raw: object, key: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _policy(base: QueuePolicy, fields: Mapping[str, Any], key: str) -> QueuePolicy:
    try:
        return dataclasses.replace(base, **fields)
    except ValueError as exc:  # QueuePolicy checks its fields together
        raise ConfigError(key, str(exc)) from None


def _read_config(path: str) -> _ConfigFile:
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(path, f"cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"invalid TOML: {exc}") from None
    config = _ConfigFile(path, {}, {})
    for table in document:
        if table not in ("feeder", "queues"):
            raise ConfigError(config.key(table), "unknown table (want [feeder] or [queues.NAME])")
    feeder = _table(document.get("feeder", {}), config.key("feeder"))
    _known_keys(feeder, _FEEDER_KEYS, config, "feeder")
    queues: dict[str, Mapping[str, object]] = {}
    for name, raw in _table(document.get("queues", {}), config.key("queues")).items():
        if not _QUEUE_NAME.fullmatch(name):
            raise ConfigError(
                config.key("queues", name), "queue names are 1-128 characters of [A-Za-z0-9._-]"
            )
        queues[name] = _table(raw, config.key("queues", name))
        _known_keys(queues[name], _POLICY_KEYS, config, "queues", name)
    return _ConfigFile(path, feeder, queues)


def _table(value: object, key: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a table")
    return value


def _known_keys(
    table: Mapping[str, object], known: Mapping[str, Option], config: _ConfigFile, *where: str
) -> None:
    for name in table:
        if name not in known:
            raise ConfigError(
                config.key(*where, name), f"unknown key (known: {', '.join(sorted(known))})"
            )
