import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_SCHEDULED: _ClassVar[TaskState]
    TASK_STATE_READY: _ClassVar[TaskState]
    TASK_STATE_LEASED: _ClassVar[TaskState]
    TASK_STATE_COMPLETED: _ClassVar[TaskState]
    TASK_STATE_DEAD: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]

class AttemptOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ATTEMPT_OUTCOME_UNSPECIFIED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_RUNNING: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_ACKED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_FAILED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_EXPIRED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_RELEASED: _ClassVar[AttemptOutcome]
    ATTEMPT_OUTCOME_REVOKED: _ClassVar[AttemptOutcome]

class AckOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_OUTCOME_UNSPECIFIED: _ClassVar[AckOutcome]
    ACK_OUTCOME_ACKED: _ClassVar[AckOutcome]
    ACK_OUTCOME_ADOPTED: _ClassVar[AckOutcome]
    ACK_OUTCOME_DUPLICATE: _ClassVar[AckOutcome]
    ACK_OUTCOME_REJECTED: _ClassVar[AckOutcome]
    ACK_OUTCOME_NOT_FOUND: _ClassVar[AckOutcome]
    ACK_OUTCOME_INVALID_TOKEN: _ClassVar[AckOutcome]

class NackOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NACK_OUTCOME_UNSPECIFIED: _ClassVar[NackOutcome]
    NACK_OUTCOME_RETRYING: _ClassVar[NackOutcome]
    NACK_OUTCOME_DEAD: _ClassVar[NackOutcome]
    NACK_OUTCOME_RELEASED: _ClassVar[NackOutcome]
    NACK_OUTCOME_STALE: _ClassVar[NackOutcome]
    NACK_OUTCOME_COMPLETED: _ClassVar[NackOutcome]
    NACK_OUTCOME_CANCELLED: _ClassVar[NackOutcome]
    NACK_OUTCOME_NOT_FOUND: _ClassVar[NackOutcome]
    NACK_OUTCOME_INVALID_TOKEN: _ClassVar[NackOutcome]
    NACK_OUTCOME_DUPLICATE: _ClassVar[NackOutcome]

class ExtendOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXTEND_OUTCOME_UNSPECIFIED: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_EXTENDED: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_LEASE_LOST: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_COMPLETED: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_CANCELLED: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_NOT_FOUND: _ClassVar[ExtendOutcome]
    EXTEND_OUTCOME_INVALID_TOKEN: _ClassVar[ExtendOutcome]

