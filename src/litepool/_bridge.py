"""Waiting on the event loop for jobs that run on worker threads.

anyio 4 has no public non-blocking "call soon from a thread", and ``anyio.Event`` costs
several allocations and an extra scheduling step per call. Both backends offer a cheap
native pair instead: a thread-safe "call soon" to post finished jobs, and a way to park
the waiting task until that callback wakes it. This module holds the two native pairs
behind one small interface; everything else in litepool is backend-agnostic.

One bridge serves a whole pool and rings the loop's doorbell at most once until the loop
has answered it: workers that finish while a wake-up is already pending only append
their jobs, so several workers finishing together cost the loop one wake-up.

Cancellation contract of :meth:`Bridge.wait`: when the caller is cancelled (anyio cancel
scope, trio cancel scope or native ``asyncio.Task.cancel()``), the cancellation propagates
at once and the job is cancelled on its worker: skipped if it had not started, interrupted
if it was running. A job may therefore have run although its caller saw a cancellation.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel

from ._interrupt import protect_under_trio, protected
from ._worker import Job, Worker

if TYPE_CHECKING:
    import trio


class Waiter:
    """A task parked until something is handed to it (see :meth:`Bridge.park`).

    ``waker`` belongs to the bridge; ``state``, ``item`` and ``borrower`` to whoever
    queues the waiter (a lane).
    """

    __slots__ = ("borrower", "item", "state", "waker")

    state: int
    waker: Any
    item: Any
    borrower: Any

    def __init__(self, borrower: Any = None) -> None:
        self.state = 0
        self.waker = None
        self.item = None
        self.borrower = borrower


def current_bridge() -> Bridge:
    native = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return _AsyncioBridge(native)
    return _TrioBridge(cast("trio.lowlevel.TrioToken", native))


def _main_thread_alive() -> bool:
    return threading.main_thread().is_alive()


class Bridge:
    """The per-pool doorbell: worker threads post finished jobs, the loop wakes waiters."""

    __slots__ = ("_call_soon", "_done", "_gone", "_scheduled", "current_task")

    #: The calling task, as the backend knows it (an identity for "the same task").
    current_task: Callable[[], object]

    def __init__(self, call_soon: Callable[[Callable[[], object]], object]) -> None:
        self._call_soon = call_soon
        self._done: deque[tuple[Worker, list[Job]]] = deque()
        self._scheduled = False
        self._gone = False

    # -- worker thread side ------------------------------------------------------------

    def post(self, worker: Worker, batch: list[Job]) -> bool:
        """Hand ``batch`` to the loop; False if the loop is gone."""
        # Append first, then look at the flag: the loop clears the flag before it drains,
        # so a set flag means the drain has not started and will see this batch.
        self._done.append((worker, batch))
        if self._scheduled:
            return not self._gone
        self._scheduled = True
        try:
            self._call_soon(self._drain)
        except RuntimeError:  # the loop is closed (asyncio) or its run finished (trio)
            self._gone = True
        return not self._gone

    def alive(self) -> bool:
        """Whether the owning event loop and the interpreter still exist."""
        raise NotImplementedError

    def call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        """Thread side: run ``fn(*args)`` on the loop soon; False if the loop is gone."""
        try:
            self._call_soon(functools.partial(fn, *args))
        except RuntimeError:  # the loop is closed (asyncio) or its run finished (trio)
            return False
        return True

    # -- event loop side ---------------------------------------------------------------

    @protected
    def drain(self) -> None:
        """Deliver every batch posted so far, now (also called by the doorbell)."""
        self._drain()

    @protected
    def _drain(self) -> None:
        self._scheduled = False
        done = self._done
        wake = self._wake
        now = time.monotonic()
        while done:
            worker, batch = done.popleft()
            worker.delivered(batch, now)
            for job in batch:
                job.done = True
                waker = job.waker
                if waker is not None:
                    job.waker = None
                    wake(waker)

    def _wake(self, waker: Any) -> None:
        raise NotImplementedError

    async def wait(self, worker: Worker, job: Job) -> None:
        """Return once ``job`` is done (see the module's cancellation contract)."""
        raise NotImplementedError

    async def run(self, worker: Worker, job: Job) -> Any:
        """Wait for ``job`` (queued on ``worker``) and return its result, or raise its
        error (see the module's cancellation contract)."""
        await self.wait(worker, job)
        error = job.error
        if error is not None:
            job.error = None  # the traceback would keep the job, and it, the error
            raise error
        return job.result

    async def wait_shielded(self, worker: Worker, job: Job) -> None:
        """Like :meth:`wait`, but cancel scopes (anyio's or trio's) cannot interrupt it:
        their cancellation is delivered at the caller's next checkpoint instead. A native
        ``asyncio.Task.cancel()`` still propagates at once (the job runs on regardless:
        use it only for jobs that are not interruptible)."""
        raise NotImplementedError

    async def park(self, waiter: Waiter, timeout: float | None) -> None:
        """Sleep until :meth:`resume` is called for ``waiter`` or ``timeout`` passes.

        Cancellation propagates; the lane then sorts out whether a connection had
        already been handed to the waiter.
        """
        raise NotImplementedError

    def resume(self, waiter: Waiter) -> bool:
        """Wake a parked ``waiter``; False if it is already waking for another reason
        (cancelled or timed out), in which case it must not be handed anything."""
        raise NotImplementedError


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _AsyncioBridge(Bridge):
    __slots__ = ("_create_future", "_loop", "_shield")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop.call_soon_threadsafe)
        self.current_task = asyncio.current_task
        self._loop = loop
        self._create_future = loop.create_future
        self._shield = functools.partial(type(anyio.CancelScope()), shield=True)

    def alive(self) -> bool:
        return not self._loop.is_closed() and _main_thread_alive()

    _wake = staticmethod(_set_result)  # type: ignore[assignment]  # same call shape

    async def wait(self, worker: Worker, job: Job) -> None:
        if job.done:
            return
        future = job.waker = self._create_future()
        try:
            await future
        except BaseException:
            job.waker = None
            worker.cancel(job)
            raise

    async def wait_shielded(self, worker: Worker, job: Job) -> None:
        # The scope class is looked up once: anyio.CancelScope() resolves the backend on
        # every call, which costs more than the wait itself.
        with self._shield():
            await self.wait(worker, job)

    async def park(self, waiter: Waiter, timeout: float | None) -> None:
        future = waiter.waker = self._create_future()
        if timeout is None:
            await future
            return
        timer = self._loop.call_later(timeout, _expire, future)
        try:
            await future
        finally:
            timer.cancel()

    def resume(self, waiter: Waiter) -> bool:
        future = waiter.waker
        if future is None or future.done():
            return False
        future.set_result(None)
        return True


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _noop() -> None:
    pass


