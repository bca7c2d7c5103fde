"""Request validation: protobuf requests in, domain values out, or a `ValidationError`.

Every bound documented in `protos/feedwork/v1/feeder.proto` is checked here, once, so the
service below never sees a malformed value. Errors name the offending field as the client
wrote it, with the item index for batches (`tasks[3].queue`), because the whole request
fails with INVALID_ARGUMENT and the client must be able to find what to fix.

Lease tokens are the exception: they are opaque to the client, which cannot check one, so
a token of any length or shape is passed on and the service answers a malformed one with
its item's INVALID_TOKEN outcome (per-item outcomes are never errors).

Pure functions: the only outside input is `now`, to turn a relative `delay` into a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import duration_pb2, timestamp_pb2

from feeder.core.model import EMPTY_HEADERS, State, TaskSpec
from feeder.core.quoting import quoted
from feeder.service.queues import TaskListing
from feeder.service.tasks import AckItem, ExtendItem, NackItem
from feedwork.v1 import feeder_pb2 as pb

DAY = 86400.0
KiB = 1024
MiB = 1024 * KiB

QUEUE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
QUEUE_NAME_RULE = "must be 1-128 characters of [A-Za-z0-9._-]"
# String limits are in UTF-8 bytes, the unit every language's client can count.
MAX_HEADER_KEY_BYTES = 128
MAX_HEADERS_BYTES = 16 * KiB
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
MAX_DELAY = 365 * DAY
MAX_ATTEMPTS = 1000
MIN_LEASE_DURATION, MAX_LEASE_DURATION = 1.0, 12 * 3600.0
MAX_IDEMPOTENCY_KEY_BYTES = 256
MAX_BATCH = 1000
MAX_LEASE_TASKS = 1000
MAX_WAIT = 60.0
MAX_WORKER_ID_BYTES = 256
MAX_ERROR_BYTES = 4 * KiB
MAX_RETRY_AFTER = 365 * DAY
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
DEFAULT_STATS_PAGE, MAX_STATS_PAGE = 1000, 10_000
DEFAULT_SELECTOR_LIMIT, MAX_SELECTOR_LIMIT = 1000, 100_000
DEFAULT_WORKERS_LIMIT, MAX_WORKERS_LIMIT = 1000, 10_000
# Task ids are SQLite INTEGERs (signed 64-bit); a larger number cannot name a task.
MAX_TASK_ID = 2**63 - 1
# protobuf's Timestamp range ends at 9999-12-31T23:59:59Z.
MAX_TIMESTAMP_SECONDS = 253_402_300_799
_NANOS = 1_000_000_000
_DECIMAL = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The bounds an operator may change (see `feeder.config.Settings`)."""

    max_payload_bytes: int = 1 * MiB
    max_result_bytes: int = 1 * MiB
    # Replies are kept under this (the message limit, less room for gRPC's framing).
    max_reply_bytes: int = 8 * MiB - 64 * KiB


class ValidationError(ValueError):
    """A request field is malformed. `str()` is "field: message", ready for the client."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class LeaseQuery:
    queue: str
    max_tasks: int
    lease_duration: float | None
    wait: float
    worker_id: str
    # The caller's own cap on unacked leases; None: the feeder's.
    max_unacked: int | None = None


@dataclass(frozen=True, slots=True)
class DeadListing:
    queue: str
    page_size: int
    after_id: int | None
    include_payloads: bool = False


@dataclass(frozen=True, slots=True)
class DeadSelection:
    queue: str
    task_ids: list[int] | None
    limit: int


# -- requests ---------------------------------------------------------------------------


def submit_specs(request: pb.SubmitRequest, *, limits: Limits, now: float) -> list[TaskSpec]:
    submit_size(request)
    return task_specs(request.tasks, limits=limits, now=now)


def submit_size(request: pb.SubmitRequest) -> None:
    _batch_size(request.tasks, "tasks", MAX_BATCH)


def task_specs(
    tasks: Sequence[pb.TaskSpec], *, first: int = 0, limits: Limits, now: float
) -> list[TaskSpec]:
    """The specs of `tasks`, the slice of a request's tasks that starts at `first` (so that
    an error names the task's index in the request)."""
    return [
        task_spec(spec, f"tasks[{first + i}]", limits=limits, now=now)
        for i, spec in enumerate(tasks)
    ]


