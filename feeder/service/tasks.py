"""TaskService: every feeder operation, in domain terms (no protobuf, no gRPC)."""

from __future__ import annotations

from dataclasses import dataclass

from feeder.core.model import AckOutcome, ExtendOutcome, NackOutcome, Task


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    task: Task
    lease_token: str


@dataclass(frozen=True, slots=True)
class AckItem:
    lease_token: str
    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class AckResult:
    outcome: AckOutcome
    task_id: int | None


@dataclass(frozen=True, slots=True)
class NackItem:
    lease_token: str
    error: str = ""
    retry_after: float | None = None
    terminal: bool = False
    release: bool = False


@dataclass(frozen=True, slots=True)
class NackResult:
    outcome: NackOutcome
    task_id: int | None
    retry_at: float | None = None


@dataclass(frozen=True, slots=True)
class ExtendItem:
    lease_token: str
    lease_duration: float | None = None


@dataclass(frozen=True, slots=True)
class ExtendResult:
    outcome: ExtendOutcome
    task_id: int | None
    lease_deadline: float | None = None


class TaskService:
    """Placeholder: implementation in progress (see the feeder issue)."""
