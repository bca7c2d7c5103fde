"""Who may call what: every RPC of the Feeder service, by every kind of caller, allowed or
denied, through a real feeder with an access list (API keys sent as call metadata).

The table `CASES` must name every method of the service (checked first): a new RPC
without a row here (and a rule in feeder/server/auth.py) fails this module.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from feeder.config import Settings
from feeder.server import audit
from feeder.server.auth import RULES
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import ALL_STORES, FeederFactory, RunningFeeder

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
    # Queue controls and listings: admin on the queue; a listing of every queue needs an
    # unlimited admin. Producers and workers may not list (other callers' names, payloads).
    "ListQueues": Case(
        lambda f, s, m: f.stub.ListQueues(pb.ListQueuesRequest(page_size=1), metadata=m),
        lambda f, s, m: f.stub.ListQueues(pb.ListQueuesRequest(), metadata=m),
        ROOT_ONLY,  # every queue, whatever the page
        ROOT_ONLY,
    ),
    "ListTasks": Case(
        lambda f, s, m: f.stub.ListTasks(pb.ListTasksRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.ListTasks(pb.ListTasksRequest(queue=OTHER), metadata=m),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    "ListWorkers": Case(
        lambda f, s, m: f.stub.ListWorkers(pb.ListWorkersRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.ListWorkers(pb.ListWorkersRequest(), metadata=m),
        ADMINS,
        ROOT_ONLY,
    ),
    "PauseQueue": Case(
        lambda f, s, m: f.stub.PauseQueue(pb.PauseQueueRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.PauseQueue(pb.PauseQueueRequest(queue=OTHER), metadata=m),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    "ResumeQueue": Case(
        lambda f, s, m: f.stub.ResumeQueue(pb.ResumeQueueRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.ResumeQueue(pb.ResumeQueueRequest(queue=OTHER), metadata=m),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    "PurgeQueue": Case(
        lambda f, s, m: f.stub.PurgeQueue(
            pb.PurgeQueueRequest(queue=QUEUE, confirm=QUEUE), metadata=m
        ),
        lambda f, s, m: f.stub.PurgeQueue(
            pb.PurgeQueueRequest(queue=OTHER, confirm=OTHER), metadata=m
        ),
        ADMINS,
        ROOT_AND_STRANGER,
    ),
    # (Allowed here means refused as FAILED_PRECONDITION: the queue holds a task.)
    "DeleteQueue": Case(
        lambda f, s, m: f.stub.DeleteQueue(pb.DeleteQueueRequest(queue=QUEUE), metadata=m),
        lambda f, s, m: f.stub.DeleteQueue(pb.DeleteQueueRequest(queue=OTHER), metadata=m),
        ADMINS,
        ROOT_AND_STRANGER,
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


# -- credentials that must not work ---------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer fwk_r0000001_root-secreT",  # one character off
        "Bearer " + "fwk_r0000001_root-secret"[:-1],
        "bearer",  # no key
        "Basic cm9vdDpyb290",
        "fwk_r0000001_root-secret",  # no scheme
        "Bearer " + key_hash(KEYS["root"]),  # the hash is not the key
    ],
)
async def test_forged_credentials_are_unauthenticated(
    feeder: RunningFeeder, authorization: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feeder.stub.GetStats(
            pb.GetStatsRequest(), metadata=[("authorization", authorization)]
        )
    assert caught.value.code() == UNAUTHENTICATED


async def test_a_replayed_lease_token_changes_nothing(feeder: RunningFeeder) -> None:
    worker = bearer("worker")
    await feeder.stub.Submit(
        pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE)]), metadata=bearer("producer")
    )
    leased = await feeder.stub.Lease(pb.LeaseRequest(queue=QUEUE, max_tasks=1), metadata=worker)
    token = leased.tasks[0].lease_token
    acks = [pb.AckItem(lease_token=token, result=b"first")]
    first = await feeder.stub.Ack(pb.AckRequest(items=acks), metadata=worker)
    # Replayed by another caller holding the worker role (on another queue, even):
    replay = [pb.AckItem(lease_token=token, result=b"second")]
    again = await feeder.stub.Ack(pb.AckRequest(items=replay), metadata=bearer("stranger"))
    assert first.results[0].outcome == pb.ACK_OUTCOME_ACKED
    assert again.results[0].outcome == pb.ACK_OUTCOME_DUPLICATE
    task = await feeder.stub.GetTask(
        pb.GetTaskRequest(task_id=leased.tasks[0].task_id), metadata=bearer("root")
    )
    assert task.task.result == b"first"


# -- the access file, read again ------------------------------------------------------------


async def test_a_key_revoked_in_the_file_is_refused_within_seconds(
    feeder_factory: FeederFactory, feeder_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "access.txt"
    path.write_text(access_text() + "\n")
    settings = dataclasses.replace(feeder_settings, auth=None, auth_file=str(path))
    feeder = await feeder_factory(settings=settings)
    producer = bearer("producer")
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE)])
    await feeder.stub.Submit(request, metadata=producer)
    lines = [line for line in access_text().splitlines() if not line.startswith("producer ")]
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    while True:
        try:
            await feeder.stub.Submit(request, metadata=producer)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == UNAUTHENTICATED
            break
        assert time.monotonic() - started < 5, "the revoked key still works"
        await asyncio.sleep(0.1)
    print(f"revoked after {time.monotonic() - started:.2f} s")
    # A broken rewrite is ignored: the list in use stays.
    path.write_text("this is not an access list\n")
    await asyncio.sleep(1.2)
    await feeder.stub.GetStats(pb.GetStatsRequest(), metadata=bearer("root"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await feeder.stub.Submit(request, metadata=producer)
    assert caught.value.code() == UNAUTHENTICATED


# -- health, reflection ---------------------------------------------------------------------


async def test_health_is_open_and_reflection_follows_auth(feeder: RunningFeeder) -> None:
    health = health_pb2_grpc.HealthStub(feeder.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(feeder.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    async def services(metadata: list[tuple[str, str]]) -> list[str]:
        call = reflection.ServerReflectionInfo(iter([request]), metadata=metadata)
        return [s.name for r in [await call.read()] for s in r.list_services_response.service]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await services([])
    assert caught.value.code() == UNAUTHENTICATED
    assert "feedwork.v1.Feeder" in await services(bearer("worker"))


# -- the audit log ----------------------------------------------------------------------------


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "audit.log"
    handler = audit.configure(str(path))
    yield path
    audit.log.removeHandler(handler)
    handler.close()
    audit.log.propagate = True


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_audit_lines_for_destructive_and_denied_calls(
    feeder: RunningFeeder, audit_file: Path
) -> None:
    secret_payload = b"card 4111-1111-1111-1111"
    submitted = await feeder.stub.Submit(
        pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE, payload=secret_payload)] * 2),
        metadata=bearer("producer"),
    )
    ids = [r.task_id for r in submitted.results]
    await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=ids[0]), metadata=bearer("producer"))
    with pytest.raises(grpc.aio.AioRpcError):
        await feeder.stub.CancelTask(
            pb.CancelTaskRequest(task_id=ids[1]), metadata=bearer("worker")
        )
    with pytest.raises(grpc.aio.AioRpcError):
        await feeder.stub.Lease(
            pb.LeaseRequest(queue=QUEUE, max_tasks=1), metadata=bearer("forged")
        )
    selector = pb.DeadTaskSelector(queue=QUEUE)
    await feeder.stub.RedriveDeadTasks(
        pb.RedriveDeadTasksRequest(selector=selector), metadata=bearer("admin")
    )
    await feeder.stub.PurgeDeadTasks(
        pb.PurgeDeadTasksRequest(selector=selector), metadata=bearer("root")
    )
    await feeder.stub.ListDeadTasks(
        pb.ListDeadTasksRequest(queue=QUEUE, include_payloads=True), metadata=bearer("root")
    )
    lines = audit_lines(audit_file)
    assert [(line["event"], line["method"], line.get("caller", "")) for line in lines] == [
        ("call", "CancelTask", "producer"),
        ("denied", "CancelTask", "worker"),
        ("denied", "Lease", ""),
        ("call", "RedriveDeadTasks", "admin"),
        ("call", "PurgeDeadTasks", "root"),
        ("call", "ListDeadTasks", "root"),
    ]
    cancel, denied, unauthenticated = lines[0], lines[1], lines[2]
    assert cancel["task_ids"] == [ids[0]] and cancel["queues"] == [QUEUE]
    assert cancel["code"] == "OK" and cancel["outcome"] == "CANCEL_OUTCOME_CANCELLED"
    assert denied["code"] == "PERMISSION_DENIED" and denied["task_ids"] == [ids[1]]
    assert unauthenticated["code"] == "UNAUTHENTICATED" and unauthenticated["peer"]
    assert lines[3]["outcome"] == "redriven 0" and lines[4]["outcome"] == "purged 0"
    text = json.dumps(lines)
    assert "4111" not in text and "secret" not in text and "fwk_" not in text
    assert all(line["time"].endswith("Z") for line in lines)
    assert os.stat(audit_file).st_mode & 0o777 == 0o600


async def test_audit_lines_for_queue_controls(feeder: RunningFeeder, audit_file: Path) -> None:
    await feeder.stub.Submit(
        pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE, payload=b"secret")] * 2),
        metadata=bearer("producer"),
    )
    admin = bearer("admin")
    await feeder.stub.PauseQueue(pb.PauseQueueRequest(queue=QUEUE), metadata=admin)
    await feeder.stub.PauseQueue(pb.PauseQueueRequest(queue=QUEUE), metadata=admin)
    await feeder.stub.ListTasks(
        pb.ListTasksRequest(queue=QUEUE, include_payloads=True), metadata=admin
    )
    with pytest.raises(grpc.aio.AioRpcError):  # no confirmation
        await feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue=QUEUE), metadata=admin)
    await feeder.stub.PurgeQueue(pb.PurgeQueueRequest(queue=QUEUE, confirm=QUEUE), metadata=admin)
    await feeder.stub.ResumeQueue(pb.ResumeQueueRequest(queue=QUEUE), metadata=admin)
    await feeder.stub.DeleteQueue(pb.DeleteQueueRequest(queue=QUEUE), metadata=bearer("root"))
    with pytest.raises(grpc.aio.AioRpcError):
        await feeder.stub.PauseQueue(pb.PauseQueueRequest(queue=QUEUE), metadata=bearer("worker"))
    lines = audit_lines(audit_file)
    assert [(line["method"], line["code"], line.get("outcome")) for line in lines] == [
        ("PauseQueue", "OK", "paused"),
        ("PauseQueue", "OK", "paused already"),
        ("ListTasks", "OK", "listed 2"),
        ("PurgeQueue", "INVALID_ARGUMENT", None),
        ("PurgeQueue", "OK", "purged 2"),
        ("ResumeQueue", "OK", "resumed"),
        ("DeleteQueue", "OK", "deleted"),
        ("PauseQueue", "PERMISSION_DENIED", None),
    ]
    assert all(line["queues"] == [QUEUE] for line in lines[:-1])  # (denied by role first)
    assert [line["caller"] for line in lines][-2:] == ["root", "worker"]
    assert "secret" not in json.dumps(lines)


async def test_audit_without_auth_names_the_caller_anyone(
    feeder_factory: FeederFactory, feeder_settings: Settings, audit_file: Path
) -> None:
    feeder = await feeder_factory(settings=dataclasses.replace(feeder_settings, auth=None))
    submitted = await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue=QUEUE)]))
    await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id=submitted.results[0].task_id))
    with pytest.raises(grpc.aio.AioRpcError):
        await feeder.stub.CancelTask(pb.CancelTaskRequest(task_id="999999"))
    line, missing = audit_lines(audit_file)
    assert line["caller"] == "anyone" and line["method"] == "CancelTask"
    assert line["queues"] == [QUEUE] and line["code"] == "OK"
    assert missing["code"] == "NOT_FOUND" and missing["task_ids"] == ["999999"]


async def test_a_stream_without_a_key_is_refused_before_it_sends_anything(
    feeder: RunningFeeder,
) -> None:
    call = feeder.stub.Consume(timeout=5)  # no message written: the refusal does not wait
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == UNAUTHENTICATED