def task_spec(spec: pb.TaskSpec, field: str, *, limits: Limits, now: float) -> TaskSpec:
    # Runs for every submitted task, so the common case is kept cheap: each check is a
    # plain comparison first, and a field's name is only spelled out for an error.
    queue, payload, priority, key = spec.queue, spec.payload, spec.priority, spec.idempotency_key
    if not QUEUE_NAME.fullmatch(queue):
        raise ValidationError(f"{field}.queue", QUEUE_NAME_RULE)
    if len(payload) > limits.max_payload_bytes:
        _max_bytes(payload, f"{field}.payload", limits.max_payload_bytes)
    headers = _headers(spec.headers, f"{field}.headers") if spec.headers else EMPTY_HEADERS
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        _int_range(priority, f"{field}.priority", MIN_PRIORITY, MAX_PRIORITY)
    if not 0 <= spec.max_attempts <= MAX_ATTEMPTS:
        _int_range(
            spec.max_attempts,
            f"{field}.max_attempts",
            1,
            MAX_ATTEMPTS,
            rule=f"must be 0 (the queue's default) or 1 to {MAX_ATTEMPTS}",
        )
    if len(key) * 4 > MAX_IDEMPOTENCY_KEY_BYTES:  # else short enough in any encoding
        _max_utf8(key, f"{field}.idempotency_key", MAX_IDEMPOTENCY_KEY_BYTES)
    lease_duration = None
    if spec.HasField("lease_duration"):
        lease_duration = _lease_duration(spec, f"{field}.lease_duration")
    return TaskSpec(
        queue,
        payload,
        headers,
        priority,
        _not_before(spec, field, now),
        spec.max_attempts or None,
        lease_duration,
        key or None,
    )


def lease_query(request: pb.LeaseRequest) -> LeaseQuery:
    _int_range(request.max_tasks, "max_tasks", 1, MAX_LEASE_TASKS)
    _max_utf8(request.worker_id, "worker_id", MAX_WORKER_ID_BYTES)
    wait = 0.0
    if request.HasField("wait"):
        wait = duration(request.wait, "wait", 0.0, MAX_WAIT, rule="must be between 0s and 60s")
    return LeaseQuery(
        queue=queue_name(request.queue, "queue"),
        max_tasks=request.max_tasks,
        lease_duration=_lease_duration(request, "lease_duration"),
        wait=wait,
        worker_id=request.worker_id,
        max_unacked=max_unacked(request.max_unacked, "max_unacked"),
    )


def max_unacked(value: int, field: str) -> int | None:
    """A caller's cap on its unacked leases: 0 (None: the feeder's) or positive."""
    _int_range(value, field, 0, 2**31 - 1, rule="must be 0 (the feeder's cap) or more")
    return value or None


def ack_items(request: pb.AckRequest, *, limits: Limits) -> list[AckItem]:
    _batch_size(request.items, "items", MAX_BATCH)
    max_result = limits.max_result_bytes
    items = []
    # One per acked task: plain checks first, the field's name only for an error.
    for i, item in enumerate(request.items):
        token, result = item.lease_token, item.result
        if len(result) > max_result:
            _max_bytes(result, f"items[{i}].result", max_result)
        items.append(AckItem(token, result))
    return items


def nack_items(request: pb.NackRequest) -> list[NackItem]:
    _batch_size(request.items, "items", MAX_BATCH)
    items = []
    for i, item in enumerate(request.items):
        field = f"items[{i}]"
        if item.terminal and item.release:
            raise ValidationError(f"{field}.release", "cannot be combined with terminal")
        retry_after = None
        if item.HasField("retry_after"):
            retry_after = duration(
                item.retry_after,
                f"{field}.retry_after",
                0.0,
                MAX_RETRY_AFTER,
                rule="must be between 0s and 365 days",
            )
        items.append(
            NackItem(
                lease_token=item.lease_token,
                error=truncate_utf8(item.error, MAX_ERROR_BYTES),
                retry_after=retry_after,
                terminal=item.terminal,
                release=item.release,
            )
        )
    return items


def extend_items(request: pb.ExtendRequest) -> list[ExtendItem]:
    _batch_size(request.items, "items", MAX_BATCH)
    return [
        ExtendItem(
            lease_token=item.lease_token,
            lease_duration=_lease_duration(item, f"items[{i}].lease_duration"),
        )
        for i, item in enumerate(request.items)
    ]


def dead_listing(request: pb.ListDeadTasksRequest) -> DeadListing:
    queue = queue_name(request.queue, "queue")
    _int_range(
        request.page_size,
        "page_size",
        0,
        MAX_PAGE_SIZE,
        rule=f"must be 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
    )
    after_id = None
    if request.page_token:
        after_id = _decimal_id(request.page_token)
        if after_id is None:
            raise ValidationError("page_token", "is not a token from ListDeadTasks")
    return DeadListing(
        queue=queue,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        after_id=after_id,
        include_payloads=request.include_payloads,
    )


def page_token(next_after_id: int | None) -> str:
    """The token `dead_listing` accepts to continue after `next_after_id`."""
    return "" if next_after_id is None else str(next_after_id)


