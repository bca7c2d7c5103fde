"""What the CLI shows of a task (feedwork.render): strings that come from tasks are shown
as they are, never taken as Rich markup or as terminal control sequences."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from rich.console import Console

from feedwork import render
from feedwork.types import (
    AttemptInfo,
    AttemptOutcome,
    QueueStats,
    Stats,
    TaskInfo,
    TaskState,
)

# Markup that crashed `feedwork status` ([/bold]), made a link, or coloured the output, and
# raw escape sequences: a colour, an OSC 8 hyperlink, a cursor move and a bell.
HOSTILE = (
    "[/bold] [link=https://evil.example]click[/link] [red]red[/red] "
    "\x1b[31mred\x1b[0m \x1b]8;;https://evil.example\x07link\x1b]8;;\x07 \x1b[2J\x9b1m\u202eevil"
)


def hostile_task() -> TaskInfo:
    attempt = AttemptInfo(
        attempt=1,
        worker_id=HOSTILE,
        leased_at=datetime(2026, 1, 1, tzinfo=UTC),
        ended_at=None,
        outcome=AttemptOutcome.FAILED,
        error=HOSTILE,
        caller=HOSTILE,
    )
    return TaskInfo(
        task_id="1",
        queue="q",
        state=TaskState.DEAD,
        payload=HOSTILE.encode(),
        headers={HOSTILE: HOSTILE},
        result=HOSTILE.encode(),
        idempotency_key=HOSTILE,
        history=(attempt,),
    )


def shown(*renderables: object, terminal: bool) -> str:
    out = io.StringIO()
    colours = "truecolor" if terminal else "auto"  # auto: none, as for a pipe
    console = Console(file=out, force_terminal=terminal, width=400, color_system=colours)
    for renderable in renderables:
        console.print(renderable)
    return out.getvalue()


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_task_strings_are_shown_as_they_are(terminal: bool) -> None:
    text = shown(
        *(t for t in render.task_tables(hostile_task()) if t is not None), terminal=terminal
    )
    # The markup is text, not markup: no crash, no link, no colour.
    assert text.count("[/bold] [link=https://evil.example]click[/link] [red]red[/red]") >= 7
    assert "\x1b]8;" not in text  # no hyperlink, neither from markup nor from the payload
    assert "\x1b[31m" not in text  # no red
    # Control characters are made visible instead of reaching the terminal.
    assert "\\x1b[31mred\\x1b[0m" in text
    assert "\\x1b]8;;https://evil.example\\x07link" in text
    assert "\\x1b[2J" in text and "\\x9b1m" in text and "\\u202eevil" in text
    for control in ("\x07", "\x9b", "\u202e", "\x1b[2J"):
        assert control not in text
    if not terminal:
        assert "\x1b" not in text


def test_each_attempt_shows_its_worker_and_the_caller_the_feeder_authenticated() -> None:
    attempt = AttemptInfo(
        attempt=1,
        worker_id="host-1",
        leased_at=datetime(2026, 1, 1, tzinfo=UTC),
        ended_at=None,
        outcome=AttemptOutcome.RUNNING,
        error="",
        caller="billing-workers",
    )
    task = TaskInfo(task_id="1", queue="q", state=TaskState.LEASED, history=(attempt,))
    (entry,) = render.task_json(task)["history"]
    assert (entry["worker_id"], entry["caller"]) == ("host-1", "billing-workers")
    _, attempts = render.task_tables(task)
    assert attempts is not None
    assert [column.header for column in attempts.columns][:3] == ["attempt", "worker", "caller"]
    text = shown(attempts, terminal=False)
    assert "host-1" in text and "billing-workers" in text
    # Without auth no attempt names a caller: no empty column, "" in the JSON.
    anonymous = replace(task, history=(replace(attempt, caller=""),))
    _, attempts = render.task_tables(anonymous)
    assert attempts is not None and "caller" not in [c.header for c in attempts.columns]
    assert render.task_json(anonymous)["history"][0]["caller"] == ""


def test_queue_names_in_stats_are_shown_as_they_are() -> None:
    stats = Stats(queues=(QueueStats(queue="[/bold]\x1b[2J"), QueueStats(queue="b")))
    text = shown(*render.stats_tables(stats), terminal=True)
    assert "[/bold]\\x1b[2J" in text and "\x1b[2J" not in text


@pytest.mark.parametrize(
    ("raw", "visible"),
    [
        ("plain text, ünïcode, 漢字, emoji 👍🏽", "plain text, ünïcode, 漢字, emoji 👍🏽"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        ("\x00\x1b\x7f\x85\x9f", "\\x00\\x1b\\x7f\\x85\\x9f"),
        ("\u2028\u202a\u2066\u200f", "\\u2028\\u202a\\u2066\\u200f"),
    ],
)
def test_visible(raw: str, visible: str) -> None:
    assert render.visible(raw) == visible
