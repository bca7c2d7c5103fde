"""Calling the user's handler: sync handlers in a thread pool, async handlers on the event
loop, both under the per-task time limit, and turning whatever happens into an `Outcome`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import threading
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from feedwork import tracing
from worker.task import Fail, Retry, Task, task_fields

log = logging.getLogger("feedwork.worker")

Handler: TypeAlias = Callable[[Task], Any]

# The feeder keeps at most 4 KiB of an error; cutting here keeps nack batches small.
MAX_ERROR_CHARS = 4096


# `kind`: how the handler ended, as the worker's metrics say it (worker.metrics.OUTCOMES).


@dataclass(frozen=True, slots=True)
class Succeeded:
    result: bytes
    kind: ClassVar[str] = "succeeded"


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    retry_after: float | None = None
    terminal: bool = False
    # "failed" (an exception), "retry" (Retry), "fail" (Fail), "timeout" (the time limit).
    kind: str = "failed"


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The worker cancelled the handler (lease lost, shutdown): there is nothing to report."""

    reason: str
    kind: ClassVar[str] = "abandoned"


Outcome: TypeAlias = Succeeded | Failed | Abandoned


@dataclass(frozen=True, slots=True)
class Invocation:
    """How one handler call ended. `straggler` is set when the outcome was decided before the
    handler returned (time limit): the handler's thread or task is still running, and its
    worker slot stays busy until `straggler` completes."""

    outcome: Outcome
    straggler: asyncio.Future[Any] | None = None


def is_async_handler(handler: Handler) -> bool:
    """True for coroutine functions, including callable objects with an `async def __call__`."""
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the method, not callable()
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


