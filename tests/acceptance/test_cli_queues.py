"""`feedwork queues`, `tasks list`, `workers` and `queue pause|resume|purge|delete` as a
user runs them: a feeder started with `feedwork feeder`, the CLI in its own processes."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from feedwork.client import FeederClient
from tests.acceptance.test_cli import ENV, FEEDWORK, Background, feeder, feedwork

__all__ = ["feeder"]  # the fixture, used by name


def submit(target: str, queue: str, *payloads: str, delay: str | None = None) -> list[str]:
    ids = []
    for payload in payloads:
        extra = ["--delay", delay] if delay else []
        run = feedwork("submit", "-q", queue, *extra, payload, "--target", target)
        assert run.returncode == 0, run.stderr
        ids.append(run.stdout.strip())
    return ids


def listed_queues(target: str) -> dict[str, dict[str, object]]:
    run = feedwork("queues", "--json", "--target", target)
    assert run.returncode == 0, run.stderr
    return {q["queue"]: q for q in json.loads(run.stdout)["queues"]}


def test_pause_resume_and_list_the_tasks_of_a_queue(feeder: str) -> None:
    mail = submit(feeder, "mail", "one", "two", "three")
    submit(feeder, "img", "later", delay="1h")
    assert {name: q["paused"] for name, q in listed_queues(feeder).items()} == {
        "img": False,
        "mail": False,
    }

    pause = feedwork("queue", "pause", "mail", "--target", feeder)
    assert pause.returncode == 0, pause.stderr
    assert pause.stdout.strip() == "queue 'mail' paused"
    again = feedwork("queue", "pause", "mail", "--json", "--target", feeder)
    assert json.loads(again.stdout) == {"queue": "mail", "changed": False}
    queues = listed_queues(feeder)
    assert queues["mail"]["paused"] and queues["mail"]["paused_at"]
    assert (queues["mail"]["ready"], queues["img"]["scheduled"]) == (3, 1)
    table = feedwork("queues", "--target", feeder)
    assert "paused since" in table.stdout and "running" in table.stdout

    listing = feedwork(
        "tasks", "list", "-q", "mail", "--state", "READY", "--json", "--target", feeder
    )
    assert listing.returncode == 0, listing.stderr
    tasks = json.loads(listing.stdout)["tasks"]
    assert [t["task_id"] for t in tasks] == mail
    assert {t["payload"] for t in tasks} == {""}  # without --payloads
    newest = feedwork(
        "tasks", "list", "-q", "mail", "--newest", "--page-size", "2", "--payloads", "--json",
        "--target", feeder,
    )  # fmt: skip
    page = json.loads(newest.stdout)
    assert [(t["task_id"], t["payload"]) for t in page["tasks"]] == [
        (mail[2], "three"),
        (mail[1], "two"),
    ]
    assert f"next page: --page-token {page['next_page_token']}" in newest.stderr
    rest = feedwork(
        "tasks", "list", "-q", "mail", "--newest", "--page-token", page["next_page_token"],
        "--target", feeder,
    )  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    rows = [line.split() for line in rest.stdout.splitlines() if "READY" in line]
    assert [row[:2] for row in rows] == [[mail[0], "READY"]]

    resume = feedwork("queue", "resume", "mail", "--target", feeder)
    assert resume.stdout.strip() == "queue 'mail' resumed"
    assert not listed_queues(feeder)["mail"]["paused"]


def test_purge_asks_to_be_sure_and_delete_wants_an_empty_queue(feeder: str) -> None:
    submit(feeder, "mail", "one", "two")
    submit(feeder, "img", "later", delay="1h")
    unsure = feedwork("queue", "purge", "mail", "--target", feeder, stdin="mail\n")
    assert unsure.returncode == 2  # not at a terminal: --yes it must be
    assert "add --yes" in unsure.stderr
    assert listed_queues(feeder)["mail"]["ready"] == 2

    purged = feedwork("queue", "purge", "mail", "--yes", "--json", "--target", feeder)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"queue": "mail", "purged": 2}
    stats = json.loads(feedwork("stats", "-q", "mail", "--json", "--target", feeder).stdout)
    assert stats["queues"][0]["totals"]["purged"] == 2

    busy = feedwork("queue", "delete", "img", "--target", feeder)
    assert busy.returncode == 4
    assert "holds 1 tasks (1 scheduled)" in busy.stderr
    deleted = feedwork("queue", "delete", "mail", "--target", feeder)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.strip() == "queue 'mail' deleted"
    assert list(listed_queues(feeder)) == ["img"]

    for args in (
        ["queue", "pause", "nosuch"],
        ["queue", "delete", "mail"],
        ["queue", "purge", "nosuch", "--yes"],
        ["tasks", "list", "-q", "nosuch"],
    ):
        missing = feedwork(*args, "--target", feeder)
        assert missing.returncode == 3, (args, missing.stderr)
        assert "no queue" in missing.stderr
    bad_state = feedwork("tasks", "list", "-q", "img", "--state", "waiting", "--target", feeder)
    assert bad_state.returncode == 2


def test_workers_shows_who_holds_leases(feeder: str, tmp_path: Path) -> None:
    submit(feeder, "work", *[json.dumps({"sleep_ms": 20_000})] * 2)
    worker = Background(
        [
            "worker", "--target", feeder, "--queue", "work",
            "--handler", "feedwork.demo:sleep_handler", "--worker-id", "cli-w",
            "--concurrency", "2",
        ],
        tmp_path / "worker.log",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            run = feedwork("workers", "--json", "--target", feeder)
            assert run.returncode == 0, run.stderr
            workers = json.loads(run.stdout)
            if workers["lease_holders"]:
                break
            assert time.monotonic() < deadline, worker.log.read_text()
            time.sleep(0.2)
        [holder] = workers["lease_holders"]
        assert (holder["queue"], holder["worker_id"], holder["leases"]) == ("work", "cli-w", 2)
        [stream] = workers["consumers"]
        assert (stream["kind"], stream["worker_id"], stream["queues"]) == (
            "STREAM",
            "cli-w",
            ["work"],
        )
        table = feedwork("workers", "--queue", "work", "--target", feeder)
        assert "cli-w" in table.stdout and "leases held" in table.stdout
        assert "stream" in table.stdout
    finally:
        worker.stop()


def test_top_shows_the_queues_and_their_rates(feeder: str) -> None:
    submit(feeder, "mail", "one", "two")
    assert feedwork("queue", "pause", "mail", "--target", feeder).returncode == 0
    # Not on a terminal: a table per refresh; rates from the second one on.
    argv = [*FEEDWORK, "top", "--target", feeder, "--iterations", "3", "--interval", "1s"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=ENV) as top:
        assert top.stdout is not None
        first = ""
        while " mail " not in first:  # the first table's row: the first reading is taken
            line = top.stdout.readline()
            assert line, "top ended early"
            first += line
        with FeederClient(feeder) as client:
            for payload in ("three", "four", "five"):
                client.submit(payload, queue="mail")
        rest, _ = top.communicate(timeout=30)
    out = first + rest
    assert top.returncode == 0
    tables = [t for t in out.split("feedwork top · ") if t.strip()]
    assert len(tables) == 3
    assert "mail" in tables[0] and "paused" in tables[0]
    rows = [
        next(line for line in table.splitlines() if line.strip().startswith("mail")).split()
        for table in tables
    ]
    # queue, state, scheduled, ready, leased, completed, dead, cancelled, oldest, in/s, ...
    assert rows[-1][1] == "paused" and rows[-1][3] == "5"
    assert rows[0][9] == "-"  # no rate from one reading
    # The three submits, counted in the refresh after them: 3 in about a second.
    assert 1.5 < max(float(row[9]) for row in rows[1:]) < 6
    run = feedwork("top", "--target", feeder, "--interval", "0")
    assert run.returncode == 2 and "--interval must be more than 0" in run.stderr
