"""`feedwork queue purge` at a terminal: the queue's name typed again confirms it."""

from __future__ import annotations

import io

import pytest

from feedwork import cli_queues
from feedwork.cli_support import UsageError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("typed", ["mail\n", "  mail  \n"])
def test_the_queues_name_typed_again_confirms_a_purge(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], typed: str
) -> None:
    monkeypatch.setattr("sys.stdin", Terminal(typed))
    cli_queues._confirm_purge("mail")
    assert "Type the queue's name to go on" in capsys.readouterr().err


@pytest.mark.parametrize("typed", ["", "y\n", "Mail\n", "mai\n"])
def test_anything_else_purges_nothing(monkeypatch: pytest.MonkeyPatch, typed: str) -> None:
    monkeypatch.setattr("sys.stdin", Terminal(typed))
    with pytest.raises(UsageError, match="not confirmed: nothing was purged"):
        cli_queues._confirm_purge("mail")


def test_without_a_terminal_it_takes_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("mail\n"))
    with pytest.raises(UsageError, match="add --yes"):
        cli_queues._confirm_purge("mail")
