"""Every bound of feeder.proto, checked by feeder.server.validate, with the field named."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from feeder.server import validate
from feeder.server.validate import Limits, ValidationError
from feedwork.v1 import feeder_pb2 as pb

NOW = 1_700_000_000.0
LIMITS = Limits(max_payload_bytes=100, max_result_bytes=50)


def submit(**spec: Any) -> list:
    spec.setdefault("queue", "q")
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue="ok"), pb.TaskSpec(**spec)])
    return validate.submit_specs(request, limits=LIMITS, now=NOW)


def rejects(call: Any, field: str, fragment: str = "") -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        call()
    error = caught.value
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert fragment in error.message
    return error


# -- Submit -----------------------------------------------------------------------------


def test_valid_spec_becomes_a_domain_task_spec() -> None:
    [_, spec] = submit(
        queue="Images.v2_x-1",
        payload=b"p" * 100,
        headers={"trace": "abc"},
        priority=-1000,
        max_attempts=1000,
        lease_duration=Duration(seconds=43200),
        idempotency_key="k" * 256,
    )
    assert spec.queue == "Images.v2_x-1"
    assert spec.payload == b"p" * 100
    assert dict(spec.headers) == {"trace": "abc"}
    assert (spec.priority, spec.max_attempts, spec.lease_duration) == (-1000, 1000, 43200.0)
    assert spec.idempotency_key == "k" * 256
    assert spec.not_before is None


def test_unset_fields_mean_defaults() -> None:
    [_, spec] = submit()
    assert spec.max_attempts is None
    assert spec.lease_duration is None
    assert spec.idempotency_key is None
    assert spec.not_before is None


@pytest.mark.parametrize("queue", ["", "a b", "q/1", "é", "x" * 129, "q\n"])
def test_queue_name_rule(queue: str) -> None:
    error = rejects(lambda: submit(queue=queue), "tasks[1].queue")
    assert str(error) == "tasks[1].queue: must be 1-128 characters of [A-Za-z0-9._-]"


def test_queue_name_at_the_limit() -> None:
    assert submit(queue="x" * 128)[1].queue == "x" * 128


def test_payload_limit_is_configurable() -> None:
    rejects(lambda: submit(payload=b"p" * 101), "tasks[1].payload", "at most 100 bytes")


def test_default_payload_limit_is_one_mib() -> None:
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q", payload=b"p" * (1024 * 1024 + 1))])
    rejects(lambda: validate.submit_specs(request, limits=Limits(), now=NOW), "tasks[0].payload")


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_header_key_length(key: str) -> None:
    rejects(lambda: submit(headers={key: "v"}), "tasks[1].headers", "keys must be 1-128")


def test_headers_total_size() -> None:
    at_limit = {"k": "v" * (16 * 1024 - 1)}
    assert submit(headers=at_limit)[1].headers == at_limit
    over = {"k": "v" * (16 * 1024)}
    rejects(lambda: submit(headers=over), "tasks[1].headers", "at most 16384 bytes")


def test_headers_size_counts_utf8_bytes() -> None:
    rejects(lambda: submit(headers={"k": "é" * 8192}), "tasks[1].headers", "16384 bytes")


@pytest.mark.parametrize("priority", [-1001, 1001])
def test_priority_range(priority: int) -> None:
    rejects(lambda: submit(priority=priority), "tasks[1].priority", "-1000 and 1000")


@pytest.mark.parametrize("max_attempts", [-1, 1001])
def test_max_attempts_range(max_attempts: int) -> None:
    rejects(lambda: submit(max_attempts=max_attempts), "tasks[1].max_attempts", "0 (the queue's")


def test_not_before_and_delay_are_exclusive() -> None:
    both = {"not_before": Timestamp(seconds=1), "delay": Duration(seconds=1)}
    rejects(lambda: submit(**both), "tasks[1].delay", "cannot be combined with not_before")


def test_delay_becomes_not_before() -> None:
    assert submit(delay=Duration(seconds=30, nanos=500_000_000))[1].not_before == NOW + 30.5
    assert submit(delay=Duration(seconds=365 * 86400))[1].not_before == NOW + 365 * 86400
    assert submit(delay=Duration())[1].not_before is None


def test_delay_range() -> None:
    too_long = Duration(seconds=365 * 86400, nanos=1)
    rejects(lambda: submit(delay=too_long), "tasks[1].delay", "365 days")


def test_not_before_is_passed_through() -> None:
    when = Timestamp(seconds=1_800_000_000, nanos=250_000_000)
    assert submit(not_before=when)[1].not_before == 1_800_000_000.25


@pytest.mark.parametrize(
    ("timestamp", "fragment"),
    [
        (Timestamp(seconds=-1), "before 1970"),
        (Timestamp(seconds=1, nanos=-1), "before 1970"),
        (Timestamp(seconds=1, nanos=1_000_000_000), "invalid nanos"),
        (Timestamp(seconds=253_402_300_800), "after 9999"),
    ],
)
def test_invalid_timestamps(timestamp: Timestamp, fragment: str) -> None:
    rejects(lambda: submit(not_before=timestamp), "tasks[1].not_before", fragment)


@pytest.mark.parametrize(
    ("duration", "fragment"),
    [
        (Duration(seconds=-1), "must not be negative"),
        (Duration(seconds=0, nanos=-5), "must not be negative"),
        (Duration(seconds=1, nanos=1_000_000_000), "invalid nanos"),
        (Duration(seconds=0, nanos=999_999_999), "between 1s and 12h"),
        (Duration(seconds=43200, nanos=1), "between 1s and 12h"),
    ],
)
def test_lease_duration_of_a_spec(duration: Duration, fragment: str) -> None:
    rejects(lambda: submit(lease_duration=duration), "tasks[1].lease_duration", fragment)


def test_idempotency_key_length() -> None:
    rejects(lambda: submit(idempotency_key="k" * 257), "tasks[1].idempotency_key", "256")


@pytest.mark.parametrize("count", [0, 1001])
def test_submit_batch_size(count: int) -> None:
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")] * count)
    error = rejects(lambda: validate.submit_specs(request, limits=LIMITS, now=NOW), "tasks")
    assert f"1 to 1000 items (got {count})" in str(error)


def test_submit_batch_of_1000() -> None:
    request = pb.SubmitRequest(tasks=[pb.TaskSpec(queue="q")] * 1000)
    assert len(validate.submit_specs(request, limits=LIMITS, now=NOW)) == 1000


# -- Lease ------------------------------------------------------------------------------


def lease(**fields: Any) -> validate.LeaseQuery:
    fields.setdefault("queue", "q")
    fields.setdefault("max_tasks", 1)
    return validate.lease_query(pb.LeaseRequest(**fields))


def test_valid_lease_request() -> None:
    query = lease(
        max_tasks=1000,
        wait=Duration(seconds=60),
        lease_duration=Duration(seconds=1),
        worker_id="w" * 256,
    )
    assert query == validate.LeaseQuery("q", 1000, 1.0, 60.0, "w" * 256)
    assert lease() == validate.LeaseQuery("q", 1, None, 0.0, "")


def test_lease_queue_required() -> None:
    rejects(lambda: lease(queue=""), "queue", "1-128 characters")


@pytest.mark.parametrize("max_tasks", [0, -1, 1001])
def test_lease_max_tasks(max_tasks: int) -> None:
    rejects(lambda: lease(max_tasks=max_tasks), "max_tasks", "between 1 and 1000")


@pytest.mark.parametrize(
    "wait", [Duration(seconds=60, nanos=1), Duration(seconds=-1), Duration(nanos=2_000_000_000)]
)
def test_lease_wait(wait: Duration) -> None:
    rejects(lambda: lease(wait=wait), "wait")


def test_lease_duration_of_a_lease() -> None:
    rejects(lambda: lease(lease_duration=Duration(seconds=0)), "lease_duration", "1s and 12h")


def test_worker_id_length() -> None:
    rejects(lambda: lease(worker_id="w" * 257), "worker_id", "at most 256 bytes of UTF-8")
    assert lease(worker_id="w" * 256).worker_id == "w" * 256


# -- Ack, Nack, Extend ------------------------------------------------------------------


def test_valid_ack_items() -> None:
    request = pb.AckRequest(items=[pb.AckItem(lease_token="t", result=b"r" * 50)])
    [item] = validate.ack_items(request, limits=LIMITS)
    assert (item.lease_token, item.result) == ("t", b"r" * 50)


def test_ack_result_limit() -> None:
    request = pb.AckRequest(items=[pb.AckItem(lease_token="t", result=b"r" * 51)])
    rejects(lambda: validate.ack_items(request, limits=LIMITS), "items[0].result", "50 bytes")


@pytest.mark.parametrize("token", ["", "t" * 513, "x" * 100_000, "not a token!", "é" * 39])
def test_lease_tokens_are_passed_on_whatever_they_hold(token: str) -> None:
    """A lease token is opaque to the client: a malformed one is an INVALID_TOKEN outcome of
    its item (decided by the service), never an error of the whole batch."""
    ack = pb.AckRequest(items=[pb.AckItem(lease_token="t"), pb.AckItem(lease_token=token)])
    assert [i.lease_token for i in validate.ack_items(ack, limits=LIMITS)] == ["t", token]
    nack = pb.NackRequest(items=[pb.NackItem(lease_token="t"), pb.NackItem(lease_token=token)])
    assert [i.lease_token for i in validate.nack_items(nack)] == ["t", token]
    extend = pb.ExtendRequest(items=[pb.ExtendItem(lease_token=token)])
    assert [i.lease_token for i in validate.extend_items(extend)] == [token]


@pytest.mark.parametrize("count", [0, 1001])
def test_item_batch_sizes(count: int) -> None:
    ack = pb.AckRequest(items=[pb.AckItem(lease_token="t")] * count)
    rejects(lambda: validate.ack_items(ack, limits=LIMITS), "items", "1 to 1000 items")
    nack = pb.NackRequest(items=[pb.NackItem(lease_token="t")] * count)
    rejects(lambda: validate.nack_items(nack), "items", "1 to 1000 items")
    extend = pb.ExtendRequest(items=[pb.ExtendItem(lease_token="t")] * count)
    rejects(lambda: validate.extend_items(extend), "items", "1 to 1000 items")


def test_valid_nack_items() -> None:
    request = pb.NackRequest(
        items=[
            pb.NackItem(lease_token="a", error="boom", retry_after=Duration(seconds=5)),
            pb.NackItem(lease_token="b", terminal=True),
            pb.NackItem(lease_token="c", release=True),
        ]
    )
    a, b, c = validate.nack_items(request)
    assert (a.error, a.retry_after, a.terminal, a.release) == ("boom", 5.0, False, False)
    assert (b.retry_after, b.terminal) == (None, True)
    assert c.release


def test_nack_terminal_and_release_together() -> None:
    request = pb.NackRequest(items=[pb.NackItem(lease_token="t", terminal=True, release=True)])
    rejects(lambda: validate.nack_items(request), "items[0].release", "terminal")


def test_nack_retry_after_range() -> None:
    too_long = Duration(seconds=365 * 86400 + 1)
    request = pb.NackRequest(items=[pb.NackItem(lease_token="t", retry_after=too_long)])
    rejects(lambda: validate.nack_items(request), "items[0].retry_after", "365 days")


def test_nack_error_is_truncated_to_4_kib_on_a_character_boundary() -> None:
    request = pb.NackRequest(items=[pb.NackItem(lease_token="t", error="a" + "é" * 4096)])
    [item] = validate.nack_items(request)
    assert len(item.error.encode()) == 4095  # 4096 would split the last "é"
    assert item.error == "a" + "é" * 2047


def test_extend_lease_duration() -> None:
    request = pb.ExtendRequest(
        items=[
            pb.ExtendItem(lease_token="a", lease_duration=Duration(seconds=90)),
            pb.ExtendItem(lease_token="b"),
        ]
    )
    assert [i.lease_duration for i in validate.extend_items(request)] == [90.0, None]
    request.items[1].lease_duration.seconds = 43201
    rejects(lambda: validate.extend_items(request), "items[1].lease_duration", "1s and 12h")


# -- ids, pages, selectors, stats -------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "007", "9223372036854775807"])
def test_task_ids(value: str) -> None:
    assert validate.task_id(value) == int(value)


@pytest.mark.parametrize(
    "value", ["", "-1", "+1", " 1", "1 ", "1_0", "1.0", "abc", "\u0661", "9223372036854775808"]
)
def test_task_id_must_be_a_decimal_integer(value: str) -> None:
    rejects(lambda: validate.task_id(value), "task_id", "decimal number")


def test_dead_listing() -> None:
    listing = validate.dead_listing(pb.ListDeadTasksRequest(queue="q"))
    assert listing == validate.DeadListing("q", 100, None)
    token = validate.page_token(41)
    request = pb.ListDeadTasksRequest(queue="q", page_size=1000, page_token=token)
    assert validate.dead_listing(request) == validate.DeadListing("q", 1000, 41)
    assert validate.page_token(None) == ""


@pytest.mark.parametrize("page_size", [-1, 1001])
def test_page_size_range(page_size: int) -> None:
    request = pb.ListDeadTasksRequest(queue="q", page_size=page_size)
    rejects(lambda: validate.dead_listing(request), "page_size", "1 to 1000")


@pytest.mark.parametrize("token", ["x", "-5", "1e3"])
def test_invalid_page_token(token: str) -> None:
    request = pb.ListDeadTasksRequest(queue="q", page_token=token)
    rejects(lambda: validate.dead_listing(request), "page_token")


def test_dead_listing_queue() -> None:
    rejects(lambda: validate.dead_listing(pb.ListDeadTasksRequest()), "queue")


def test_dead_selection() -> None:
    whole_queue = validate.dead_selection(pb.DeadTaskSelector(queue="q"))
    assert whole_queue == validate.DeadSelection("q", None, 1000)
    some = validate.dead_selection(pb.DeadTaskSelector(queue="q", task_ids=["3", "5"], limit=7))
    assert some == validate.DeadSelection("q", [3, 5], 7)
    assert validate.dead_selection(pb.DeadTaskSelector(queue="q", limit=100_000)).limit == 100_000


def test_dead_selection_errors() -> None:
    rejects(lambda: validate.dead_selection(pb.DeadTaskSelector()), "selector.queue")
    for limit in (-1, 100_001):
        selector = pb.DeadTaskSelector(queue="q", limit=limit)
        rejects(lambda s=selector: validate.dead_selection(s), "selector.limit", "100000")
    selector = pb.DeadTaskSelector(queue="q", task_ids=["1", "x"])
    rejects(lambda: validate.dead_selection(selector), "selector.task_ids[1]", "decimal")


def test_stats_listing() -> None:
    every = validate.stats_listing(pb.GetStatsRequest())
    assert (every.queues, every.page_size, every.after) == (None, 1000, None)
    named = validate.stats_listing(pb.GetStatsRequest(queues=["a", "b", "a"]))
    assert named.queues == ["a", "b"]
    paged = validate.stats_listing(pb.GetStatsRequest(page_size=5, page_token="q7"))
    assert (paged.page_size, paged.after) == (5, "q7")
    request = pb.GetStatsRequest(queues=["a", "no good"])
    rejects(lambda: validate.stats_listing(request), "queues[1]", "1-128 characters")
    request = pb.GetStatsRequest(queues=["a"] * 1001)
    rejects(lambda: validate.stats_listing(request), "queues", "at most 1000")
    request = pb.GetStatsRequest(page_size=10_001)
    rejects(lambda: validate.stats_listing(request), "page_size", "1 to 10000")
    request = pb.GetStatsRequest(page_token="no good")
    rejects(lambda: validate.stats_listing(request), "page_token", "GetStats")


def test_string_limits_are_utf8_bytes_not_characters() -> None:
    """What a client in any language can count: 64 four-byte emoji make 256 bytes (at
    the limit), 65 are over it, though far fewer than 256 characters."""
    emoji = "\U0001f642"
    assert submit(idempotency_key=emoji * 64)[1].idempotency_key == emoji * 64
    rejects(
        lambda: submit(idempotency_key=emoji * 65),
        "tasks[1].idempotency_key",
        "at most 256 bytes of UTF-8 (got 260)",
    )
    rejects(lambda: lease(worker_id="é" * 129), "worker_id", "at most 256 bytes of UTF-8 (got 258)")
    rejects(lambda: submit(headers={"é" * 65: "v"}), "tasks[1].headers", "1-128 bytes of UTF-8")
    assert submit(headers={"é" * 64: "v"})[1].headers == {"é" * 64: "v"}
