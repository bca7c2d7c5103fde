"""The fault-injection harness: real feeder and worker processes on 127.0.0.1, two ledgers
kept by the workers (every execution, and every ack the feeder answered), and the audit
that checks the feeder's records against them.

    feeder = FeederProc(tmp_path)             # python -m feeder on a fixed free port
    feeder.start(); feeder.kill9(); feeder.start()   # same database, same port
    workers = WorkerPool(tmp_path, feeder.target, queue="q", ledger=ledger_path, concurrency=4)
    workers.start(8)                          # python -m worker ... tests.faults.handlers:ledger
    node = WorkerPool(..., command=WorkerCommand.node(node_sdk))   # the same, in Node.js
    ...
    result = audit(stub, task_ids, ledger_path)   # GetTask for every id + both ledgers
    assert result.lost == 0 and result.completed_twice == 0

A pool's `command` says what a worker process is: `python -m worker` with the ledger handler
of tests/faults/handlers.py (the default), or the Node.js SDK's feedwork-node-worker with
its port, tests/faults/handlers.js (same payloads, same ledger lines, same ack ledger); the
`node_sdk` fixture builds that SDK. Everything else (kills, the audit) is the same.

Completions are counted from the workers' side: each worker runs with `--ack-ledger`
(`ack_ledger_path(ledger, worker)`, one JSON-lines file per worker process), and the audit holds
the feeder to every ACKED or ADOPTED answer it gave (see `audit`).

Sizes: `scaled(small, big)` is `big` when FEEDWORK_CHAOS=1 (`make chaos`), else `small`
(the CI-sized run of plain `make test`). Every test records its figures with `record()`,
before its final checks, into tests/faults/figures.json (or $FEEDWORK_FIGURES) under the
id of its pytest run (RUN_ID, or $FEEDWORK_FIGURES_RUN), and the run records each test's
outcome; tests/faults/report.py renders docs/RELIABILITY.md from one run of that file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc
from tests.node_sdk import NodeSdk
from tests.processes import die_with_parent
from worker.receipts import AckReceipt as Receipt
from worker.receipts import read_ack_ledger

ROOT = Path(__file__).resolve().parents[2]
CHAOS = os.environ.get("FEEDWORK_CHAOS", "").strip().lower() not in ("", "0", "false", "no")
FIGURES = Path(os.environ.get("FEEDWORK_FIGURES") or Path(__file__).with_name("figures.json"))
HANDLER = "tests.faults.handlers:ledger"
NODE_HANDLER = Path(__file__).with_name("handlers.js")
LEDGER_ENV = "FEEDWORK_FAULTS_LEDGER"

FINAL_STATES = (pb.TASK_STATE_COMPLETED, pb.TASK_STATE_DEAD, pb.TASK_STATE_CANCELLED)


def scaled(small: Any, big: Any) -> Any:
    """`big` in a chaos run (FEEDWORK_CHAOS=1), `small` in the CI-sized one."""
    return big if CHAOS else small


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without FEEDWORK_* settings (a developer's FEEDWORK_TARGET must not
    leak into a test), with the checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDWORK_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_for(condition: Callable[[], Any], *, within: float, what: str, every: float = 0.05) -> Any:
    """Polls `condition` until it returns something truthy (returned), or fails the test."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(every)


# -- processes ----------------------------------------------------------------------------


