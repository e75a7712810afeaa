"""The thread that owns one SQLite connection, and the jobs it runs.

A :class:`Worker` creates its :class:`sqlite3.Connection` on its own thread, runs every
job on it there, and closes it there. The event loop hands jobs over a
:class:`queue.SimpleQueue`; the thread takes everything queued in one wake-up and answers
the whole batch with a single callback posted to the loop, because the cross-thread
wake-up, not SQLite, is the dominant cost of a small query.

Nothing here awaits: the loop side (``_bridge.py``, ``_connection.py``) decides when to
wait for a job, and may stop waiting (cancellation) while the job still runs here.
"""

from __future__ import annotations

import enum
import logging
import queue
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final

from ._errors import ConnectionLost, DatabaseLost, PoolClosed, PoolError, hint_read_only
from ._interrupt import protected
from ._transactions import Transactions

logger = logging.getLogger("litepool")

#: How often an idle worker checks that its event loop and the interpreter still exist,
#: so that a pool that is never closed cannot keep the process alive.
IDLE_POLL_SECONDS: Final = 1.0

#: How long a stopping writer waits for the readers' connections to close before it
#: closes its own (see Supervisor.stop).
CLOSE_AFTER_SECONDS: Final = 5.0

#: Finished jobs are posted to the loop at the latest when this many have gathered.
MAX_BATCH: Final = 64

#: A statement that has run this long (seconds) is long: the single statements queued
#: behind it move to an idle connection (checked at the progress handler's pace). Well
#: above the GIL's switch interval (5 ms): a short statement whose thread waits for the
#: GIL while the event loop runs must not count as long, or a batch gathered on one
#: thread would scatter over every reader.
LONG_JOB: Final = 0.02

#: The progress handler runs every this many SQLite VM instructions (about a
#: millisecond); it stops a cancelled statement that had not yet started when
#: ``interrupt()`` was called, which SQLite would otherwise forget. Each call takes the
#: GIL inside ``sqlite3_step``: every 1,000 instructions made a long query 40% slower.
PROGRESS_INSTRUCTIONS: Final = 100_000

# Error codes after which a connection is not worth keeping (sqlite3.h). An I/O error
# means its file descriptors no longer work; a statement error (syntax, constraint, busy,
# disk full) is the caller's, and the connection stays.
_SQLITE_IOERR: Final = 10
_SQLITE_CANTOPEN: Final = 14
#: The database file was moved or replaced since this connection opened it (rollback
#: journal modes report this on the first write).
_SQLITE_READONLY_DBMOVED: Final = 8 | (4 << 8)


def broken_reason(exc: BaseException) -> str | None:
    """Why ``exc`` means that its connection is broken, or None if it does not."""
    if isinstance(exc, DatabaseLost):
        return str(exc)
    if not isinstance(exc, sqlite3.Error):
        return None
    # Errors raised by the sqlite3 module itself (wrong bindings, ...) carry no code.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return None
    if code & 0xFF in (_SQLITE_IOERR, _SQLITE_CANTOPEN) or code == _SQLITE_READONLY_DBMOVED:
        return f"{exc.sqlite_errorname}: {exc}"
    return None


JobFn = Callable[..., Any]

#: Weight of the newest job in :attr:`JobCost.seconds`, a running average.
COST_WEIGHT: Final = 0.2


class JobCost:
    """How long a job takes on the connections of one lane: a running average in seconds,
    written by their threads after every job (a lost update between two of them only
    drops one sample) and read by the lane to decide how much to queue on one thread."""

    __slots__ = ("seconds",)

    seconds: float

    def __init__(self) -> None:
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        """Thread side: count one job that took ``seconds``."""
        average = self.seconds
        self.seconds = seconds if not average else average + (seconds - average) * COST_WEIGHT


