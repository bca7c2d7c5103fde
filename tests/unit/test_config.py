"""Settings: precedence of sources, value parsing, and errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from feeder.__main__ import build_parser, main
from feeder.config import (
    OPTIONS,
    ConfigError,
    Settings,
    load_settings,
    parse_listen,
    parse_size,
)
from feeder.core.policy import QueuePolicy


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "feeder.toml"
    path.write_text(text)
    return str(path)


def flags(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(argv))


def test_defaults() -> None:
    settings = load_settings({}, {})
    assert settings == Settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.db == "./feedwork.db"
    assert settings.sync == "full"
    assert settings.max_message_bytes == 8 * 1024 * 1024
    assert settings.max_payload_bytes == settings.max_result_bytes == 1024 * 1024
    assert settings.retention == 86400.0
    assert settings.shutdown_grace == 10.0
    assert settings.port_file is None
    assert settings.policy_for("anything") == QueuePolicy(
        max_attempts=5, backoff_base=1.0, backoff_cap=300.0, lease_duration=30.0, max_depth=10**6
    )


def test_example_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [feeder]
        listen = "0.0.0.0:50051"
        db = "/data/feedwork.db"
        sync = "full"
        retention = "2h"
        max_message_bytes = "16MiB"

        [queues.default]
        max_attempts = 7

        [queues.images]
        lease_duration = "2m"   # a comment
        max_depth = 100000
        """,
    )
    settings = load_settings({"config": path}, {})
    assert (settings.listen, settings.db, settings.sync) == (
        "0.0.0.0:50051",
        "/data/feedwork.db",
        "full",
    )
    assert settings.retention == 7200.0
    assert settings.max_message_bytes == 16 * 1024 * 1024
    assert settings.policy_for("other") == QueuePolicy(max_attempts=7)
    # A queue's table changes only what it names; the rest comes from the default policy.
    assert settings.policy_for("images") == QueuePolicy(
        max_attempts=7, lease_duration=120.0, max_depth=100_000
    )


