"""`submit_many` of the SDK's two clients against a real feeder: batches cut by count and
by encoded size, and errors that name the task by its index in what the caller passed."""

from __future__ import annotations

import asyncio

import pytest

from feedwork import AsyncFeederClient, FeederClient, InvalidArgument, TaskSpec, _wire
from feedwork.v1 import feeder_pb2 as pb
from tests.conftest import RunningFeeder

MiB = 1024 * 1024
# Each payload at the feeder's default limit (1 MiB); twelve add up to 12 MiB, more than
# the 8 MiB a message may have. Before: the whole submit failed with RESOURCE_EXHAUSTED
# "Received message larger than max".
BIG = [TaskSpec("big", payload=bytes([n]) * MiB) for n in range(12)]


def test_batches_are_cut_by_count_and_by_encoded_size() -> None:
    messages, _ = _wire.prepare_specs([*BIG[:3], *[TaskSpec("q", b"x")] * 2500, *BIG[3:]])
    batches = list(_wire.chunks(messages))
    assert [offset for offset, _ in batches] == sorted(offset for offset, _ in batches)
    assert sum(len(batch) for _, batch in batches) == len(messages)
    for _, batch in batches:
        size = pb.SubmitRequest(tasks=batch).ByteSize()  # counted exactly, not estimated
        assert len(batch) <= _wire.SUBMIT_BATCH_LIMIT
        assert size <= _wire.SUBMIT_BATCH_BYTES < 8 * MiB
    # 3 big + 997 small (count), 1000 small, 503 small + 6 big (size), 3 big.
    assert [len(batch) for _, batch in batches] == [1000, 1000, 509, 3]


def test_a_task_larger_than_a_batch_goes_alone() -> None:
    messages, _ = _wire.prepare_specs(
        [TaskSpec("q", b"a"), TaskSpec("q", b"x" * (8 * MiB)), TaskSpec("q", b"b")]
    )
    assert [len(batch) for _, batch in _wire.chunks(messages)] == [1, 1, 1]
    assert list(_wire.chunks([])) == []


async def test_sync_submit_many_of_more_than_a_message(feeder: RunningFeeder) -> None:
    def submit() -> list[str]:
        with FeederClient(feeder.target) as client:
            return [result.task_id for result in client.submit_many(BIG)]

    task_ids = await asyncio.to_thread(submit)
    assert len(set(task_ids)) == 12
    tasks = [await feeder.service.get_task(int(task_id)) for task_id in task_ids]
    assert [task.payload[:1] for task in tasks if task] == [bytes([n]) for n in range(12)]


async def test_async_submit_many_of_more_than_a_message(feeder: RunningFeeder) -> None:
    async with AsyncFeederClient(feeder.target) as client:
        results = await client.submit_many(BIG)
    assert len({result.task_id for result in results}) == 12


async def test_an_invalid_task_is_named_by_its_index_in_the_callers_list(
    feeder: RunningFeeder,
) -> None:
    specs = [TaskSpec("q", b"x") for _ in range(1500)]
    specs[1203] = TaskSpec("no spaces", b"x")
    async with AsyncFeederClient(feeder.target) as client:
        with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: tasks\[1203\]\.queue: must"):
            await client.submit_many(specs)

    def submit() -> None:
        with FeederClient(feeder.target) as client:
            client.submit_many(specs)

    with pytest.raises(InvalidArgument, match=r"INVALID_ARGUMENT: tasks\[1203\]\.queue"):
        await asyncio.to_thread(submit)