class Job:
    """One call to run on a worker's thread.

    ``fn(worker, *args)`` runs on the thread; its return value or exception is stored
    here. ``done`` and ``waker`` are touched only on the event loop thread.
    """

    __slots__ = (
        "args",
        "cancelled",
        "done",
        "error",
        "fn",
        "interruptible",
        "movable",
        "result",
        "runner",
        "started",
        "waker",
    )

    fn: JobFn
    args: tuple[Any, ...]
    interruptible: bool
    cancelled: bool
    done: bool
    result: Any
    error: BaseException | None
    waker: Any
    movable: bool
    runner: Worker | None
    started: bool

    def __init__(self, fn: JobFn, args: tuple[Any, ...] = (), interruptible: bool = True) -> None:
        self.fn = fn
        self.args = args
        self.interruptible = interruptible
        self.cancelled = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.waker: Any = None
        #: Whether any connection of its lane may run it (a single statement), so that
        #: it can move to another while it waits (see :meth:`Worker.take_movable`).
        self.movable = False
        #: The worker that is to run it; a worker whose queue still holds a job that
        #: moved on skips it.
        self.runner: Worker | None = None
        #: Set by the thread, under the worker's lock, when it takes the job.
        self.started = False


class _Stop:
    """Queued last: the thread closes its connection and returns."""


_STOP: Final = _Stop()

#: Posts a worker's finished batch back to the event loop; False if the loop is gone.
PostFn = Callable[["Worker", list[Job]], bool]


class Phase(enum.Enum):
    """Where a worker is in its life; changed only by :class:`Worker`'s own methods."""

    OPENING = "opening"
    """Its thread has started (or is about to); its first job opens the connection."""
    SERVING = "serving"
    """The connection is open and takes jobs."""
    STOPPING = "stopping"
    """The stop is queued: jobs queued before it run, later ones are refused."""
    LOST = "lost"
    """The thread ended unexpectedly: every job unanswered or queued later fails with
    :class:`~litepool.ConnectionLost`."""


