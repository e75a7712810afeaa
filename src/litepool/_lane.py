"""Checkout state of one lane (the writer, or the readers).

A lane hands out the connections of its workers, first come, first served. Its state
(which connections are held, who waits in which order) changes only in synchronous
methods, so no cancellation can land half-way through a change; the only await is a
waiter parking until it is handed a connection, times out, or the pool closes.

The hand-off can be refused. Releasing a connection assigns it to the first waiter that
can still take it and wakes that waiter. If the waiter is cancelled at that moment (an
anyio or trio cancel scope, or a native ``asyncio.Task.cancel()`` arriving after the
wake-up but before the task runs), it finds the connection assigned to it when its
cancellation unwinds, and releases it again, which hands it to the next waiter. A waiter
that times out or is cancelled before any hand-off simply leaves the queue. So a
connection is never stranded with a task that is gone.

Connections join and leave a lane while it serves (replacements, :meth:`Pool.resize`):
one that leaves while a borrower holds it leaves when it is given back, so a borrower
never loses its connection under it.

This queue replaced an ``anyio.CapacityLimiter`` plus a cancel scope per waiter, which
gave the same guarantees but cost tens of microseconds of event-loop time per contended
checkout: on the single writer, every transaction pays that.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._errors import PoolClosed, PoolError, PoolTimeout, WouldDeadlock
from ._interrupt import protected
from ._stats import LaneStatistics, Recorder
from ._worker import MAX_BATCH, Job, JobCost, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge

#: Single statements gather on as few threads as possible, which then stay awake and
#: answer many statements per wake-up, as long as a connection's queue is expected to be
#: done within this many seconds (queued statements times the lane's average job time)
#: and it has answered something within them; past that, the next statement goes to a
#: less busy connection, so that long statements run side by side on several threads.
SPILL_AFTER: Final = 0.002
#: ... and never more statements than the thread answers in one batch.
SPILL_DEPTH: Final = MAX_BATCH

_WAITING: Final = 0
_GRANTED: Final = 1
_GONE: Final = 2


class Borrower(Protocol):
    """Who holds a connection: enough to tell a task that it would wait for itself."""

    @property
    def task(self) -> object:
        """The holding task, as :attr:`Bridge.current_task` returns it."""

    def describe(self) -> str:
        """The checkout and where it was taken, for error messages."""


class Waiter:
    """A task waiting for a connection. ``waker`` belongs to the bridge."""

    __slots__ = ("borrower", "state", "waker", "worker")

    state: int
    waker: Any
    worker: Worker | None
    borrower: Borrower | None

    def __init__(self, borrower: Borrower | None) -> None:
        self.state = _WAITING
        self.waker: Any = None
        self.worker: Worker | None = None
        self.borrower = borrower


class Lane:
    __slots__ = (
        "_borrowers",
        "_bridge",
        "_closed_error",
        "_waiters",
        "acquire_wait",
        "checkouts",
        "closed",
        "cost",
        "holders",
        "idle",
        "kind",
        "pool_name",
        "retired",
        "statements",
        "timeouts",
        "usage",
        "waiting",
        "workers",
    )

    def __init__(self, kind: str, pool_name: str, workers: list[Worker], bridge: Bridge) -> None:
        self.kind = kind
        self.pool_name = pool_name
        self.workers = workers
        self.cost = JobCost()
        for worker in workers:
            worker.cost = self.cost
        self._bridge = bridge
        self.idle = len(workers)  # workers not held by a checkout
        # Who holds each connection that a checkout holds.
        self._borrowers: dict[Worker, Borrower] = {}
        self._waiters: deque[Waiter] = deque()
        self.waiting = 0  # waiters in the queue
        self.checkouts = 0
        self.statements = 0
        self.timeouts = 0
        self.closed = False
        self._closed_error: PoolError | None = None
        # Filled by checkouts (see Checkout); read only by statistics().
        self.acquire_wait = Recorder()
        self.usage = Recorder()
        #: Set when the pool tracks who holds its connections: describes them for the
        #: PoolTimeout message.
        self.holders: Callable[[], str] | None = None
        #: Called with a connection once it has left the lane, to stop it.
        self.retired: Callable[[Worker], object] | None = None

    # -- exclusive checkouts -------------------------------------------------------------

    @protected
    async def acquire(
        self, timeout: float | None, borrower: Borrower | None = None, what: str = ""
    ) -> Worker:
        """Hold a connection alone, waiting at most ``timeout`` seconds for one.

        ``borrower`` is recorded as its holder; ``what`` names the call for the error
        raised when the calling task already holds every connection of the lane
        (:class:`~litepool.WouldDeadlock`).

        Cancellation: a caller cancelled while it waits, or at the moment a connection
        is handed to it, holds nothing afterwards; the connection goes to the next waiter.
        """
        if self.closed:
            raise self._refusal("is closed")
        if self.idle and not self.waiting:
            return self._hold(borrower)
        if self._borrowers:
            self._refuse_waiting_for_itself(what)
        waiter = Waiter(borrower)
        self._waiters.append(waiter)
        self.waiting += 1
        try:
            await self._bridge.park(waiter, timeout)
        except BaseException:
            self._abandon(waiter)
            raise
        worker = waiter.worker
        if waiter.state != _GRANTED or worker is None:
            self._abandon(waiter)
            if self.closed:
                raise self._refusal("was closed while waiting")
            self.timeouts += 1
            stats = self.statistics()
            holders = "" if self.holders is None else self.holders()
            raise PoolTimeout(
                f"pool {self.pool_name!r}: no {self.kind} connection became free within "
                f"{timeout:g} s (in use: {stats.in_use}, idle: {stats.idle}, "
                f"waiting: {stats.waiting}{holders})"
            )
        return worker

    def _refuse_waiting_for_itself(self, what: str) -> None:
        """Raise if the calling task holds every connection: it would wait for itself."""
        task = self._bridge.current_task()
        mine = [b for b in self._borrowers.values() if b.task is task]
        if not mine or len(mine) < len(self.workers):
            return
        held = ", ".join(borrower.describe() for borrower in mine)
        which = "the writer" if self.kind == "write" else f"every reader ({len(mine)})"
        raise WouldDeadlock(
            f"pool {self.pool_name!r}: this task already holds {which}: {held}; "
            f"{what or 'this call'} can only be served by a connection it holds, so it "
            "would wait for itself. Use the connection you hold, or leave its block first"
        )

    @protected
    def release(self, worker: Worker) -> None:
        """Give ``worker`` back and hand it to the first waiter that can take it.

        Synchronous, so it cannot be interrupted half-way.
        """
        worker.held = False
        self._borrowers.pop(worker, None)
        if worker.retiring:
            self._remove(worker)
            return
        self.idle += 1
        if self.waiting:
            self._grant()

    # -- connections joining and leaving -------------------------------------------------

    @protected
    def add(self, worker: Worker) -> None:
        """A new connection joins the lane and serves the first waiter, if any."""
        worker.cost = self.cost
        self.workers.append(worker)
        self.idle += 1
        if self.waiting:
            self._grant()

    @protected
    def retire(self, worker: Worker) -> None:
        """Take ``worker`` out of service: now if it is free, else when it comes back.

        Statements already queued on it still run; :attr:`retired` is called once it
        has left, which stops it behind them.
        """
        if worker.retiring or worker not in self.workers:
            return
        worker.retiring = True
        if not worker.held:
            self.idle -= 1
            self._remove(worker)

    def active(self) -> list[Worker]:
        """The connections that are not leaving."""
        return [worker for worker in self.workers if not worker.retiring]

    def free(self) -> Worker | None:
        """A connection no checkout holds, the least busy, or None."""
        return self._least_busy() if self.idle else None

    @protected
    def _remove(self, worker: Worker) -> None:
        self.workers.remove(worker)
        if self.retired is not None:
            self.retired(worker)

    @protected
    def _hold(self, borrower: Borrower | None) -> Worker:
        worker = self._least_busy()
        worker.held = True
        self.idle -= 1
        if borrower is not None:
            self._borrowers[worker] = borrower
        return worker

    @protected
    def _grant(self) -> None:
        waiters = self._waiters
        resume = self._bridge.resume
        while self.idle and waiters:
            waiter = waiters.popleft()
            self.waiting -= 1
            if not resume(waiter):  # already cancelled or timed out: it cannot take it
                waiter.state = _GONE
                continue
            waiter.state = _GRANTED
            waiter.worker = self._hold(waiter.borrower)

    @protected
    def _abandon(self, waiter: Waiter) -> None:
        """A waiter leaves without using a connection: pass on whatever reached it."""
        state, waiter.state = waiter.state, _GONE
        if state == _GRANTED:
            worker, waiter.worker = waiter.worker, None
            assert worker is not None
            self.release(worker)
        elif state == _WAITING:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass  # close() or a hand-off already took it out of the queue
            else:
                self.waiting -= 1
            if self.idle and self.waiting:
                self._grant()

    # -- single statements ---------------------------------------------------------------

    @protected
    def try_dispatch(self, job: Job) -> Worker | None:
        """Queue a self-contained ``job`` now if that needs no waiting, else return None."""
        if self.idle and not self.waiting and not self.closed:
            worker = self._gathering()
            worker.submit(job)
            self.statements += 1
            return worker
        return None

    @protected
    async def dispatch(self, job: Job, timeout: float | None, what: str = "") -> Worker:
        """Queue a self-contained ``job`` on a connection that no checkout holds.

        The job needs the connection only while it runs, so it holds one just long
        enough to queue the job, with no await in between: it waits its turn behind
        earlier checkouts and never runs inside a checkout's transaction. Cancellation
        while waiting behaves as in :meth:`acquire`.
        """
        worker = await self.acquire(timeout, what=what)
        worker.submit(job)
        self.statements += 1
        self.release(worker)
        return worker

    # -- choosing a connection -----------------------------------------------------------

    def _least_busy(self) -> Worker:
        best: Worker | None = None
        for worker in self.workers:
            if not worker.held and (best is None or worker.queued < best.queued):
                best = worker
                if not worker.queued:
                    break
        assert best is not None, "an idle count above zero means a free connection"
        return best

    def _gathering(self) -> Worker:
        now = 0.0
        for worker in self.workers:
            if worker.held:
                continue
            queued = worker.queued
            if not queued:
                return worker
            if queued < SPILL_DEPTH and queued * self.cost.seconds < SPILL_AFTER:
                # Gather on a busy connection only while it keeps answering: one that has
                # been on the same work for a while is running something long.
                now = now or time.monotonic()
                if now - worker.progress < SPILL_AFTER:
                    return worker
        return self._least_busy()

    # -- closing and statistics ----------------------------------------------------------

    @protected
    def close(self, error: PoolError | None = None) -> None:
        """Refuse new checkouts and wake every waiter, which then raises ``error``
        (by default :class:`~litepool.PoolClosed`)."""
        self.closed = True
        self._closed_error = error
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            self.waiting -= 1
            self._bridge.resume(waiter)

    def describe_holder(self, worker: Worker) -> str:
        """Who holds ``worker``: a checkout and where it was taken, or a statement."""
        borrower = self._borrowers.get(worker)
        if borrower is not None:
            return f"{worker.role} ({borrower.describe()})"
        return f"{worker.role} (a single statement, pool.fetch...(), still running)"

    def _refusal(self, what: str) -> PoolError:
        error = self._closed_error
        if error is not None:
            return type(error)(*error.args)
        return PoolClosed(f"pool {self.pool_name!r} {what}")

    def statistics(self) -> LaneStatistics:
        size = len(self.workers)
        return LaneStatistics(
            size=size,
            idle=self.idle,
            in_use=size - self.idle,
            waiting=self.waiting,
            checkouts=self.checkouts,
            statements=self.statements,
            timeouts=self.timeouts,
            acquire_wait=self.acquire_wait.snapshot(),
            usage=self.usage.snapshot(),
        )
