"""feedwork: a durable work queue over gRPC. Producers submit, workers lease and ack.

The producer and admin API lives here (`FeederClient`, `AsyncFeederClient`, their
records and errors); the worker SDK is the `worker` package, the server `feeder`.
"""

from feedwork.channel import TargetError
from feedwork.client import DEFAULT_TARGET, AsyncFeederClient, FeederClient
from feedwork.credentials import ClientSecurity, CredentialsError
from feedwork.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FeedworkError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    WaitTimeout,
)
from feedwork.types import (
    AttemptInfo,
    AttemptOutcome,
    CancelOutcome,
    CancelResult,
    ConsumerInfo,
    ConsumerKind,
    DeadPage,
    LeaseHolder,
    QueueInfo,
    QueueStats,
    Stats,
    SubmitResult,
    TaskInfo,
    TaskPage,
    TaskSpec,
    TaskState,
    Totals,
    Workers,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TARGET",
    "AlreadyExists",
    "AsyncFeederClient",
    "AttemptInfo",
    "AttemptOutcome",
    "CancelOutcome",
    "CancelResult",
    "ClientSecurity",
    "ConsumerInfo",
    "ConsumerKind",
    "CredentialsError",
    "DeadPage",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FeederClient",
    "FeedworkError",
    "FieldViolation",
    "InvalidArgument",
    "LeaseHolder",
    "NotFound",
    "PermissionDenied",
    "QueueInfo",
    "QueueStats",
    "ResourceExhausted",
    "Stats",
    "SubmitResult",
    "TargetError",
    "TaskInfo",
    "TaskPage",
    "TaskSpec",
    "TaskState",
    "Totals",
    "Unauthenticated",
    "Unavailable",
    "WaitTimeout",
    "Workers",
    "__version__",
]
