"""Checkouts: the ``async with`` targets of :meth:`Pool.read`, :meth:`Pool.write` and
:meth:`Pool.connection`.

A checkout takes a connection from its lane (first come, first served; with
``check=True``, one that passes its check), records who holds it for the lane (so that a
task asking for what only it could give back is told so) and for leak detection, and
yields a :class:`~litepool.Connection`. When the block ends it asks the connection what
must happen (:meth:`Connection._finish`): hand it on as it is, queue a reset ahead of
the next borrower, or COMMIT. Every cleanup is queued on the connection's thread before
the connection is handed on, so the next borrower never waits for it and never sees what
the last one left.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, final

from ._connection import Connection, Ending
from ._errors import PoolClosed, TransactionAborted
from ._file import DatabaseFile
from ._interrupt import protected
from ._lane import Kind, Lane
from ._leaks import LeakTracker, Where, where
from ._statements import check_job, commit_or_rollback, reset
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge

logger = logging.getLogger("litepool")


@dataclass(frozen=True, slots=True)
class CheckoutSetup:
    """What the checkouts of one open pool share."""

    pool_name: str
    bridge: Bridge
    chunk_size: int
    leaks: LeakTracker | None
    #: With ``check=True``: the file each checked connection must still have open, and
    #: what to do with one that fails its check (the pool replaces it).
    check: DatabaseFile | None
    lose: Callable[[Worker], object]


@final
class Checkout:
    """The ``async with`` target returned by :meth:`Pool.read`, :meth:`Pool.write` and
    :meth:`Pool.connection`; it yields a :class:`Connection`."""

    __slots__ = (
        "_conn",
        "_entered",
        "_kind",
        "_lane",
        "_line",
        "_open",
        "_setup",
        "_start",
        "_task",
        "_timeout",
        "_unbound",
        "_where",
    )

    def __init__(
        self,
        open_lane: Callable[[Kind], tuple[Lane, CheckoutSetup]],
        kind: Kind,
        timeout: float | None,
    ) -> None:
        self._open = open_lane
        self._kind = kind
        self._timeout = timeout
        self._lane: Lane | None = None
        self._setup: CheckoutSetup | None = None
        self._conn: Connection | None = None
        # Who entered a pool.read() block, and where, for the leak report once it binds.
        self._entered: Where | None = None
        self._start = 0.0
        # A pool.read() block that has not tried to take a reader (see __aexit__).
        self._unbound = True
        # The task that entered the checkout (see Lane.acquire).
        self._task: object = None
        self._where = ""
        self._line = 0

    def _describe(self) -> str:
        """The checkout and where its block was entered, for error messages."""
        return f"{self._kind.checkout} entered at {os.path.basename(self._where)}:{self._line}"

    @protected
    async def __aenter__(self) -> Connection:
        if self._lane is not None:
            raise RuntimeError("a checkout can be entered once; call pool.read() again")
        lane, setup = self._open(self._kind)
        self._lane, self._setup = lane, setup
        self._task = setup.bridge.current_task()
        caller = sys._getframe(1)
        self._where, self._line = caller.f_code.co_filename, caller.f_lineno
        if self._kind is Kind.READ and setup.check is None:
            # Bound late: no reader of its own until a call needs one (see Connection).
            # With check=True the reader is taken, and checked, here, as the option says.
            if setup.leaks is not None:
                self._entered = where()
            # Every block entered is a checkout, whether or not it ever binds.
            lane.entered()
            conn = Connection(
                None,
                setup.bridge,
                self._kind,
                setup.pool_name,
                setup.chunk_size,
                self._timeout,
                bind=self._bind,
                dispatch=lane.run,
            )
        else:
            worker, waited = await self._acquire(lane, setup)
            lane.checked_out(waited)
            self._took(setup)
            conn = Connection(
                worker, setup.bridge, self._kind, setup.pool_name, setup.chunk_size, self._timeout
            )
        self._conn = conn
        return conn

    def _took(self, setup: CheckoutSetup) -> None:
        """The checkout holds a connection of its own from now on."""
        start = self._start = monotonic()
        if setup.leaks is not None:
            setup.leaks.add(self, self._kind.value, start, self._entered)

    async def _acquire(self, lane: Lane, setup: CheckoutSetup) -> tuple[Worker, float | None]:
        """A connection of the lane, and how long it took (None: it was free); with
        ``check=True``, one that passes its check."""
        # One clock read when a connection is free; two when the checkout has to wait.
        if lane.idle and not lane.waiting and setup.check is None:
            return await lane.acquire(self._timeout, self), None
        began = monotonic()
        worker = await lane.acquire(self._timeout, self, self._kind.checkout)
        if setup.check is not None:
            worker = await self._checked(lane, setup, worker, began)
        return worker, monotonic() - began

    async def _bind(self) -> Worker:
        """A reader of its own for a ``pool.read()`` block, from its first call that needs
        one on (a transaction, ``iterate()``, ``run_sync``, a pragma ...)."""
        lane, setup = self._lane, self._setup
        assert lane is not None
        assert setup is not None
        try:
            worker, waited = await self._acquire(lane, setup)
        except BaseException:
            self._unbound = False  # timed out or cancelled: it waited for nothing it got
            raise
        conn = self._conn
        assert conn is not None
        if conn.released:
            # The block ended while a call from a task that outlived it took the reader.
            lane.release(worker)
            conn._usable()  # raises ConnectionReleased
        lane.waited(waited)
        self._took(setup)
        return worker

    @protected
    async def _checked(
        self, lane: Lane, setup: CheckoutSetup, worker: Worker, began: float
    ) -> Worker:
        """``worker`` if it passes its check, else another that does (``check=True``).

        A connection that fails is counted as lost and replaced in the background.
        Cancellation while a check runs gives the connection back.
        """
        while True:
            job = Job(check_job, (setup.check,))
            worker.submit(job)
            try:
                reason: str | None = await setup.bridge.run(worker, job)
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    lane.release(worker)
                    raise
                reason = str(exc)
            if reason is None:
                return worker
            if not lane.is_retiring(worker):  # else its error has been reported already
                logger.warning(
                    "pool %r: %s failed its check on checkout (%s); replacing it",
                    setup.pool_name,
                    worker.thread_name,
                    reason,
                )
                setup.lose(worker)
            lane.release(worker)
            timeout = self._timeout
            if timeout is not None:
                timeout = max(0.0, timeout - (monotonic() - began))
            worker = await lane.acquire(timeout, self, self._kind.checkout)

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, lane, setup = self._conn, self._lane, self._setup
        assert conn is not None
        assert lane is not None
        assert setup is not None
        worker, ending, reason = conn._finish(exc_type is None)
        if worker is None:
            if self._unbound:
                # A pool.read() block that never needed a reader of its own: it waited
                # for none.
                lane.waited(None)
            lane.returned(0.0)
            return
        now = monotonic()
        lane.returned(now - self._start)
        if setup.leaks is not None:
            setup.leaks.remove(self, now)
        if ending is Ending.COMMIT:
            if worker.stopping:
                lane.release(worker)
                error = worker.stopped_error()
                if isinstance(error, PoolClosed):
                    error = PoolClosed(
                        f"pool {setup.pool_name!r} was closed during the pool.write() "
                        "block; its transaction was rolled back"
                    )
                raise error
            await self._commit(lane, setup, worker)
            return
        if ending is not Ending.RELEASE and not worker.stopping:
            # Queued ahead of the next borrower's first statement, so the connection
            # can be handed on at once, without waiting for it.
            worker.submit(Job(reset, (), interruptible=False))
        lane.release(worker)
        if ending is Ending.ABORTED:
            raise TransactionAborted(reason)

    @protected
    async def _commit(self, lane: Lane, setup: CheckoutSetup, worker: Worker) -> None:
        job = Job(commit_or_rollback, (), interruptible=False)
        worker.submit(job)
        # The next writer may queue its first statement behind our COMMIT right away.
        lane.release(worker)
        await setup.bridge.wait_shielded(worker, job)
        error = job.error
        if error is not None:
            job.error = None
            raise error