def test_precedence_flags_then_env_then_file_then_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [feeder]
        listen = "file:1"
        db = "file.db"
        sync = "full"
        [queues.default]
        max_attempts = 3
        backoff_cap = 100
        """,
    )
    env = {"FEEDWORK_CONFIG": path, "FEEDWORK_LISTEN": "env:2", "FEEDWORK_DB": "env.db"}
    env["FEEDWORK_MAX_ATTEMPTS"] = "4"
    settings = load_settings(flags("--listen", "flag:3", "--max-depth", "9"), env)
    assert settings.listen == "flag:3"  # flag beats env and file
    assert settings.db == "env.db"  # env beats file
    assert settings.sync == "full"  # file beats default
    assert settings.shutdown_grace == 10.0  # default
    assert settings.default_policy == QueuePolicy(max_attempts=4, backoff_cap=100.0, max_depth=9)


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    chosen = write(tmp_path, '[feeder]\ndb = "chosen.db"\n')
    settings = load_settings({"config": chosen}, {"FEEDWORK_CONFIG": "/nonexistent.toml"})
    assert settings.db == "chosen.db"


def test_queue_table_beats_default_policy_from_any_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.slow]\nmax_attempts = 10\n")
    settings = load_settings(flags("--config", path, "--max-attempts", "2"), {})
    assert settings.policy_for("slow").max_attempts == 10
    assert settings.policy_for("fast").max_attempts == 2


def test_empty_environment_variable_is_unset() -> None:
    assert load_settings({}, {"FEEDWORK_PORT_FILE": "", "FEEDWORK_DB": ""}) == Settings()


def test_every_option_has_a_flag_and_a_variable() -> None:
    help_text = build_parser().format_help()
    for option in OPTIONS:
        assert option.flag in help_text
        assert option.env in help_text
    assert "FEEDWORK_CONFIG" in help_text


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("1024", 1024), ("512KiB", 512 * 1024), ("8mib", 8 << 20)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1MB", "-1", 0, True, "3GiB", 1.5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "0.0.0.0:50051", "[::]:50051", "localhost:1"])
def test_listen_addresses(address: str) -> None:
    assert parse_listen(address) == address


@pytest.mark.parametrize("address", ["127.0.0.1", ":50051", "host:65536", "a b:1", "host:port"])
def test_bad_listen_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(address)


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[feeder]\nlisten = 5\n", "feeder.listen", "invalid address"),
        ("[feeder]\nsync = 'fast'\n", "feeder.sync", "normal or full"),
        ("[feeder]\nretention = '1 day'\n", "feeder.retention", "invalid duration"),
        ("[feeder]\nlog_level = 'loud'\n", "feeder.log_level", "invalid log level"),
        ("[feeder]\nlisen = 'x:1'\n", "feeder.lisen", "unknown key"),
        ("[feeder]\nmax_attempts = 3\n", "feeder.max_attempts", "unknown key"),
        ("[feder]\n", "feder", "unknown table"),
        ("feeder = 3\n", "feeder", "must be a table"),
        ("[queues]\nimages = 3\n", "queues.images", "must be a table"),
        ("[queues.images]\nlease_duration = '2x'\n", "queues.images.lease_duration", "duration"),
        ("[queues.images]\nlease_duration = '13h'\n", "queues.images", "12 h"),
        ("[queues.images]\nmax_attempts = 0\n", "queues.images", "at least 1"),
        ("[queues.images]\nmax_attempts = 'many'\n", "queues.images.max_attempts", "number"),
        ("[queues.images]\nbackoff_base = 10\nbackoff_cap = 5\n", "queues.images", "backoff"),
        ("[queues.images]\nmax_depht = 5\n", "queues.images.max_depht", "unknown key"),
        ("[queues.'bad name']\n", "queues.bad name", "queue names"),
        ("[queues.default]\nmax_depth = 0\n", "queues.default.max_depth", "max_depth"),
    ],
)
def test_bad_config_file_names_the_key(tmp_path: Path, toml: str, key: str, fragment: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        load_settings({"config": path}, {})
    assert caught.value.key in (f"{path}: {key}", key)
    assert fragment in str(caught.value)


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[feeder\n")
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_settings({"config": path}, {})
    assert caught.value.key == path


def test_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file") as caught:
        load_settings({}, {"FEEDWORK_CONFIG": missing})
    assert caught.value.key == missing


def test_inconsistent_default_policy_names_every_source(tmp_path: Path) -> None:
    path = write(tmp_path, "[queues.default]\nbackoff_cap = 5\n")
    with pytest.raises(ConfigError, match="backoff_base") as caught:
        load_settings(flags("--config", path, "--backoff-base", "10"), {})
    assert caught.value.key == f"--backoff-base, {path}: queues.default.backoff_cap"


def test_bad_flag_and_variable_are_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags("--max-attempts", "lots"), {})
    assert caught.value.key == "--max-attempts"
    with pytest.raises(ConfigError) as caught:
        load_settings({}, {"FEEDWORK_SHUTDOWN_GRACE": "soon"})
    assert caught.value.key == "FEEDWORK_SHUTDOWN_GRACE"


def test_payload_limit_cannot_exceed_message_limit() -> None:
    env = {"FEEDWORK_MAX_MESSAGE_BYTES": "1MiB", "FEEDWORK_MAX_PAYLOAD_BYTES": "2MiB"}
    with pytest.raises(ConfigError, match="exceeds max_message_bytes") as caught:
        load_settings({}, env)
    assert caught.value.key == "FEEDWORK_MAX_PAYLOAD_BYTES"


def test_main_exits_2_on_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "[queues.images]\nlease_duration = 'forever'\n")
    monkeypatch.delenv("FEEDWORK_CONFIG", raising=False)
    assert main(["--config", path]) == 2
    error = capsys.readouterr().err
    assert "queues.images.lease_duration" in error
    assert "invalid duration 'forever'" in error


def test_main_exits_2_on_bad_flag_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sync", "sometimes"]) == 2
    assert "--sync: invalid sync mode 'sometimes'" in capsys.readouterr().err