class Invoker:
    """Runs one handler for many tasks, `concurrency` at a time at most."""

    def __init__(self, *, handler: Handler, concurrency: int, task_timeout: float | None) -> None:
        self._handler = handler
        self._task_timeout = task_timeout
        self.is_async = is_async_handler(handler)
        # Sync calls not yet returned, including those past their time limit.
        self._threads_running = 0
        self._threads_lock = threading.Lock()
        # Exactly one thread per slot: the leaser never holds more tasks than slots, so a
        # task never waits in the pool's queue while its lease runs down.
        self._executor: ThreadPoolExecutor | None = None
        if not self.is_async:
            self._executor = ThreadPoolExecutor(
                max_workers=concurrency, thread_name_prefix="feedwork-handler"
            )

    async def invoke(self, task: Task) -> Invocation:
        """Calls the handler for `task` and waits for it, or for its time limit."""
        if self.is_async and self._task_timeout is None:
            return await self._invoke_inline(task)
        if self.is_async:
            running: asyncio.Future[Any] = asyncio.ensure_future(self._call_async(task))
            task._on_cancel = running.cancel
        else:
            loop = asyncio.get_running_loop()
            if tracing.available():  # the attempt's span stays current in the thread
                call = functools.partial(contextvars.copy_context().run, self._call_sync, task)
                running = loop.run_in_executor(self._executor, call)
            else:
                running = loop.run_in_executor(self._executor, self._call_sync, task)
        # A straggler that nobody awaits must not log "exception was never retrieved".
        running.add_done_callback(_retrieve)
        if self._task_timeout is None:
            return await _without_limit(task, running)
        try:
            done, _ = await asyncio.wait({running}, timeout=self._task_timeout)
        except asyncio.CancelledError:
            running.cancel()  # the worker is going away; an async handler goes with it
            raise
        if not done:
            task.cancel("timed out")
            error = f"TimeoutError: task exceeded its time limit of {self._task_timeout:g} s"
            return Invocation(Failed(error, kind="timeout"), straggler=running)
        return Invocation(outcome_of(task, running))

    async def _invoke_inline(self, task: Task) -> Invocation:
        """An async handler without a time limit runs in the caller's own asyncio task (a
        task of its own per call would cost more than a no-op handler). Lease loss cancels
        that task; the cancellation is taken back here, so the caller carries on and
        reports nothing, while any other cancellation (the worker going away) goes on up."""
        current = asyncio.current_task()
        assert current is not None
        task._on_cancel = current.cancel
        try:
            result = await self._handler(task)
        except asyncio.CancelledError:
            if task.cancel_reason is not None and current.cancelling() == 1:
                current.uncancel()
                return Invocation(Abandoned(task.cancel_reason))
            raise
        except BaseException as exc:  # the handler's failure, reported as a nack
            return Invocation(failure(task, exc))
        finally:
            task._on_cancel = None
        return Invocation(_success(result))

    @property
    def threads_running(self) -> int:
        """Sync handler calls that have not returned yet (some may be past their limit)."""
        return self._threads_running

    def shutdown(self) -> None:
        """Frees the pool without waiting: handlers still running are abandoned."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call_async(self, task: Task) -> Any:
        result: Awaitable[Any] = self._handler(task)
        return await result

    def _call_sync(self, task: Task) -> Any:
        with self._threads_lock:
            self._threads_running += 1
        try:
            result = self._handler(task)
        finally:
            with self._threads_lock:
                self._threads_running -= 1
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited; close it so Python does not warn
            raise TypeError("handler returned an awaitable; declare it with `async def`")
        return result


async def _without_limit(task: Task, running: asyncio.Future[Any]) -> Invocation:
    """Waits for a handler with no time limit: awaited directly, which costs much less
    than `asyncio.wait` per task."""
    try:
        await running
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if running.cancelled() and not (current is not None and current.cancelling()):
            return Invocation(outcome_of(task, running))  # the handler was cancelled
        running.cancel()  # the worker is going away; an async handler goes with it
        raise
    except BaseException:  # outcome_of reads the handler's error from `running`
        pass
    return Invocation(outcome_of(task, running))


def outcome_of(task: Task, finished: asyncio.Future[Any]) -> Outcome:
    """The outcome of a handler call that has finished."""
    if finished.cancelled():
        return Abandoned(task.cancel_reason or "cancelled")
    exc = finished.exception()
    if exc is None:
        return _success(finished.result())
    return failure(task, exc)


def failure(task: Task, exc: BaseException) -> Failed:
    fields = task_fields(task)
    if isinstance(exc, Retry):
        log.info(
            "task %s (attempt %d) asked for a retry: %s", task.id, task.attempt, exc, extra=fields
        )
        return Failed(describe(exc), retry_after=exc.after, kind="retry")
    if isinstance(exc, Fail):
        log.info(
            "task %s (attempt %d) failed for good: %s", task.id, task.attempt, exc, extra=fields
        )
        return Failed(describe(exc), terminal=True, kind="fail")
    log.warning("task %s (attempt %d) failed", task.id, task.attempt, exc_info=exc, extra=fields)
    # The traceback goes with the error the feeder records (bounded): GetTask shows it.
    return Failed(describe_with_traceback(exc))


def describe_with_traceback(exc: BaseException) -> str:
    """ "ExcType: message", then the traceback, cut to MAX_ERROR_CHARS by leaving out
    frames from the start of the traceback (the ones nearest the failure are kept)."""
    head = describe(exc)
    trace = "".join(traceback.format_exception(exc)).rstrip("\n")
    room = MAX_ERROR_CHARS - len(head) - 1
    if room <= 0:
        return head[:MAX_ERROR_CHARS]
    if len(trace) > room:
        marker = "...\n"
        trace = marker + trace[len(trace) - (room - len(marker)) :]
    return f"{head}\n{trace}"


def describe(exc: BaseException) -> str:
    """ "ExcType: message", with the cause of a `Retry` or `Fail` appended."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, Retry | Fail) and cause is not None:
        text += f" (caused by {describe(cause)})"
    return text[:MAX_ERROR_CHARS]


def _success(value: object) -> Outcome:
    if value is None:
        return Succeeded(b"")
    if isinstance(value, str):
        return Succeeded(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray | memoryview):
        return Succeeded(bytes(value))
    return Failed(f"TypeError: handler returned {type(value).__name__}; return bytes, str or None")


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
