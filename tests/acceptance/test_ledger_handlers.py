"""The fault harness's ledger handler in both languages, held to one checklist.

tests/faults/handlers.py (run by `python -m worker`) and tests/faults/handlers.js (its port,
run by the Node.js SDK's feedwork-node-worker) must do the same with each payload, since
the fault tests read the same ledgers whichever runs. Each test runs once per language,
with real feeder and worker processes (tests/faults/harness.py), and checks from outside:
the ledger lines, the results, the task states and histories, the worker's exit status, and
how soon a worker's slot comes free.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration

from feedwork.v1 import feeder_pb2 as pb
from tests.faults.harness import (
    FeederProc,
    Proc,
    WorkerCommand,
    WorkerPool,
    assert_clean,
    audit,
    call,
    feeder_stub,
    read_ledger,
    running,
    submit,
    ts,
    wait_for,
    wait_settled,
)

LANGUAGES = ["python", "node"]
LEASE = 5.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(params=LANGUAGES)
def command(request: pytest.FixtureRequest) -> WorkerCommand:
    if request.param == "node":
        return WorkerCommand.node(request.getfixturevalue("node_sdk"))
    return WorkerCommand.python()


def pool(
    tmp_path: Path,
    feeder: FeederProc,
    command: WorkerCommand,
    *,
    concurrency: int,
    grace: float = 5.0,
) -> WorkerPool:
    ledger = tmp_path / "ledger.txt"
    return WorkerPool(
        tmp_path,
        feeder.target,
        queue="q",
        ledger=ledger,
        concurrency=concurrency,
        grace=grace,
        command=command,
    )


def ran(ledger: Path, task_id: str, *, within: float = 20.0) -> float:
    """Waits until `task_id` is in the ledger; returns the time it was seen."""
    wait_for(
        lambda: any(t == task_id for t, _, _ in read_ledger(ledger)),
        within=within,
        what=f"task {task_id} to run",
        every=0.02,
    )
    return time.monotonic()


def test_results_failures_and_ledger_lines(tmp_path: Path, command: WorkerCommand) -> None:
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = pool(tmp_path, feeder, command, concurrency=4)
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        [worker] = workers.start(1)
        [plain, slept] = submit(stub, "q", [{}, {"sleep": 0.5}])
        [failing] = submit(stub, "q", [{"fail": True}], max_attempts=2)
        # No payload at all reads as {}.
        reply = call(stub.Submit, pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")]))
        empty = reply.results[0].task_id
        task_ids = [plain, slept, failing, empty]
        wait_settled(stub, "q", len(task_ids), within=30)
        result, tasks = audit(stub, task_ids, ledger, expect_for={failing: pb.TASK_STATE_DEAD})
    assert_clean(result)
    lines = read_ledger(ledger)
    # One line per execution, "task_id attempt pid", the pid the worker process's own.
    expected = [(plain, 1), (slept, 1), (empty, 1), (failing, 1), (failing, 2)]
    assert sorted(lines) == sorted((t, a, worker.pid) for t, a in expected)
    for task_id in (plain, slept, empty):
        assert tasks[task_id].result == f"{worker.pid} 1".encode()
    # Every completion was answered and written down in the worker's ack ledger.
    assert result.acks_recorded == result.completed == 3
    [attempt] = tasks[slept].history
    assert ts(attempt.ended_at) - ts(attempt.leased_at) >= 0.5
    history = tasks[failing].history
    assert [a.outcome for a in history] == [pb.ATTEMPT_OUTCOME_FAILED] * 2
    assert all("asked to fail" in a.error for a in history), [a.error for a in history]


def test_sleep_wakes_on_a_cancel_unless_told_to_ignore_it(
    tmp_path: Path, command: WorkerCommand
) -> None:
    """One slot: the task after a cancelled sleeper runs as soon as the sleeper gives its
    slot back, at once if it wakes on the cancel, after its whole sleep if it ignores it."""
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = pool(tmp_path, feeder, command, concurrency=1)
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        workers.start(1)
        [woken, after_woken] = submit(stub, "q", [{"sleep": 60}, {}])
        ran(ledger, woken)
        call(stub.CancelTask, pb.CancelTaskRequest(task_id=woken))
        cancelled_at = time.monotonic()
        woke_in = ran(ledger, after_woken) - cancelled_at

        [stubborn, after_stubborn] = submit(stub, "q", [{"sleep": 3, "ignore_cancel": True}, {}])
        started = ran(ledger, stubborn)
        call(stub.CancelTask, pb.CancelTaskRequest(task_id=stubborn))
        slept_for = ran(ledger, after_stubborn) - started

        task_ids = [woken, after_woken, stubborn, after_stubborn]
        wait_settled(stub, "q", len(task_ids), within=30)
        cancelled = {woken: pb.TASK_STATE_CANCELLED, stubborn: pb.TASK_STATE_CANCELLED}
        result, _ = audit(stub, task_ids, ledger, expect_for=cancelled)
    assert_clean(result)
    assert woke_in < 5.0, f"the next task waited {woke_in:.1f} s after the cancel"
    assert slept_for >= 2.8, f"the ignore_cancel sleeper gave its slot back after {slept_for:.1f} s"


def test_exit_kills_the_worker_process_mid_task(tmp_path: Path, command: WorkerCommand) -> None:
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = pool(tmp_path, feeder, command, concurrency=1)
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        [worker] = workers.start(1)
        # One attempt, and a short lease: DEAD as soon as the crashed attempt expires.
        [poison] = submit(
            stub, "q", [{"exit": 3}], max_attempts=1, lease_duration=Duration(seconds=1)
        )
        assert worker.wait(timeout=20) == 3
        wait_settled(stub, "q", 1, within=30)
        result, tasks = audit(stub, [poison], ledger, expect=pb.TASK_STATE_DEAD)
    assert_clean(result)
    assert read_ledger(ledger) == [(poison, 1, worker.pid)]
    assert [a.outcome for a in tasks[poison].history] == [pb.ATTEMPT_OUTCOME_EXPIRED]


def test_sleep_first_on_attempt_one_only_and_woken_at_shutdown(
    tmp_path: Path, command: WorkerCommand
) -> None:
    """A worker stopping with a task asleep: past the grace the task is woken (its signal,
    or task.cancelled) and given back, the worker exits; the next attempt, by another
    worker, sleeps "sleep", not "sleep_first"."""
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, args=["--lease-duration", f"{LEASE:g}s"])
    workers = pool(tmp_path, feeder, command, concurrency=1, grace=1.0)
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        [first] = workers.start(1)
        [task_id] = submit(stub, "q", [{"sleep_first": 60, "sleep": 0.1}])
        ran(ledger, task_id)
        stopping = time.monotonic()
        first.signal(signal.SIGTERM)  # once: a second signal exits at once
        assert first.wait(timeout=20) == 0, stopped_log(first)
        stopped_in = time.monotonic() - stopping
        [second] = workers.start(1)
        wait_settled(stub, "q", 1, within=30)
        result, tasks = audit(stub, [task_id], ledger)
    assert_clean(result)
    assert stopped_in < 10.0, f"the worker took {stopped_in:.1f} s to stop (grace 1 s)"
    assert read_ledger(ledger) == [(task_id, 1, first.pid), (task_id, 2, second.pid)]
    task = tasks[task_id]
    assert task.result == f"{second.pid} 2".encode()
    released, completed = task.history
    assert released.outcome == pb.ATTEMPT_OUTCOME_RELEASED
    assert completed.outcome == pb.ATTEMPT_OUTCOME_ACKED
    assert ts(completed.ended_at) - ts(completed.leased_at) < 5.0


def stopped_log(proc: Proc) -> str:
    return f"{proc.name} exited with {proc.returncode()}:\n{proc.log_tail()}"
