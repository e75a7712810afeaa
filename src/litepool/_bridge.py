"""Waiting on the event loop for jobs that run on worker threads.

anyio 4 has no public non-blocking "call soon from a thread", and ``anyio.Event`` costs
several allocations and an extra scheduling step per call. Both backends offer a cheap
native pair instead: a thread-safe "call soon" to post a finished batch, and a way to park
the waiting task until that callback wakes it. This module holds the two native pairs
behind one small interface; everything else in litepool is backend-agnostic.

Cancellation contract of :meth:`Bridge.wait`: when the caller is cancelled (anyio cancel
scope, trio cancel scope or native ``asyncio.Task.cancel()``), the cancellation propagates
at once and the job is cancelled on its worker: skipped if it had not started, interrupted
if it was running. A job may therefore have run although its caller saw a cancellation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio.lowlevel

from ._worker import Job, Worker

if TYPE_CHECKING:
    import trio


class Bridge(Protocol):
    def post(self, batch: list[Job]) -> bool:
        """Thread side: wake the waiters of ``batch``; False if the loop is gone."""

    def alive(self) -> bool:
        """Thread side: whether the owning event loop and the interpreter still exist."""

    async def wait(self, worker: Worker, job: Job) -> None:
        """Loop side: return once ``job`` is done (see the module's cancellation contract)."""


def current_bridge() -> Bridge:
    native = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return _AsyncioBridge(native)
    return _TrioBridge(cast("trio.lowlevel.TrioToken", native))


def _main_thread_alive() -> bool:
    return threading.main_thread().is_alive()


def _wake_asyncio(batch: list[Job]) -> None:
    for job in batch:
        job.done = True
        future = job.waker
        if future is not None and not future.done():
            future.set_result(None)


class _AsyncioBridge:
    __slots__ = ("_call_soon", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._call_soon = loop.call_soon_threadsafe

    def post(self, batch: list[Job]) -> bool:
        try:
            self._call_soon(_wake_asyncio, batch)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def alive(self) -> bool:
        return not self._loop.is_closed() and _main_thread_alive()

    async def wait(self, worker: Worker, job: Job) -> None:
        if job.done:
            return
        future = self._loop.create_future()
        job.waker = future
        try:
            await future
        except BaseException:
            job.waker = None
            worker.cancel(job)
            raise


def _noop() -> None:
    pass


class _TrioBridge:
    __slots__ = ("_abort", "_current_task", "_finished", "_reschedule", "_run_sync_soon", "_wait")

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        # trio is imported only when a pool runs under it: it is an optional dependency.
        import trio

        self._run_sync_soon = token.run_sync_soon
        self._finished = trio.RunFinishedError
        self._reschedule = trio.lowlevel.reschedule
        self._current_task = trio.lowlevel.current_task
        self._wait = trio.lowlevel.wait_task_rescheduled
        self._abort = trio.lowlevel.Abort.SUCCEEDED

    def _wake(self, batch: list[Job]) -> None:
        reschedule = self._reschedule
        for job in batch:
            job.done = True
            task = job.waker
            if task is not None:
                job.waker = None
                reschedule(task)

    def post(self, batch: list[Job]) -> bool:
        try:
            self._run_sync_soon(self._wake, batch)
        except self._finished:
            return False
        return True

    def alive(self) -> bool:
        if not _main_thread_alive():
            return False
        try:
            self._run_sync_soon(_noop)
        except self._finished:
            return False
        return True

    async def wait(self, worker: Worker, job: Job) -> None:
        if job.done:
            return
        job.waker = self._current_task()
        succeeded = self._abort

        def abort(_: Any) -> Any:
            job.waker = None
            worker.cancel(job)
            return succeeded

        await self._wait(abort)
