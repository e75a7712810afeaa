"""The pool's connections: starting, replacing, retiring and stopping their workers.

The :class:`Supervisor` owns every :class:`~litepool._worker.Worker` of a pool and the two
:class:`~litepool._lane.Lane`\\ s that hand them out. It starts each worker's thread in
the pool's task group (under a capacity limiter of its own: those threads live as long
as their connections, and must not take tokens from anyio's default limiter, which the
rest of the application shares), waits for the connection to open, and counts what
happens to connections (opened, closed, replaced, lost, failed).

In the background (:class:`Upkeep`) it replaces connections that broke (a disk I/O
error, a failed ``check``, a worker thread that died), readers older than
``max_lifetime`` or idle longer than ``max_idle``, runs ``PRAGMA optimize`` every
``optimize_interval``, and looks at the database file at least every half second
(:mod:`._file`). A replacement opens before the connection it replaces leaves (a broken
one has left already): callers never wait for a connection to open. Which reader is due
is decided by :func:`due`, a pure function; :class:`Upkeep` does the I/O.

Closing stops every worker behind the jobs queued on it and waits until every thread has
returned, also through a native asyncio cancellation (as ``asyncio.run`` delivers at
shutdown): a pool's block never ends while one of its threads still runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from ._background import BackgroundTask
from ._errors import ConnectionLost, DatabaseLost, PoolClosed
from ._file import CHECK_INTERVAL, DatabaseFile
from ._interrupt import protected
from ._lane import Lane
from ._options import PoolOptions, open_connection
from ._statements import open_job, optimize_job
from ._worker import Job, JobCost, Worker

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._bridge import Bridge

logger = logging.getLogger("litepool")

#: A reader's lifetime is ``max_lifetime`` shortened by up to this fraction, drawn per
#: connection, so that readers opened together do not all expire together.
LIFETIME_JITTER: Final = 0.1
#: Waits between attempts to open a replacement that failed: doubling from the first to
#: the last.
RETRY_FIRST: Final = 0.05
RETRY_LAST: Final = 10.0


def lifetime_deadline(opened_at: float, max_lifetime: float | None) -> float:
    """When a connection opened at ``opened_at`` is due for replacement."""
    if max_lifetime is None:
        return math.inf
    return opened_at + max_lifetime * (1.0 - LIFETIME_JITTER * random.random())


@dataclass(frozen=True, slots=True)
class Reader:
    """What the upkeep knows of one reader at a given moment."""

    worker: object
    expires: float
    """When it is due for replacement for its age (``time.monotonic()``)."""
    idle_since: float | None
    """When it last answered, if it has answered since it opened and nobody holds it
    or queues on it now; None otherwise."""
    leaving: bool
    """Whether it is already on its way out."""


def due(readers: Sequence[Reader], now: float, max_idle: float | None) -> tuple[object, float]:
    """The first reader due for replacement (or None), and when the next one is due.

    A reader is due past its lifetime deadline, or when it has served something and
    then sat unused (no borrower, nothing queued) for ``max_idle`` seconds. A reader that
    has served nothing since it opened is not idle in that sense: replacing it would free
    nothing.
    """
    next_due = math.inf
    for reader in readers:
        if reader.leaving:
            continue
        deadline = reader.expires
        if max_idle is not None and reader.idle_since is not None:
            deadline = min(deadline, reader.idle_since + max_idle)
        if deadline <= now:
            return reader.worker, now
        next_due = min(next_due, deadline)
    return None, next_due


@dataclass(frozen=True, slots=True)
class Counts:
    """What happened to the pool's connections; see :class:`~litepool.PoolStatistics`."""

    opened: int
    closed: int
    replaced: int
    lost: int
    failed: int
    interrupted: int
    rollbacks: int