class Proc:
    """One child process running `argv` (the program first), logged to
    `<workdir>/<name>.log` (appended across restarts)."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path, env: dict[str, str]):
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        # Set once a supervisor has dealt with this process's exit (or replaced it).
        self.reaped = False

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                die_with_parent(self.argv),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill9(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float = 10.0, *, signalled: bool = False) -> None:
        """SIGTERM (unless `signalled` already: a second one makes a worker exit at once,
        without its graceful stop), then SIGKILL after `grace` seconds. Always reaps the
        process."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if not signalled:
                self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class FeederProc(Proc):
    """`python -m feeder` on a fixed port and database, so that it can be killed and
    restarted under the feet of its clients (which keep their target)."""

    def __init__(
        self,
        workdir: Path,
        *,
        db: Path | str | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        name: str = "feeder",
        module: str = "feeder",
    ) -> None:
        """`db`: a SQLite file (default `workdir/feedwork.db`) or a PostgreSQL URL. `module`:
        what runs (tests.faults.faulty_feeder: the feeder on a store with a fault)."""
        self.db = db or workdir / "feedwork.db"
        self.port = port or free_port()
        self.port_file = workdir / f"{name}.port"
        argv = [
            sys.executable, "-m", module,
            "--listen", f"127.0.0.1:{self.port}",
            "--db", str(self.db),
            "--port-file", str(self.port_file),
            "--log-level", "warning",
            "--shutdown-grace", "2s",
            *args,
        ]  # fmt: skip
        super().__init__(name, argv, workdir, env or child_env())
        self.starts = 0
        self.kills = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, within: float = 30.0) -> float:
        """Starts the feeder and waits until it listens; returns the seconds that took. A
        port still held by the dying previous process is retried."""
        began = time.monotonic()
        deadline = began + within
        while True:
            self.port_file.unlink(missing_ok=True)
            self.spawn()
            while self.alive() and not self._listening():
                if time.monotonic() > deadline:
                    self.kill9()
                    raise AssertionError(f"{self.name} did not start:\n{self.log_tail()}")
                time.sleep(0.02)
            if self.alive():
                self.starts += 1
                return time.monotonic() - began
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} exited at start:\n{self.log_tail()}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        try:
            return bool(self.port_file.read_text().strip())
        except OSError:
            return False

    def kill9(self) -> None:
        was_alive = self.alive()
        super().kill9()
        if was_alive:
            self.kills += 1

    def restart(self) -> float:
        self.kill9()
        return self.start()