class _TrioBridge(Bridge):
    __slots__ = (
        "_abort",
        "_cancel_scope",
        "_current_task",
        "_current_time",
        "_refuse",
        "_run_sync_soon",
        "_wait",
        "_wake",
    )

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        # trio is imported only when a pool runs under it: it is an optional dependency.
        import trio

        protect_under_trio()

        super().__init__(token.run_sync_soon)
        self.current_task = trio.lowlevel.current_task
        self._run_sync_soon = token.run_sync_soon
        self._current_task = trio.lowlevel.current_task
        self._wait = trio.lowlevel.wait_task_rescheduled
        self._abort = trio.lowlevel.Abort.SUCCEEDED
        failed = trio.lowlevel.Abort.FAILED
        self._refuse: Callable[[Any], Any] = lambda _: failed
        self._cancel_scope = trio.CancelScope
        self._current_time = trio.current_time
        self._wake = trio.lowlevel.reschedule  # type: ignore[method-assign,assignment]  # same call shape

    def alive(self) -> bool:
        if not _main_thread_alive():
            return False
        try:
            self._run_sync_soon(_noop)
        except Exception:  # trio.RunFinishedError
            return False
        return True

    @protected
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

    @protected
    async def wait_shielded(self, worker: Worker, job: Job) -> None:
        if job.done:
            return
        job.waker = self._current_task()
        # Refusing the abort is trio's own shield: the task stays parked until the job
        # is done, and the cancellation is raised at its next checkpoint.
        await self._wait(self._refuse)

    @protected
    async def park(self, waiter: Waiter, timeout: float | None) -> None:
        waiter.waker = self._current_task()
        succeeded = self._abort

        def abort(_: Any) -> Any:
            waiter.waker = None
            return succeeded

        if timeout is None:
            await self._wait(abort)
            return
        # A native trio scope: its deadline ends the wait like a resume, while an outer
        # cancellation still propagates.
        with self._cancel_scope(deadline=self._current_time() + timeout):
            await self._wait(abort)

    @protected
    def resume(self, waiter: Waiter) -> bool:
        task = waiter.waker
        if task is None:
            return False
        waiter.waker = None
        self._wake(task)
        return True
