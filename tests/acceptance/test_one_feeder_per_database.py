"""One feeder per SQLite database, whatever path leads to it.

A second `python -m feeder` on a database another feeder has open must refuse to start,
with a message that says so, when it names the file by another path: a symlink, a hard
link, a relative path. (Two feeders on one file would each keep an index of their own and
fail each other's writes: `UNIQUE constraint failed: tasks.id`.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.acceptance.test_feeder_crash import ROOT, FeederProcess
from tests.processes import die_with_parent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def first_feeder(tmp_path: Path) -> Iterator[FeederProcess]:
    (tmp_path / "data").mkdir()
    process = FeederProcess(tmp_path / "data" / "feedwork.db", tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def second_feeder(db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "feeder", "--listen", "127.0.0.1:0", "--db", db]
    return subprocess.run(
        die_with_parent(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=20
    )


@pytest.mark.parametrize("way", ["symlink", "symlinked-folder", "hardlink", "relative"])
def test_a_second_feeder_on_the_same_file_refuses_to_start(
    first_feeder: FeederProcess, tmp_path: Path, way: str
) -> None:
    real = first_feeder.db
    if way == "symlink":
        db = str(tmp_path / "link.db")
        os.symlink(real, db)
    elif way == "symlinked-folder":
        os.symlink(real.parent, tmp_path / "elsewhere")
        db = str(tmp_path / "elsewhere" / real.name)
    elif way == "hardlink":
        db = str(tmp_path / "hard.db")
        os.link(real, db)
    else:
        db = os.path.join("..", tmp_path.name, "data", ".", real.name)
    second = second_feeder(db, cwd=tmp_path)
    assert second.returncode == 1, second.stderr
    assert "in use by another feeder" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    # The first one is unharmed: it still serves, and writes.
    with grpc.insecure_channel(first_feeder.target) as channel:
        stub = feeder_pb2_grpc.FeederStub(channel)
        reply = stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")]), timeout=10)
        assert reply.results[0].state == pb.TASK_STATE_READY
