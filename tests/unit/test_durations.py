"""Durations (feedwork.durations): one syntax for the CLI, the worker's options and the
feeder's configuration, read by one parser."""

from __future__ import annotations

import pytest

import feeder.config
import worker.config
from feedwork import cli, durations
from feedwork.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        ("0.25", 0.25),
        (" 10s ", 10.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "2x", "-1", "-1s", "s", "1 h", "1h-", True, float("inf"), [1]]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_units_in_any_case() -> None:
    assert parse_duration("30S") == parse_duration("30s") == 30.0
    assert parse_duration("1H30M") == 5400.0


@pytest.mark.parametrize("text", ["1h", "90s", "1h30m", "2.5", "500ms"])
def test_every_entry_point_reads_a_duration_alike(text: str) -> None:
    seconds = parse_duration(text)
    submit = cli.build_parser().parse_args(
        ["submit", "--queue", "q", "--delay", text, "--lease-duration", text, "x"]
    )
    assert submit.delay == submit.lease_duration == seconds
    status = cli.build_parser().parse_args(["status", "1", "--wait", text, "--timeout", text])
    assert status.wait == status.timeout == seconds
    argv = ["--queue", "q", "--handler", "json:dumps", "--lease-duration", text, "--grace", text]
    config = worker.config.parse_config(argv, environ={"FEEDWORK_TASK_TIMEOUT": text})
    assert config.lease_duration == config.grace == config.task_timeout == seconds
    settings = feeder.config.load_settings({"retention": text}, {"FEEDWORK_SHUTDOWN_GRACE": text})
    assert settings.retention == settings.shutdown_grace == seconds


@pytest.mark.parametrize("text", ["1 h", "-1", "inf", "1e3", "nan"])
def test_every_entry_point_refuses_a_bad_duration(
    text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["submit", "--queue", "q", "--delay", text, "x"])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"invalid duration {text!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        worker.config.parse_config(["--queue", "q", "--handler", "m:f", "--grace", text], {})
    assert f"invalid duration {text!r}" in capsys.readouterr().err
    with pytest.raises(feeder.config.ConfigError, match="invalid duration"):
        feeder.config.load_settings({"retention": text}, {})


def test_there_is_one_duration_parser() -> None:
    assert feeder.config.parse_duration is durations.parse_duration
    assert not hasattr(worker.config, "seconds")  # the worker's own parser, which disagreed
