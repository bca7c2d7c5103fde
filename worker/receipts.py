"""The worker's own record of the acks the feeder answered (`--ack-ledger`).

One JSON line per answered ack: the task, the attempt, the feeder's outcome (ACKED,
ADOPTED, DUPLICATE, ...) and the result the worker sent, base64-encoded:

    {"task_id": "42", "attempt": 1, "outcome": "ACKED", "result": "cmVzdWx0",
     "worker_id": "w1", "pid": 123, "at": 1700000000.5}

It lets an audit check the feeder from outside: a task acknowledged as completed (ACKED or
ADOPTED) must be COMPLETED with the result of that ack, and no task may be acknowledged as
completed to two attempts. The feeder's own history cannot show that (it keeps one
completing attempt, and a completion lost in a crash leaves no trace in it).

Each line is one write(2) on an O_APPEND descriptor, so the lines of several worker
processes sharing one file never interleave. A line is written when the answer arrives: a
worker killed between the answer and the write leaves that ack out (the audit then knows
less, never something false).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass

from feedwork.v1 import feeder_pb2 as pb

# The outcomes that tell a worker its ack completed the task.
COMPLETING = frozenset({"ACKED", "ADOPTED"})


class AckLedger:
    """Appends a line per answered ack to `path`. `close()` when done."""

    def __init__(self, path: str | os.PathLike[str], *, worker_id: str) -> None:
        self.path = os.fspath(path)
        self.worker_id = worker_id
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, *, task_id: str, attempt: int, outcome: int, result: bytes) -> None:
        if self._fd is None:
            return
        line = json.dumps(
            {
                "task_id": task_id,
                "attempt": attempt,
                "outcome": pb.AckOutcome.Name(outcome).removeprefix("ACK_OUTCOME_"),
                "result": base64.b64encode(result).decode(),
                "worker_id": self.worker_id,
                "pid": os.getpid(),
                "at": time.time(),
            },
            separators=(",", ":"),
        )
        os.write(self._fd, (line + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class AckReceipt:
    """One line of an ack ledger: the feeder's answer to an ack, and the result sent."""

    task_id: str
    attempt: int
    outcome: str  # ACKED, ADOPTED, DUPLICATE, REJECTED, ...
    result: bytes
    worker_id: str

    @property
    def completed(self) -> bool:
        """The feeder told this worker that its ack completed the task."""
        return self.outcome in COMPLETING


def read_ack_ledger(path: str | os.PathLike[str]) -> list[AckReceipt]:
    """The lines of an ack ledger; a line cut short (its worker killed while writing it)
    is left out."""
    receipts = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                data = json.loads(line)
                receipts.append(
                    AckReceipt(
                        task_id=str(data["task_id"]),
                        attempt=int(data["attempt"]),
                        outcome=str(data["outcome"]),
                        result=base64.b64decode(data["result"]),
                        worker_id=str(data["worker_id"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
    return receipts