@dataclass(frozen=True)
class WorkerCommand:
    """What a worker process of a pool runs: a worker CLI and the ledger handler in its
    language. Both CLIs take the options a pool sets (`argv`); `options` are those of one
    CLI only."""

    language: str
    program: tuple[str, ...]  # the CLI, up to its options
    handler: str  # its --handler
    options: tuple[str, ...] = ()

    @classmethod
    def python(cls) -> WorkerCommand:
        """`python -m worker` with tests/faults/handlers.py."""
        return cls("python", (sys.executable, "-m", "worker"), HANDLER, ("--log-level", "INFO"))

    @classmethod
    def node(cls, sdk: NodeSdk) -> WorkerCommand:
        """The Node.js SDK's feedwork-node-worker with tests/faults/handlers.js (`sdk`: the
        `node_sdk` fixture, which builds it)."""
        return cls("node", (sdk.node, str(sdk.cli)), f"{NODE_HANDLER}:ledger")

    def argv(
        self,
        *,
        target: str,
        queue: str,
        worker_id: str,
        ack_ledger: Path,
        concurrency: int,
        grace: float,
        wait: float,
        lease_duration: float | None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        return [
            *self.program,
            "--target", target,
            "--queue", queue,
            "--handler", self.handler,
            "--concurrency", str(concurrency),
            "--grace", str(grace),
            "--wait", str(wait),
            "--worker-id", worker_id,
            "--ack-ledger", str(ack_ledger),
            *(["--lease-duration", str(lease_duration)] if lease_duration else []),
            *self.options,
            *extra,
        ]  # fmt: skip


class WorkerPool:
    """Worker processes on one queue, each running the ledger handler: `python -m worker`
    unless `command` says otherwise (`WorkerCommand.node(sdk)`). Processes are named
    `<name>00`, `<name>01`, ... (their worker ids, and their logs' and ack ledgers' names),
    so that two pools may share a queue and a ledger under different names."""

    def __init__(
        self,
        workdir: Path,
        target: str,
        *,
        queue: str,
        ledger: Path,
        concurrency: int = 4,
        lease_duration: float | None = None,
        grace: float = 5.0,
        wait: float = 2.0,
        extra: Sequence[str] = (),
        command: WorkerCommand | None = None,
        name: str = "worker",
    ) -> None:
        self.workdir = workdir
        self.target = target
        self.queue = queue
        self.ledger = ledger
        self.concurrency = concurrency
        self.lease_duration = lease_duration
        self.grace = grace
        self.wait = wait
        self.extra = list(extra)
        self.command = command or WorkerCommand.python()
        self.name = name
        self.procs: list[Proc] = []
        self.crashes = 0  # processes that exited on their own (found by `supervise`)
        self.kills = 0

    def start(self, count: int = 1) -> list[Proc]:
        return [self.start_one() for _ in range(count)]

    def start_one(self) -> Proc:
        name = f"{self.name}{len(self.procs):02d}"
        argv = self.command.argv(
            target=self.target,
            queue=self.queue,
            worker_id=name,
            ack_ledger=ack_ledger_path(self.ledger, name),
            concurrency=self.concurrency,
            grace=self.grace,
            wait=self.wait,
            lease_duration=self.lease_duration,
            extra=self.extra,
        )
        proc = Proc(name, argv, self.workdir, child_env(**{LEDGER_ENV: str(self.ledger)}))
        proc.spawn()
        self.procs.append(proc)
        return proc

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.alive()]

    def wait_started(self, *, within: float = 60.0) -> None:
        """Waits until every live worker is through its start-up: each opens its ack ledger
        just before it connects to a feeder (both CLIs do). For a test that times its
        faults: a loaded machine can take seconds to start a worker, Node's or Python's."""
        wait_for(
            lambda: all(ack_ledger_path(self.ledger, p.name).exists() for p in self.alive()),
            within=within,
            what=f"the {self.command.language} workers {self.name}* to start",
        )

    def kill9(self, proc: Proc, *, replace: bool = True) -> Proc | None:
        """SIGKILL one worker (a crash); starts a replacement unless told not to."""
        proc.reaped = True
        proc.kill9()
        self.kills += 1
        return self.start_one() if replace else None

    def supervise(self) -> int:
        """Restarts every worker that died on its own (not killed by us); returns how many."""
        restarted = 0
        for proc in list(self.procs):
            if proc.returncode() is not None and not proc.reaped:
                proc.reaped = True
                self.crashes += 1
                self.start_one()
                restarted += 1
        return restarted

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        for proc in self.procs:
            proc.stop(grace, signalled=True)


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Stops feeders and pools on the way out, whatever happened."""
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                if isinstance(thing, WorkerPool):
                    thing.stop_all(grace=5.0)
                else:
                    thing.stop(grace=5.0)


# -- talking to the feeder ------------------------------------------------------------------


@contextlib.contextmanager
def feeder_stub(target: str) -> Iterator[feeder_pb2_grpc.FeederStub]:
    with grpc.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ],
    ) as channel:
        yield feeder_pb2_grpc.FeederStub(channel)


def call(rpc: Callable[..., Any], request: Any, *, within: float = 30.0) -> Any:
    """`rpc(request)`, retried on UNAVAILABLE/DEADLINE_EXCEEDED for up to `within` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            return rpc(request, timeout=5)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=3
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def queue_stats(stub: feeder_pb2_grpc.FeederStub, queue: str) -> pb.QueueStats:
    reply = call(stub.GetStats, pb.GetStatsRequest(queues=[queue]))
    for stats in reply.queues:
        if stats.queue == queue:
            return stats
    return pb.QueueStats(queue=queue)


def wait_settled(
    stub: feeder_pb2_grpc.FeederStub, queue: str, total: int, *, within: float
) -> pb.QueueStats:
    """Waits until all `total` tasks of `queue` are COMPLETED, DEAD or CANCELLED."""

    def settled() -> pb.QueueStats | None:
        stats = queue_stats(stub, queue)
        done = stats.completed + stats.dead + stats.cancelled
        pending = stats.scheduled + stats.ready + stats.leased
        return stats if done >= total and pending == 0 else None

    return wait_for(settled, within=within, what=f"{total} tasks of {queue} to settle", every=0.2)


