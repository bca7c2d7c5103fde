"""Malformed requests, through a real grpc.aio server: every RPC answers INVALID_ARGUMENT
with details that start with the offending field ("tasks[0].queue: ..."), never INTERNAL,
changes nothing, and the feeder keeps serving valid calls afterwards."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from feeder.config import Settings
from feedwork.errors import FieldViolation, InvalidArgument, error_from_rpc, field_violations
from feedwork.v1 import feeder_pb2 as pb

PAYLOAD_LIMIT = 1024
RESULT_LIMIT = 512


@pytest.fixture
def feeder_settings(tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        db=str(tmp_path / "feedwork.db"),
        shutdown_grace=1.0,
        max_payload_bytes=PAYLOAD_LIMIT,
        max_result_bytes=RESULT_LIMIT,
    )


def task(**fields) -> pb.TaskSpec:
    return pb.TaskSpec(**{"queue": "q", **fields})


def submit(*specs: pb.TaskSpec) -> tuple[str, pb.SubmitRequest]:
    return "Submit", pb.SubmitRequest(tasks=list(specs))


def lease(**fields) -> tuple[str, pb.LeaseRequest]:
    return "Lease", pb.LeaseRequest(**{"queue": "q", "max_tasks": 1, **fields})


def ack(*items: pb.AckItem) -> tuple[str, pb.AckRequest]:
    return "Ack", pb.AckRequest(items=list(items))


def nack(*items: pb.NackItem) -> tuple[str, pb.NackRequest]:
    return "Nack", pb.NackRequest(items=list(items))


def extend(*items: pb.ExtendItem) -> tuple[str, pb.ExtendRequest]:
    return "Extend", pb.ExtendRequest(items=list(items))


def selector(rpc: str, **fields) -> tuple[str, object]:
    chosen = pb.DeadTaskSelector(**{"queue": "q", **fields})
    if rpc == "Redrive":
        return "RedriveDeadTasks", pb.RedriveDeadTasksRequest(selector=chosen)
    return "PurgeDeadTasks", pb.PurgeDeadTasksRequest(selector=chosen)


def seconds(value: float) -> Duration:
    whole = int(value)
    return Duration(seconds=whole, nanos=round((value - whole) * 1e9))


TOKEN = "bm90LWEtcmVhbC10b2tlbg"  # well-formed enough to pass validation; not a real token
OK_ACK = pb.AckItem(lease_token=TOKEN)
OK_NACK = pb.NackItem(lease_token=TOKEN)
OK_EXTEND = pb.ExtendItem(lease_token=TOKEN)
DAY = 86400

# (rpc, request, field named in the details)
CASES = {
    # -- Submit
    "submit-empty": (*submit(), "tasks"),
    "submit-too-many": (*submit(*[task()] * 1001), "tasks"),
    "queue-missing": (*submit(task(queue="")), "tasks[0].queue"),
    "queue-space": (*submit(task(), task(queue="has space")), "tasks[1].queue"),
    "queue-slash": (*submit(task(queue="a/b")), "tasks[0].queue"),
    "queue-too-long": (*submit(task(queue="q" * 129)), "tasks[0].queue"),
    "queue-unicode": (*submit(task(queue="é")), "tasks[0].queue"),
    "payload-too-big": (*submit(task(payload=b"x" * (PAYLOAD_LIMIT + 1))), "tasks[0].payload"),
    "header-empty-key": (*submit(task(headers={"": "v"})), "tasks[0].headers"),
    "header-long-key": (*submit(task(headers={"k" * 129: "v"})), "tasks[0].headers"),
    "headers-too-big": (*submit(task(headers={"k": "v" * 16384})), "tasks[0].headers"),
    "priority-high": (*submit(task(priority=1001)), "tasks[0].priority"),
    "priority-low": (*submit(task(priority=-(2**31))), "tasks[0].priority"),
    "max-attempts-negative": (*submit(task(max_attempts=-1)), "tasks[0].max_attempts"),
    "max-attempts-high": (*submit(task(max_attempts=1001)), "tasks[0].max_attempts"),
    "idempotency-key-long": (
        *submit(task(idempotency_key="k" * 257)),
        "tasks[0].idempotency_key",
    ),
    "delay-negative": (*submit(task(delay=Duration(seconds=-1))), "tasks[0].delay"),
    "delay-negative-nanos": (*submit(task(delay=Duration(nanos=-1))), "tasks[0].delay"),
    "delay-bad-nanos": (*submit(task(delay=Duration(nanos=10**9))), "tasks[0].delay"),
    "delay-over-a-year": (*submit(task(delay=Duration(seconds=365 * DAY + 1))), "tasks[0].delay"),
    "delay-huge": (*submit(task(delay=Duration(seconds=2**62))), "tasks[0].delay"),
    "delay-and-not-before": (
        *submit(task(delay=Duration(seconds=1), not_before=Timestamp(seconds=1))),
        "tasks[0].delay",
    ),
    "not-before-pre-1970": (
        *submit(task(), task(), task(not_before=Timestamp(seconds=-1))),
        "tasks[2].not_before",
    ),
    "not-before-after-9999": (
        *submit(task(not_before=Timestamp(seconds=253_402_300_800))),
        "tasks[0].not_before",
    ),
    "not-before-bad-nanos": (
        *submit(task(not_before=Timestamp(seconds=1, nanos=10**9))),
        "tasks[0].not_before",
    ),
    "task-lease-zero": (*submit(task(lease_duration=Duration())), "tasks[0].lease_duration"),
    "task-lease-short": (
        *submit(task(lease_duration=seconds(0.5))),
        "tasks[0].lease_duration",
    ),
    "task-lease-long": (
        *submit(task(lease_duration=Duration(seconds=12 * 3600 + 1))),
        "tasks[0].lease_duration",
    ),
    # -- Lease
    "lease-queue-missing": (*lease(queue=""), "queue"),
    "lease-queue-bad": (*lease(queue="q*"), "queue"),
    "max-tasks-zero": (*lease(max_tasks=0), "max_tasks"),
    "max-tasks-negative": (*lease(max_tasks=-5), "max_tasks"),
    "max-tasks-high": (*lease(max_tasks=1001), "max_tasks"),
    "wait-negative": (*lease(wait=Duration(seconds=-1)), "wait"),
    "wait-over-60s": (*lease(wait=seconds(60.001)), "wait"),
    "wait-bad-nanos": (*lease(wait=Duration(nanos=2 * 10**9)), "wait"),
    "lease-duration-zero": (*lease(lease_duration=Duration()), "lease_duration"),
    "lease-duration-short": (*lease(lease_duration=seconds(0.999)), "lease_duration"),
    "lease-duration-long": (*lease(lease_duration=Duration(seconds=43201)), "lease_duration"),
    "worker-id-long": (*lease(worker_id="w" * 257), "worker_id"),
    # -- Ack
    "ack-empty": (*ack(), "items"),
    "ack-too-many": (*ack(*[OK_ACK] * 1001), "items"),
    "ack-result-too-big": (
        *ack(pb.AckItem(lease_token=TOKEN, result=b"r" * (RESULT_LIMIT + 1))),
        "items[0].result",
    ),
    # -- Nack
    "nack-empty": (*nack(), "items"),
    "nack-terminal-and-release": (
        *nack(pb.NackItem(lease_token=TOKEN, terminal=True, release=True)),
        "items[0].release",
    ),
    "retry-after-negative": (
        *nack(pb.NackItem(lease_token=TOKEN, retry_after=Duration(seconds=-3))),
        "items[0].retry_after",
    ),
    "retry-after-over-a-year": (
        *nack(OK_NACK, pb.NackItem(lease_token=TOKEN, retry_after=Duration(seconds=400 * DAY))),
        "items[1].retry_after",
    ),
    # -- Extend
    "extend-empty": (*extend(), "items"),
    "extend-duration-zero": (
        *extend(OK_EXTEND, pb.ExtendItem(lease_token=TOKEN, lease_duration=Duration())),
        "items[1].lease_duration",
    ),
    "extend-duration-long": (
        *extend(pb.ExtendItem(lease_token=TOKEN, lease_duration=Duration(seconds=50000))),
        "items[0].lease_duration",
    ),
    # -- GetTask and CancelTask
    **{
        f"{rpc}-id-{name}": (rpc, request_type(task_id=value), "task_id")
        for rpc, request_type in (
            ("GetTask", pb.GetTaskRequest),
            ("CancelTask", pb.CancelTaskRequest),
        )
        for name, value in (
            ("empty", ""),
            ("letters", "abc"),
            ("negative", "-1"),
            ("plus", "+1"),
            ("space", " 12"),
            ("fraction", "1.5"),
            ("underscore", "1_0"),
            ("arabic-digits", "١٢"),
            ("over-int64", "9223372036854775808"),
            ("20-digits", "12345678901234567890"),
        )
    },
    # -- ListDeadTasks
    "list-queue-missing": ("ListDeadTasks", pb.ListDeadTasksRequest(), "queue"),
    "page-size-negative": (
        "ListDeadTasks",
        pb.ListDeadTasksRequest(queue="q", page_size=-1),
        "page_size",
    ),
    "page-size-high": (
        "ListDeadTasks",
        pb.ListDeadTasksRequest(queue="q", page_size=1001),
        "page_size",
    ),
    "page-token-bad": (
        "ListDeadTasks",
        pb.ListDeadTasksRequest(queue="q", page_token="not-a-token"),
        "page_token",
    ),
    # -- RedriveDeadTasks and PurgeDeadTasks
    **{
        f"{rpc}-{name}": (*selector(rpc, **fields), field)
        for rpc in ("Redrive", "Purge")
        for name, fields, field in (
            ("queue-missing", {"queue": ""}, "selector.queue"),
            ("queue-bad", {"queue": "a b"}, "selector.queue"),
            ("limit-negative", {"limit": -1}, "selector.limit"),
            ("limit-high", {"limit": 100_001}, "selector.limit"),
            ("task-id-bad", {"task_ids": ["1", "x"]}, "selector.task_ids[1]"),
        )
    },
    "redrive-no-selector": (
        "RedriveDeadTasks",
        pb.RedriveDeadTasksRequest(),
        "selector.queue",
    ),
    # -- GetStats
    "stats-queue-bad": ("GetStats", pb.GetStatsRequest(queues=["q", "bad name"]), "queues[1]"),
    "stats-queue-empty": ("GetStats", pb.GetStatsRequest(queues=[""]), "queues[0]"),
    "stats-too-many": ("GetStats", pb.GetStatsRequest(queues=["q"] * 1001), "queues"),
    # -- queue controls and listings
    "queues-page-size": ("ListQueues", pb.ListQueuesRequest(page_size=10_001), "page_size"),
    "queues-token": ("ListQueues", pb.ListQueuesRequest(page_token="a b"), "page_token"),
    "tasks-queue": ("ListTasks", pb.ListTasksRequest(queue=""), "queue"),
    "tasks-state-unspecified": (
        "ListTasks",
        pb.ListTasksRequest(queue="q", states=[pb.TASK_STATE_READY, 0]),
        "states[1]",
    ),
    "tasks-state-unknown": ("ListTasks", pb.ListTasksRequest(queue="q", states=[7]), "states[0]"),
    "tasks-page-size": ("ListTasks", pb.ListTasksRequest(queue="q", page_size=-1), "page_size"),
    "tasks-token": ("ListTasks", pb.ListTasksRequest(queue="q", page_token="x"), "page_token"),
    "workers-queue": ("ListWorkers", pb.ListWorkersRequest(queue="a b"), "queue"),
    "workers-limit": ("ListWorkers", pb.ListWorkersRequest(limit=10_001), "limit"),
    "pause-queue": ("PauseQueue", pb.PauseQueueRequest(queue=""), "queue"),
    "resume-queue": ("ResumeQueue", pb.ResumeQueueRequest(queue="a/b"), "queue"),
    "purge-queue": ("PurgeQueue", pb.PurgeQueueRequest(queue="", confirm=""), "queue"),
    "purge-unconfirmed": ("PurgeQueue", pb.PurgeQueueRequest(queue="q"), "confirm"),
    "purge-confirmed-wrong": (
        "PurgeQueue",
        pb.PurgeQueueRequest(queue="q", confirm="Q"),
        "confirm",
    ),
    "delete-queue": ("DeleteQueue", pb.DeleteQueueRequest(queue="?"), "queue"),
}


async def call(feeder, rpc: str, request: object) -> object:
    return await getattr(feeder.stub, rpc)(request)


async def assert_invalid(feeder, rpc: str, request: object, field: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(feeder, rpc, request)
    code, details = error.value.code(), error.value.details()
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert details.startswith(f"{field}: "), details
    assert len(details) > len(field) + 2  # says what is wrong, too
    # The same, for programs: a google.rpc.BadRequest in the standard status details.
    description = details.removeprefix(f"{field}: ")
    assert field_violations(error.value) == (FieldViolation(field, description),)
    sdk_error = error_from_rpc(error.value)
    assert isinstance(sdk_error, InvalidArgument)
    assert sdk_error.field_violations == (FieldViolation(field, description),)
    return details


async def test_a_consume_stream_refused_carries_its_field_violation_too(feeder) -> None:
    call = feeder.stub.Consume()
    await call.write(pb.ConsumeRequest(credits=1))  # no start
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call.read()
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = field_violations(error.value)
    assert violation.field == "start" and "first message" in violation.description


async def assert_healthy(feeder) -> None:
    """A full valid round trip works, and no malformed request left anything behind."""
    stats = await feeder.stub.GetStats(pb.GetStatsRequest())
    assert stats.totals == pb.Totals()
    [submitted] = (
        await feeder.stub.Submit(pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"ok")]))
    ).results
    assert submitted.state == pb.TASK_STATE_READY
    [leased] = (await feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=1))).tasks
    assert leased.task_id == submitted.task_id
    [acked] = (
        await feeder.stub.Ack(pb.AckRequest(items=[pb.AckItem(lease_token=leased.lease_token)]))
    ).results
    assert acked.outcome == pb.ACK_OUTCOME_ACKED


@pytest.mark.parametrize(("rpc", "request_", "field"), CASES.values(), ids=CASES.keys())
async def test_malformed_request_is_invalid_argument_naming_the_field(
    feeder, rpc: str, request_: object, field: str
) -> None:
    await assert_invalid(feeder, rpc, request_, field)
    await assert_healthy(feeder)


@pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)
async def test_every_malformed_request_in_a_row_leaves_the_feeder_serving(feeder) -> None:
    """All cases against one feeder per store: no state leaks from one bad call to the next."""
    for rpc, request, field in CASES.values():
        await assert_invalid(feeder, rpc, request, field)
    await assert_healthy(feeder)


@pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)
async def test_edge_values_that_are_valid_are_accepted(feeder) -> None:
    """The bounds themselves are inside: nothing off by one, nothing INTERNAL."""
    edge = [
        task(queue="Q" * 128, priority=1000, max_attempts=1000, idempotency_key="k" * 256),
        task(queue="a.b_c-D9", priority=-1000, payload=b"x" * PAYLOAD_LIMIT),
        task(delay=Duration(seconds=365 * DAY), lease_duration=Duration(seconds=12 * 3600)),
        task(not_before=Timestamp(seconds=253_402_300_799, nanos=999_999_999)),
        task(lease_duration=Duration(seconds=1), headers={"k" * 128: "v"}),
        task(delay=Duration()),  # zero delay: ready at once
    ]
    results = (await feeder.stub.Submit(pb.SubmitRequest(tasks=edge))).results
    assert [r.state for r in results] == [
        pb.TASK_STATE_READY,
        pb.TASK_STATE_READY,
        pb.TASK_STATE_SCHEDULED,
        pb.TASK_STATE_SCHEDULED,
        pb.TASK_STATE_READY,
        pb.TASK_STATE_READY,
    ]
    leased = await feeder.stub.Lease(
        pb.LeaseRequest(
            queue="q",
            max_tasks=1000,
            lease_duration=Duration(seconds=43200),
            wait=Duration(seconds=0),
            worker_id="w" * 256,
        )
    )
    assert len(leased.tasks) == 2
    token = leased.tasks[0].lease_token
    [extended] = (
        await feeder.stub.Extend(
            pb.ExtendRequest(
                items=[pb.ExtendItem(lease_token=token, lease_duration=Duration(seconds=1))]
            )
        )
    ).results
    assert extended.outcome == pb.EXTEND_OUTCOME_EXTENDED
    # An over-long error is cut to 4 KiB, not refused; a 512-character token is well formed
    # (and, not being one the feeder issued, an INVALID_TOKEN outcome, not an error).
    nacked = await feeder.stub.Nack(
        pb.NackRequest(
            items=[
                pb.NackItem(lease_token=token, error="é" * 5000, retry_after=seconds(365 * DAY)),
                pb.NackItem(lease_token="t" * 512),
            ]
        )
    )
    assert [r.outcome for r in nacked.results] == [
        pb.NACK_OUTCOME_RETRYING,
        pb.NACK_OUTCOME_INVALID_TOKEN,
    ]
    got = await feeder.stub.GetTask(pb.GetTaskRequest(task_id=leased.tasks[0].task_id))
    error = got.task.history[0].error
    assert len(error.encode()) <= 4096 and error == "é" * len(error) and len(error) >= 2047
    acked = await feeder.stub.Ack(
        pb.AckRequest(
            items=[pb.AckItem(lease_token=leased.tasks[1].lease_token, result=b"r" * RESULT_LIMIT)]
        )
    )
    assert [r.outcome for r in acked.results] == [pb.ACK_OUTCOME_ACKED]
    # The largest task id is well formed: simply not found.
    for rpc in ("GetTask", "CancelTask"):
        request_type = getattr(pb, f"{rpc}Request")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call(feeder, rpc, request_type(task_id="9223372036854775807"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    biggest = pb.DeadTaskSelector(queue="q", task_ids=["9223372036854775807"], limit=100_000)
    redrive = await feeder.stub.RedriveDeadTasks(pb.RedriveDeadTasksRequest(selector=biggest))
    assert redrive.redriven == 0
    purge = await feeder.stub.PurgeDeadTasks(pb.PurgeDeadTasksRequest(selector=biggest))
    assert purge.purged == 0
    page = await feeder.stub.ListDeadTasks(
        pb.ListDeadTasksRequest(queue="q", page_size=1000, page_token="9223372036854775807")
    )
    assert list(page.tasks) == []
    # A queue named more than once is reported, and counted in the totals, once.
    stats = await feeder.stub.GetStats(pb.GetStatsRequest(queues=["q", "q", "q"]))
    assert [(q.queue, q.totals.submitted) for q in stats.queues] == [("q", 4)]
    assert stats.totals == pb.Totals(submitted=4, completed=1, failed=1)


# Tokens that are not what the feeder issues: longer than any token, empty, not base64, not
# ASCII, of the right length but no base64 (and below, a real token with a character changed).
MALFORMED_TOKENS = ["t" * 513, "x" * 100_000, "", "not a token!", "é" * 39, "\x00" * 39]


async def _leased_tokens(feeder, count: int) -> list[str]:
    await feeder.stub.Submit(pb.SubmitRequest(tasks=[task() for _ in range(count)]))
    reply = await feeder.stub.Lease(pb.LeaseRequest(queue="q", max_tasks=count))
    assert len(reply.tasks) == count
    return [t.lease_token for t in reply.tasks]


@pytest.mark.parametrize("feeder", ["memory", "sqlite"], indirect=True)
async def test_malformed_tokens_are_invalid_token_outcomes_not_errors(feeder) -> None:
    """A lease token is opaque to the client, so whatever it holds is a per-item outcome:
    the other items of the batch are decided as usual."""
    ack_token, nack_token, extend_token = await _leased_tokens(feeder, 3)
    bad = [*MALFORMED_TOKENS, ack_token[:-1] + ("A" if ack_token[-1] != "A" else "B")]
    acked = await feeder.stub.Ack(
        pb.AckRequest(items=[pb.AckItem(lease_token=t) for t in [*bad, ack_token]])
    )
    assert [(r.outcome, r.task_id == "") for r in acked.results] == [
        (pb.ACK_OUTCOME_INVALID_TOKEN, True)
    ] * len(bad) + [(pb.ACK_OUTCOME_ACKED, False)]
    nacked = await feeder.stub.Nack(
        pb.NackRequest(items=[pb.NackItem(lease_token=t) for t in [nack_token, *bad]])
    )
    assert [r.outcome for r in nacked.results] == [pb.NACK_OUTCOME_RETRYING] + [
        pb.NACK_OUTCOME_INVALID_TOKEN
    ] * len(bad)
    extended = await feeder.stub.Extend(
        pb.ExtendRequest(items=[pb.ExtendItem(lease_token=t) for t in [*bad, extend_token]])
    )
    assert [r.outcome for r in extended.results] == [pb.EXTEND_OUTCOME_INVALID_TOKEN] * len(bad) + [
        pb.EXTEND_OUTCOME_EXTENDED
    ]
    # The batch's own shape is still an error.
    await assert_invalid(feeder, *ack(*[pb.AckItem(lease_token="t" * 513)] * 1001), "items")