def dead_selection(selector: pb.DeadTaskSelector) -> DeadSelection:
    queue = queue_name(selector.queue, "selector.queue")
    _int_range(
        selector.limit,
        "selector.limit",
        0,
        MAX_SELECTOR_LIMIT,
        rule=f"must be 1 to {MAX_SELECTOR_LIMIT} (0 means {DEFAULT_SELECTOR_LIMIT})",
    )
    if len(selector.task_ids) > MAX_SELECTOR_LIMIT:
        raise ValidationError(
            "selector.task_ids",
            f"must hold at most {MAX_SELECTOR_LIMIT} ids (got {len(selector.task_ids)})",
        )
    task_ids = [task_id(t, f"selector.task_ids[{i}]") for i, t in enumerate(selector.task_ids)]
    return DeadSelection(
        queue=queue, task_ids=task_ids or None, limit=selector.limit or DEFAULT_SELECTOR_LIMIT
    )


@dataclass(frozen=True, slots=True)
class StatsListing:
    """Either `queues` (named), or a page of every queue: up to `page_size` after `after`."""

    queues: list[str] | None
    page_size: int
    after: str | None


def stats_listing(request: pb.GetStatsRequest) -> StatsListing:
    if len(request.queues) > MAX_BATCH:
        raise ValidationError(
            "queues", f"must hold at most {MAX_BATCH} names (got {len(request.queues)})"
        )
    names = [queue_name(q, f"queues[{i}]") for i, q in enumerate(request.queues)]
    page_size, after = _queue_page(request.page_size, request.page_token, "GetStats")
    return StatsListing(
        # A queue named twice is reported, and summed into the totals, once.
        queues=list(dict.fromkeys(names)) or None,
        page_size=page_size,
        after=after,
    )


def queue_page(request: pb.ListQueuesRequest) -> StatsListing:
    """A page of every queue, as GetStats pages them (a ListQueues)."""
    page_size, after = _queue_page(request.page_size, request.page_token, "ListQueues")
    return StatsListing(queues=None, page_size=page_size, after=after)


def _queue_page(page_size: int, page_token: str, method: str) -> tuple[int, str | None]:
    """A page of queues in name order: (its size, the name it starts after)."""
    _int_range(
        page_size,
        "page_size",
        0,
        MAX_STATS_PAGE,
        rule=f"must be 1 to {MAX_STATS_PAGE} (0 means {DEFAULT_STATS_PAGE})",
    )
    if page_token and not QUEUE_NAME.fullmatch(page_token):
        raise ValidationError("page_token", f"is not a token from {method}")
    return page_size or DEFAULT_STATS_PAGE, page_token or None


_STATES = {int(state): state for state in State}


def task_listing(request: pb.ListTasksRequest) -> TaskListing:
    queue = queue_name(request.queue, "queue")
    states: set[State] = set()
    for i, value in enumerate(request.states):
        state = _STATES.get(value)
        if state is None:
            raise ValidationError(
                f"states[{i}]",
                f"must be a task state (TASK_STATE_SCHEDULED to TASK_STATE_CANCELLED), got {value}",
            )
        states.add(state)
    _int_range(
        request.page_size,
        "page_size",
        0,
        MAX_PAGE_SIZE,
        rule=f"must be 1 to {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
    )
    after_id = None
    if request.page_token:
        after_id = _decimal_id(request.page_token)
        if after_id is None:
            raise ValidationError("page_token", "is not a token from ListTasks")
    return TaskListing(
        queue=queue,
        states=frozenset(states) or None,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        after_id=after_id,
        newest_first=request.newest_first,
        payloads=request.include_payloads,
    )


def workers_query(request: pb.ListWorkersRequest) -> tuple[str | None, int]:
    """(the queue, None for every queue; the most of each list)."""
    queue = queue_name(request.queue, "queue") if request.queue else None
    _int_range(
        request.limit,
        "limit",
        0,
        MAX_WORKERS_LIMIT,
        rule=f"must be 1 to {MAX_WORKERS_LIMIT} (0 means {DEFAULT_WORKERS_LIMIT})",
    )
    return queue, request.limit or DEFAULT_WORKERS_LIMIT


def purge_confirmation(request: pb.PurgeQueueRequest) -> str:
    """The queue a PurgeQueue names twice."""
    queue = queue_name(request.queue, "queue")
    if request.confirm != queue:
        raise ValidationError(
            "confirm",
            f"must repeat the queue's name, {quoted(queue)}, to confirm that its waiting tasks"
            f" are to be deleted (got {quoted(request.confirm)})",
        )
    return queue


# -- fields -----------------------------------------------------------------------------


def queue_name(value: str, field: str) -> str:
    if not QUEUE_NAME.fullmatch(value):
        raise ValidationError(field, QUEUE_NAME_RULE)
    return value