def get_tasks(stub: feeder_pb2_grpc.FeederStub, task_ids: Iterable[str]) -> dict[str, pb.Task]:
    """GetTask for each id; ids the feeder does not know are left out."""
    tasks: dict[str, pb.Task] = {}
    for task_id in task_ids:
        try:
            tasks[task_id] = call(stub.GetTask, pb.GetTaskRequest(task_id=task_id)).task
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
    return tasks


def submit(
    stub: feeder_pb2_grpc.FeederStub, queue: str, payloads: Sequence[dict[str, Any]], **spec: Any
) -> list[str]:
    """Submits one task per payload (JSON) in one batch; returns their ids."""
    specs = [pb.TaskSpec(queue=queue, payload=json.dumps(p).encode(), **spec) for p in payloads]
    reply = call(stub.Submit, pb.SubmitRequest(tasks=specs))
    return [r.task_id for r in reply.results]


def every_worker_runs_again(
    target: str, workers: WorkerPool, ledger: Path, queue: str, *, within: float
) -> list[str]:
    """Submits short probe tasks until every worker of the pool has run one since now (none
    of them restarted: they found their feeders again by themselves); returns the probes'
    task ids, which the caller audits with the rest."""
    from feedwork.client import FeederClient
    from feedwork.types import TaskSpec

    after = len(read_ledger(ledger))
    pids = {w.pid for w in workers.procs}
    probe_ids: list[str] = []
    with FeederClient(target) as client:

        def everyone_worked() -> bool:
            batch = [TaskSpec(queue, payload=json.dumps({"sleep": 0.05})) for _ in range(len(pids))]
            probe_ids.extend(r.task_id for r in client.submit_many(batch))
            seen = {pid for _, _, pid in read_ledger(ledger)[after:]}
            return pids <= seen

        wait_for(everyone_worked, within=within, what="every worker to run a task", every=0.3)
    return probe_ids


# -- the ledgers and the audit ----------------------------------------------------------------


