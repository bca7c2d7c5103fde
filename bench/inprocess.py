"""The feeder's own cost per task, in one process, without gRPC: submit, then drain.

Runs the real path of each RPC minus the network: parse the request bytes, validate,
`TaskService` on a SQLite store in a temporary directory, convert and serialize the reply.
Drains in Lease(64) + Ack(64) rounds. Prints CPU microseconds per task:

    python -m bench.inprocess --tasks 20000

Timings on a shared machine drift by tens of percent between runs. For a figure that does
not, count instructions with valgrind (the same count for the same code, whatever else
the machine is doing), once with and once without the drain:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.inprocess --tasks 4000 --submit-only
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from feeder.core.policy import QueuePolicy
from feeder.server import convert, validate
from feeder.service.tasks import TaskService
from feeder.store.sqlite import SqliteStore
from feedwork.v1 import feeder_pb2 as pb

LEASE_BATCH = 64
SUBMIT_BATCH = 100
QUEUE = "bench"
LIMITS = validate.Limits()
POLICY = QueuePolicy()


async def measure(tasks: int, *, submit_only: bool) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory() as directory:
        service = TaskService(
            store=SqliteStore(Path(directory) / "feedwork.db"),
            policies=lambda queue: POLICY,
        )
        await service.start(background=False)
        try:
            submit = await _submit(service, tasks)
            drain = None if submit_only else await _drain(service, tasks)
        finally:
            await service.stop()
    return submit, drain


async def _submit(service: TaskService, tasks: int) -> float:
    spec = pb.TaskSpec(queue=QUEUE, payload=b"x" * 64)
    body = pb.SubmitRequest(tasks=[spec] * SUBMIT_BATCH).SerializeToString()
    started = time.process_time()
    for _ in range(tasks // SUBMIT_BATCH):
        request = pb.SubmitRequest.FromString(body)
        specs = validate.submit_specs(request, limits=LIMITS, now=time.time())
        submitted = await service.submit(specs)
        reply = pb.SubmitResponse()
        convert.add_submit_results(reply.results, submitted)
        reply.SerializeToString()
    return (time.process_time() - started) / tasks * 1e6


async def _drain(service: TaskService, tasks: int) -> float:
    lease_body = pb.LeaseRequest(
        queue=QUEUE, max_tasks=LEASE_BATCH, worker_id="w1"
    ).SerializeToString()
    done = 0
    started = time.process_time()
    while True:
        query = validate.lease_query(pb.LeaseRequest.FromString(lease_body))
        grants = await service.lease(
            query.queue,
            max_tasks=query.max_tasks,
            lease_duration=query.lease_duration,
            wait=0,
            worker_id=query.worker_id,
        )
        if not grants:
            break
        reply = pb.LeaseResponse()
        convert.add_leased_tasks(reply.tasks, grants)
        leased = pb.LeaseResponse.FromString(reply.SerializeToString()).tasks
        ack_body = pb.AckRequest(
            items=[pb.AckItem(lease_token=t.lease_token) for t in leased]
        ).SerializeToString()
        items = validate.ack_items(pb.AckRequest.FromString(ack_body), limits=LIMITS)
        results = await service.ack(items)
        answer = pb.AckResponse()
        convert.add_ack_results(answer.results, results)
        answer.SerializeToString()
        done += len(results)
    elapsed = time.process_time() - started
    if done != tasks // SUBMIT_BATCH * SUBMIT_BATCH:
        raise RuntimeError(f"drained {done} tasks, expected {tasks}")
    return elapsed / max(done, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inprocess", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--submit-only", action="store_true", help="skip the drain")
    args = parser.parse_args()
    submit, drain = asyncio.run(measure(args.tasks, submit_only=args.submit_only))
    line = f"submit {submit:6.1f} us/task"
    if drain is not None:
        line += f"   drain {drain:6.1f} us/task"
    print(line)


if __name__ == "__main__":
    main()