class Worker:
    """One SQLite connection and the thread that owns it.

    Who changes what: the thread changes the thread-side fields (``conn``, ``cursors``,
    ``transactions``, ``reading`` ...); the event loop changes the rest only through the
    methods of the "event loop side" below. Everyone else reads.
    """

    __slots__ = (
        "_abandoned",
        "_alive",
        "_close_after",
        "_current",
        "_finished",
        "_jobs",
        "_lock",
        "_on_broken",
        "_on_exit",
        "_on_long",
        "_opened",
        "_opener",
        "_post",
        "_ran",
        "_refusal",
        "_start_lock",
        "_started",
        "answered",
        "broken",
        "conn",
        "cost",
        "cursors",
        "interrupted",
        "pending",
        "phase",
        "progress",
        "queued",
        "read_since",
        "reading",
        "reads",
        "role",
        "rollbacks",
        "spill_asked",
        "thread_name",
        "transactions",
    )

    role: str
    thread_name: str
    cost: JobCost
    phase: Phase
    queued: int
    progress: float
    answered: int
    pending: dict[Job, None]
    interrupted: int
    conn: sqlite3.Connection | None
    cursors: dict[int, sqlite3.Cursor]
    transactions: Transactions | None
    broken: str | None
    rollbacks: int
    reading: bool
    reads: int
    read_since: float
    spill_asked: bool

    def __init__(
        self,
        role: str,
        thread_name: str,
        opener: Callable[[], sqlite3.Connection],
        post: PostFn,
        alive: Callable[[], bool],
        *,
        cost: JobCost,
        on_broken: Callable[[Worker], object] | None = None,
        on_exit: Callable[[Worker], object] | None = None,
        on_long: Callable[[Worker], object] | None = None,
    ) -> None:
        self.role = role
        self.thread_name = thread_name
        self._opener = opener
        self._post = post
        self._alive = alive
        #: Shared with the other connections of its lane.
        self.cost = cost
        # Called on the thread when a job fails in a way that means the connection is
        # broken (see broken_reason), and as the very last thing run() does.
        self._on_broken = on_broken
        self._on_exit = on_exit
        # Called on the thread when a statement has run for LONG_JOB seconds while
        # others wait behind it, so that they can move to another connection.
        self._on_long = on_long
        self._jobs: queue.SimpleQueue[Job | _Stop] = queue.SimpleQueue()
        # Guards ``_current`` so that ``interrupt()`` can only hit the job it was meant for.
        self._lock = threading.Lock()
        self._current: Job | None = None
        # Finished jobs not yet posted: answered together, one wake-up of the loop.
        self._finished: list[Job] = []
        # Whether run() started on a thread, or never will: the pool must know which of
        # its threads are still to return, even when the task awaiting one is cancelled
        # natively (asyncio shutdown) and no longer learns when it does.
        self._start_lock = threading.Lock()
        self._ran = False
        self._abandoned = False
        # Why calls are refused once the worker is stopping (None: the pool closed).
        self._refusal: PoolError | None = None
        # Set by stop(): what to wait for before closing the connection (see there).
        self._close_after: threading.Event | None = None
        self._opened = False

        # -- event loop side (changed by the methods below only) --
        self.phase = Phase.OPENING
        #: Jobs submitted and not yet answered; when work last arrived or was answered
        #: (time.monotonic()); answers since the connection started serving.
        self.queued = 0
        self.progress = 0.0
        self.answered = 0
        #: The jobs submitted and not yet answered. A thread that dies may take one
        #: with it, already out of the queue: this is how its caller still hears.
        self.pending = {}
        #: Statements interrupted because their callers were cancelled.
        self.interrupted = 0
        #: Whether the thread has asked (``on_long``) to move the statements waiting
        #: behind a long one; asked again once more are queued.
        self.spill_asked = False

        # -- thread side --
        self.conn = None
        #: Open cursors of ``Connection.iterate``, keyed by iterator id.
        self.cursors = {}
        #: The writer's managed transactions; None on readers.
        self.transactions = None
        #: Why the connection is broken, once a job found it so.
        self.broken = None
        #: Transactions rolled back on this connection (statistics).
        self.rollbacks = 0
        #: Readers: whether a read transaction is open on the connection (a statement
        #: runs, a cursor of iterate() is open, or an explicit BEGIN), how many have
        #: begun, and since when the current one is open (time.monotonic()).
        self.reading = False
        self.reads = 0
        self.read_since = 0.0
        #: When the running job started (perf_counter()).
        self._started = 0.0

    def __repr__(self) -> str:
        return f"<Worker {self.thread_name} {self.phase.value} queued={self.queued}>"

    @property
    def stopping(self) -> bool:
        """Whether no more jobs are taken (stopping, or lost)."""
        return self.phase is Phase.STOPPING or self.phase is Phase.LOST

    @property
    def opened(self) -> bool:
        """Whether its connection opened (it may have closed since)."""
        return self._opened

    # -- event loop side -------------------------------------------------------------

    @protected
    def submit(self, job: Job) -> None:
        """Queue ``job`` behind the jobs already queued."""
        if not self.queued:
            self.progress = time.monotonic()
        self.queued += 1
        self.pending[job] = None
        job.runner = self
        self.spill_asked = False
        if self.stopping:
            # Nothing may queue behind the stop: the thread would never answer it.
            job.error = self.stopped_error()
            self._post(self, [job])
            return
        self._jobs.put(job)

    def running_long(self) -> bool:
        """Whether the thread has been on its current job for ``LONG_JOB`` or more.

        Read from the event loop without the lock: the thread may start or end a job at
        that moment, which only makes one dispatch decision pick another connection.
        Unlike the time of the last answer delivered, this does not grow while the
        event loop itself is busy (a burst of tasks, a garbage collection).
        """
        return self._current is not None and perf_counter() - self._started >= LONG_JOB

    def delivered(self, jobs: list[Job], now: float) -> None:
        """The bridge has delivered the answers to ``jobs``."""
        self.queued -= len(jobs)
        self.progress = now
        self.answered += len(jobs)
        pending = self.pending
        for job in jobs:
            pending.pop(job, None)

    def serving(self) -> None:
        """Its connection has opened: it takes jobs from now on."""
        self._opened = True
        self.answered = 0
        if self.phase is Phase.OPENING:
            self.phase = Phase.SERVING

    @protected
    def fail_pending(self) -> None:
        """Once the thread has ended unexpectedly and everything it answered has been
        delivered: answer every job still unanswered with :class:`ConnectionLost`, and
        every job queued from now on."""
        self.phase = Phase.LOST
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        failed = [job for job in self.pending if not job.done]
        for job in failed:
            job.error = self._lost_error()
        if failed:
            self._post(self, failed)

    def stopped_error(self) -> PoolError:
        """The error of a call that reaches this worker once it is stopping."""
        if self.phase is Phase.LOST:
            return self._lost_error()
        if self._refusal is not None:
            return type(self._refusal)(*self._refusal.args)
        return PoolClosed(
            f"{self.thread_name}: the pool closed (or replaced this connection) before the "
            "call could run; it did not run"
        )

    def _lost_error(self) -> ConnectionLost:
        return ConnectionLost(
            f"{self.thread_name}: the connection's worker thread ended unexpectedly; the "
            "pool replaces the connection"
        )

    @protected
    def cancel(self, job: Job) -> None:
        """Stop ``job``: skip it if it has not started, interrupt SQLite if it is running.

        A job that has finished is left alone. Jobs that must complete once queued (a
        COMMIT, a reset) are not interruptible.
        """
        if not job.interruptible or job.done:
            return
        runner = job.runner
        if runner is not self and runner is not None:
            runner.cancel(job)  # it moved on to another connection
            return
        job.cancelled = True
        with self._lock:
            if self._current is job and self.conn is not None:
                self.conn.interrupt()
                self.interrupted += 1

    @protected
    def take_movable(self) -> list[Job]:
        """Take back the movable jobs queued here that the thread has not started, in
        the order they were queued, for another connection to run."""
        with self._lock:
            taken = [
                job
                for job in self.pending
                if job.movable and not job.started and job.runner is self and not job.cancelled
            ]
            for job in taken:
                job.runner = None
        if taken:
            self.queued -= len(taken)
            pending = self.pending
            for job in taken:
                del pending[job]
        return taken

    @protected
    def stop(
        self, refusal: PoolError | None = None, *, close_after: threading.Event | None = None
    ) -> None:
        """Queue the stop: jobs queued before it still run, none may be queued after;
        those are refused with ``refusal`` (by default :class:`PoolClosed`). With
        ``close_after``, the thread waits for that event (up to ``CLOSE_AFTER_SECONDS``)
        before it closes its connection."""
        if self.phase is Phase.OPENING or self.phase is Phase.SERVING:
            self.phase = Phase.STOPPING
            self._refusal = refusal
            self._close_after = close_after
            self._jobs.put(_STOP)

    def inherited(self) -> None:
        """In a child process just forked: this worker's thread is not there; refuse
        every call (the pool never touches the connection again)."""
        self.phase = Phase.STOPPING

    def abandon(self) -> bool:
        """Once the call that was to run :meth:`run` has ended: True if run() never
        started, and now never will."""
        with self._start_lock:
            if self._ran:
                return False
            self._abandoned = True
            return True

    # -- worker thread side ----------------------------------------------------------

    def run(self) -> None:
        """The thread's body: serve jobs (the first opens the connection) until stopped."""
        with self._start_lock:
            if self._abandoned:
                return
            self._ran = True
        thread = threading.current_thread()
        previous_name = thread.name
        thread.name = self.thread_name
        try:
            self._serve()
        finally:
            # Jobs that finished before an unexpected end still get their answers.
            self._flush()
            conn = self.conn
            if conn is not None:
                if self._close_after is not None:
                    self._close_after.wait(CLOSE_AFTER_SECONDS)
                self._close(conn)
            thread.name = previous_name
            if self._on_exit is not None:
                self._on_exit(self)

    def current_cancelled(self) -> bool:
        """Thread side: whether the caller of the running job has been cancelled."""
        current = self._current
        return current is not None and current.cancelled

    def _progress(self) -> int:
        # A long statement is running: answer the jobs that finished before it now
        # rather than when it ends, and let the jobs waiting behind it move on.
        if self._finished:
            self._flush()
        current = self._current
        if current is None:
            return 0
        if current.cancelled:
            return 1
        on_long = self._on_long
        if (
            on_long is not None
            and not self.spill_asked
            and not self._jobs.empty()
            and perf_counter() - self._started > LONG_JOB
        ):
            self.spill_asked = True
            on_long(self)
        return 0

    def _serve(self) -> None:
        get = self._jobs.get
        get_nowait = self._jobs.get_nowait
        run = self._run
        while True:
            try:
                item = get(timeout=IDLE_POLL_SECONDS)
            except queue.Empty:
                if self._alive():
                    continue
                logger.warning(
                    "%s: its event loop is gone but the pool was never closed; "
                    "closing the connection",
                    self.thread_name,
                )
                return
            stop = False
            while True:
                if isinstance(item, _Stop):
                    stop = True
                else:
                    try:
                        ran = run(item)
                    except BaseException as exc:
                        # Only an exception raised into this thread from outside lands
                        # here (run() keeps a job's own): the thread ends, its job
                        # answered.
                        item.error = self._lost_error()
                        item.error.__cause__ = exc
                        self._finished.append(item)
                        raise
                    if not ran:  # it moved to another connection
                        try:
                            item = get_nowait()
                        except queue.Empty:
                            break
                        continue
                    self._finished.append(item)
                    if len(self._finished) >= MAX_BATCH and not self._flush():
                        return
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            if not self._flush():
                return
            if stop or self.conn is None:  # stopped, or the opening job failed
                return

    def _flush(self) -> bool:
        """Post the finished jobs not yet posted; False if the event loop is gone."""
        finished = self._finished
        if not finished:
            return True
        self._finished = []
        return self._post(self, finished)

    def _run(self, job: Job) -> bool:
        """Run ``job``; False if it moved to another connection before it started."""
        lock = self._lock
        with lock:
            if job.runner is not self:
                return False
            job.started = True
            if not job.cancelled:
                self._current = job
        if job.cancelled:
            job.error = _SKIPPED
            return True
        # On a reader, a job that may begin a read transaction (cleanup jobs, which are
        # not interruptible, never do) marks the connection reading until it ends.
        tracked = self.transactions is None and job.interruptible
        if tracked and not self.reading:
            self.read_since = time.monotonic()
            self.reads += 1
            self.reading = True
        started = self._started = perf_counter()
        try:
            job.result = job.fn(self, *job.args)
        except BaseException as exc:
            transactions = self.transactions
            exc = hint_read_only(exc) if transactions is None else transactions.caller_error(exc)
            job.error = _detached(exc)
            if self.broken is None:
                reason = broken_reason(exc)
                if reason is not None:
                    self.broken = reason
                    if self._on_broken is not None:
                        self._on_broken(self)
        finally:
            with lock:
                self._current = None
            if job.interruptible:  # a statement, not the opening or a cleanup
                self.cost.add(perf_counter() - started)
            if self.reading and not self.cursors:
                conn = self.conn
                if conn is None or not conn.in_transaction:
                    self.reading = False
        return True

    def open(self) -> None:
        """Job: open the connection. Queued first; if it fails the thread returns."""
        conn = self._opener()
        conn.set_progress_handler(self._progress, PROGRESS_INSTRUCTIONS)
        self.conn = conn

    def _close(self, conn: sqlite3.Connection) -> None:
        self.conn = None
        for cursor in self.cursors.values():
            cursor.close()
        self.cursors.clear()
        try:
            conn.close()
        except sqlite3.Error:
            logger.exception("%s: closing the connection failed", self.thread_name)


def _detached(exc: BaseException) -> BaseException:
    """``exc`` without this thread's frames' locals, ready to be raised on the loop.

    The frames of the job that raised it may hold SQLite objects (a cursor mid-statement
    in a user's ``run_sync`` function, say). Clearing them here finalizes those objects
    on their own thread; left in the traceback, they would be finalized by whichever
    thread collects them, which then blocks on this connection. Our own frame is dropped
    from the traceback: it refers back to the job that holds the exception.
    """
    tb = exc.__traceback__
    if tb is not None:
        tb = tb.tb_next
        if tb is not None:
            traceback.clear_frames(tb)
        exc.__traceback__ = tb
    return exc


class _SkippedJob(Exception):
    """Stored on a job that was cancelled before it started; nobody waits for it."""


_SKIPPED: Final = _SkippedJob()