def read_ledger(path: Path) -> list[tuple[str, int, int]]:
    """(task_id, attempt, pid) per execution, in the order they started."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        task_id, attempt, pid = line.split()
        lines.append((task_id, int(attempt), int(pid)))
    return lines


def ack_ledger_path(ledger: Path, worker: str) -> Path:
    """The ack ledger (the worker's `--ack-ledger`, in either language) of one worker of a
    pool whose execution ledger is `ledger`."""
    return ledger.with_name(f"{ledger.stem}.acks-{worker}.jsonl")


def read_receipts(ledger: Path) -> list[Receipt]:
    """Every ack answer recorded by the workers of the pool whose execution ledger is
    `ledger` (their `--ack-ledger` files)."""
    receipts: list[Receipt] = []
    for path in sorted(ledger.parent.glob(f"{ledger.stem}.acks-*.jsonl")):
        receipts += read_ack_ledger(path)
    return receipts


def expired_after_running(tasks: Iterable[pb.Task], ledger: Path) -> list[tuple[pb.Task, Any]]:
    """The EXPIRED attempts (task, attempt record) that their worker had started, by the
    execution ledger. (A lease whose reply was lost in a crash never ran: not here.)"""
    ran = {(task_id, attempt) for task_id, attempt, _ in read_ledger(ledger)}
    return [
        (task, attempt)
        for task in tasks
        for attempt in task.history
        if attempt.outcome == pb.ATTEMPT_OUTCOME_EXPIRED and (task.task_id, attempt.attempt) in ran
    ]


def acks_held_past_lease(
    tasks: Iterable[pb.Task], ledger: Path, *, task_seconds: float = 1.0
) -> list[str]:
    """EXPIRED attempts that ran, whose worker had other acks answered between
    `task_seconds` after the lease began and the lease's end, as "task_id attempt worker":
    that worker reached a feeder in that span, yet this attempt's ack (ready once the task's
    at most `task_seconds` were over) did not get through before the lease ran out. The
    worker held it back, e.g. in a retry backing off past a feeder's restart while its new
    stream carried the others; the task was leased and run again for nothing. (A worker cut
    off from every feeder until the lease ended has no answer in that span: not here.)"""
    answered: dict[str, list[float]] = {}  # worker id -> when its acks were answered
    for path in sorted(ledger.parent.glob(f"{ledger.stem}.acks-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                data = json.loads(line)
                answered.setdefault(str(data["worker_id"]), []).append(float(data["at"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
    held = []
    for task, attempt in expired_after_running(tasks, ledger):
        ready, ended = ts(attempt.leased_at) + task_seconds, ts(attempt.ended_at)
        if any(ready < at < ended for at in answered.get(attempt.worker_id, ())):
            held.append(f"{task.task_id} {attempt.attempt} {attempt.worker_id}")
    return held


def ts(value: Any) -> float:
    """A protobuf Timestamp in seconds (0.0 when unset)."""
    return float(value.seconds) + value.nanos / 1e9


@dataclass
class Audit:
    tasks: int = 0
    completed: int = 0
    dead: int = 0
    cancelled: int = 0
    # Submitted but not final, or unknown to the feeder.
    lost: int = 0
    # Tasks the feeder told two attempts (by their workers' ack ledgers) that their ack
    # completed it (ACKED or ADOPTED), or whose history holds two ACKED attempts.
    completed_twice: int = 0
    # Tasks acknowledged as completed to a worker (ACKED or ADOPTED) that are not COMPLETED
    # with that worker's result: a completion the feeder answered and did not keep.
    acknowledged_not_kept: int = 0
    # ACKED or ADOPTED answers the workers recorded, for the audited tasks.
    acks_recorded: int = 0
    # COMPLETED tasks with no recorded ACKED/ADOPTED answer: the answer was lost and the
    # retried ack answered DUPLICATE, or its worker was killed before writing it down. Not
    # a failure: the audit just knows less about them.
    completed_without_receipt: int = 0
    executions: int = 0
    # Executions beyond the first, per task, summed.
    duplicate_executions: int = 0
    # The same (task, attempt) executed more than once: a lease handed out twice.
    attempt_executed_twice: int = 0
    # Executions with an attempt number the feeder never handed out.
    phantom_executions: int = 0
    states: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("problems")
        data.pop("states")
        return data


def check_receipts(
    result: Audit, task: pb.Task | None, task_id: str, receipts: list[Receipt]
) -> None:
    """Holds the feeder to what it told the workers about one task: every ACKED or ADOPTED
    answer means the task is COMPLETED with that ack's result, and at most one attempt got
    such an answer (a second ack is DUPLICATE, whichever came first)."""
    completions = [r for r in receipts if r.completed]
    result.acks_recorded += len(completions)
    attempts = sorted({r.attempt for r in completions})
    if len(attempts) > 1:
        result.completed_twice += 1
        told = ", ".join(f"attempt {r.attempt} {r.outcome} to {r.worker_id}" for r in completions)
        result.problems.append(f"{task_id}: acknowledged as completed to {told}")
    not_kept = [
        r
        for r in completions
        if task is None or task.state != pb.TASK_STATE_COMPLETED or task.result != r.result
    ]
    if not_kept:
        result.acknowledged_not_kept += 1
        state = "missing" if task is None else pb.TaskState.Name(task.state)
        stored = None if task is None else task.result
        for r in not_kept:
            result.problems.append(
                f"{task_id}: attempt {r.attempt} was {r.outcome} with result {r.result!r} "
                f"(worker {r.worker_id}), but the task is {state} with result {stored!r}"
            )
    if task is not None and task.state == pb.TASK_STATE_COMPLETED and not completions:
        result.completed_without_receipt += 1


def audit(
    stub: feeder_pb2_grpc.FeederStub,
    task_ids: Sequence[str],
    ledger: Path,
    *,
    expect: int = pb.TASK_STATE_COMPLETED,
    expect_for: dict[str, int] | None = None,
) -> tuple[Audit, dict[str, pb.Task]]:
    """Reads every task back and checks it against the workers' ledgers: the executions
    (`ledger`) and the acks the feeder answered (`read_receipts(ledger)`)."""
    tasks = get_tasks(stub, task_ids)
    lines = read_ledger(ledger)
    receipts: dict[str, list[Receipt]] = {}
    for receipt in read_receipts(ledger):
        receipts.setdefault(receipt.task_id, []).append(receipt)
    executions = Counter(task_id for task_id, _, _ in lines)
    per_attempt = Counter((task_id, attempt) for task_id, attempt, _ in lines)
    result = Audit(tasks=len(task_ids))
    states: Counter[str] = Counter()
    for task_id in task_ids:
        task = tasks.get(task_id)
        check_receipts(result, task, task_id, receipts.get(task_id, []))
        if task is None:
            result.lost += 1
            result.problems.append(f"{task_id}: not found")
            continue
        states[pb.TaskState.Name(task.state)] += 1
        wanted = (expect_for or {}).get(task_id, expect)
        if task.state not in FINAL_STATES:
            result.lost += 1
            result.problems.append(f"{task_id}: still {pb.TaskState.Name(task.state)}")
        elif task.state != wanted:
            result.problems.append(
                f"{task_id}: {pb.TaskState.Name(task.state)}, expected {pb.TaskState.Name(wanted)}"
            )
        result.completed += task.state == pb.TASK_STATE_COMPLETED
        result.dead += task.state == pb.TASK_STATE_DEAD
        result.cancelled += task.state == pb.TASK_STATE_CANCELLED
        # The feeder's own history: one ACKED attempt per completed task. (It cannot show
        # a completion lost in a crash: the receipts above can.)
        acked = sum(a.outcome == pb.ATTEMPT_OUTCOME_ACKED for a in task.history)
        if acked > 1 and len({r.attempt for r in receipts.get(task_id, []) if r.completed}) < 2:
            result.completed_twice += 1
            result.problems.append(f"{task_id}: {acked} ACKED attempts")
        if task.state == pb.TASK_STATE_COMPLETED and acked != 1:
            result.problems.append(f"{task_id}: COMPLETED with {acked} ACKED attempts")
        n = executions.get(task_id, 0)
        result.executions += n
        result.duplicate_executions += max(0, n - 1)
        if task.state == pb.TASK_STATE_COMPLETED and n == 0:
            result.problems.append(f"{task_id}: COMPLETED without any execution")
        if n > task.attempts:
            result.problems.append(f"{task_id}: {n} executions but {task.attempts} attempts")
    known = set(task_ids)
    for (task_id, attempt), n in per_attempt.items():
        if task_id not in known:
            continue
        if n > 1:
            result.attempt_executed_twice += 1
            result.problems.append(f"{task_id}: attempt {attempt} executed {n} times")
        task = tasks.get(task_id)
        if task is not None and not 1 <= attempt <= task.attempts:
            result.phantom_executions += 1
            result.problems.append(f"{task_id}: executed attempt {attempt} of {task.attempts}")
    result.states = dict(states)
    return result, tasks


def assert_clean(result: Audit) -> None:
    """The promises every test checks: nothing lost, nothing completed twice, every
    completion a worker was told of kept, no lease executed twice, and each task in the
    state it should end in."""
    shown = "\n".join(result.problems[:30])
    assert result.lost == 0, f"{result.lost} tasks lost:\n{shown}"
    assert result.completed_twice == 0, f"{result.completed_twice} completed twice:\n{shown}"
    assert result.acknowledged_not_kept == 0, (
        f"{result.acknowledged_not_kept} acknowledged completions not kept:\n{shown}"
    )
    assert result.attempt_executed_twice == 0, shown
    assert result.phantom_executions == 0, shown
    assert not result.problems, shown


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int | None]:
    """count, p50, p99 and max of `values` (seconds), rounded."""

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
    }


@dataclass
class Expiry:
    """One EXPIRED attempt: when its lease was due to end, when the feeder ended it, and
    when the next attempt was leased (None if there was none)."""

    task_id: str
    attempt: int
    deadline: float
    ended_at: float
    next_leased_at: float | None

    @property
    def lateness(self) -> float:
        return self.ended_at - self.deadline

    @property
    def redelivery_delay(self) -> float | None:
        return None if self.next_leased_at is None else self.next_leased_at - self.deadline


def expiries(tasks: Iterable[pb.Task], lease_duration: float) -> list[Expiry]:
    """The EXPIRED attempts of tasks whose leases were never extended (so that the deadline
    is leased_at + lease_duration)."""
    found = []
    for task in tasks:
        history = list(task.history)
        for index, record in enumerate(history):
            if record.outcome != pb.ATTEMPT_OUTCOME_EXPIRED:
                continue
            following = history[index + 1] if index + 1 < len(history) else None
            found.append(
                Expiry(
                    task_id=task.task_id,
                    attempt=record.attempt,
                    deadline=ts(record.leased_at) + lease_duration,
                    ended_at=ts(record.ended_at),
                    next_leased_at=ts(following.leased_at) if following is not None else None,
                )
            )
    return found


def totals_figures(totals: pb.Totals) -> dict[str, int]:
    return {
        "submitted": totals.submitted,
        "completed": totals.completed,
        "expired": totals.expired,
        "redelivered": totals.redelivered,
        "duplicate_acks": totals.duplicate_acks,
        "adopted": totals.adopted,
        "dead_lettered": totals.dead_lettered,
        "failed": totals.failed,
    }


def check_duplicates_counted(result: Audit, totals: pb.Totals) -> None:
    """Every execution beyond a task's first was a redelivery the feeder counted."""
    assert result.duplicate_executions <= totals.redelivered, (
        f"{result.duplicate_executions} duplicate executions, "
        f"only {totals.redelivered} redeliveries counted"
    )