class Supervisor:
    """The workers of one pool; see the module's docstring."""

    def __init__(
        self,
        options: PoolOptions,
        database_file: DatabaseFile,
        bridge: Bridge,
        task_group: TaskGroup,
        describe_holders: Callable[[str], str] | None = None,
    ) -> None:
        self._options = options
        self._file = database_file
        self._bridge = bridge
        self._task_group = task_group
        self._describe_holders = describe_holders
        # Every worker whose thread has not returned yet.
        self._workers: list[Worker] = []
        self._threads = 0  # worker threads started and not yet returned
        self._all_stopped = anyio.Event()
        # Set once no reader thread is left, for a stopping writer (see stop()).
        self._readers_closed = threading.Event()
        self._limiter = anyio.CapacityLimiter(1 + options.readers)
        self._costs = {"write": JobCost(), "read": JobCost()}
        # When each reader is due for replacement for its age.
        self._expires: dict[Worker, float] = {}
        self._readers_target = options.readers
        self._reader_number = 0
        self._resize_lock = anyio.Lock()
        self._open = True
        #: Set once the database file is found deleted or replaced: why.
        self.vanished: str | None = None
        self._opened = 0
        self._closed = 0
        self._replaced = 0
        self._lost = 0
        self._failed = 0
        # Counts of workers whose threads have returned, kept when they are dropped.
        self._ended_interrupted = 0
        self._ended_rollbacks = 0
        self.write_lane: Lane | None = None
        self.read_lane: Lane | None = None
        self._upkeep = Upkeep(self, options)

    @property
    def file_watched(self) -> bool:
        """Whether there is a database file to watch (not an in-memory database)."""
        return self._file.path is not None

    @property
    def readers_target(self) -> int:
        """How many readers the pool is to have."""
        return self._readers_target

    # -- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        """Open the writer (which creates the database and switches it to WAL, which a
        read-only connection cannot do), then the readers, all at once; make the lanes
        and start the upkeep.

        Raises the first opening error; the caller then calls :meth:`stop`.
        """
        writer = self._new_worker("write")
        await self._start([writer])
        readers = [self._new_worker("read") for _ in range(self._options.readers)]
        await self._start(readers)
        describe = self._describe_holders
        self.write_lane = Lane(
            "write",
            self._options.name,
            [writer],
            self._bridge,
            self._costs["write"],
            on_left=self._left,
            describe_holders=None if describe is None else functools.partial(describe, "write"),
        )
        self.read_lane = Lane(
            "read",
            self._options.name,
            readers,
            self._bridge,
            self._costs["read"],
            on_left=self._left,
            describe_holders=None if describe is None else functools.partial(describe, "read"),
        )
        self._task_group.start_soon(self._upkeep.run, name=self._upkeep.name)

    @property
    def writer(self) -> Worker:
        """The writer (the first worker while the pool opens)."""
        lane = self.write_lane
        return self._workers[0] if lane is None else lane.workers[0]

    def close(self) -> None:
        """Stop the upkeep, and queue ``PRAGMA optimize`` on the writer if it is free (it
        runs before the writer stops); then :meth:`stop` stops every worker."""
        self._open = False
        self._upkeep.stop()
        lane = self.write_lane
        if lane is not None:
            # Not awaited, not counted: it runs before the writer's stop, which follows.
            lane.try_dispatch(Job(optimize_job, interruptible=False), statement=False)

    @protected
    async def stop(self) -> None:
        """Stop every worker and wait for its thread to return.

        All are stopped at once (no call is served after this), but the writer's thread
        closes its connection only once the readers' have closed theirs: the last
        connection to close checkpoints the WAL away, and two closing at the same instant
        each see the other still open, so neither did and the WAL file stayed behind.
        """
        self._open = False
        readers_closed = self._readers_closed = threading.Event()
        if not any(worker.role != "writer" for worker in self._workers):
            readers_closed.set()
        for worker in self._workers:
            if worker.role == "writer":
                worker.stop(close_after=readers_closed)
            else:
                worker.stop()
        interrupted: BaseException | None = None
        while self._threads:
            try:
                with anyio.CancelScope(shield=True):
                    await self._all_stopped.wait()
            except BaseException as exc:
                # A native asyncio cancellation (as at asyncio.run's shutdown) goes through
                # shields. The threads are stopping: wait for them all the same, then
                # raise it.
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def forked(self) -> list[Worker]:
        """In a child process just forked: refuse every use; the workers (whose threads
        are not here) to abandon."""
        self._open = False
        for lane in (self.read_lane, self.write_lane):
            if lane is not None:
                lane.forked()
        for worker in self._workers:
            worker.inherited()
        return list(self._workers)

    def counts(self) -> Counts:
        workers = self._workers
        return Counts(
            opened=self._opened,
            closed=self._closed,
            replaced=self._replaced,
            lost=self._lost,
            failed=self._failed,
            interrupted=self._ended_interrupted + sum(w.interrupted for w in workers),
            rollbacks=self._ended_rollbacks + sum(w.rollbacks for w in workers),
        )

    # -- workers and their threads -------------------------------------------------------

    def _new_worker(self, lane: str) -> Worker:
        options, bridge = self._options, self._bridge
        if lane == "write":
            role = "writer"
        else:
            self._reader_number += 1
            role = f"reader-{self._reader_number}"
        return Worker(
            role,
            f"litepool[{options.name}] {role}",
            functools.partial(
                open_connection, options, writer=lane == "write", database_file=self._file
            ),
            bridge.post,
            bridge.alive,
            cost=self._costs[lane],
            on_broken=functools.partial(bridge.call_soon, self._broken),
            on_exit=functools.partial(bridge.call_soon, self._thread_exited),
            on_long=None if lane == "write" else functools.partial(bridge.call_soon, self._spill),
        )

    @protected
    async def _start(self, workers: list[Worker]) -> None:
        """Start a thread for each worker, and wait until every connection has opened.

        Raises the first opening error; each worker whose connection did not open has
        returned by itself, the others are left to the caller to stop.
        """
        jobs = []
        for worker in workers:
            job = Job(open_job, (self._options, self._file), interruptible=False)
            worker.submit(job)
            jobs.append(job)
            self._workers.append(worker)
            self._threads += 1
            # A thread per connection for as long as the pool lives, never more.
            limiter = self._limiter
            limiter.total_tokens = max(limiter.total_tokens, self._threads)
            self._task_group.start_soon(self._serve, worker, name=worker.thread_name)
        for worker, job in zip(workers, jobs, strict=True):
            await self._bridge.run(worker, job)
            self._opened += 1
            worker.serving()
            if worker.role != "writer":
                self._expires[worker] = lifetime_deadline(
                    time.monotonic(), self._options.max_lifetime
                )

    @protected
    async def _open_one(self, lane: str) -> Worker:
        """Open one more connection while the pool is open, for ``lane`` to take in.

        Cancellation, or a failure to open, leaves nothing behind: the new worker is
        stopped.
        """
        if not self._open:
            raise PoolClosed(f"pool {self._options.name!r} is closed")
        worker = self._new_worker(lane)
        try:
            await self._start([worker])
            if not self._open:
                raise PoolClosed(
                    f"pool {self._options.name!r} was closed while a connection opened"
                )
        except Exception:
            if not worker.opened:
                self._failed += 1
            worker.stop()
            raise
        except BaseException:
            worker.stop()
            raise
        return worker

    @protected
    async def _serve(self, worker: Worker) -> None:
        returned = False
        try:
            await anyio.to_thread.run_sync(worker.run, limiter=self._limiter)
            returned = True
        except Exception as exc:
            returned = True
            if not self._open or worker.stopping:
                raise
            # The thread ended between jobs without being stopped: the pool keeps
            # serving on the other connections and replaces this one.
            logger.error(
                "pool %r: %s ended unexpectedly; replacing its connection",
                self._options.name,
                worker.thread_name,
                exc_info=exc,
            )
            self._bridge.drain()  # what the thread answered before it ended
            worker.fail_pending()
            self.lose(worker)
        finally:
            # Normally the thread has reported its return by now (the report is queued
            # before the call returns). It never will if this task was cancelled
            # natively before the thread took up worker.run, or if the thread died
            # before it could report.
            if worker.abandon() or returned:
                self._thread_exited(worker)

    @protected
    def _thread_exited(self, worker: Worker) -> None:
        """``worker``'s thread has returned (or will never run)."""
        if worker not in self._workers:
            return  # counted already
        self._workers.remove(worker)
        self._expires.pop(worker, None)
        if worker.opened:
            self._closed += 1
        # Its counts are final: keep them, and the worker need not be kept.
        self._ended_interrupted += worker.interrupted
        self._ended_rollbacks += worker.rollbacks
        self._threads -= 1
        if not self._threads:
            self._all_stopped.set()
        if not any(other.role != "writer" for other in self._workers):
            self._readers_closed.set()  # lets a stopping writer close its connection

    # -- broken, lost and retired connections ----------------------------------------------

    def _lane_of(self, worker: Worker) -> Lane | None:
        return self.write_lane if worker.role == "writer" else self.read_lane

    @protected
    def _spill(self, worker: Worker) -> None:
        """A statement has run long on ``worker`` while others wait behind it."""
        lane = self._lane_of(worker)
        if lane is not None:
            lane.spill(worker)

    @protected
    def _broken(self, worker: Worker) -> None:
        """A job on ``worker`` failed in a way that means it is broken."""
        lane = self._lane_of(worker)
        if not self._open or not worker.opened or lane is None or lane.is_retiring(worker):
            return  # a connection that never opened is reported by its opener
        if self.check_file():
            return
        logger.warning(
            "pool %r: %s is broken (%s); replacing it",
            self._options.name,
            worker.thread_name,
            worker.broken,
        )
        self.lose(worker)

    @protected
    def lose(self, worker: Worker) -> None:
        """Take a broken connection out of service; the upkeep replaces it."""
        lane = self._lane_of(worker)
        if lane is None or lane.is_retiring(worker) or worker not in lane.workers:
            return
        self._lost += 1
        lane.retire(worker)
        self._upkeep.wake()

    @protected
    def _left(self, worker: Worker) -> None:
        """A connection has left its lane: stop it behind the jobs queued on it."""
        worker.stop()
        self._upkeep.wake()

    def check_file(self) -> bool:
        """Whether the database file was found deleted or replaced (now or before); the
        first time, every call is refused from then on."""
        if self.vanished is not None:
            return True
        reason = self._file.changed()
        if reason is None or not self._open:
            return False
        self.vanished = reason
        logger.error("%s", reason)
        error = DatabaseLost(reason)
        for lane in (self.read_lane, self.write_lane):
            if lane is not None:
                lane.close(error)
        # Calls queued now finish; later ones, and calls on checked-out handles, raise.
        for worker in self._workers:
            worker.stop(error)
        return True

    # -- resizing ------------------------------------------------------------------------

    async def resize(self, readers: int) -> None:
        """See :meth:`Pool.resize`."""
        async with self._resize_lock:
            lane = self.read_lane
            if lane is None or not self._open:
                raise PoolClosed(f"pool {self._options.name!r} is closed")
            current = self._readers_target
            if readers > current:
                opened: list[Worker] = []
                try:
                    for _ in range(readers - current):
                        opened.append(await self._open_one("read"))
                except BaseException:
                    for worker in opened:
                        worker.stop()
                    raise
                for worker in opened:
                    lane.add(worker)
            elif readers < current:
                active = lane.active()
                surplus = len(active) - readers
                if surplus > 0:
                    # The least busy go first: free ones, then those with least queued.
                    ranked = sorted(active, key=lambda w: (lane.is_held(w), w.queued))
                    for worker in ranked[:surplus]:
                        lane.retire(worker)
            self._readers_target = readers
            self._upkeep.wake()

    # -- the upkeep's steps ----------------------------------------------------------------

    def deficit(self, lane: Lane) -> int:
        """Connections the lane lacks (lost, or not yet opened by a resize)."""
        target = 1 if lane is self.write_lane else self._readers_target
        return target - len(lane.active())

    def readers(self) -> list[Reader]:
        """The readers, as :func:`due` sees them."""
        lane = self.read_lane
        if lane is None:
            return []
        return [
            Reader(
                worker,
                self._expires.get(worker, math.inf),
                worker.progress
                if worker.answered and not lane.is_held(worker) and not worker.queued
                else None,
                lane.is_retiring(worker),
            )
            for worker in lane.workers
        ]

    async def replace(self, lane: Lane, worker: Worker | None) -> None:
        """Open a connection for ``lane``: in place of ``worker`` (which then leaves),
        or (None) to make up for one that is missing. Raises what opening raised (the
        failure is counted)."""
        replacement = await self._open_one(lane.name)
        if worker is None and self.deficit(lane) <= 0:
            replacement.stop()  # a resize made it unnecessary meanwhile
        elif worker is not None and (lane.is_retiring(worker) or worker not in lane.workers):
            replacement.stop()  # gone meanwhile (lost, or a resize)
        else:
            lane.add(replacement)
            if worker is not None:
                lane.retire(worker)
            self._replaced += 1


