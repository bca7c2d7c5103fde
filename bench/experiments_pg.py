"""Experiments with three feeders on one PostgreSQL database (`bench.postgres_feeders`),
fresh feeders and a fresh database each; figures under ``metrics``, case ``feedwork-pg-3``.

- dispatch-pg: the wake-up across feeders. 4 raw-stub consumers idle in
  Lease(max_tasks=1, wait=30s) loops on feeders B and C; single-task Submits on feeder A,
  each DISPATCH_GAP after the previous reply (as `dispatch`). Latency: the consumer has
  the task - just before its Submit call. The path: A commits, NOTIFY, B's and C's listen
  connections hear it, a waiting Lease claims the task.
- expiry-pg: the reaper of the maintenance leader. EXPIRY_TASKS tasks leased (a lease of
  EXPIRY_LEASE s) a few at a time through all three feeders, round robin, the calls spread
  over EXPIRY_SPREAD, so the deadlines spread over about a second; none is acked. Which
  feeder leads cannot be asked over gRPC, and it does not matter: leases granted on the
  others must be reaped by it all the same.
  Once all are READY again, each task's history (GetTask) gives how late it was requeued:
  the EXPIRED attempt's ended_at - (its leased_at + EXPIRY_LEASE).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

from bench.core import make_payload
from bench.experiments import (
    CONSUMERS,
    DISPATCH_GAP,
    DISPATCH_TASKS,
    Options,
    _dispatch_run,
    _duration,
    _ms,
    _result,
    _stub,
    _timestamp_seconds,
    profiled,
    raw_dispatch_consumers,
)
from bench.feeder_process import FeederClient, preload
from bench.postgres_feeders import postgres_feeders, settings
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

CASE = "feedwork-pg-3"
FEEDERS = 3
EXPIRY_TASKS = 300
EXPIRY_LEASE = 2.0
EXPIRY_BATCH = 5
# The Lease calls start spread over this long (well inside one lease).
EXPIRY_SPREAD = 1.0
EXPIRY_QUEUE = "expiry"
HISTORY_READERS = 8


async def dispatch_pg(options: Options) -> list[dict[str, Any]]:
    result = _result(CASE, "dispatch", DISPATCH_TASKS)
    result["info"] = await settings()
    async with postgres_feeders(FEEDERS, "dispatch-pg") as cluster:
        submit_to, *others = cluster.targets
        consumers_on = [others[i % len(others)] for i in range(CONSUMERS)]
        pids = {"server": cluster.pids, "client": (os.getpid(),)}
        result["metrics"] = await _dispatch_run(
            submit_to, raw_dispatch_consumers(consumers_on), options, f"{CASE}.dispatch", pids
        )
    result["metrics"]["feeders"] = FEEDERS
    result["metrics"]["how"] = (
        f"{FEEDERS} feeders on one PostgreSQL database; {CONSUMERS} raw-stub consumers in "
        "Lease(max_tasks=1, wait=30s) loops (ack after each) on feeders B and C; one Submit "
        f"of 1 task on feeder A every {DISPATCH_GAP * 1000:g} ms after its reply; latency = "
        "consumer receives task - just before its Submit call"
    )
    return [result]


async def _lease_spread(stubs: list[pb_grpc.FeederStub]) -> dict[str, float]:
    """Leases every task of the queue, EXPIRY_BATCH per call, round robin over the feeders;
    the calls start on a schedule spread over EXPIRY_SPREAD (open loop, so a slow reply
    does not push the rest past the first deadline). Returns task id -> lease deadline
    (from the reply)."""
    calls = -(-EXPIRY_TASKS // EXPIRY_BATCH)
    t0 = time.perf_counter()

    async def lease(k: int) -> Sequence[pb.LeasedTask]:
        await asyncio.sleep(max(0.0, t0 + k * EXPIRY_SPREAD / calls - time.perf_counter()))
        request = pb.LeaseRequest(
            queue=EXPIRY_QUEUE,
            max_tasks=EXPIRY_BATCH,
            worker_id=f"bench-expiry-{k % len(stubs)}",
            lease_duration=_duration(EXPIRY_LEASE),
        )
        reply = await stubs[k % len(stubs)].Lease(request, timeout=30)
        tasks: Sequence[pb.LeasedTask] = reply.tasks
        return tasks

    deadlines: dict[str, float] = {}
    for tasks in await asyncio.gather(*(lease(k) for k in range(calls))):
        for task in tasks:
            if task.attempt != 1 or task.task_id in deadlines:
                raise RuntimeError("a lease expired before leasing was done (machine too slow)")
            deadlines[task.task_id] = _timestamp_seconds(task.lease_deadline)
    if len(deadlines) != EXPIRY_TASKS:
        raise RuntimeError(f"leased {len(deadlines)} of {EXPIRY_TASKS} tasks")
    return deadlines


async def _wait_ready(client: FeederClient, last_deadline: float, limit: float) -> float:
    """Polls GetStats every 10 ms until every task is READY again; returns the time."""
    async with asyncio.timeout(max(0.0, last_deadline - time.time()) + limit):
        while True:
            q = await client.stats(EXPIRY_QUEUE)
            if q is not None and q.ready >= EXPIRY_TASKS:
                return time.time()
            await asyncio.sleep(0.01)


async def _lateness(
    stubs: list[pb_grpc.FeederStub], task_ids: list[str], deadlines: dict[str, float]
) -> tuple[list[float], float]:
    """Seconds from each task's deadline (leased_at + EXPIRY_LEASE) to the end of its
    EXPIRED attempt, from GetTask (spread over the feeders); and the largest gap between
    that deadline and the one the Lease reply gave."""
    late: list[float] = []
    mismatch = 0.0
    readers = asyncio.Semaphore(HISTORY_READERS)

    async def read(index: int, task_id: str) -> None:
        nonlocal mismatch
        async with readers:
            reply = await stubs[index % len(stubs)].GetTask(
                pb.GetTaskRequest(task_id=task_id), timeout=30
            )
        expired = [a for a in reply.task.history if a.outcome == pb.ATTEMPT_OUTCOME_EXPIRED]
        if len(expired) != 1:
            raise RuntimeError(f"task {task_id}: {len(expired)} expired attempts, not 1")
        deadline = _timestamp_seconds(expired[0].leased_at) + EXPIRY_LEASE
        late.append(_timestamp_seconds(expired[0].ended_at) - deadline)
        mismatch = max(mismatch, abs(deadline - deadlines[task_id]))

    await asyncio.gather(*(read(i, task_id) for i, task_id in enumerate(task_ids)))
    return late, mismatch


async def expiry_pg(options: Options) -> list[dict[str, Any]]:
    result = _result(CASE, "expiry", EXPIRY_TASKS)
    result["info"] = await settings()
    async with postgres_feeders(FEEDERS, "expiry-pg") as cluster:
        await preload(cluster.targets, EXPIRY_TASKS, make_payload(), queue=EXPIRY_QUEUE)
        channels = [_stub(target) for target in cluster.targets]
        stats = await FeederClient(cluster.targets[0]).connect()
        try:
            for channel, _ in channels:
                await asyncio.wait_for(channel.channel_ready(), 10)
            stubs = [stub for _, stub in channels]
            t0 = time.time()
            deadlines = await _lease_spread(stubs)
            leasing = time.time() - t0
            first, last = min(deadlines.values()), max(deadlines.values())
            async with profiled(options, f"{CASE}.expiry", {"server": cluster.pids}):
                ready_at = await _wait_ready(stats, last, options.phase_timeout)
            late, mismatch = await _lateness(stubs, list(deadlines), deadlines)
            q = await stats.stats(EXPIRY_QUEUE)
        finally:
            await stats.close()
            for channel, _ in channels:
                await channel.close(grace=None)
    result["metrics"] = {
        "lateness_ms": _ms(late),
        "all_ready_after_last_deadline_ms": (ready_at - last) * 1000,
        "deadline_spread_ms": (last - first) * 1000,
        "deadline_vs_reply_max_ms": mismatch * 1000,
        "leasing_seconds": leasing,
        "expired_total": None if q is None else q.totals.expired,
        "feeders": FEEDERS,
        "how": f"{FEEDERS} feeders on one PostgreSQL database; {EXPIRY_TASKS} tasks leased "
        f"({EXPIRY_LEASE:g} s leases) {EXPIRY_BATCH} per Lease call, round robin over the "
        f"feeders, the calls spread over {EXPIRY_SPREAD:g} s, never acked; lateness = the EXPIRED "
        "attempt's ended_at - (leased_at + lease duration), from GetTask",
    }
    return [result]