class ReportError(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_ERROR_UNSPECIFIED: _ClassVar[ReportError]
    REPORT_ERROR_INVALID_ARGUMENT: _ClassVar[ReportError]
    REPORT_ERROR_RESOURCE_EXHAUSTED: _ClassVar[ReportError]
    REPORT_ERROR_INTERNAL: _ClassVar[ReportError]
    REPORT_ERROR_UNAVAILABLE: _ClassVar[ReportError]

class CancelOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_OUTCOME_UNSPECIFIED: _ClassVar[CancelOutcome]
    CANCEL_OUTCOME_CANCELLED: _ClassVar[CancelOutcome]
    CANCEL_OUTCOME_ALREADY_CANCELLED: _ClassVar[CancelOutcome]
    CANCEL_OUTCOME_ALREADY_COMPLETED: _ClassVar[CancelOutcome]

class ConsumerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSUMER_KIND_UNSPECIFIED: _ClassVar[ConsumerKind]
    CONSUMER_KIND_STREAM: _ClassVar[ConsumerKind]
    CONSUMER_KIND_LEASE: _ClassVar[ConsumerKind]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_SCHEDULED: TaskState
TASK_STATE_READY: TaskState
TASK_STATE_LEASED: TaskState
TASK_STATE_COMPLETED: TaskState
TASK_STATE_DEAD: TaskState
TASK_STATE_CANCELLED: TaskState
ATTEMPT_OUTCOME_UNSPECIFIED: AttemptOutcome
ATTEMPT_OUTCOME_RUNNING: AttemptOutcome
ATTEMPT_OUTCOME_ACKED: AttemptOutcome
ATTEMPT_OUTCOME_FAILED: AttemptOutcome
ATTEMPT_OUTCOME_EXPIRED: AttemptOutcome
ATTEMPT_OUTCOME_RELEASED: AttemptOutcome
ATTEMPT_OUTCOME_REVOKED: AttemptOutcome
ACK_OUTCOME_UNSPECIFIED: AckOutcome
ACK_OUTCOME_ACKED: AckOutcome
ACK_OUTCOME_ADOPTED: AckOutcome
ACK_OUTCOME_DUPLICATE: AckOutcome
ACK_OUTCOME_REJECTED: AckOutcome
ACK_OUTCOME_NOT_FOUND: AckOutcome
ACK_OUTCOME_INVALID_TOKEN: AckOutcome
NACK_OUTCOME_UNSPECIFIED: NackOutcome
NACK_OUTCOME_RETRYING: NackOutcome
NACK_OUTCOME_DEAD: NackOutcome
NACK_OUTCOME_RELEASED: NackOutcome
NACK_OUTCOME_STALE: NackOutcome
NACK_OUTCOME_COMPLETED: NackOutcome
NACK_OUTCOME_CANCELLED: NackOutcome
NACK_OUTCOME_NOT_FOUND: NackOutcome
NACK_OUTCOME_INVALID_TOKEN: NackOutcome
NACK_OUTCOME_DUPLICATE: NackOutcome
EXTEND_OUTCOME_UNSPECIFIED: ExtendOutcome
EXTEND_OUTCOME_EXTENDED: ExtendOutcome
EXTEND_OUTCOME_LEASE_LOST: ExtendOutcome
EXTEND_OUTCOME_COMPLETED: ExtendOutcome
EXTEND_OUTCOME_CANCELLED: ExtendOutcome
EXTEND_OUTCOME_NOT_FOUND: ExtendOutcome
EXTEND_OUTCOME_INVALID_TOKEN: ExtendOutcome
REPORT_ERROR_UNSPECIFIED: ReportError
REPORT_ERROR_INVALID_ARGUMENT: ReportError
REPORT_ERROR_RESOURCE_EXHAUSTED: ReportError
REPORT_ERROR_INTERNAL: ReportError
REPORT_ERROR_UNAVAILABLE: ReportError
CANCEL_OUTCOME_UNSPECIFIED: CancelOutcome
CANCEL_OUTCOME_CANCELLED: CancelOutcome
CANCEL_OUTCOME_ALREADY_CANCELLED: CancelOutcome
CANCEL_OUTCOME_ALREADY_COMPLETED: CancelOutcome
CONSUMER_KIND_UNSPECIFIED: ConsumerKind
CONSUMER_KIND_STREAM: ConsumerKind
CONSUMER_KIND_LEASE: ConsumerKind

class TaskSpec(_message.Message):
    __slots__ = ("queue", "payload", "headers", "priority", "not_before", "delay", "max_attempts", "lease_duration", "idempotency_key")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DELAY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    priority: int
    not_before: _timestamp_pb2.Timestamp
    delay: _duration_pb2.Duration
    max_attempts: int
    lease_duration: _duration_pb2.Duration
    idempotency_key: str
    def __init__(self, queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_attempts: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("attempt", "worker_id", "leased_at", "ended_at", "outcome", "error", "caller")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    worker_id: str
    leased_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    outcome: AttemptOutcome
    error: str
    caller: str
    def __init__(self, attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., leased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[AttemptOutcome, str]] = ..., error: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "queue", "payload", "headers", "priority", "state", "attempts", "failures", "max_attempts", "not_before", "lease_deadline", "result", "idempotency_key", "created_at", "finished_at", "history", "lease_duration", "attempts_omitted")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_OMITTED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    queue: str
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    priority: int
    state: TaskState
    attempts: int
    failures: int
    max_attempts: int
    not_before: _timestamp_pb2.Timestamp
    lease_deadline: _timestamp_pb2.Timestamp
    result: bytes
    idempotency_key: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[Attempt]
    lease_duration: _duration_pb2.Duration
    attempts_omitted: int
    def __init__(self, task_id: _Optional[str] = ..., queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempts: _Optional[int] = ..., failures: _Optional[int] = ..., max_attempts: _Optional[int] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[bytes] = ..., idempotency_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., attempts_omitted: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskSpec]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskSpec, _Mapping]]] = ...) -> None: ...

