"""Renders docs/RELIABILITY.md from the figures the fault tests recorded.

    python tests/faults/report.py [--figures tests/faults/figures.json] [--out docs/RELIABILITY.md]

`make chaos` runs the fault suite at full size and then this script. The prose lives here,
the numbers come from the figures file (each test's latest run); edit this file, not the
Markdown it writes. Standard library only, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

PROMISES = """\
1. **Nothing is lost.** Every task whose Submit returned ends COMPLETED, DEAD or CANCELLED.
   Submit replies only after the task is committed to the database (SQLite, or PostgreSQL
   for several feeders), so a kill -9 of a feeder, or a restart of PostgreSQL, cannot take
   back a task it acknowledged.
2. **At-least-once processing.** A task whose worker dies, hangs, is cut off or is too slow
   is leased again once its lease expires (or at once, when a stopping worker releases it),
   until it completes or runs out of attempts (then it is DEAD, in the dead-letter list).
3. **Exactly-once completion.** The feeder's ledger completes a task once: its history has
   exactly one ACKED attempt. The first ack of any attempt wins; a late ack of an expired
   lease is ADOPTED if nobody completed the task yet, else dropped as DUPLICATE.
4. **Every duplicate execution is caused by a fault and is counted.** A task runs more
   than once only when a lease was lost (worker killed, network cut, lease reply lost,
   worker too slow) or given back; each extra run is a redelivery in the feeder's totals
   (`redelivered`), and each extra ack is counted (`duplicate_acks`, `adopted`).
5. **Submit is idempotent with a key.** Retrying a Submit with the same idempotency key
   creates nothing: the feeder returns the existing task (`deduplicated`).
"""

METHOD = """\
Every test runs real processes on 127.0.0.1 (`python -m feeder` on a SQLite file, or three
of them on one PostgreSQL database, and `python -m worker` processes), injects its fault,
waits until every task has settled, and then audits. The tests run in two modes: *embedded*
(one feeder on SQLite, the default) and *cluster* (three feeders on PostgreSQL, workers and
producers given all three as `--target a,b,c`). The shared harness is
`tests/faults/harness.py`:

- **The ledger.** Workers run `tests/faults/handlers.py:ledger`, which appends one line per
  execution, `task_id attempt pid`, to a per-run file (one `O_APPEND` write per line, so
  lines from many processes never interleave), before doing what the payload asks (sleep,
  crash the process, fail). A run cut short by a crash is in the ledger too.
- **The audit.** For every submitted id the test calls GetTask and compares with the
  ledger: `lost` counts tasks the feeder does not know or that are not final; `completed
  twice` counts tasks with more than one ACKED attempt; `attempt executed twice` counts a
  (task, attempt) run twice (one lease handed out twice); `phantom executions` counts runs of
  an attempt number the feeder never issued; `duplicate executions` is the sum over tasks
  of executions beyond the first, which must not exceed the feeder's `redelivered` total.
  Any of the first four above zero fails the test.
- **Sizes.** `make test` runs every fault test at a CI-friendly size; `make chaos`
  (`FEEDWORK_CHAOS=1`) runs the same tests bigger. Each test records its figures in
  `tests/faults/figures.json` (git-ignored), and `tests/faults/report.py` renders this page.
"""

TESTS: list[tuple[str, str, str]] = [
    (
        "cluster_feeder_killed",
        "Cluster: one of three feeders killed (`test_cluster_killed.py`)",
        """\
Three feeders on one PostgreSQL database; two producers (`FeederClient`, own idempotency
keys, every fifth batch sent twice) and 8 workers (concurrency 4) are given all three. At
random moments (every 0.3-1.5 s) one of the three, whichever it is (the maintenance leader
too), is killed with SIGKILL and restarted 0-1.5 s later; the other two carry on. Checked:
nothing lost, nothing completed twice, no task created twice (tasks == distinct keys),
duplicate executions counted, all three feeders report the same counts, and no worker was
restarted: each carried on through the surviving feeders.""",
    ),
    (
        "postgres_restarted",
        "Cluster: PostgreSQL restarted under load (`test_postgres_restart.py`)",
        """\
