"""The database cannot grow: Submit fails with a clear status, committed tasks stay intact,
and the feeder recovers when space returns, without a restart.

page-cap: the feeder runs with FEEDWORK_SQLITE_MAX_PAGES (a page cap on the SQLite
    database, see feeder/store/sqlite.py). Submits stop while a reserve of pages is still
    free, so that the leases and acks of the stored tasks go on: workers complete every
    stored task while Submit keeps failing. Purging dead tasks returns space.
tmpfs: the database lives on a small tmpfs that a ballast file fills (needs root to
    mount; skipped otherwise). A full file system refuses every write, the WAL's included,
    so leases and acks fail too (UNAVAILABLE, retried by the workers) until the ballast is
    deleted; then everything completes. Nothing is lost either way.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.faults.faulty_feeder import DISK_FULL_ENV
from tests.faults.harness import (
    FeederProc,
    WorkerPool,
    assert_clean,
    audit,
    check_duplicates_counted,
    child_env,
    feeder_stub,
    get_tasks,
    healthy,
    queue_stats,
    record,
    running,
    scaled,
    totals_figures,
    wait_for,
    wait_settled,
)

QUEUE = "disk"
PAD = "x" * 1500  # makes each task's row about 1.6 KB
MAX_PAGES = 400  # 1.6 MB of 4 KiB pages
STORED = scaled(60, 300)
BALLAST = 10

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(scaled(120, 300))]


def specs(n: int, queue: str = QUEUE, **extra: object) -> list[pb.TaskSpec]:
    payload = json.dumps({"sleep": 0.01, "pad": PAD}).encode()
    return [pb.TaskSpec(queue=queue, payload=payload, **extra) for _ in range(n)]  # type: ignore[arg-type]


def try_submit(
    stub: feeder_pb2_grpc.FeederStub, tasks: list[pb.TaskSpec]
) -> tuple[list[str], grpc.RpcError | None]:
    try:
        reply = stub.Submit(pb.SubmitRequest(tasks=tasks), timeout=10)
    except grpc.RpcError as exc:
        return [], exc
    return [r.task_id for r in reply.results], None


def fill(stub: feeder_pb2_grpc.FeederStub, limit: int = 5000) -> tuple[list[str], grpc.RpcError]:
    """Submits batches of 5 until one fails; returns the ids stored and the failure."""
    stored: list[str] = []
    for _ in range(limit):
        ids, error = try_submit(stub, specs(5))
        if error is not None:
            return stored, error
        stored += ids
    raise AssertionError(f"the database took {len(stored)} tasks and is still not full")


def assert_full(error: grpc.RpcError) -> None:
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "database is full" in (error.details() or ""), error.details()


def test_page_cap_refuses_submits_while_stored_tasks_drain(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    feeder = FeederProc(tmp_path, env=child_env(FEEDWORK_SQLITE_MAX_PAGES=str(MAX_PAGES)))
    workers = WorkerPool(tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=4)
    started = time.monotonic()
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        # Ballast: dead tasks with big payloads, purged later to make room.
        ballast = [
            pb.TaskSpec(queue="ballast", payload=b"b" * 20_000, max_attempts=1)
            for _ in range(BALLAST)
        ]
        stub.Submit(pb.SubmitRequest(tasks=ballast), timeout=10)
        leased = stub.Lease(
            pb.LeaseRequest(queue="ballast", max_tasks=BALLAST, worker_id="t")
        ).tasks
        items = [pb.NackItem(lease_token=t.lease_token, terminal=True) for t in leased]
        stub.Nack(pb.NackRequest(items=items), timeout=10)

        stored = [r.task_id for r in stub.Submit(pb.SubmitRequest(tasks=specs(STORED))).results]
        filled, error = fill(stub)
        stored += filled
        assert_full(error)
        message = error.details()
        # Still full: the same batch fails again, the feeder stays up and healthy.
        assert_full(try_submit(stub, specs(5))[1] or pytest.fail("a submit got through"))
        assert healthy(feeder.target)

        # Committed tasks are intact, and workers lease and ack every one of them.
        tasks = get_tasks(stub, stored)
        assert len(tasks) == len(stored)
        assert all(t.state == pb.TASK_STATE_READY for t in tasks.values())
        workers.start(2)
        wait_settled(stub, QUEUE, len(stored), within=60)
        refused_while_draining = try_submit(stub, specs(5))[1]
        assert refused_while_draining is not None, "completing tasks made room?"

        # Space returns: purging the dead ballast frees pages, submits work again.
        purged = stub.PurgeDeadTasks(
            pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue="ballast")), timeout=10
        ).purged
        assert purged == BALLAST
        after, error = try_submit(stub, specs(20))
        assert error is None, error
        stored += after
        wait_settled(stub, QUEUE, len(stored), within=60)
        result, _ = audit(stub, stored, ledger)
        stats = queue_stats(stub, QUEUE)
        assert feeder.alive() and feeder.starts == 1
    elapsed = time.monotonic() - started

    record(
        "disk_full_page_cap",
        {
            "max_pages": MAX_PAGES,
            "tasks_stored_before_full": len(stored) - len(after),
            "submit_error": f"{error_code(refused_while_draining)}: {message}",
            "completed_while_full": len(stored) - len(after),
            "ballast_purged": purged,
            "submitted_after_space_returned": len(after),
            "tasks": len(stored),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "feeder_restarts": feeder.starts - 1,
            "seconds": round(elapsed, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)


def error_code(error: grpc.RpcError | None) -> str:
    return "OK" if error is None else error.code().name


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: Path) -> int:
    """Writes a ballast file until the file system is full; returns its size."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9):
            chunk = b"\0" * size
            while True:
                try:
                    written += os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return written