# -- figures ----------------------------------------------------------------------------------

# The run this process's figures belong to: `make chaos` names it (FEEDWORK_FIGURES_RUN) so
# that the report renders that run and nothing else; otherwise each pytest run is its own.
RUN_ID = os.environ.get("FEEDWORK_FIGURES_RUN") or time.strftime(
    f"%Y%m%dT%H%M%SZ-{os.getpid()}", time.gmtime()
)
# Runs kept in the figures file (the newest); older ones are dropped.
KEEP_RUNS = 5


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def _this_run() -> Iterator[dict[str, Any]]:
    """This run's entry of the figures file, to change in place; written back atomically,
    under a lock (runs may overlap). Each run keeps its own figures: a run never shows a
    figure another run measured."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{FIGURES}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(FIGURES.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
            data = {"runs": {}}  # a file of the earlier layout holds no run we can name
        runs = data["runs"]
        run = runs.setdefault(
            RUN_ID,
            {"run": RUN_ID, "chaos": CHAOS, "started_at": _now(), "tests": {}, "outcomes": {}},
        )
        yield run
        for old in sorted(runs, key=lambda r: runs[r].get("started_at", ""))[:-KEEP_RUNS]:
            del runs[old]
        temporary = FIGURES.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, FIGURES)


def record(test: str, figures: dict[str, Any], *, merge: bool = False) -> None:
    """Records one test's figures in this run. Call it before the test's final checks, so
    that a failing test leaves the figures that made it fail (the report shows them with
    the failure). `merge`: added to what this run recorded under `test` before (an entry
    whose figures come from several test functions)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    with _this_run() as run:
        earlier = run["tests"].get(test, {}) if merge else {}
        run["tests"][test] = {
            **earlier,
            "chaos": CHAOS,
            "recorded_at": _now(),
            "nodeid": current,
            **figures,
        }


def record_outcomes(outcomes: dict[str, str], suite: dict[str, Any]) -> None:
    """Records how each test of this run ended (passed, failed, skipped) and the suite's
    totals; the report shows a test that failed as failed, whatever figures it left."""
    with _this_run() as run:
        run["outcomes"].update(outcomes)
        run["tests"]["_suite"] = {"chaos": CHAOS, "recorded_at": _now(), **suite}
        run["finished_at"] = _now()
