"""Renders docs/RELIABILITY.md from the figures the fault tests recorded.

    python tests/faults/report.py [--figures tests/faults/figures.json] [--run ID]
                                  [--out docs/RELIABILITY.md]

`make chaos` runs the fault suite at full size under a run id of its own and then this
script for that run. The prose lives here, the numbers come from the figures file; edit
this file, not the Markdown it writes. Every figure on the page comes from the one run it
names (the newest, unless --run says which): a test that did not run in it shows as not
run, one that failed shows as FAILED with whatever figures it recorded, never a figure of
an earlier run. Standard library only, so it runs without the project installed.
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
3. **Exactly-once completion.** The feeder completes a task once, and keeps what it
   acknowledged: the first ack of any attempt wins and is answered ACKED (or ADOPTED, for
   a late ack of an expired lease that nobody completed yet); every later ack is answered
   DUPLICATE. No two attempts of a task are ever told that they completed it, and a task
   whose completion was acknowledged stays COMPLETED with that ack's result.
4. **Every duplicate execution is caused by a fault and is counted.** A task runs more
   than once only when a lease was lost (worker killed, network cut, lease reply lost,
   worker too slow) or given back; each extra run is a redelivery in the feeder's totals
   (`redelivered`), and each extra ack is counted (`duplicate_acks`, `adopted`).
5. **Submit is idempotent with a key.** Retrying a Submit with the same idempotency key
   creates nothing: the feeder returns the existing task (`deduplicated`).
"""

METHOD = """\
Every test runs real processes on 127.0.0.1 (`python -m feeder` on a SQLite file, or two or
three of them on one PostgreSQL database, and `python -m worker` processes, or in the
tests named for Node.js the Node SDK's `feedwork-node-worker`), injects its fault,
waits until every task has settled, and then audits. The tests run in two modes: *embedded*
(one feeder on SQLite, the default) and *cluster* (three feeders on PostgreSQL, two in the
Node.js test, workers and producers given all of them as `--target a,b,c`). The shared
harness is
`tests/faults/harness.py`:

- **The ledgers.** Workers run `tests/faults/handlers.py:ledger` (Node.js workers its port,
  `tests/faults/handlers.js`, held to the same checklist), which appends one line
  per execution, `task_id attempt pid`, to a per-run file (one `O_APPEND` write per line,
  so lines from many processes never interleave), before doing what the payload asks
  (sleep, crash the process, fail). A run cut short by a crash is in the ledger too. Each
  worker also keeps an ack ledger (`python -m worker --ack-ledger FILE`): one JSON line per
  ack the feeder answered, with the answer (ACKED, ADOPTED, DUPLICATE...) and the result
  the worker sent (the Node worker's `--ack-ledger` writes the same lines). Completions are
  counted from there, outside the feeder.
- **The audit.** For every submitted id the test calls GetTask and compares with the
  ledgers: `lost` counts tasks the feeder does not know or that are not final; `completed
  twice` counts tasks whose completion the feeder acknowledged (ACKED or ADOPTED) to two
  attempts, by the workers' ack ledgers (or whose history holds two ACKED attempts);
  `acknowledged not kept` counts tasks acknowledged as completed to a worker that are not
  COMPLETED with that worker's result; `attempt executed twice` counts a (task, attempt)
  run twice (one lease handed out twice); `phantom executions` counts runs of an attempt
  number the feeder never issued; `duplicate executions` is the sum over tasks of
  executions beyond the first, which must not exceed the feeder's `redelivered` total. Any
  of the first five above zero fails the test. (The feeder's own history could not show a
  double completion: it records one completing attempt, and a completion lost in a crash
  leaves no trace in it. The audit's own test below shows the difference.)
- **Sizes.** `make test` runs every fault test at a CI-friendly size; `make chaos`
  (`FEEDWORK_CHAOS=1`) runs the same tests bigger. Each test records its figures in
  `tests/faults/figures.json` (git-ignored) under the id of its run, before its final
  checks (so a failing test leaves the figures that failed it), and the run records how
  each test ended; `tests/faults/report.py` renders this page from one run only.
"""