def check_recovery(
    test: str,
    figures: dict[str, Any],
    *,
    stub: feeder_pb2_grpc.FeederStub,
    feeder: FeederProc,
    ledger: Path,
    stored: list[str],
    free_space: Callable[[], object],
    started: float,
) -> None:
    """The end of a test whose disk is full: `free_space()` gives the room back, then the
    same feeder (no restart) turns SERVING again, takes a submit, and every task (`stored`
    and that submit's) completes. Records `figures` and the recovery's under `test`, then
    audits every task against the workers' ledgers."""
    free_space()
    freed = time.monotonic()
    wait_for(lambda: healthy(feeder.target), within=10, what="SERVING with room again")
    serving_again = time.monotonic() - freed
    after, error = try_submit(stub, specs(20))
    assert error is None, error
    tasks = stored + after
    wait_settled(stub, QUEUE, len(tasks), within=60)
    result, _ = audit(stub, tasks, ledger)
    stats = queue_stats(stub, QUEUE)
    assert feeder.alive() and feeder.starts == 1

    record(
        test,
        {
            **figures,
            "tasks_stored_before_full": len(stored),
            "serving_again_after_s": round(serving_again, 2),
            "submitted_after_space_returned": len(after),
            "tasks": len(tasks),
            **result.figures(),
            "feeder_totals": totals_figures(stats.totals),
            "feeder_restarts": feeder.starts - 1,
            "seconds": round(time.monotonic() - started, 1),
        },
    )
    assert_clean(result)
    check_duplicates_counted(result, stats.totals)


def test_full_file_system_stalls_writes_until_space_returns(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        feeder = FeederProc(tmp_path, db=mnt / "feedwork.db")
        workers = WorkerPool(tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=4)
        started = time.monotonic()
        with running(feeder, workers), feeder_stub(feeder.target) as stub:
            feeder.start()
            stored = [r.task_id for r in stub.Submit(pb.SubmitRequest(tasks=specs(STORED))).results]
            ballast = mnt / "ballast"
            ballast_bytes = fill_disk(ballast)
            _, error = try_submit(stub, specs(5))
            assert error is not None, "a submit got through on a full file system"
            assert_full(error)
            message = error.details()
            # Health tells the truth: the store cannot write.
            full_at = time.monotonic()
            wait_for(lambda: not healthy(feeder.target), within=5, what="NOT_SERVING when full")
            not_serving_after = time.monotonic() - full_at
            tasks = get_tasks(stub, stored)
            assert len(tasks) == len(stored)

            # Workers try; whatever they manage while the disk is full is recorded.
            workers.start(2)
            time.sleep(3)
            completed_while_full = queue_stats(stub, QUEUE).completed

            assert not healthy(feeder.target)
            check_recovery(
                "disk_full_tmpfs",
                {
                    "tmpfs": "8m",
                    "ballast_bytes": ballast_bytes,
                    "submit_error": f"{error_code(error)}: {message}",
                    "completed_while_full": completed_while_full,
                    "not_serving_after_s": round(not_serving_after, 2),
                },
                stub=stub,
                feeder=feeder,
                ledger=ledger,
                stored=stored,
                free_space=ballast.unlink,
                started=started,
            )


def test_commits_failing_with_enospc_stall_writes_until_space_returns(tmp_path: Path) -> None:
    """The tmpfs test's failure, injected so that it runs anywhere: the feeder's every
    commit fails as on a full disk (SQLITE_FULL at COMMIT, tests/faults/enospc.py) while a
    flag file exists, under a running workload. Writes answer UNAVAILABLE, health is
    NOT_SERVING; removing the flag is enough: health SERVING, everything completes, nothing
    lost, without a restart."""
    ledger = tmp_path / "ledger.txt"
    flag = tmp_path / "disk-full"
    feeder = FeederProc(
        tmp_path,
        module="tests.faults.faulty_feeder",
        env=child_env(**{DISK_FULL_ENV: str(flag)}),
    )
    workers = WorkerPool(tmp_path, feeder.target, queue=QUEUE, ledger=ledger, concurrency=4)
    started = time.monotonic()
    with running(feeder, workers), feeder_stub(feeder.target) as stub:
        feeder.start()
        slow = [pb.TaskSpec(queue=QUEUE, payload=json.dumps({"sleep": 0.5}).encode())] * 16
        stored = [r.task_id for r in stub.Submit(pb.SubmitRequest(tasks=slow)).results]
        stored += [r.task_id for r in stub.Submit(pb.SubmitRequest(tasks=specs(STORED))).results]
        workers.start(2)
        wait_for(lambda: queue_stats(stub, QUEUE).leased > 0, within=10, what="leases")
        flag.touch()
        full_at = time.monotonic()
        _, error = try_submit(stub, specs(5))
        assert error is not None, "a submit got through on a full disk"
        assert_full(error)
        message = error.details()
        wait_for(lambda: not healthy(feeder.target), within=5, what="NOT_SERVING when full")
        not_serving_after = time.monotonic() - full_at
        assert len(get_tasks(stub, stored)) == len(stored)
        time.sleep(2)  # the workers' acks and leases fail meanwhile, and are retried
        completed_while_full = queue_stats(stub, QUEUE).completed
        assert not healthy(feeder.target)
        check_recovery(
            "disk_full_injected",
            {
                "submit_error": f"{error_code(error)}: {message}",
                "not_serving_after_s": round(not_serving_after, 2),
                "completed_while_full": completed_while_full,
            },
            stub=stub,
            feeder=feeder,
            ledger=ledger,
            stored=stored,
            free_space=flag.unlink,
            started=started,
        )