The same cluster under the same load while the PostgreSQL server itself is stopped (fast
shutdown: every session cut, open transactions rolled back) for 1-3 s and started again,
several times. Meanwhile the feeders answer UNAVAILABLE (producers and workers retry) and
report NOT_SERVING on the health service; they reconnect by themselves and report SERVING
again. Checked as above, and no feeder or worker was restarted.""",
    ),
    (
        "feeder_killed",
        "Feeder killed (`test_feeder_killed.py`)",
        """\
kill -9 of the feeder at random moments (every 0.2-1.2 s, down for up to 0.5 s more),
restarted on the same database and port each time, while two producers submit batches with
`FeederClient` and their own idempotency keys (retrying failed Submits, and sending every
fifth batch twice on purpose) and 8 workers (concurrency 4) work. Checked: nothing lost,
nothing completed twice, duplicate executions counted, tasks in the feeder's stats ==
distinct idempotency keys (every key always mapped to the same task id), and every worker
ran tasks again after the last restart without being restarted itself.""",
    ),
    (
        "workers_killed",
        "Workers killed (`test_workers_killed.py`)",
        """\
kill -9 of the worker that most recently started a task (so it is mid-task), replaced by a
fresh process each time, while tasks arrive at about half the pool's capacity. Tasks are
shorter than two thirds of the 3 s lease, so no lease is extended and each deadline is
exactly leased_at + 3 s. From each EXPIRED attempt in the history: *expiry lateness* =
ended_at - deadline (never negative: a lease is never taken away early) and *redelivery
delay* = next attempt's leased_at - deadline. Every EXPIRED attempt belongs to a killed
worker.""",
    ),
    (
        "graceful_stop",
        "Graceful worker stop (`test_graceful_stop.py`)",
        """\
SIGTERM to a worker (concurrency 4, grace 2 s, lease 30 s) busy with two 1 s tasks and two
60 s tasks, with more tasks queued behind; a second worker starts at the same moment. The
1 s tasks finish and are ACKED by the stopping worker; the 60 s tasks end their attempt
RELEASED (no failure counted) when the grace period ends, about 28 s before their lease
deadline, and the other worker leases them at once; the queued tasks go to the other
worker on their first attempt; the stopped worker exits 0 right after its grace period.""",
    ),
    (
        "network_cut",
        "Network cut (`test_network_cut.py`)",
        """\
The workers reach the feeder through a TCP proxy of the test's own (`tests/faults/proxy.py`,
asyncio in a thread) that *cuts* (resets every connection and refuses new ones for up to
1.5 s) and *stalls* (forwards nothing for 0.3-2.5 s) at random while producers submit
straight to the feeder. Then two deterministic rounds: acks sent into a cut (the workers
finish 16 one-second tasks while every connection is reset and refused for 2 s) and acks
sent into a stall. Those tasks are ACKED on their first attempt and executed once,
completing only after the outage: the acks were retried (or delivered late), not lost.""",
    ),
    (
        "slow_worker",
        "Slow worker (`test_slow_worker.py`)",
        """\
A worker slower than its 1 s lease that never extends it (the test on raw stubs): (a) alone,
its late ack is ADOPTED; (b) over a newer lease, its ack is ADOPTED, the newer attempt is
REVOKED, whose Extend answers COMPLETED and ack DUPLICATE; (c) after a real worker
completed the redelivered task, its ack is DUPLICATE; (d) a race with real workers, acks
spread from before the deadline to 3 s after it: ACKED before the deadline, ADOPTED or
DUPLICATE after, the attempt history agreeing each time. One completion per task.""",
    ),
    (
        "disk_full_page_cap",
        "Database full, page cap (`test_disk_full.py`)",
        """\