class SubmitResult(_message.Message):
    __slots__ = ("task_id", "state", "deduplicated")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    deduplicated: bool
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitResult, _Mapping]]] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("queue", "max_tasks", "lease_duration", "wait", "worker_id", "max_unacked")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_UNACKED_FIELD_NUMBER: _ClassVar[int]
    queue: str
    max_tasks: int
    lease_duration: _duration_pb2.Duration
    wait: _duration_pb2.Duration
    worker_id: str
    max_unacked: int
    def __init__(self, queue: _Optional[str] = ..., max_tasks: _Optional[int] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., worker_id: _Optional[str] = ..., max_unacked: _Optional[int] = ...) -> None: ...

class LeasedTask(_message.Message):
    __slots__ = ("task_id", "queue", "payload", "headers", "attempt", "lease_token", "lease_deadline", "priority", "max_attempts")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    queue: str
    payload: bytes
    headers: _containers.ScalarMap[str, str]
    attempt: int
    lease_token: str
    lease_deadline: _timestamp_pb2.Timestamp
    priority: int
    max_attempts: int
    def __init__(self, task_id: _Optional[str] = ..., queue: _Optional[str] = ..., payload: _Optional[bytes] = ..., headers: _Optional[_Mapping[str, str]] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    def __init__(self, tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ...) -> None: ...

class AckItem(_message.Message):
    __slots__ = ("lease_token", "result")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    result: bytes
    def __init__(self, lease_token: _Optional[str] = ..., result: _Optional[bytes] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AckItem]
    def __init__(self, items: _Optional[_Iterable[_Union[AckItem, _Mapping]]] = ...) -> None: ...

class AckResult(_message.Message):
    __slots__ = ("outcome", "task_id")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    outcome: AckOutcome
    task_id: str
    def __init__(self, outcome: _Optional[_Union[AckOutcome, str]] = ..., task_id: _Optional[str] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[AckResult]
    def __init__(self, results: _Optional[_Iterable[_Union[AckResult, _Mapping]]] = ...) -> None: ...

class NackItem(_message.Message):
    __slots__ = ("lease_token", "error", "retry_after", "terminal", "release")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    error: str
    retry_after: _duration_pb2.Duration
    terminal: bool
    release: bool
    def __init__(self, lease_token: _Optional[str] = ..., error: _Optional[str] = ..., retry_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., terminal: _Optional[bool] = ..., release: _Optional[bool] = ...) -> None: ...

class NackRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[NackItem, _Mapping]]] = ...) -> None: ...

class NackResult(_message.Message):
    __slots__ = ("outcome", "task_id", "retry_at")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RETRY_AT_FIELD_NUMBER: _ClassVar[int]
    outcome: NackOutcome
    task_id: str
    retry_at: _timestamp_pb2.Timestamp
    def __init__(self, outcome: _Optional[_Union[NackOutcome, str]] = ..., task_id: _Optional[str] = ..., retry_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NackResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NackResult]
    def __init__(self, results: _Optional[_Iterable[_Union[NackResult, _Mapping]]] = ...) -> None: ...

class ExtendItem(_message.Message):
    __slots__ = ("lease_token", "lease_duration")
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    lease_token: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, lease_token: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ExtendItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ExtendItem, _Mapping]]] = ...) -> None: ...

class ExtendResult(_message.Message):
    __slots__ = ("outcome", "task_id", "lease_deadline")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    outcome: ExtendOutcome
    task_id: str
    lease_deadline: _timestamp_pb2.Timestamp
    def __init__(self, outcome: _Optional[_Union[ExtendOutcome, str]] = ..., task_id: _Optional[str] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExtendResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ExtendResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ExtendResult, _Mapping]]] = ...) -> None: ...

class ConsumeStart(_message.Message):
    __slots__ = ("queue", "lease_duration", "worker_id", "max_unacked")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_UNACKED_FIELD_NUMBER: _ClassVar[int]
    queue: str
    lease_duration: _duration_pb2.Duration
    worker_id: str
    max_unacked: int
    def __init__(self, queue: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., worker_id: _Optional[str] = ..., max_unacked: _Optional[int] = ...) -> None: ...