AUDIT_CHECK = "audit_catches_broken_store"
# (figures key, title, the tests that record it (a path under tests/faults/, or a test's
# node id there), description). Entries after AUDIT_CHECK are not in the summary table.
TESTS: list[tuple[str, str, str, str]] = [
    (
        "cluster_feeder_killed",
        "Cluster: one of three feeders killed (`test_cluster_killed.py`)",
        "test_cluster_killed.py::test_one_of_three_feeders_killed_again_and_again",
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
        "node_cluster_feeder_killed",
        "Cluster: one of two feeders of Node.js workers killed (`test_cluster_killed.py`)",
        "test_cluster_killed.py::test_one_of_two_feeders_of_node_workers_killed_again_and_again",
        """\
The same with two feeders, and 8 Node.js workers (the SDK's `feedwork-node-worker` running
`tests/faults/handlers.js`) given both addresses: the Node SDK's round robin over several
feeders and its failover to the other when one dies. Checked as above.""",
    ),
    (
        "postgres_restarted",
        "Cluster: PostgreSQL restarted under load (`test_postgres_restart.py`)",
        "test_postgres_restart.py",
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
        "test_feeder_killed.py::test_feeder_killed_at_random_moments",
        """\
kill -9 of the feeder at random moments (every 0.2-1.2 s, down for up to 0.5 s more),
restarted on the same database and port each time, while two producers submit batches with
`FeederClient` and their own idempotency keys (retrying failed Submits, and sending every
fifth batch twice on purpose) and 8 workers (concurrency 4) work. Checked: nothing lost,
nothing completed twice, duplicate executions counted, tasks in the feeder's stats ==
distinct idempotency keys (every key always mapped to the same task id), and every worker
ran tasks again after the last restart without being restarted itself. Also: no worker held
an ack past its lease (*acks held past lease*: a lease that expired under a task that ran,
while its worker had other acks answered); *expired after running* counts every lease that
expired under a task that ran (a worker that reached no feeder for that long).""",
    ),
    (
        "node_feeder_killed",
        "Feeder of Node.js workers killed (`test_feeder_killed.py`)",
        "test_feeder_killed.py::test_feeder_of_node_workers_killed_at_random_moments",
        """\
The same with 8 Node.js workers (the SDK's `feedwork-node-worker` running
`tests/faults/handlers.js`; fewer kills at CI size): the Node SDK's reconnection to a
feeder that came back on its address, and its acks retried through the restarts.""",
    ),
    (
        "workers_killed",
        "Workers killed (`test_workers_killed.py`)",
        "test_workers_killed.py::test_killed_workers_tasks_are_redelivered_after_lease_expiry",
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
        "node_workers_killed",
        "Node.js workers killed (`test_workers_killed.py`)",
        "test_workers_killed.py::test_killed_node_workers_tasks_are_redelivered_after_lease_expiry",
        """\
The same with Node.js workers (the SDK's `feedwork-node-worker` running
`tests/faults/handlers.js`, replaced by fresh processes; fewer tasks and kills at CI
size), checked the same way.""",
    ),
    (
        "graceful_stop",
        "Graceful worker stop (`test_graceful_stop.py`)",
        "test_graceful_stop.py",
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
        "test_network_cut.py",
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
        "test_slow_worker.py",
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
        "test_disk_full.py::test_page_cap_refuses_submits_while_stored_tasks_drain",
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
        "test_disk_full.py::test_full_file_system_stalls_writes_until_space_returns",
        """\
The database lives on an 8 MiB tmpfs that a ballast file fills. Submit fails with
UNAVAILABLE "the database is full"; reads (GetTask, GetStats) go on, and health reports
NOT_SERVING while commits fail. A full file system refuses every write, the WAL's
included, so leases and acks fail too (UNAVAILABLE, retried by the workers): `completed
while full` is 0. Deleting the ballast is enough: health turns SERVING (a probe write
finds out), and everything completes without a restart, nothing lost. Skipped when the
tests cannot mount a tmpfs.""",
    ),
    (
        "disk_full_injected",
        "Commits fail with ENOSPC (`test_disk_full.py`, injected, runs anywhere)",
        "test_disk_full.py::test_commits_failing_with_enospc_stall_writes_until_space_returns",
        """\
The tmpfs test's failure without root: the feeder (`tests/faults/faulty_feeder.py`) runs
on a SQLite store whose every COMMIT fails as on a full disk (SQLITE_FULL, "database or
disk is full", rolled back; `tests/faults/enospc.py`) while a flag file exists, in the
middle of a running workload. Writes answer UNAVAILABLE, health reports NOT_SERVING, the
committed tasks stay intact; once the flag is gone, health reports SERVING again, and
every task completes without a restart, nothing lost.""",
    ),
    (
        "poison_task",
        "Poison task (`test_poison_task.py`)",
        "test_poison_task.py",
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
        "test_bad_input.py",
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
    (
        "bad_input_auth",
        "Bad input with auth on (`test_bad_input.py`, auth variant)",
        "test_bad_input.py",
        """The same fuzz, raw bytes, HTTP/2 and idle connections against a feeder with an access
list: the fuzz calls with a key limited to the queues `fuzz-*` (producer, worker and
admin there), every tenth call with no key or a forged one. Every call without a valid key
is UNAUTHENTICATED, whatever its input; every other one ends OK, INVALID_ARGUMENT,
NOT_FOUND, RESOURCE_EXHAUSTED or PERMISSION_DENIED; no call that succeeded named or read a
queue outside `fuzz-*`, and a task in another queue, whose id the fuzz may name, is never
cancelled or leased. Afterwards: health SERVING, no traceback in its log.""",
    ),
    (
        "overload_burst",
        "Burst of concurrent Submits (`test_overload.py`)",
        "test_overload.py::test_a_burst_of_concurrent_submits_through_the_sdk_all_get_through",
        """\
Thousands of Submits sent at once on one channel, through the producer SDK and then on raw
stubs without retries. Before the fix gRPC cancelled the calls the server had not picked
up past its backlog (1,000 soft, 3,000 hard): ~1,200 of 4,000 failed CANCELLED and the SDK
did not retry them. Checked: every SDK call returned a task id, every raw call was served
(none dropped), and the feeder stored exactly that many tasks.""",
    ),
    (
        "overload_bound",
        "Work in flight past its bound (`test_overload.py`)",
        "test_overload.py::test_past_its_bound_the_feeder_refuses_explicitly_and_clients_retry",
        """\
A feeder with `--max-in-flight 100` and 2,000 Submits at once, first on raw stubs: every
call is either served or refused UNAVAILABLE "the feeder is overloaded" (nothing else,
nothing dropped), and exactly the served ones are stored (a refusal applies nothing);
then through the SDK, which retries the refusals with backoff: all 2,000 stored. The
feeder logs the overload.""",
    ),
    (
        "clock_steps",
        "Wall clock stepped (`test_clock_steps.py`)",
        "test_clock_steps.py",
        """\
The feeder runs under libfaketime; its wall clock is stepped while it runs, its monotonic
clock left alone. +10 min: a healthy worker's 5 min lease stays LEASED and can be extended
and acked (it expired within seconds before the fix). -1 h: a dead worker's 3 s lease
expires and a 3 s delay ends after about 3 s of elapsed time (they waited an hour before
the fix), and the task is leased again as attempt 2.""",
    ),
    (
        "fsync_before_reply",
        "Power loss: fsync before every reply (`test_fsync_before_reply.py`)",
        "test_fsync_before_reply.py",
        """\
The feeder runs under strace, which records when it calls fsync/fdatasync; 20 Submits and
20 Acks are sent one after another and each one's send and reply times taken. With the
default `--sync full` every reply has an fsync between its request and its reply (the
write was on stable storage before the answer); with `--sync normal` none has one (its
documented loss window on power loss).""",
    ),
    (
        "backlog_memory",
        "A backlog ten times the payload memory bound (`test_backlog_memory.py`)",
        "test_backlog_memory.py",
        """\
A SQLite feeder with `--payload-memory 8MiB` is sent ten times that in payloads (64 KiB
each; twenty times at full size), then drained by Lease and Ack, every payload compared
with what was sent. Before the fix every pending payload stayed in memory. The same run
with a bound above the backlog is the control: it shows that the RSS measurement sees
payloads held (its growth is about the backlog's size). Checked: every task drained with
its payload intact in both runs; the bounded feeder grew by at most the bound plus 40 MiB
of slack, and by at most 40% of the second half's bytes while that half arrived (the
control by at least 80% of them).""",
    ),
    (
        AUDIT_CHECK,
        "The audit's own test: a broken store (`test_audit_catches.py`)",
        "test_audit_catches.py",
        """\
The audit must be able to fail. The feeder runs on a store broken on purpose
(`tests/faults/faulty_feeder.py`): it answers acks as usual but never writes a completion
to disk. Workers complete every task; the feeder is killed and restarted, forgets those
completions, and the tasks run and complete again. The feeder's history then holds one
ACKED attempt per task (`history acked twice` 0: counting those sees nothing wrong). The
workers' ack ledgers show every task acknowledged as completed to two attempts and the
first result not kept: the test passes when the audit reports exactly that.""",
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

3. **Health stayed SERVING while the database could not write** (disk full). *Fixed* in
   `feeder/store/sqlite.py`: a failed commit reports the store unavailable through the
   same hook the PostgreSQL store uses (`StoreHooks.available`), so health turns
   NOT_SERVING, and SERVING again after the next commit that succeeds (a small probe
   write is tried every second meanwhile, so an idle feeder finds out too). The injected
   ENOSPC test and the tmpfs test check both turns.
4. **"Completed twice" could not fail.** It counted ACKED attempts in the feeder's own
   history, which keeps one completing attempt, and a completion lost in a crash erases
   itself from it. *Fixed*: completions are counted from the workers' ack ledgers (see
   the audit's own test).
5. **The Node.js worker held acks past their leases after a feeder restart** (feeder
   killed, Node.js workers). When its Consume stream broke, the worker sent its reports as
   unary calls that retried by themselves with backoff growing to 5 s and never went back
   to the reopened stream: acks came 5-9 s after their tasks ran, past the 5 s lease, and
   the tasks ran again. *Fixed* in `clients/node/src/worker.ts` (one try per call, retried
   by the worker's own loop, which takes the stream again as soon as it is open); the test
   now fails on any ack held past its lease.

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
    "acknowledged_not_kept": "acknowledged not kept",
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
    "acknowledged_not_kept",
    "acks_recorded",
    "completed_without_receipt",
    "attempt_executed_twice",
    "phantom_executions",
    "executions",
    "duplicate_executions",
]
SKIP = {"chaos", "recorded_at", "nodeid"}
NOT_MEASURED = "n/a"


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
    if key in ("feeder_killed", "node_feeder_killed"):
        return f"{f.get('kills')} feeder kills"
    if key in ("cluster_feeder_killed", "node_cluster_feeder_killed"):
        return f"{f.get('kills')} kills of 1 of {f.get('feeders')} feeders"
    if key == "postgres_restarted":
        return f"{f.get('restarts')} PostgreSQL restarts"
    if key in ("workers_killed", "node_workers_killed"):
        return f"{f.get('kills')} worker kills"
    if key == "graceful_stop":
        return f"{f.get('rounds')} SIGTERMs"
    if key == "network_cut":
        return f"{f.get('cuts')} cuts, {f.get('stalls')} stalls"
    if key == "slow_worker":
        return f"{sum((f.get('late_acks') or {}).values())} slow acks"
    if key == "disk_full_injected":
        return "commits failing (injected ENOSPC)"
    if key.startswith("disk_full"):
        return "1 full database"
    if key == "poison_task":
        return f"{f.get('worker_crashes')} worker crashes"
    if key.startswith("bad_input"):
        return f"{f.get('fuzz_cases')} bad requests"
    if key.startswith("overload"):
        return f"{f.get('concurrent_submits') or f.get('raw_calls')} Submits at once"
    if key == "clock_steps":
        return "wall clock stepped +10 min, -1 h"
    if key == "backlog_memory":
        bounded = f.get("bounded") or {}
        return f"{bounded.get('backlog_mib')} MiB of payloads, bound {bounded.get('bound_mib')} MiB"
    if key == "fsync_before_reply":
        return f"{f.get('writes_full')} writes counted against fsyncs"
    return ""


def mode_and_name(title: str) -> tuple[str, str]:
    """("cluster" or "embedded", the test's name) from its title."""
    name = title.split(" (")[0]
    if name.startswith("Cluster: "):
        return "cluster (PostgreSQL)", name.removeprefix("Cluster: ")
    return "embedded (SQLite)", name


def outcome_of(node: str, outcomes: dict[str, str]) -> str:
    """How the tests behind one entry ended in the run: "failed" if any failed, "skipped"
    if all were skipped, "passed" if all passed; "not run" (none ran) or "unknown" (the
    run recorded no outcomes: it did not finish)."""
    prefix = f"tests/faults/{node}"
    ended = [
        o for n, o in outcomes.items() if n == prefix or n.startswith((prefix + "::", prefix + "["))
    ]
    if not ended:
        return "not run" if outcomes else "unknown"
    if "failed" in ended:
        return "failed"
    if all(o == "skipped" for o in ended):
        return "skipped"
    return "passed"


def shown_outcome(outcome: str) -> str:
    return "**FAILED**" if outcome == "failed" else outcome


def measured(f: dict[str, Any], key: str) -> str:
    """A figure the test measured, or "n/a": never a constant standing in for one."""
    return value(f[key]) if key in f else NOT_MEASURED


def summary_table(tests: dict[str, Any], outcomes: dict[str, str]) -> str:
    rows = [
        "| mode | test | result | faults | tasks | lost | completed twice | duplicate"
        " executions (redelivered) | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, title, node, _ in TESTS:
        if key == AUDIT_CHECK:
            continue
        f = tests.get(key)
        mode, name = mode_and_name(title)
        result = shown_outcome(outcome_of(node, outcomes))
        if f is None:
            rows.append(f"| {mode} | {name} | {result} | no figures | | | | | |")
            continue
        totals = f.get("feeder_totals") or {}
        dup = measured(f, "duplicate_executions")
        if totals and "duplicate_executions" in f:
            dup = f"{dup} ({totals.get('redelivered', 0)})"
        rows.append(
            f"| {mode} | {name} | {result} | {faults_of(key, f)} | {measured(f, 'tasks')} "
            f"| {measured(f, 'lost')} | {measured(f, 'completed_twice')} | {dup} "
            f"| {measured(f, 'seconds')} |"
        )
    return "\n".join(rows)


def pick_run(data: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """The run to render: `run_id`, or the one started last."""
    runs = data.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ValueError("the figures file holds no run (run the fault tests first)")
    if run_id is None:
        run_id = max(runs, key=lambda r: runs[r].get("started_at", ""))
    if run_id not in runs:
        raise ValueError(f"no run {run_id!r} in the figures file (runs: {', '.join(runs)})")
    run: dict[str, Any] = runs[run_id]
    return run


def render(run: dict[str, Any]) -> str:
    tests = run.get("tests", {})
    outcomes = run.get("outcomes", {})
    suite = tests.get("_suite", {})
    size = "full size (`make chaos`)" if run.get("chaos") else "CI size (`make test`)"
    finished = run.get("finished_at")
    when = f"started {run.get('started_at', '?')}" + (
        f", finished {finished}" if finished else ", did not finish (no outcomes recorded)"
    )
    ran = (
        f"; the fault tests took {value(suite.get('seconds'))} s in all"
        f" ({suite.get('passed', '?')} passed, {suite.get('failed', 0)} failed,"
        f" {suite.get('skipped', 0)} skipped)."
        if suite
        else "."
    )
    failed = sorted(n for n, o in outcomes.items() if o == "failed")
    parts = [
        "# Reliability",
        "",
        "<!-- Generated by tests/faults/report.py from tests/faults/figures.json: edit the"
        " script, not this file. -->",
        "",
        "What feedwork promises when things go wrong, how the fault-injection suite",
        "(`tests/faults/`) checks each promise against real processes, and the figures of",
        f"one run of it, `{run.get('run', '?')}`: {size}, {when}{ran} Every figure below",
        "comes from that run.",
        "",
    ]
    if failed:
        parts += [
            f"**{len(failed)} fault tests FAILED in this run:** "
            + ", ".join(f"`{n.removeprefix('tests/faults/')}`" for n in failed)
            + ". Their figures, where they recorded any, are the ones that failed them.",
            "",
        ]
    parts += [
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
        "## Summary of the run",
        "",
        summary_table(tests, outcomes),
        "",
        "A duplicate execution is a run of a task beyond its first; each is a counted",
        "redelivery (the number in brackets is the feeder's `redelivered` total, which also",
        "counts redeliveries whose lease reply was lost before any run). n/a: the test does",
        "not measure that figure.",
        "",
        "## The tests",
        "",
    ]
    for key, title, node, text in TESTS:
        outcome = outcome_of(node, outcomes)
        parts += [
            f"### {title}",
            "",
            text,
            "",
            f"Result in this run: {shown_outcome(outcome)}.",
            "",
        ]
        f = tests.get(key)
        if f:
            parts += [figures_table(f), ""]
        else:
            parts += ["_No figures recorded in this run._", ""]
    parts += ["## Findings", "", FINDINGS]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=HERE / "figures.json")
    parser.add_argument("--run", help="the run to render (default: the one started last)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    args = parser.parse_args(argv)
    try:
        run = pick_run(json.loads(args.figures.read_text()), args.run)
    except (OSError, ValueError) as exc:
        print(f"report: cannot use {args.figures}: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(run))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