class Upkeep(BackgroundTask):
    """The supervisor's background task; see the module's docstring."""

    what = "upkeep"

    def __init__(self, supervisor: Supervisor, options: PoolOptions) -> None:
        super().__init__(options.name)
        self._supervisor = supervisor
        self._max_idle = options.max_idle
        self._optimize_interval = options.optimize_interval
        self._next_optimize = (
            math.inf
            if options.optimize_interval is None
            else time.monotonic() + options.optimize_interval
        )
        self._retry = RETRY_FIRST
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Look at the connections again now (one was lost, the target changed)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            wake = self._wake = anyio.Event()
            delay = await self._step()
            if delay <= 0:
                continue
            with anyio.move_on_after(None if math.isinf(delay) else delay):
                await wake.wait()

    async def _step(self) -> float:
        """Do what is due; return how long to wait before the next step."""
        supervisor = self._supervisor
        if supervisor.check_file():
            return math.inf  # nothing more to keep up: the pool refuses every call
        write_lane, read_lane = supervisor.write_lane, supervisor.read_lane
        assert write_lane is not None
        assert read_lane is not None
        # Lost connections first: a lane short of one serves fewer callers meanwhile.
        for lane in (write_lane, read_lane):
            if supervisor.deficit(lane) > 0:
                return await self._replace(lane, None)
        now = time.monotonic()
        worker, next_due = due(supervisor.readers(), now, self._max_idle)
        if isinstance(worker, Worker):
            return await self._replace(read_lane, worker)
        if now >= self._next_optimize:
            job = Job(optimize_job, interruptible=False)
            # A lost writer is being replaced: optimize at the next interval.
            with contextlib.suppress(ConnectionLost):
                await write_lane.run(job, None, "PRAGMA optimize", statement=False)
            assert self._optimize_interval is not None
            self._next_optimize = time.monotonic() + self._optimize_interval
        wait = min(next_due, self._next_optimize) - time.monotonic()
        if self._max_idle is not None:
            # A connection in use now may be idle later without anyone telling us.
            wait = min(wait, self._max_idle)
        if supervisor.file_watched:
            wait = min(wait, CHECK_INTERVAL)
        return wait

    async def _replace(self, lane: Lane, worker: Worker | None) -> float:
        """Replace a connection (see :meth:`Supervisor.replace`); how long to wait
        before the next step: at once, or a back-off after a failure to open."""
        try:
            await self._supervisor.replace(lane, worker)
        except Exception as exc:
            delay = self._retry
            self._retry = min(self._retry * 2, RETRY_LAST)
            logger.warning(
                "pool %r: opening a replacement %s connection failed (retrying in %.2g s): %s",
                self._pool_name,
                lane.name,
                delay,
                exc,
            )
            return delay
        self._retry = RETRY_FIRST
        return 0