class ConsumeRequest(_message.Message):
    __slots__ = ("start", "credits", "report_id", "acks", "nacks", "extends")
    START_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    NACKS_FIELD_NUMBER: _ClassVar[int]
    EXTENDS_FIELD_NUMBER: _ClassVar[int]
    start: ConsumeStart
    credits: int
    report_id: int
    acks: _containers.RepeatedCompositeFieldContainer[AckItem]
    nacks: _containers.RepeatedCompositeFieldContainer[NackItem]
    extends: _containers.RepeatedCompositeFieldContainer[ExtendItem]
    def __init__(self, start: _Optional[_Union[ConsumeStart, _Mapping]] = ..., credits: _Optional[int] = ..., report_id: _Optional[int] = ..., acks: _Optional[_Iterable[_Union[AckItem, _Mapping]]] = ..., nacks: _Optional[_Iterable[_Union[NackItem, _Mapping]]] = ..., extends: _Optional[_Iterable[_Union[ExtendItem, _Mapping]]] = ...) -> None: ...

class ConsumeResponse(_message.Message):
    __slots__ = ("tasks", "report_id", "ack_results", "nack_results", "extend_results", "error_code", "error_message", "cancelled_task_ids", "error")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    REPORT_ID_FIELD_NUMBER: _ClassVar[int]
    ACK_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NACK_RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXTEND_RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[LeasedTask]
    report_id: int
    ack_results: _containers.RepeatedCompositeFieldContainer[AckResult]
    nack_results: _containers.RepeatedCompositeFieldContainer[NackResult]
    extend_results: _containers.RepeatedCompositeFieldContainer[ExtendResult]
    error_code: int
    error_message: str
    cancelled_task_ids: _containers.RepeatedScalarFieldContainer[str]
    error: ReportError
    def __init__(self, tasks: _Optional[_Iterable[_Union[LeasedTask, _Mapping]]] = ..., report_id: _Optional[int] = ..., ack_results: _Optional[_Iterable[_Union[AckResult, _Mapping]]] = ..., nack_results: _Optional[_Iterable[_Union[NackResult, _Mapping]]] = ..., extend_results: _Optional[_Iterable[_Union[ExtendResult, _Mapping]]] = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., cancelled_task_ids: _Optional[_Iterable[str]] = ..., error: _Optional[_Union[ReportError, str]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: Task
    def __init__(self, task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("outcome", "state")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    outcome: CancelOutcome
    state: TaskState
    def __init__(self, outcome: _Optional[_Union[CancelOutcome, str]] = ..., state: _Optional[_Union[TaskState, str]] = ...) -> None: ...

class ListDeadTasksRequest(_message.Message):
    __slots__ = ("queue", "page_size", "page_token", "include_payloads")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    page_size: int
    page_token: str
    include_payloads: bool
    def __init__(self, queue: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_payloads: _Optional[bool] = ...) -> None: ...

class ListDeadTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeadTaskSelector(_message.Message):
    __slots__ = ("queue", "task_ids", "limit")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, queue: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class RedriveDeadTasksRequest(_message.Message):
    __slots__ = ("selector",)
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    selector: DeadTaskSelector
    def __init__(self, selector: _Optional[_Union[DeadTaskSelector, _Mapping]] = ...) -> None: ...

class RedriveDeadTasksResponse(_message.Message):
    __slots__ = ("redriven",)
    REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    redriven: int
    def __init__(self, redriven: _Optional[int] = ...) -> None: ...

class PurgeDeadTasksRequest(_message.Message):
    __slots__ = ("selector",)
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    selector: DeadTaskSelector
    def __init__(self, selector: _Optional[_Union[DeadTaskSelector, _Mapping]] = ...) -> None: ...

class PurgeDeadTasksResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("queues", "page_size", "page_token")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, queues: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class Totals(_message.Message):
    __slots__ = ("submitted", "completed", "expired", "redelivered", "duplicate_acks", "dead_lettered", "adopted", "failed", "cancelled", "purged")
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_ACKS_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    PURGED_FIELD_NUMBER: _ClassVar[int]
    submitted: int
    completed: int
    expired: int
    redelivered: int
    duplicate_acks: int
    dead_lettered: int
    adopted: int
    failed: int
    cancelled: int
    purged: int
    def __init__(self, submitted: _Optional[int] = ..., completed: _Optional[int] = ..., expired: _Optional[int] = ..., redelivered: _Optional[int] = ..., duplicate_acks: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., adopted: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., purged: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("queue", "scheduled", "ready", "leased", "completed", "dead", "cancelled", "oldest_ready_age", "totals")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    OLDEST_READY_AGE_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    scheduled: int
    ready: int
    leased: int
    completed: int
    dead: int
    cancelled: int
    oldest_ready_age: _duration_pb2.Duration
    totals: Totals
    def __init__(self, queue: _Optional[str] = ..., scheduled: _Optional[int] = ..., ready: _Optional[int] = ..., leased: _Optional[int] = ..., completed: _Optional[int] = ..., dead: _Optional[int] = ..., cancelled: _Optional[int] = ..., oldest_ready_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("queues", "totals", "next_page_token")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStats]
    totals: Totals
    next_page_token: str
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("queue", "paused", "paused_at", "stats")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_AT_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    paused: bool
    paused_at: _timestamp_pb2.Timestamp
    stats: QueueStats
    def __init__(self, queue: _Optional[str] = ..., paused: _Optional[bool] = ..., paused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stats: _Optional[_Union[QueueStats, _Mapping]] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues", "next_page_token")
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    next_page_token: str
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("queue", "states", "page_size", "page_token", "newest_first", "include_payloads")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    states: _containers.RepeatedScalarFieldContainer[TaskState]
    page_size: int
    page_token: str
    newest_first: bool
    include_payloads: bool
    def __init__(self, queue: _Optional[str] = ..., states: _Optional[_Iterable[_Union[TaskState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ..., include_payloads: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("queue", "limit")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    limit: int
    def __init__(self, queue: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class LeaseHolder(_message.Message):
    __slots__ = ("queue", "worker_id", "caller", "leases", "oldest_leased_at", "newest_leased_at")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    OLDEST_LEASED_AT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_LEASED_AT_FIELD_NUMBER: _ClassVar[int]
    queue: str
    worker_id: str
    caller: str
    leases: int
    oldest_leased_at: _timestamp_pb2.Timestamp
    newest_leased_at: _timestamp_pb2.Timestamp
    def __init__(self, queue: _Optional[str] = ..., worker_id: _Optional[str] = ..., caller: _Optional[str] = ..., leases: _Optional[int] = ..., oldest_leased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., newest_leased_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConsumerInfo(_message.Message):
    __slots__ = ("kind", "worker_id", "caller", "queues", "since", "leases", "peer")
    KIND_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    kind: ConsumerKind
    worker_id: str
    caller: str
    queues: _containers.RepeatedScalarFieldContainer[str]
    since: _timestamp_pb2.Timestamp
    leases: int
    peer: str
    def __init__(self, kind: _Optional[_Union[ConsumerKind, str]] = ..., worker_id: _Optional[str] = ..., caller: _Optional[str] = ..., queues: _Optional[_Iterable[str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., leases: _Optional[int] = ..., peer: _Optional[str] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("lease_holders", "consumers", "feeder", "truncated")
    LEASE_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    FEEDER_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    lease_holders: _containers.RepeatedCompositeFieldContainer[LeaseHolder]
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerInfo]
    feeder: str
    truncated: bool
    def __init__(self, lease_holders: _Optional[_Iterable[_Union[LeaseHolder, _Mapping]]] = ..., consumers: _Optional[_Iterable[_Union[ConsumerInfo, _Mapping]]] = ..., feeder: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class PurgeQueueRequest(_message.Message):
    __slots__ = ("queue", "confirm")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    queue: str
    confirm: str
    def __init__(self, queue: _Optional[str] = ..., confirm: _Optional[str] = ...) -> None: ...

class PurgeQueueResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class DeleteQueueRequest(_message.Message):
    __slots__ = ("queue",)
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    def __init__(self, queue: _Optional[str] = ...) -> None: ...

class DeleteQueueResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
