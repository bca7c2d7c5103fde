"""Who may call what: every RPC of the Feeder service, by every kind of caller, allowed or
denied, through a real feeder with an access list (API keys sent as call metadata).

The table `CASES` must name every method of the service (checked first): a new RPC
without a row here (and a rule in feeder/server/auth.py) fails this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from feeder.config import Settings
from feeder.server.auth import RULES
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import ALL_STORES, RunningFeeder

QUEUE = "jobs"
OTHER = "other"
KEYS = {
    "producer": "fwk_p0000001_producer-secret",
    "worker": "fwk_w0000001_worker-secret",
    "admin": "fwk_a0000001_admin-secret",
    "root": "fwk_r0000001_root-secret",
    "stranger": "fwk_s0000001_stranger-secret",
}
GRANTS = {
    "producer": "producer:jobs",
    "worker": "worker:jobs",
    "admin": "admin:jo*",
    "root": "admin",
    "stranger": "producer:other worker:other admin:oth*",
}
ALLOWED = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def access_text() -> str:
    return "\n".join(f"{name} {key_hash(KEYS[name])} {GRANTS[name]}" for name in KEYS)


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        auth=access_text(),
    )


def bearer(caller: str | None) -> list[tuple[str, str]]:
    if caller is None:
        return []
    key = "fwk_x_not-a-known-key" if caller == "forged" else KEYS[caller]
    return [("authorization", f"Bearer {key}")]


@dataclasses.dataclass
class Setup:
    """Tasks made (by root) before the table runs: one in QUEUE, one in OTHER."""

    task: str
    other_task: str


Call = Callable[[RunningFeeder, Setup, list[tuple[str, str]]], Awaitable[Any]]


async def _consume(feeder: RunningFeeder, queue: str, metadata: list[tuple[str, str]]) -> None:
    call = feeder.stub.Consume(metadata=metadata, timeout=0.3)
    await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(queue=queue)))
    try:
        await call.read()  # nothing to lease: waits until the deadline, if allowed
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    finally:
        call.cancel()


def _selector(queue: str) -> pb.DeadTaskSelector:
    return pb.DeadTaskSelector(queue=queue)


@dataclasses.dataclass(frozen=True)
class Case:
    """A call on QUEUE (or its task) and one elsewhere (OTHER's task or queue, or every
    queue), and who may make each."""

    here: Call
    elsewhere: Call
    allowed_here: frozenset[str]
    allowed_elsewhere: frozenset[str]


PRODUCERS = frozenset({"producer", "admin", "root"})
WORKERS = frozenset({"worker", "admin", "root"})
ADMINS = frozenset({"admin", "root"})
ROOT_ONLY = frozenset({"root"})
ROOT_AND_STRANGER = frozenset({"root", "stranger"})
ANY_WORKER = frozenset({"worker", "admin", "root", "stranger"})


def _items(kind: Any, token: str, **fields: Any) -> list[Any]:
    return [kind(lease_token=token, **fields)]


CASES: dict[str, Case] = {
    "Submit": Case(
        lambda f, s, m: f.stub.Submit(
            pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE)]), metadata=m
        ),
        lambda f, s, m: f.stub.Submit(
            pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE), pb.TaskSpec(queue=OTHER)]),
            metadata=m,
        ),
        PRODUCERS,
        ROOT_ONLY,  # every queue of the batch must be allowed
    ),
    "GetTask": Case(
        lambda f, s, m: f.stub.GetTask(pb.GetTaskRequest(task_id=s.task), metadata=m),
        lambda f, s, m: f.stub.GetTask(pb.GetTaskRequest(task_id=s.other_task), metadata=m),
        PRODUCERS,
        ROOT_AND_STRANGER,
    ),
    "CancelTask": Case(
        lambda f, s, m: f.stub.CancelTask(pb.CancelTaskRequest(task_id=s.task), metadata=m),
        lambda f, s, m: f.stub.CancelTask(pb.CancelTaskRequest(task_id=s.other_task), metadata=m),
        PRODUCERS,
        ROOT_AND_STRANGER,
    ),
    "Lease": Case(
        lambda f, s, m: f.stub.Lease(pb.LeaseRequest(queue=QUEUE, max_tasks=1), metadata=m),
        lambda f, s, m: f.stub.Lease(pb.LeaseRequest(queue=OTHER, max_tasks=1), metadata=m),
        WORKERS,
        ROOT_AND_STRANGER,
    ),
    "Consume": Case(
        lambda f, s, m: _consume(f, QUEUE, m),
        lambda f, s, m: _consume(f, OTHER, m),
        WORKERS,
        ROOT_AND_STRANGER,
    ),
    # A lease token is the capability (see feeder/server/auth.py): the worker role is enough.
    "Ack": Case(
        lambda f, s, m: f.stub.Ack(pb.AckRequest(items=_items(pb.AckItem, "x")), metadata=m),
        lambda f, s, m: f.stub.Ack(pb.AckRequest(items=_items(pb.AckItem, "y")), metadata=m),
        ANY_WORKER,
        ANY_WORKER,
    ),
    "Nack": Case(
        lambda f, s, m: f.stub.Nack(pb.NackRequest(items=_items(pb.NackItem, "x")), metadata=m),
        lambda f, s, m: f.stub.Nack(pb.NackRequest(items=_items(pb.NackItem, "y")), metadata=m),
        ANY_WORKER,
        ANY_WORKER,
    ),
    "Extend": Case(
        lambda f, s, m: f.stub.Extend(
            pb.ExtendRequest(items=_items(pb.ExtendItem, "x", lease_duration=Duration(seconds=5))),
            metadata=m,
        ),
        lambda f, s, m: f.stub.Extend(
            pb.ExtendRequest(items=_items(pb.ExtendItem, "y", lease_duration=Duration(seconds=5))),
            metadata=m,
        ),
        ANY_WORKER,
        ANY_WORKER,
    ),
    "ListDeadTasks": Case(
        lambda f, s, m: f.stub.ListDeadTasks(pb.ListDeadTasksRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.ListDeadTasks(pb.ListDeadTasksRequest(), metadata=m),
        ADMINS,
        ROOT_ONLY,  # every queue: only an unlimited admin
    ),
    "RedriveDeadTasks": Case(
        lambda f, s, m: f.stub.RedriveDeadTasks(
            pb.RedriveDeadTasksRequest(selector=pb.DeadTaskSelector(queue=QUEUE)), metadata=m
        ),
        lambda f, s, m: f.stub.RedriveDeadTasks(
            pb.RedriveDeadTasksRequest(selector=pb.DeadTaskSelector(queue=OTHER)), metadata=m
        ),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    "PurgeDeadTasks": Case(
        lambda f, s, m: f.stub.PurgeDeadTasks(
            pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue=QUEUE)), metadata=m
        ),
        lambda f, s, m: f.stub.PurgeDeadTasks(
            pb.PurgeDeadTasksRequest(selector=pb.DeadTaskSelector(queue=OTHER)), metadata=m
        ),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    "GetStats": Case(
        lambda f, s, m: f.stub.GetStats(pb.GetStatsRequest(queues=[QUEUE]), metadata=m),
        lambda f, s, m: f.stub.GetStats(pb.GetStatsRequest(), metadata=m),
        ADMINS,
        ROOT_ONLY,
    ),
}
CALLERS = (*KEYS, None, "forged")


def test_the_table_covers_every_rpc() -> None:
    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["Feeder"].methods}
    assert set(CASES) == methods
    assert set(RULES) == methods


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _expected(caller: str | None, allowed: frozenset[str]) -> grpc.StatusCode:
    if caller in (None, "forged"):
        return UNAUTHENTICATED
    return ALLOWED if caller in allowed else DENIED


async def _setup(feeder: RunningFeeder) -> Setup:
    root = bearer("root")
    reply = await feeder.stub.Submit(
        pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE), pb.TaskSpec(queue=OTHER)]),
        metadata=root,
    )
    return Setup(reply.results[0].task_id, reply.results[1].task_id)


@ALL_STORES
@pytest.mark.parametrize("method", sorted(CASES))
async def test_every_caller_on_every_rpc(feeder: RunningFeeder, method: str) -> None:
    case = CASES[method]
    setup = await _setup(feeder)
    wrong = []
    for where, call, allowed in (
        ("here", case.here, case.allowed_here),
        ("elsewhere", case.elsewhere, case.allowed_elsewhere),
    ):
        for caller in CALLERS:
            code = await _code(call(feeder, setup, bearer(caller)))
            allowed_code = code not in (DENIED, UNAUTHENTICATED)
            want = _expected(caller, allowed)
            if (want == ALLOWED) != allowed_code or (not allowed_code and code != want):
                wrong.append(f"{method} {where} by {caller}: got {code.name}, want {want.name}")
    assert not wrong, "\n".join(wrong)
