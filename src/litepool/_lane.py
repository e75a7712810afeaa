"""Checkout state of one lane (the writer, or the readers).

A lane hands out the connections of its workers, first come, first served. Its state
(which connections are held, who waits in which order) changes only in synchronous
methods, so no cancellation can land half-way through a change; the only await is a
waiter parking until it is handed a connection, times out, or the pool closes.

Waiting tasks queue in a :class:`~litepool._handoff.HandOff`, whose hand-off they can
refuse: releasing a connection gives it to the first waiter that can still take it, and a
waiter cancelled at that moment gives it back, to the next one. So a connection is never
stranded with a task that is gone.

Connections join and leave a lane while it serves (replacements, :meth:`Pool.resize`):
one that leaves while a borrower holds it leaves when it is given back, so a borrower
never loses its connection under it.

Single statements (``pool.fetchone()``, ``pool.execute()``, and the pool's own jobs)
take one path, :meth:`Lane.run`: queued at once on a connection no checkout holds, or
after waiting their turn like a checkout, but holding the connection only while they are
queued; the lane chooses the connection (:meth:`Lane._gathering`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._errors import PoolClosed, PoolError, PoolTimeout, WouldDeadlock
from ._handoff import HandOff
from ._interrupt import protected
from ._stats import LaneStatistics, Recorder
from ._worker import MAX_BATCH, Job, JobCost, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge

#: Single statements gather on as few threads as possible, which then stay awake and
#: answer many statements per wake-up, as long as a connection's queue is expected to be
#: done within this many seconds (queued statements times the lane's average job time)
#: and its thread has not been on one job for ``LONG_JOB``; past that, the next statement
#: goes to a less busy connection, so that long statements run side by side on several
#: threads.
SPILL_AFTER: Final = 0.002
#: ... and never more statements than the thread answers in one batch.
SPILL_DEPTH: Final = MAX_BATCH


class Kind(enum.Enum):
    """What a checkout holds: a reader, or the writer in a transaction of the pool's
    (``write``) or in autocommit mode (``connection``)."""

    READ = "read"
    WRITE = "write"
    CONNECTION = "connection"

    @property
    def checkout(self) -> str:
        """The method of :class:`~litepool.Pool` that takes it, for messages."""
        return f"pool.{self.value}()"


class Borrower(Protocol):
    """Who holds a connection: enough to tell a task that it would wait for itself."""

    @property
    def _task(self) -> object:
        """The holding task, as :attr:`Bridge.current_task` returns it."""

    def _describe(self) -> str:
        """The checkout and where it was taken, for error messages."""


class Lane:
    """The connections of one lane and who holds them; see the module's docstring."""

    __slots__ = (
        "_acquire_wait",
        "_borrowers",
        "_bridge",
        "_closed_error",
        "_describe_holders",
        "_held",
        "_on_left",
        "_queue",
        "_retiring",
        "_usage",
        "checkouts",
        "closed",
        "cost",
        "name",
        "pool_name",
        "statements",
        "timeouts",
        "workers",
    )

    def __init__(
        self,
        name: str,
        pool_name: str,
        workers: list[Worker],
        bridge: Bridge,
        cost: JobCost,
        *,
        on_left: Callable[[Worker], object],
        describe_holders: Callable[[], str] | None = None,
    ) -> None:
        #: ``"read"`` or ``"write"``.
        self.name = name
        self.pool_name = pool_name
        #: The connections in the lane, held or not (a retiring one until it comes back).
        self.workers = workers
        #: How long a job takes on these connections (their threads add to it).
        self.cost = cost
        self._bridge = bridge
        self._held: set[Worker] = set()
        self._retiring: set[Worker] = set()
        # Who holds each connection that a checkout holds.
        self._borrowers: dict[Worker, Borrower] = {}
        self._queue: HandOff[Worker] = HandOff(bridge, self.release)
        # Called with a connection once it has left the lane, to stop it.
        self._on_left = on_left
        # Describes who holds the lane's connections, for the PoolTimeout message.
        self._describe_holders = describe_holders
        self.checkouts = 0
        self.statements = 0
        self.timeouts = 0
        self.closed = False
        self._closed_error: PoolError | None = None
        self._acquire_wait = Recorder()
        self._usage = Recorder()

    @property
    def idle(self) -> int:
        """Connections no checkout holds."""
        return len(self.workers) - len(self._held)

    @property
    def waiting(self) -> int:
        """Tasks waiting for a connection."""
        return self._queue.waiting

    def is_held(self, worker: Worker) -> bool:
        return worker in self._held

    def is_retiring(self, worker: Worker) -> bool:
        return worker in self._retiring

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
        if self.idle and not self._queue.waiting:
            return self._hold(borrower)
        if self._borrowers:
            self._refuse_waiting_for_itself(what)
        try:
            worker = await self._queue.wait(timeout, borrower)
        finally:
            if self.idle and self._queue.waiting and not self.closed:
                self._grant()
        if worker is None:
            if self.closed:
                raise self._refusal("was closed while waiting")
            self.timeouts += 1
            stats = self.statistics()
            holders = "" if self._describe_holders is None else self._describe_holders()
            raise PoolTimeout(
                f"pool {self.pool_name!r}: no {self.name} connection became free within "
                f"{timeout:g} s (in use: {stats.in_use}, idle: {stats.idle}, "
                f"waiting: {stats.waiting}{holders})"
            )
        return worker

    def _refuse_waiting_for_itself(self, what: str) -> None:
        """Raise if the calling task holds every connection: it would wait for itself."""
        task = self._bridge.current_task()
        mine = [b for b in self._borrowers.values() if b._task is task]
        if not mine or len(mine) < len(self.workers):
            return
        held = ", ".join(borrower._describe() for borrower in mine)
        which = "the writer" if self.name == "write" else f"every reader ({len(mine)})"
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
        self._held.discard(worker)
        self._borrowers.pop(worker, None)
        if worker in self._retiring:
            self._remove(worker)
            return
        if self._queue.waiting:
            self._grant()

    def checked_out(self, waited: float | None) -> None:
        """A checkout got its connection after waiting ``waited`` seconds (None: it
        found one free)."""
        self.checkouts += 1
        self.waited(waited)

    def entered(self) -> None:
        """A late-binding checkout's block began; its wait is recorded when it binds."""
        self.checkouts += 1

    def waited(self, waited: float | None) -> None:
        """A checkout waited ``waited`` seconds for its connection (None: none)."""
        if waited is None:
            self._acquire_wait.add_zero()
        else:
            self._acquire_wait.add(waited)

    def returned(self, held: float) -> None:
        """A checkout's block held its connection for ``held`` seconds."""
        self._usage.add(held)

    # -- connections joining and leaving -------------------------------------------------

    @protected
    def add(self, worker: Worker) -> None:
        """A new connection joins the lane and serves the first waiter, if any."""
        self.workers.append(worker)
        if self._queue.waiting:
            self._grant()

    @protected
    def retire(self, worker: Worker) -> None:
        """Take ``worker`` out of service: now if it is free, else when it comes back.

        Statements already queued on it still run; ``on_left`` is called once it has
        left, which stops it behind them.
        """
        if worker in self._retiring or worker not in self.workers:
            return
        self._retiring.add(worker)
        if worker not in self._held:
            self._remove(worker)

    def active(self) -> list[Worker]:
        """The connections that are not leaving."""
        return [worker for worker in self.workers if worker not in self._retiring]

    @protected
    def _remove(self, worker: Worker) -> None:
        self.workers.remove(worker)
        self._retiring.discard(worker)
        self._on_left(worker)

    @protected
    def _hold(self, borrower: object) -> Worker:
        worker = self._least_busy()
        self._held.add(worker)
        if borrower is not None:
            self._borrowers[worker] = borrower  # type: ignore[assignment]
        return worker

    @protected
    def _grant(self) -> None:
        queue = self._queue
        while self.idle and queue.give(self._hold):
            pass

    # -- single statements ---------------------------------------------------------------

    @protected
    def try_dispatch(self, job: Job, *, statement: bool = True) -> Worker | None:
        """Queue a self-contained ``job`` now if that needs no waiting, else return None."""
        if self.idle and not self._queue.waiting and not self.closed:
            worker = self._gathering()
            job.movable = True
            worker.submit(job)
            self.statements += statement
            return worker
        return None

    @protected
    async def dispatch(
        self, job: Job, timeout: float | None, what: str = "", *, statement: bool = True
    ) -> Worker:
        """Queue a self-contained ``job`` on a connection that no checkout holds.

        The job needs the connection only while it runs, so it holds one just long
        enough to queue the job, with no await in between: it waits its turn behind
        earlier checkouts and never runs inside a checkout's transaction. Cancellation
        while waiting behaves as in :meth:`acquire`.
        """
        worker = await self.acquire(timeout, what=what)
        job.movable = True
        worker.submit(job)
        self.statements += statement
        self.release(worker)
        return worker

    async def run(
        self, job: Job, timeout: float | None, what: str = "", *, statement: bool = True
    ) -> Any:
        """Queue ``job`` as :meth:`dispatch` does (without waiting when a connection is
        free), wait for it, and return its result or raise its error. The one path of
        single statements and of the pool's own jobs; ``statement`` counts it in the
        lane's statistics.

        Cancellation: while waiting for a connection, as :meth:`acquire`; once queued,
        the job is skipped or interrupted (see :class:`~litepool._bridge.Bridge`).
        """
        worker = self.try_dispatch(job, statement=statement)
        if worker is None:
            worker = await self.dispatch(job, timeout, what, statement=statement)
        return await self._bridge.run(worker, job)

    # -- choosing a connection -----------------------------------------------------------

    def _least_busy(self) -> Worker:
        best: Worker | None = None
        held = self._held
        for worker in self.workers:
            if worker not in held and (best is None or worker.queued < best.queued):
                best = worker
                if not worker.queued:
                    break
        assert best is not None, "an idle count above zero means a free connection"
        return best

    def _gathering(self) -> Worker:
        held = self._held
        for worker in self.workers:
            if worker in held:
                continue
            queued = worker.queued
            if not queued:
                return worker
            if (
                queued < SPILL_DEPTH
                and queued * self.cost.seconds < SPILL_AFTER
                and not worker.running_long()  # on something long: pass it over
            ):
                return worker
        return self._least_busy()

    @protected
    def spill(self, worker: Worker) -> None:
        """``worker`` has been running one statement for a while: the single statements
        gathered behind it move to a connection with nothing to do, if there is one."""
        if worker not in self.workers or self.closed:
            return
        held, retiring = self._held, self._retiring
        for target in self.workers:
            if (
                target is not worker
                and not target.queued
                and target not in held
                and target not in retiring
                and not target.stopping
            ):
                break
        else:
            return
        for job in worker.take_movable():
            target.submit(job)

    # -- closing and statistics ----------------------------------------------------------

    @protected
    def close(self, error: PoolError | None = None) -> None:
        """Refuse new checkouts and wake every waiter, which then raises ``error``
        (by default :class:`~litepool.PoolClosed`)."""
        self.closed = True
        self._closed_error = error
        self._queue.close()

    def forked(self) -> None:
        """In a child process just forked: refuse everything (no task waits here)."""
        self.closed = True

    def describe_holder(self, worker: Worker) -> str:
        """Who holds ``worker``: a checkout and where it was taken, or a statement."""
        borrower = self._borrowers.get(worker)
        if borrower is not None:
            return f"{worker.role} ({borrower._describe()})"
        return f"{worker.role} (a single statement, pool.fetch...(), still running)"

    def _refusal(self, what: str) -> PoolError:
        error = self._closed_error
        if error is not None:
            return type(error)(*error.args)
        return PoolClosed(f"pool {self.pool_name!r} {what}")

    def statistics(self) -> LaneStatistics:
        size = len(self.workers)
        idle = self.idle
        return LaneStatistics(
            size=size,
            idle=idle,
            in_use=size - idle,
            waiting=self._queue.waiting,
            checkouts=self.checkouts,
            statements=self.statements,
            timeouts=self.timeouts,
            acquire_wait=self._acquire_wait.snapshot(),
            usage=self._usage.snapshot(),
        )