The feeder runs with `FEEDWORK_SQLITE_MAX_PAGES=400` (a cap on the SQLite file, see below).
Tasks are submitted until Submit fails: it fails with UNAVAILABLE and "the database is
full". The committed tasks are intact, and workers lease and ack every one of them while
Submit keeps failing. Purging 10 dead ballast tasks returns space: Submit works again
without a restart, and the new tasks complete.""",
    ),
    (
        "disk_full_tmpfs",
        "File system full (`test_disk_full.py`, root only)",
        """\
The database lives on an 8 MiB tmpfs that a ballast file fills. Submit fails with
UNAVAILABLE "the database is full"; reads (GetTask, GetStats, health) go on. A full file
system refuses every write, the WAL's included, so leases and acks fail too (UNAVAILABLE,
retried by the workers): `completed while full` is 0. Deleting the ballast is enough:
everything completes without a restart, nothing lost. Skipped when the tests cannot
mount a tmpfs.""",
    ),
    (
        "poison_task",
        "Poison task (`test_poison_task.py`)",
        """\
A payload whose handler calls `os._exit(3)`: the worker process dies every time it runs
it. A supervisor loop in the test restarts crashed workers. The poison task ends DEAD after
max_attempts (3) lease expiries, every attempt EXPIRED, executed exactly 3 times (one
worker crash each); the ordinary tasks all complete once (those that shared a process with
the poison when it crashed are redelivered, and counted).""",
    ),
    (
        "bad_input",
        "Bad input (`test_bad_input.py`)",
        """\
One feeder, hypothesis-driven fuzz of all 11 RPCs with random field values (huge, empty,
negative, out-of-range, unicode, NUL, 100 kB strings, payloads over the limit, batches
over 1000) and of Ack/Nack/Extend with forged and tampered lease tokens (one character
changed, attempt or task id changed under the same tag, forged tag, other versions,
truncated, padded, random), genuine tokens of other tasks and stale tokens. Every call
ends OK, INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED; every tampered token is
INVALID_TOKEN; the tasks they were made from stay leased by their owner, who can still
extend and ack them. Raw undecodable bytes and 9 MiB messages to each method path answer
INVALID_ARGUMENT and RESOURCE_EXHAUSTED; malformed HTTP/2 from raw sockets and 50 idle
connections do not stop the server. Afterwards: health SERVING, no traceback in its log.""",
    ),
]

FINDINGS = """\
Bugs the fault tests found, and what was done:

1. **Undecodable request bytes got UNKNOWN and a traceback per call** (bad input). A body
   that is not a valid protobuf message failed inside gRPC's deserializer: the client got
   `UNKNOWN: Unexpected <class 'DecodeError'>`, not a documented status, and the feeder
   logged a full traceback at ERROR for every such call (a cheap way to flood its log).
   *Fixed* in `feeder/server/servicer.py` (`add_to_server`, `MalformedRequest`, used by
   `feeder/server/app.py`): requests are parsed leniently and an undecodable one is
   answered INVALID_ARGUMENT ("request: is not a valid feedwork.v1.XRequest message")
   like any other malformed request, without logging.
2. **A database that cannot grow stopped leases and acks too** (disk full). With the
   database at its size limit, Submit failed as it should, but the first Lease or Ack
   batch that made rows grow (each attempt adds to the history, an ack adds the result)
   also failed with "database is full", so the stored tasks could never drain. *Fixed for
   the page cap*: `FEEDWORK_SQLITE_MAX_PAGES` (new, `feeder/store/sqlite.py`; a test and
   operations knob that sets `PRAGMA max_page_count` on the writer) keeps a reserve of a
   tenth of the pages (at least 16): a Submit that would eat into it fails, so leases and
   acks of the stored tasks find room. The test fails without the reserve.

Known limits (reported, not changed):

