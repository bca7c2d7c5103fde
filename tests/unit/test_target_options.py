"""Every place that takes a feeder target refuses a bad one before connecting, naming the
option: `feedwork --target`, `python -m worker --target` / FEEDWORK_TARGET, the healthcheck,
and the `target` of FeederClient, AsyncFeederClient and Worker."""

from __future__ import annotations

import socket

import pytest

from feedwork import AsyncFeederClient, FeederClient, TargetError, cli, healthcheck
from worker import Worker
from worker import __main__ as worker_main
from worker.config import parse_config

BAD = "feeder-without-port"


def unresolvable(*args: object, **kwargs: object) -> object:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_feedwork_refuses_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["stats", "--target", BAD])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"argument --target: bad feeder target '{BAD}': no port" in capsys.readouterr().err


def test_feedwork_refuses_a_bad_feedwork_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FEEDWORK_TARGET", "a:1,,b:2")
    with pytest.raises(SystemExit) as exited:
        cli.main(["stats"])
    assert exited.value.code == cli.EXIT_USAGE
    assert "--target: bad feeder target 'a:1,,b:2': empty entry" in capsys.readouterr().err


def test_feedwork_refuses_names_that_do_not_resolve(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    assert cli.main(["stats", "--target", "gone-a:1,gone-b:2"]) == cli.EXIT_USAGE
    assert "error: --target: feeder target 'gone-a:1,gone-b:2': no address found for gone-a" in (
        capsys.readouterr().err
    )


def test_the_worker_refuses_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--queue", "q", "--handler", "json:dumps"]
    with pytest.raises(SystemExit) as exited:
        parse_config([*argv, "--target", "::1:50051"], environ={})
    assert exited.value.code == 2
    assert "argument --target: bad feeder target '::1:50051'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(argv, environ={"FEEDWORK_TARGET": BAD})
    assert f"FEEDWORK_TARGET='{BAD}': bad feeder target" in capsys.readouterr().err


def test_the_worker_takes_a_list_of_feeders() -> None:
    argv = ["--queue", "q", "--handler", "json:dumps", "--target", "a:1, b:2,[::1]:3"]
    assert parse_config(argv, environ={}).target == "a:1, b:2,[::1]:3"


def test_the_worker_exits_2_when_no_feeder_name_resolves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    argv = ["--queue", "q", "--handler", "json:dumps", "--target", "gone-a:1,gone-b:2"]
    assert worker_main.main(argv) == 2
    assert any(r.getMessage().startswith("--target: feeder target") for r in caplog.records)


async def test_clients_and_workers_refuse_a_bad_target() -> None:
    with pytest.raises(TargetError, match=f"bad feeder target '{BAD}'"):
        FeederClient(BAD)
    with pytest.raises(ValueError, match="bad feeder target 'a:1,'"):
        AsyncFeederClient("a:1,")
    with pytest.raises(ValueError, match="bad feeder target"):
        Worker(target="a b:1", queue="q", handler=print)


def test_healthcheck_exits_2_for_a_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main([BAD]) == 2
    assert "TARGET: bad feeder target" in capsys.readouterr().err
    assert healthcheck.main(["127.0.0.1:1,127.0.0.1:2"]) == 1  # nothing listens there


@pytest.mark.parametrize(
    "target", ["127.0.0.1", "localhost:99999", "127.0.0.1:notaport", "dns:///127.0.0.1"]
)
async def test_every_client_refuses_a_target_that_would_dial_the_wrong_port(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: gRPC dialled 443 (or the port modulo 65536), or retried until the deadline.
    with pytest.raises(SystemExit) as exited:
        cli.main(["stats", "--target", target])
    assert exited.value.code == cli.EXIT_USAGE
    assert f"bad feeder target {target!r}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(["--queue", "q", "--handler", "json:dumps", "--target", target], {})
    for make in (FeederClient, AsyncFeederClient):
        with pytest.raises(TargetError):
            make(target)
    with pytest.raises(TargetError):
        Worker(target=target, queue="q", handler=print)