def task_id(value: str, field: str = "task_id") -> int:
    parsed = _decimal_id(value)
    if parsed is None:
        raise ValidationError(field, f"must be a task id (a decimal number), got {quoted(value)}")
    return parsed


def duration(
    value: duration_pb2.Duration, field: str, low: float, high: float, *, rule: str | None = None
) -> float:
    """A google.protobuf.Duration in seconds, within [low, high]."""
    seconds, nanos = value.seconds, value.nanos
    if seconds < 0 or nanos < 0:
        raise ValidationError(field, "must not be negative")
    if nanos >= _NANOS:
        raise ValidationError(field, f"has invalid nanos {nanos} (must be below 1e9)")
    result = seconds + nanos / _NANOS
    # Compared in whole nanoseconds: as a float, 365 days + 1 ns rounds to 365 days.
    total = seconds * _NANOS + nanos
    if not round(low * _NANOS) <= total <= round(high * _NANOS):
        raise ValidationError(field, f"{rule or f'must be {low}s to {high}s'} (got {result:g}s)")
    return float(result)


def timestamp(value: timestamp_pb2.Timestamp, field: str) -> float:
    """A google.protobuf.Timestamp in epoch seconds; times before 1970 are rejected."""
    seconds, nanos = value.seconds, value.nanos
    if seconds < 0 or nanos < 0:
        raise ValidationError(field, "must not be before 1970-01-01T00:00:00Z")
    if nanos >= _NANOS:
        raise ValidationError(field, f"has invalid nanos {nanos} (must be below 1e9)")
    if seconds > MAX_TIMESTAMP_SECONDS:
        raise ValidationError(field, "must not be after 9999-12-31T23:59:59Z")
    return float(seconds + nanos / _NANOS)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, never in the middle of a character."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore")


# -- helpers ----------------------------------------------------------------------------


def _not_before(spec: pb.TaskSpec, field: str, now: float) -> float | None:
    has_not_before, has_delay = spec.HasField("not_before"), spec.HasField("delay")
    if has_not_before and has_delay:
        raise ValidationError(f"{field}.delay", "cannot be combined with not_before")
    if has_not_before:
        return timestamp(spec.not_before, f"{field}.not_before")
    if has_delay:
        delay = duration(
            spec.delay, f"{field}.delay", 0.0, MAX_DELAY, rule="must be between 0s and 365 days"
        )
        return now + delay if delay > 0 else None
    return None


def _lease_duration(
    message: pb.TaskSpec | pb.LeaseRequest | pb.ExtendItem, field: str
) -> float | None:
    """Unset means "the default" (the task's, else the queue's), not zero."""
    if not message.HasField("lease_duration"):
        return None
    return duration(
        message.lease_duration,
        field,
        MIN_LEASE_DURATION,
        MAX_LEASE_DURATION,
        rule="must be between 1s and 12h",
    )


def _headers(headers: Mapping[str, str], field: str) -> dict[str, str]:
    total = 0
    for key, value in headers.items():
        key_bytes = len(key.encode())
        if not 1 <= key_bytes <= MAX_HEADER_KEY_BYTES:
            raise ValidationError(
                field,
                f"keys must be 1-{MAX_HEADER_KEY_BYTES} bytes of UTF-8 (got one of {key_bytes})",
            )
        total += key_bytes + len(value.encode())
    if total > MAX_HEADERS_BYTES:
        raise ValidationError(
            field,
            f"keys and values together must be at most {MAX_HEADERS_BYTES} bytes (got {total})",
        )
    return dict(headers)


def _decimal_id(value: str) -> int | None:
    # Not int(value): it would also take " 12", "+12", "1_2" and non-ASCII digits.
    if not _DECIMAL.fullmatch(value):
        return None
    parsed = int(value)
    return parsed if parsed <= MAX_TASK_ID else None


def _batch_size(items: Sequence[object], field: str, most: int) -> None:
    if not 1 <= len(items) <= most:
        raise ValidationError(field, f"must hold 1 to {most} items (got {len(items)})")


def _int_range(value: int, field: str, low: int, high: int, *, rule: str | None = None) -> None:
    if not low <= value <= high:
        raise ValidationError(field, f"{rule or f'must be between {low} and {high}'} (got {value})")


def _max_utf8(value: str, field: str, most: int) -> None:
    if len(value) * 4 <= most:  # at most 4 bytes a code point: no need to encode
        return
    size = len(value.encode())
    if size > most:
        raise ValidationError(field, f"must be at most {most} bytes of UTF-8 (got {size})")


def _max_bytes(value: bytes, field: str, most: int) -> None:
    if len(value) > most:
        raise ValidationError(field, f"must be at most {most} bytes (got {len(value)})")
