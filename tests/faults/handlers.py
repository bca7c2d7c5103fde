"""The handler the fault tests run in real `python -m worker` processes.

`ledger` appends one line per execution, "task_id attempt pid", to the file named by
$FEEDWORK_FAULTS_LEDGER (one O_APPEND write per line, so lines from many processes never
interleave), then does what the task's JSON payload asks:

    {"sleep": 0.2}             sleep 0.2 s (wakes early if the worker cancels the task)
    {"sleep_first": 30}        sleep this long on attempt 1 only (then "sleep" applies)
    {"ignore_cancel": true}    sleep through a cancel
    {"exit": 3}                os._exit(3): the worker process dies mid-task (poison)
    {"fail": true}             raise: the attempt fails (nack)

and returns "pid attempt" as the task's result. The ledger line is written before the work
starts, so an execution that a crash cut short is in the ledger too.

tests/faults/handlers.js is the same handler for Node.js workers: keep the two in step
(tests/acceptance/test_ledger_handlers.py holds both to one checklist).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

LEDGER_ENV = "FEEDWORK_FAULTS_LEDGER"


def append_line(path: str, line: str) -> None:
    """One write(2) on an O_APPEND descriptor: atomic with respect to other appenders."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(path: str, task_id: str, attempt: int, pid: int | None = None) -> None:
    append_line(path, f"{task_id} {attempt} {pid if pid is not None else os.getpid()}\n")


def ledger(task: Any) -> bytes:
    record(os.environ[LEDGER_ENV], task.id, task.attempt)
    spec = json.loads(task.payload) if task.payload else {}
    if "exit" in spec:
        os._exit(int(spec["exit"]))
    seconds = float(spec.get("sleep", 0.0))
    if task.attempt == 1 and "sleep_first" in spec:
        seconds = float(spec["sleep_first"])
    if seconds > 0:
        if spec.get("ignore_cancel"):
            time.sleep(seconds)
        else:
            task.cancelled.wait(seconds)
    if spec.get("fail"):
        raise RuntimeError("asked to fail")
    return f"{os.getpid()} {task.attempt}".encode()
