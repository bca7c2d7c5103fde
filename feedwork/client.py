"""Producer and admin clients for the feeder: `FeederClient` (sync) and `AsyncFeederClient`.

Every RPC is retried on transient failures (UNAVAILABLE and the like, as decided by
`feedwork.retry.is_transient`) with exponential backoff for up to `max_retry_delay`
seconds in all; each try has its own deadline of `timeout` seconds. A target may name
several feeders (see `feedwork.channel`): calls spread over those that are up, and a retry
after one of them died goes to another.

Retrying Submit is only safe with an idempotency key: a reply lost after the feeder
stored the tasks would otherwise create them twice. So every task submitted without a
key gets a generated one (`auto-<uuid7>`, time-ordered) before the first try, and a
retried Submit finds the tasks of the earlier try. The key stays on the task
(`TaskInfo.idempotency_key`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import grpc
import tenacity

from feedwork import _wire
from feedwork.channel import aio_channel, sync_channel
from feedwork.credentials import ClientSecurity, SecurityOptions
from feedwork.errors import FeedworkError, WaitTimeout, error_from_rpc
from feedwork.retry import async_retrying, sync_retrying
from feedwork.types import (
    CancelResult,
    DeadPage,
    QueueInfo,
    Seconds,
    Stats,
    SubmitResult,
    TaskInfo,
    TaskPage,
    TaskSpec,
    TaskState,
    Workers,
)
from feedwork.v1 import feeder_pb2 as pb
from feedwork.v1 import feeder_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"

# `wait` polls GetTask, starting fast for short tasks and backing off to spare the feeder.
_POLL_FIRST = 0.05
_POLL_MAX = 1.0
_POLL_GROWTH = 1.5

_T = TypeVar("_T")


def _failure(exc: BaseException) -> FeedworkError:
    """The error to raise for a call that failed for good (after any retries)."""
    if isinstance(exc, tenacity.RetryError):
        last = exc.last_attempt.exception()
        if last is not None:
            exc = last
    if isinstance(exc, FeedworkError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    return FeedworkError(str(exc) or type(exc).__name__)


def _task_spec(
    payload: bytes | str,
    queue: str,
    headers: Mapping[str, str] | None,
    priority: int,
    delay: Seconds | None,
    not_before: datetime | None,
    max_attempts: int | None,
    lease_duration: Seconds | None,
    idempotency_key: str | None,
) -> TaskSpec:
    return TaskSpec(
        queue=queue,
        payload=payload,
        headers=headers,
        priority=priority,
        delay=delay,
        not_before=not_before,
        max_attempts=max_attempts,
        lease_duration=lease_duration,
        idempotency_key=idempotency_key,
    )


class FeederClient:
    """A blocking client for producers and operators.

    `target` is HOST:PORT, a list HOST:PORT,HOST:PORT,... or a gRPC URI (a malformed one
    raises `feedwork.channel.TargetError`, a `ValueError`). Use it as a context manager,
    or call `close()`. One client may be shared by threads. The keyword arguments `tls`,
    `tls_ca`, `tls_client_cert`, `tls_client_key`, `tls_server_name`, `api_key` and
    `api_key_file` set TLS and the API key (`feedwork.credentials`); those not given come
    from FEEDWORK_* variables.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        max_retry_delay: float = 30.0,
        **security: Unpack[SecurityOptions],
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._max_retry_delay = max_retry_delay
        self.security = ClientSecurity.from_env(**security)
        self._channel = sync_channel(target, security=self.security)
        self._stub = pb_grpc.FeederStub(self._channel)  # type: ignore[no-untyped-call]

    # -- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- producing ----------------------------------------------------------------------

    def submit(
        self,
        payload: bytes | str = b"",
        *,
        queue: str,
        headers: Mapping[str, str] | None = None,
        priority: int = 0,
        delay: Seconds | None = None,
        not_before: datetime | None = None,
        max_attempts: int | None = None,
        lease_duration: Seconds | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Submits one task. See `TaskSpec` for the fields."""
        spec = _task_spec(
            payload,
            queue,
            headers,
            priority,
            delay,
            not_before,
            max_attempts,
            lease_duration,
            idempotency_key,
        )
        return self.submit_many([spec])[0]

    def submit_many(self, specs: Iterable[TaskSpec]) -> list[SubmitResult]:
        """Submits tasks in batches, one Submit each, results in order.

        A batch holds up to 1000 tasks and stays well under the feeder's 8 MiB message
        limit (cut by encoded size). Each batch is all or nothing; when a later batch
        fails, the earlier ones stay submitted (resubmitting the same specs with their
        idempotency keys is safe). An `InvalidArgument` names the task by its index in
        `specs` (`tasks[1203].queue`).
        """
        messages, generated = _wire.prepare_specs(specs)
        results: list[SubmitResult] = []
        for offset, batch in _wire.chunks(messages):
            try:
                response = self._call(self._stub.Submit, pb.SubmitRequest(tasks=batch))
            except FeedworkError as exc:
                raise _wire.renumbered(exc, offset) from exc
            results.extend(_wire.submit_results(response, generated, offset))
        return results

    # -- inspecting ---------------------------------------------------------------------

    def get(self, task_id: str) -> TaskInfo:
        """The task with its history. Raises `NotFound` if there is no such task."""
        response = self._call(self._stub.GetTask, pb.GetTaskRequest(task_id=task_id))
        return _wire.task_info(response.task)

    def wait(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:
        """Polls until the task is COMPLETED, DEAD or CANCELLED and returns it.

        Raises `WaitTimeout` (a `TimeoutError`) after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = _POLL_FIRST
        while True:
            task = self.get(task_id)
            if task.is_settled:
                return task
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(f"task {task_id} still {task.state} after {timeout}s")
                interval = min(interval, remaining)
            time.sleep(interval)
            interval = min(interval * _POLL_GROWTH, _POLL_MAX)

    def stats(self, queues: Iterable[str] | None = None) -> Stats:
        """Counts and totals of the given queues, or of every queue (read a page of
        queues at a time)."""
        names, merged, token = list(queues or ()), pb.GetStatsResponse(), ""
        while True:
            page = self._call(self._stub.GetStats, _wire.stats_request(names, token))
            token = _wire.add_stats_page(merged, page)
            if not token:
                return _wire.stats(merged)

    # -- administering ------------------------------------------------------------------

    def cancel(self, task_id: str) -> CancelResult:
        """Cancels a task that has not completed. Raises `NotFound` if there is none."""
        response = self._call(self._stub.CancelTask, pb.CancelTaskRequest(task_id=task_id))
        return _wire.cancel_result(response)

    def dead_list(
        self,
        queue: str,
        *,
        page_size: int = 100,
        page_token: str = "",
        include_payloads: bool = False,
    ) -> DeadPage:
        """One page of the dead tasks of `queue`, oldest first; payloads and results only
        with `include_payloads` (a page may then end early to fit the message limit)."""
        request = pb.ListDeadTasksRequest(
            queue=queue,
            page_size=page_size,
            page_token=page_token,
            include_payloads=include_payloads,
        )
        return _wire.task_page(self._call(self._stub.ListDeadTasks, request))

    def dead_redrive(
        self, queue: str, *, task_ids: Iterable[str] | None = None, limit: int = 0
    ) -> int:
        """Puts dead tasks (these ids, or up to `limit` of the queue) back to READY."""
        selector = _wire.dead_selector(queue, task_ids, limit)
        request = pb.RedriveDeadTasksRequest(selector=selector)
        return int(self._call(self._stub.RedriveDeadTasks, request).redriven)

    def dead_purge(
        self, queue: str, *, task_ids: Iterable[str] | None = None, limit: int = 0
    ) -> int:
        """Deletes dead tasks (these ids, or up to `limit` of the queue) for good."""
        selector = _wire.dead_selector(queue, task_ids, limit)
        request = pb.PurgeDeadTasksRequest(selector=selector)
        return int(self._call(self._stub.PurgeDeadTasks, request).purged)

    # -- queues -------------------------------------------------------------------------

    def list_queues(self, *, page_size: int = 0) -> list[QueueInfo]:
        """Every queue the feeder's database knows, in name order (read a page at a time):
        whether it is paused, and its counts and totals."""
        found: list[QueueInfo] = []
        token = ""
        while True:
            request = pb.ListQueuesRequest(page_size=page_size, page_token=token)
            page = self._call(self._stub.ListQueues, request)
            found += _wire.queue_infos(page)
            token = page.next_page_token
            if not token:
                return found

    def list_tasks(
        self,
        queue: str,
        *,
        states: Iterable[TaskState | str] | None = None,
        newest_first: bool = False,
        include_payloads: bool = False,
        page_size: int = 100,
        page_token: str = "",
    ) -> TaskPage:
        """One page of the tasks of `queue` in `states` (None: every state), oldest first
        or `newest_first`; payloads and results only with `include_payloads` (a page may
        then end early to fit the message limit)."""
        request = _wire.list_tasks_request(
            queue,
            states,
            newest_first=newest_first,
            include_payloads=include_payloads,
            page_size=page_size,
            page_token=page_token,
        )
        return _wire.task_page(self._call(self._stub.ListTasks, request))

    def list_workers(self, queue: str | None = None, *, limit: int = 0) -> Workers:
        """Who holds leases (from the database: every feeder's) and this feeder's streams
        and Lease callers, of `queue` or of every queue."""
        request = pb.ListWorkersRequest(queue=queue or "", limit=limit)
        return _wire.workers(self._call(self._stub.ListWorkers, request))

    def pause_queue(self, queue: str) -> bool:
        """Pauses `queue`: it takes submits and hands out no task until resumed, on every
        feeder of the database. False if it was paused already."""
        request = pb.PauseQueueRequest(queue=queue)
        return bool(self._call(self._stub.PauseQueue, request).changed)

    def resume_queue(self, queue: str) -> bool:
        """Ends the pause of `queue`. False if it was not paused."""
        request = pb.ResumeQueueRequest(queue=queue)
        return bool(self._call(self._stub.ResumeQueue, request).changed)

    def purge_queue(self, queue: str, *, confirm: str) -> int:
        """Deletes the READY and SCHEDULED tasks of `queue` for good; `confirm` must be
        the queue's name again (else `InvalidArgument`). Returns how many went."""
        request = pb.PurgeQueueRequest(queue=queue, confirm=confirm)
        return int(self._call(self._stub.PurgeQueue, request).purged)

    def delete_queue(self, queue: str) -> None:
        """Forgets `queue` (totals, pause) if it holds no task; `FailedPrecondition` if it
        does, `NotFound` if the feeder does not know it (a retry after a lost reply may
        answer that too)."""
        self._call(self._stub.DeleteQueue, pb.DeleteQueueRequest(queue=queue))

    # -- plumbing -----------------------------------------------------------------------

    def _call(self, rpc: Callable[..., _T], request: Any) -> _T:
        def once() -> _T:
            return rpc(request, timeout=self._timeout)

        try:
            return sync_retrying(max_delay=self._max_retry_delay)(once)
        except (grpc.RpcError, tenacity.RetryError) as exc:
            raise _failure(exc) from exc


class AsyncFeederClient:
    """The asyncio twin of `FeederClient` (over `grpc.aio`), with the same methods as
    coroutines. Create it inside the event loop that uses it; `await close()` or use
    `async with`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        max_retry_delay: float = 30.0,
        **security: Unpack[SecurityOptions],
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._max_retry_delay = max_retry_delay
        self.security = ClientSecurity.from_env(**security)
        self._channel = aio_channel(target, security=self.security)
        self._stub = pb_grpc.FeederStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit(
        self,
        payload: bytes | str = b"",
        *,
        queue: str,
        headers: Mapping[str, str] | None = None,
        priority: int = 0,
        delay: Seconds | None = None,
        not_before: datetime | None = None,
        max_attempts: int | None = None,
        lease_duration: Seconds | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Submits one task. See `TaskSpec` for the fields."""
        spec = _task_spec(
            payload,
            queue,
            headers,
            priority,
            delay,
            not_before,
            max_attempts,
            lease_duration,
            idempotency_key,
        )
        return (await self.submit_many([spec]))[0]

    async def submit_many(self, specs: Iterable[TaskSpec]) -> list[SubmitResult]:
        """Submits tasks in batches by count and size (see `FeederClient.submit_many`)."""
        messages, generated = _wire.prepare_specs(specs)
        results: list[SubmitResult] = []
        for offset, batch in _wire.chunks(messages):
            try:
                response = await self._call(self._stub.Submit, pb.SubmitRequest(tasks=batch))
            except FeedworkError as exc:
                raise _wire.renumbered(exc, offset) from exc
            results.extend(_wire.submit_results(response, generated, offset))
        return results

    async def get(self, task_id: str) -> TaskInfo:
        """The task with its history. Raises `NotFound` if there is no such task."""
        response = await self._call(self._stub.GetTask, pb.GetTaskRequest(task_id=task_id))
        return _wire.task_info(response.task)

    # The same signature as FeederClient.wait, hence a timeout parameter.
    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> TaskInfo:
        """Polls until the task is COMPLETED, DEAD or CANCELLED and returns it.

        Raises `WaitTimeout` (a `TimeoutError`) after `timeout` seconds; `asyncio.timeout`
        around the call works as well.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        interval = _POLL_FIRST
        while True:
            task = await self.get(task_id)
            if task.is_settled:
                return task
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeout(f"task {task_id} still {task.state} after {timeout}s")
                interval = min(interval, remaining)
            await asyncio.sleep(interval)
            interval = min(interval * _POLL_GROWTH, _POLL_MAX)

    async def stats(self, queues: Iterable[str] | None = None) -> Stats:
        """Counts and totals of the given queues, or of every queue (see `FeederClient`)."""
        names, merged, token = list(queues or ()), pb.GetStatsResponse(), ""
        while True:
            page = await self._call(self._stub.GetStats, _wire.stats_request(names, token))
            token = _wire.add_stats_page(merged, page)
            if not token:
                return _wire.stats(merged)

    async def cancel(self, task_id: str) -> CancelResult:
        """Cancels a task that has not completed. Raises `NotFound` if there is none."""
        request = pb.CancelTaskRequest(task_id=task_id)
        return _wire.cancel_result(await self._call(self._stub.CancelTask, request))

    async def dead_list(
        self,
        queue: str,
        *,
        page_size: int = 100,
        page_token: str = "",
        include_payloads: bool = False,
    ) -> DeadPage:
        """One page of the dead tasks of `queue`, oldest first (see `FeederClient`)."""
        request = pb.ListDeadTasksRequest(
            queue=queue,
            page_size=page_size,
            page_token=page_token,
            include_payloads=include_payloads,
        )
        return _wire.task_page(await self._call(self._stub.ListDeadTasks, request))

    async def dead_redrive(
        self, queue: str, *, task_ids: Iterable[str] | None = None, limit: int = 0
    ) -> int:
        """Puts dead tasks (these ids, or up to `limit` of the queue) back to READY."""
        selector = _wire.dead_selector(queue, task_ids, limit)
        request = pb.RedriveDeadTasksRequest(selector=selector)
        return int((await self._call(self._stub.RedriveDeadTasks, request)).redriven)

    async def dead_purge(
        self, queue: str, *, task_ids: Iterable[str] | None = None, limit: int = 0
    ) -> int:
        """Deletes dead tasks (these ids, or up to `limit` of the queue) for good."""
        selector = _wire.dead_selector(queue, task_ids, limit)
        request = pb.PurgeDeadTasksRequest(selector=selector)
        return int((await self._call(self._stub.PurgeDeadTasks, request)).purged)

    async def list_queues(self, *, page_size: int = 0) -> list[QueueInfo]:
        """Every queue, in name order (see `FeederClient.list_queues`)."""
        found: list[QueueInfo] = []
        token = ""
        while True:
            request = pb.ListQueuesRequest(page_size=page_size, page_token=token)
            page = await self._call(self._stub.ListQueues, request)
            found += _wire.queue_infos(page)
            token = page.next_page_token
            if not token:
                return found

    async def list_tasks(
        self,
        queue: str,
        *,
        states: Iterable[TaskState | str] | None = None,
        newest_first: bool = False,
        include_payloads: bool = False,
        page_size: int = 100,
        page_token: str = "",
    ) -> TaskPage:
        """One page of the tasks of `queue` (see `FeederClient.list_tasks`)."""
        request = _wire.list_tasks_request(
            queue,
            states,
            newest_first=newest_first,
            include_payloads=include_payloads,
            page_size=page_size,
            page_token=page_token,
        )
        return _wire.task_page(await self._call(self._stub.ListTasks, request))

    async def list_workers(self, queue: str | None = None, *, limit: int = 0) -> Workers:
        """Who works on the queues (see `FeederClient.list_workers`)."""
        request = pb.ListWorkersRequest(queue=queue or "", limit=limit)
        return _wire.workers(await self._call(self._stub.ListWorkers, request))

    async def pause_queue(self, queue: str) -> bool:
        """Pauses `queue`; False if it was paused already."""
        request = pb.PauseQueueRequest(queue=queue)
        return bool((await self._call(self._stub.PauseQueue, request)).changed)

    async def resume_queue(self, queue: str) -> bool:
        """Ends the pause of `queue`; False if it was not paused."""
        request = pb.ResumeQueueRequest(queue=queue)
        return bool((await self._call(self._stub.ResumeQueue, request)).changed)

    async def purge_queue(self, queue: str, *, confirm: str) -> int:
        """Deletes the READY and SCHEDULED tasks of `queue` (see `FeederClient`)."""
        request = pb.PurgeQueueRequest(queue=queue, confirm=confirm)
        return int((await self._call(self._stub.PurgeQueue, request)).purged)

    async def delete_queue(self, queue: str) -> None:
        """Forgets `queue` if it holds no task (see `FeederClient.delete_queue`)."""
        await self._call(self._stub.DeleteQueue, pb.DeleteQueueRequest(queue=queue))

    async def _call(self, rpc: Callable[..., Awaitable[_T]], request: Any) -> _T:
        async def once() -> _T:
            return await rpc(request, timeout=self._timeout)

        try:
            result: _T = await async_retrying(max_delay=self._max_retry_delay)(once)
        except (grpc.RpcError, tenacity.RetryError) as exc:
            raise _failure(exc) from exc
        return result