- **A full file system stops all writes.** On a real full disk the WAL cannot grow either,
  so leases, acks and nacks fail with UNAVAILABLE until space returns (nothing is lost and
  the feeder recovers without a restart; see the tmpfs test). Keeping writes going would
  need a free-space reserve for Submit (e.g. refuse submits below N MiB free on the
  database's file system).
- **The page-cap reserve is a heuristic.** Leasing a task grows its row by about 100 bytes
  and SQLite packs appended rows tightly, so a database capped while holding very many very
  small pending tasks (rows of a few hundred bytes) can still outgrow a 10 % reserve while
  they drain; such calls fail with UNAVAILABLE and are retried by the workers.
- **"The database is full" is UNAVAILABLE, not RESOURCE_EXHAUSTED.** Clients treat
  UNAVAILABLE as transient, so `FeederClient.submit` retries a full database for its whole
  retry budget (30 s by default) before failing.
- **A producer finds a restarted feeder seconds late.** `FeederClient` opens its channel
  with gRPC's default reconnect backoff (1 s, growing to 120 s) where the worker uses
  0.25-2 s, and waits up to 5 s between retries: after a feeder restart a blocked
  `submit` went through 2.5-7.5 s after the feeder was back (measured with the feeder down
  for 5 and 20 s). Nothing is lost or duplicated (the feeder test shows it), but the
  client's channel options could match the worker's.
- **Undecodable requests to the standard health service** (not ours) still get UNKNOWN
  from gRPC.
"""

LABELS = {
    "kills": "kills survived",
    "tasks": "tasks",
    "lost": "lost",
    "completed_twice": "completed twice",
    "attempt_executed_twice": "attempt executed twice",
    "phantom_executions": "phantom executions",
    "executions": "executions",
    "duplicate_executions": "duplicate executions",
    "expiry_lateness_s": "expiry lateness after the deadline (s)",
    "redelivery_delay_after_deadline_s": "redelivery delay after the deadline (s)",
    "fuzz_cases": "fuzz cases tried",
    "feeder_totals": "feeder totals",
}
FIRST = [
    "kills",
    "faults",
    "worker_crashes",
    "fuzz_cases",
    "tasks",
    "lost",
    "completed_twice",
    "attempt_executed_twice",
    "phantom_executions",
    "executions",
    "duplicate_executions",
]
SKIP = {"chaos", "recorded_at"}


def label(key: str) -> str:
    if key in LABELS:
        return LABELS[key]
    return (key[:-2] + " (s)" if key.endswith("_s") else key).replace("_", " ")


def value(v: Any) -> str:
    if isinstance(v, dict) and set(v) == {"count", "p50", "p99", "max"}:
        if not v["count"]:
            return "none"
        return f"p50 {v['p50']}, p99 {v['p99']}, max {v['max']} (n = {v['count']})"
    if isinstance(v, dict):
        return ", ".join(f"{k.replace('_', ' ')} {value(x)}" for k, x in v.items())
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|")


def figures_table(figures: dict[str, Any]) -> str:
    keys = [k for k in FIRST if k in figures]
    keys += sorted(k for k in figures if k not in keys and k not in SKIP)
    rows = ["| figure | value |", "| --- | --- |"]
    rows += [f"| {label(k)} | {value(figures[k])} |" for k in keys]
    return "\n".join(rows)


def faults_of(key: str, f: dict[str, Any]) -> str:
    if key == "feeder_killed":
        return f"{f.get('kills')} feeder kills"
    if key == "cluster_feeder_killed":
        return f"{f.get('kills')} kills of 1 of {f.get('feeders')} feeders"
    if key == "postgres_restarted":
        return f"{f.get('restarts')} PostgreSQL restarts"
    if key == "workers_killed":
        return f"{f.get('kills')} worker kills"
    if key == "graceful_stop":
        return f"{f.get('rounds')} SIGTERMs"
    if key == "network_cut":
        return f"{f.get('cuts')} cuts, {f.get('stalls')} stalls"
    if key == "slow_worker":
        return f"{sum((f.get('late_acks') or {}).values())} slow acks"
    if key.startswith("disk_full"):
        return "1 full database"
    if key == "poison_task":
        return f"{f.get('worker_crashes')} worker crashes"
    if key == "bad_input":
        return f"{f.get('fuzz_cases')} bad requests"
    return ""


def mode_and_name(title: str) -> tuple[str, str]:
    """("cluster" or "embedded", the test's name) from its title."""
    name = title.split(" (")[0]
    if name.startswith("Cluster: "):
        return "cluster (PostgreSQL)", name.removeprefix("Cluster: ")
    return "embedded (SQLite)", name


def summary_table(tests: dict[str, Any]) -> str:
    rows = [
        "| mode | test | faults | tasks | lost | completed twice | duplicate executions"
        " (redelivered) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, title, _ in TESTS:
        f = tests.get(key)
        mode, name = mode_and_name(title)
        if f is None:
            rows.append(f"| {mode} | {name} | not run | | | | | |")
            continue
        totals = f.get("feeder_totals") or {}
        dup = f.get("duplicate_executions", "")
        if totals:
            dup = f"{dup} ({totals.get('redelivered', 0)})"
        rows.append(
            f"| {mode} | {name} | {faults_of(key, f)} | {f.get('tasks', '')} "
            f"| {f.get('lost', 0 if key == 'bad_input' else '')} "
            f"| {f.get('completed_twice', 0 if key == 'bad_input' else '')} | {dup} "
            f"| {value(f.get('seconds', ''))} |"
        )
    return "\n".join(rows)


def render(data: dict[str, Any]) -> str:
    tests = data.get("tests", {})
    suite = tests.get("_suite", {})
    chaos = {bool(f.get("chaos")) for k, f in tests.items() if k != "_suite"}
    size = "full size (`make chaos`)" if chaos == {True} else "CI size (`make test`)"
    if len(chaos) > 1:
        size = "mixed sizes (some tests at CI size, some at full size)"
    dates = sorted(f.get("recorded_at", "") for k, f in tests.items() if k != "_suite")
    when = f"{dates[0]} to {dates[-1]}" if dates else "never"
    parts = [
        "# Reliability",
        "",
        "<!-- Generated by tests/faults/report.py from tests/faults/figures.json: edit the"
        " script, not this file. -->",
        "",
        "What feedwork promises when things go wrong, how the fault-injection suite",
        "(`tests/faults/`) checks each promise against real processes, and the figures of",
        f"its last run: {size}, recorded {when}"
        + (
            f"; the fault tests took {value(suite.get('seconds'))} s in all"
            f" ({suite.get('passed', '?')} passed, {suite.get('failed', 0)} failed,"
            f" {suite.get('skipped', 0)} skipped)."
            if suite
            else "."
        ),
        "",
        "## The promises",
        "",
        PROMISES,
        "## How they are checked",
        "",
        METHOD,
        "Run them with `make test` (every test, CI size: the fault tests take about 4",
        "minutes on 2 cores) or `make chaos` (fault tests only, full size, then this report);",
        "one test: `.venv/bin/pytest tests/faults/test_feeder_killed.py`. Set",
        "`FEEDWORK_CHAOS_SEED` to replay the kill schedule of the feeder test.",
        "",
        "## Summary of the last run",
        "",
        summary_table(tests),
        "",
        "A duplicate execution is a run of a task beyond its first; each is a counted",
        "redelivery (the number in brackets is the feeder's `redelivered` total, which also",
        "counts redeliveries whose lease reply was lost before any run).",
        "",
        "## The tests",
        "",
    ]
    for key, title, text in TESTS:
        parts += [f"### {title}", "", text, ""]
        f = tests.get(key)
        parts += [figures_table(f) if f else "_Not run yet._", ""]
    parts += ["## Findings", "", FINDINGS]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=HERE / "figures.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.figures.read_text())
    except (OSError, ValueError) as exc:
        print(f"report: cannot read {args.figures}: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(data))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
