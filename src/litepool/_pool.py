"""The pool: a task group that owns one writer and N reader connections."""

from __future__ import annotations

import enum
import functools
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Mapping
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from . import _fork
from ._backup import DEFAULT_BACKUP_PAGES, Target, check_backup_args
from ._bridge import Bridge, current_bridge
from ._connection import (
    CONNECTION,
    READ,
    WRITE,
    Connection,
    check_params_seq,
    check_sql,
)
from ._errors import DatabaseLost, PoolClosed, PoolForked, TransactionAborted
from ._file import DatabaseFile
from ._housekeeping import DEFAULT_WAL_MAX_BYTES, DEFAULT_WAL_RESET_TIMEOUT, Housekeeper
from ._interrupt import protected
from ._lane import Lane
from ._leaks import LeakTracker
from ._options import (
    DEFAULT_ACQUIRE_TIMEOUT,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_LIFETIME,
    DEFAULT_READERS,
    Configure,
    PoolOptions,
    RowFactory,
    check_int,
    check_timeout,
    make_options,
    open_connection,
)
from ._rows import Row
from ._statements import (
    ExecuteResult,
    Params,
    Progress,
    backup_job,
    check_job,
    checkpoint_job,
    commit_or_rollback,
    execute_job,
    executemany_job,
    fetchall_job,
    fetchone_job,
    fetchval_job,
    in_transaction,
    open_job,
    optimize_job,
    reset,
)
from ._stats import PoolStatistics
from ._upkeep import Upkeep, lifetime_deadline
from ._wal import CheckpointResult, WalState, check_mode
from ._worker import Job, Worker

logger = logging.getLogger("litepool")


class _Unset(enum.Enum):
    """The default of ``timeout=`` arguments: use the pool's ``acquire_timeout``."""

    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


def open_pool(
    database: str | os.PathLike[str],
    *,
    readers: int = DEFAULT_READERS,
    acquire_timeout: float | None = DEFAULT_ACQUIRE_TIMEOUT,
    pragmas: Mapping[str, int | float | str | bool | None] | None = None,
    configure: Configure | None = None,
    row_factory: RowFactory | type[Row] | type[dict[Any, Any]] | None = None,
    uri: bool = False,
    name: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cached_statements: int = 128,
    detect_types: int = 0,
    wal_max_bytes: int | None = DEFAULT_WAL_MAX_BYTES,
    wal_reset_timeout: float | None = DEFAULT_WAL_RESET_TIMEOUT,
    leak_timeout: float | None = None,
    max_lifetime: float | None = DEFAULT_MAX_LIFETIME,
    max_idle: float | None = None,
    check: bool = False,
    optimize_interval: float | None = None,
) -> Pool:
    """Describe a pool; ``async with`` it to open it. Arguments are checked right here.

    :param database: the database file, ``":memory:"`` for an in-memory database shared by
        every connection of the pool, or an SQLite URI with ``uri=True``.
    :param readers: how many read-only connections serve :meth:`Pool.read`.
    :param acquire_timeout: seconds a checkout may wait before it raises
        :class:`~litepool.PoolTimeout`; ``None`` waits for as long as it takes.
    :param pragmas: merged over :data:`litepool.DEFAULT_PRAGMAS`; a value of ``None``
        removes a default. Applied to every connection (``journal_mode`` to the writer).
    :param configure: called with each new :class:`sqlite3.Connection` on its own thread,
        after the pragmas (register SQL functions, collations, ...).
    :param row_factory: how rows come back: tuples by default; :class:`~litepool.Row`
        (tuples whose columns are also read by name: ``row.name``, ``row["name"]``),
        ``dict``, ``sqlite3.Row``, or any ``(cursor, row) -> object`` callable. ``Row``
        and ``dict`` refuse to guess between two columns of one name
        (:class:`~litepool.AmbiguousColumn`).
    :param uri: interpret ``database`` as an SQLite URI.
    :param name: the pool's name in errors, logs and statistics.
    :param chunk_size: rows per round trip for :meth:`Connection.iterate`.
    :param cached_statements: prepared statements cached per connection.
    :param detect_types: passed to :func:`sqlite3.connect`: ``sqlite3.PARSE_DECLTYPES``
        and/or ``sqlite3.PARSE_COLNAMES`` turn values into Python objects with the
        converters registered by :func:`sqlite3.register_converter` (a registry of the
        whole process, as are the adapters of :func:`sqlite3.register_adapter`). ``0``
        (the default) converts nothing.
    :param wal_max_bytes: the size, in bytes, that the pool's housekeeper keeps the WAL
        file under: past three quarters of it, the housekeeper resets the WAL, taking its turn on
        the writer and waiting for the read transactions that began before it to end
        (see the operations guide). ``None`` turns housekeeping off, leaving
        checkpoints to SQLite's own automatic ones. At least 64 KiB.
    :param wal_reset_timeout: the longest, in seconds, a WAL reset keeps the writer
        while it waits for read transactions that began before it (readers that begin
        meanwhile do not hold it up). A read transaction that outlasts it makes the reset
        give up (no reader is ever stopped): a warning names who holds it,
        ``statistics().wal_reset_timeouts`` counts it, and the WAL grows until it ends.
        ``None`` waits as long as it takes.
    :param leak_timeout: seconds after which a checkout still held is logged as a
        possible leak on the ``litepool`` logger, with its task's name and the stack
        where it was checked out (logged again when it comes back). ``None`` (the
        default) records nothing.
    :param max_lifetime: seconds after which a reader connection is replaced by a fresh
        one, in the background, once no borrower holds it; each reader's lifetime is
        shortened by up to 10% at random so that readers do not expire together.
        ``None`` keeps readers for the life of the pool.
    :param max_idle: seconds a reader may sit unused, after serving something, before it
        is replaced by a fresh one (which frees its page cache and prepared
        statements). ``None`` (the default) never replaces a reader for idleness.
    :param check: validate a connection with a round trip (``PRAGMA schema_version``
        and a look at the database file's identity) on every checkout; a connection that
        fails is replaced and the checkout takes another. Off by default: broken
        connections are found by the errors they raise anyway, and the round trip costs
        a thread hand-off on every checkout.
    :param optimize_interval: seconds between runs of ``PRAGMA optimize`` on the writer
        while the pool is open (it always runs once as the pool closes). ``None`` (the
        default) runs it only then.
    :raises TypeError: for an argument of the wrong type, naming it.
    :raises ValueError: for an argument out of range, naming it.
    """
    options = make_options(
        database,
        readers=readers,
        acquire_timeout=acquire_timeout,
        pragmas=pragmas,
        configure=configure,
        row_factory=row_factory,
        uri=uri,
        name=name,
        chunk_size=chunk_size,
        cached_statements=cached_statements,
        detect_types=detect_types,
        wal_max_bytes=wal_max_bytes,
        leak_timeout=leak_timeout,
        wal_reset_timeout=wal_reset_timeout,
        max_lifetime=max_lifetime,
        max_idle=max_idle,
        check=check,
        optimize_interval=optimize_interval,
    )
    return Pool(options)


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"
    FORKED = "forked"  # a copy inherited by a child process through os.fork()


class Pool:
    """A SQLite connection pool scoped to an ``async with`` block. Create it with
    :func:`open_pool`.

    Entering the block opens a task group, then the writer connection (which sets up
    WAL), then the readers, each on its own worker thread. Leaving the block closes the
    pool: waiting and later checkouts raise :class:`~litepool.PoolClosed`, statements
    already queued finish, and every worker thread has returned before the block exits.
    """

    def __init__(self, options: PoolOptions) -> None:
        self._options = options
        self._state = _State.NEW
        self._bridge: Bridge | None = None
        self._task_group: TaskGroup | None = None
        self._workers: list[Worker] = []
        self._threads = 0  # worker threads started and not yet returned
        self._all_stopped: anyio.Event | None = None
        self._read_lane: Lane | None = None
        self._write_lane: Lane | None = None
        self._pid = 0
        self._wal = WalState()
        self._housekeeper: Housekeeper | None = None
        self._leaks: LeakTracker | None = None
        self._opened = 0
        self._closed_connections = 0
        self._replaced = 0
        self._lost = 0
        self._failed = 0
        # Counts of workers whose threads have returned, kept when they are dropped.
        self._retired_interrupted = 0
        self._retired_rollbacks = 0
        self._readers_target = options.readers
        self._reader_number = 0
        self._upkeep: Upkeep | None = None
        self._resize_lock: anyio.Lock | None = None
        self._file = DatabaseFile(options.name, options.database, options.uri)
        # Set once the database file is found deleted or replaced: why.
        self._vanished: str | None = None

    def __repr__(self) -> str:
        return (
            f"<litepool.Pool {self._options.name!r} {self._state.value} "
            f"readers={self._readers_target}>"
        )

    if not TYPE_CHECKING:
        # Only at run time: for type checkers a Pool is not awaitable, and they say so.

        def __await__(self) -> Any:
            raise TypeError(
                f"open_pool() returns pool {self.name!r} to be opened with 'async with', "
                "which also closes it: write 'async with litepool.open_pool(...) as "
                "pool:' and use the pool inside the block"
            )

    @property
    def name(self) -> str:
        """The pool's name, used in errors and statistics."""
        return self._options.name

    @property
    def closed(self) -> bool:
        """True once the pool's block has been left (or never entered)."""
        return self._state is not _State.OPEN

    # -- checkouts -------------------------------------------------------------------

    def read(self, *, timeout: float | _Unset | None = _UNSET) -> Checkout:
        """Check out a reader connection (read-only) for an ``async with`` block.

        Waits first come, first served for up to ``timeout`` seconds (default: the pool's
        ``acquire_timeout``), then raises :class:`~litepool.PoolTimeout`.

        Cancellation: a task cancelled while it waits, or at the moment a connection is
        handed to it, holds nothing afterwards. A task cancelled inside the block returns
        its connection; a statement still running is interrupted first.
        """
        return self._checkout(READ, timeout)

    def write(self, *, timeout: float | _Unset | None = _UNSET) -> Checkout:
        """Check out the writer inside a transaction (``BEGIN IMMEDIATE``).

        Writers queue first come, first served. The transaction begins with the first
        statement, commits when the block ends normally and rolls back when it ends with
        an exception or a cancellation, so a read-modify-write inside it cannot lose an
        update.

        Cancellation: once the block's body has finished, the COMMIT is shielded from
        anyio cancellation and its outcome is reported; a native
        ``asyncio.Task.cancel()`` arriving then still lets the COMMIT finish. A statement
        cancelled inside the block voids the transaction
        (:class:`~litepool.TransactionAborted`), which is rolled back.
        """
        return self._checkout(WRITE, timeout)

    def connection(self, *, timeout: float | _Unset | None = _UNSET) -> Checkout:
        """Check out the writer with no automatic transaction (autocommit mode).

        For schema changes, ``PRAGMA``\\ s, ``VACUUM`` and transactions you manage with
        ``BEGIN`` / :meth:`Connection.commit`. A transaction still open when the block
        ends is rolled back.
        """
        return self._checkout(CONNECTION, timeout)

    def _checkout(self, kind: str, timeout: float | _Unset | None) -> Checkout:
        return Checkout(self, kind, self._timeout(timeout))

    def _timeout(self, timeout: float | _Unset | None) -> float | None:
        if timeout is _UNSET:
            return self._options.acquire_timeout
        return check_timeout(timeout, "timeout")

    # -- single statements ---------------------------------------------------------------

    async def fetchone(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> Any:
        """Run one query on a reader and return its first row, or None.

        The fast path for a single read: the statement is queued on a reader that no
        checkout holds (waiting first come, first served behind checkouts if every reader
        is held), and the reader is free for others as soon as the statement is queued.
        Statements from many tasks gather on few reader threads, which answer them in
        batches.

        Cancellation: as for a statement inside :meth:`read`; nothing is held afterwards.
        """
        check_sql(sql, params)
        wait = self._timeout(timeout)
        return await self._statement(READ, fetchone_job, (sql, params), wait, "fetchone")

    async def fetchall(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> list[Any]:
        """Run one query on a reader and return every row; see :meth:`fetchone`."""
        check_sql(sql, params)
        wait = self._timeout(timeout)
        rows: list[Any] = await self._statement(READ, fetchall_job, (sql, params), wait, "fetchall")
        return rows

    async def fetchval(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> Any:
        """Run one query on a reader and return the first column of its first row, or
        None; see :meth:`fetchone`."""
        check_sql(sql, params)
        wait = self._timeout(timeout)
        return await self._statement(READ, fetchval_job, (sql, params), wait, "fetchval")

    async def execute(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> ExecuteResult:
        """Run one statement on the writer as a transaction of its own.

        ``BEGIN IMMEDIATE``, the statement and ``COMMIT`` run in one round trip; if the
        statement fails, the transaction is rolled back and the error raised. It queues
        first come, first served with :meth:`write` checkouts, never inside one.

        Cancellation: if the statement had not started it never runs; if it was running
        it is interrupted and rolled back; a cancellation that arrives after the COMMIT
        leaves it committed. Treat a cancelled call as one that may have committed.
        """
        check_sql(sql, params)
        wait = self._timeout(timeout)
        result: ExecuteResult = await self._statement(
            WRITE, in_transaction, (wait, execute_job, (sql, params)), wait, "execute"
        )
        return result

    async def executemany(
        self,
        sql: str,
        seq_of_params: Iterable[Params],
        *,
        timeout: float | _Unset | None = _UNSET,
    ) -> ExecuteResult:
        """Run one statement once per parameter set, all in one transaction of its own;
        see :meth:`execute`."""
        check_sql(sql, ())
        check_params_seq(seq_of_params)
        wait = self._timeout(timeout)
        result: ExecuteResult = await self._statement(
            WRITE,
            in_transaction,
            (wait, executemany_job, (sql, seq_of_params)),
            wait,
            "executemany",
        )
        return result

    @protected
    async def _statement(
        self,
        kind: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        wait: float | None,
        method: str,
    ) -> Any:
        """Queue ``fn(worker, *args)`` on a connection of the ``kind`` lane that no
        checkout holds, waiting up to ``wait`` seconds for one, and return its result.
        ``wait`` has been checked by the caller before anything else ran."""
        lane = self._lane(kind)
        job = Job(fn, args)
        worker = lane.try_dispatch(job)
        if worker is None:
            worker = await lane.dispatch(job, wait, f"pool.{method}()")
        bridge = self._bridge
        assert bridge is not None
        await bridge.wait(worker, job)
        error = job.error
        if error is not None:
            job.error = None
            raise error
        return job.result

    def _lane(self, kind: str) -> Lane:
        lane = self._read_lane if kind == READ else self._write_lane
        if lane is None or self._state is not _State.OPEN or self._vanished is not None:
            if self._state is _State.FORKED:
                raise self._forked_error()
            if self._vanished is not None and self._state is _State.OPEN:
                raise DatabaseLost(self._vanished)
            raise PoolClosed(
                f"pool {self.name!r} is not open; use it inside 'async with open_pool(...)'"
            )
        return lane

    # -- operations ------------------------------------------------------------------

    async def checkpoint(
        self, mode: str = "PASSIVE", *, timeout: float | _Unset | None = _UNSET
    ) -> CheckpointResult:
        """Run a WAL checkpoint on the writer now, between two writers.

        :param mode: ``"PASSIVE"`` (copy what no reader needs; never waits),
            ``"FULL"`` (wait for readers and writers, then copy everything),
            ``"RESTART"`` (as FULL, then wait until the next writer can start the WAL
            from its beginning) or ``"TRUNCATE"`` (as RESTART, then cut the WAL file to
            zero bytes). The waiting modes wait for at most the connection's
            ``busy_timeout``.
        :param timeout: how long to wait for the writer (default: ``acquire_timeout``).
        :returns: ``(busy, log, checkpointed)`` as SQLite reports them; ``busy`` is True
            if the checkpoint could not finish. On a database that is not in WAL mode,
            ``(False, -1, -1)``.

        The checkpoint queues behind checkouts of the writer like :meth:`execute`, and
        cancellation behaves the same way.
        """
        mode = check_mode(mode)
        wait = self._timeout(timeout)
        result: CheckpointResult = await self._statement(
            WRITE, checkpoint_job, (mode, self._wal), wait, "checkpoint"
        )
        return result

    async def backup(
        self,
        target: Target,
        *,
        pages: int = DEFAULT_BACKUP_PAGES,
        progress: Progress | None = None,
        timeout: float | _Unset | None = _UNSET,
    ) -> None:
        """Copy the database, as one consistent snapshot, while the pool keeps serving.

        :param target: the file to write (created, or overwritten), or an open
            :class:`sqlite3.Connection` created with ``check_same_thread=False`` (the
            copy runs on one of the pool's threads).
        :param pages: pages copied per step; ``-1`` copies everything in one step.
        :param progress: called on the event loop after each step as
            ``progress(remaining, total)``, in pages; the next step waits for it to
            return. An exception it raises stops the copy and is raised here.
        :param timeout: how long to wait for a reader (default: ``acquire_timeout``).

        The copy holds one reader for its duration and does not block writers.
        Cancellation stops it after the step that is running; the target is then left
        incomplete.
        """
        target = check_backup_args(target, pages, progress)
        self._lane(READ)  # fail now if the pool is not open
        async with self.read(timeout=timeout) as conn:
            await conn._call(backup_job, target, pages, progress)

    # -- introspection ---------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's counts; see :class:`~litepool.PoolStatistics`."""
        read, write = self._read_lane, self._write_lane
        if read is None or write is None:
            raise PoolClosed(f"pool {self.name!r} has not been opened")
        wal = self._wal
        return PoolStatistics(
            name=self.name,
            closed=self.closed,
            read=read.statistics(),
            write=write.statistics(),
            interrupted=self._retired_interrupted
            + sum(worker.interrupted for worker in self._workers),
            rollbacks=self._retired_rollbacks + sum(worker.rollbacks for worker in self._workers),
            connections_opened=self._opened,
            connections_closed=self._closed_connections,
            connections_replaced=self._replaced,
            connections_lost=self._lost,
            connections_failed=self._failed,
            checkpoints=wal.checkpoints,
            checkpoints_busy=wal.busy,
            wal_reset_timeouts=wal.reset_timeouts,
            checkpoint_mode=wal.mode,
            wal_bytes=wal.wal_bytes,
            wal_bytes_peak=wal.peak,
        )

    # -- life cycle --------------------------------------------------------------------

    @protected
    async def __aenter__(self) -> Pool:
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"pool {self.name!r} was already opened; each open_pool() result can be "
                "entered once"
            )
        self._state = _State.OPEN
        self._pid = os.getpid()
        _fork.register(self)
        bridge = self._bridge = current_bridge()
        options = self._options
        writer = self._new_worker(bridge, writer=True)
        readers = [self._new_worker(bridge, writer=False) for _ in range(options.readers)]
        self._all_stopped = anyio.Event()
        self._resize_lock = anyio.Lock()
        # Worker threads live as long as the pool: they must not take tokens from anyio's
        # default limiter, which the rest of the application shares.
        self._thread_limiter = anyio.CapacityLimiter(1 + options.readers)
        task_group = self._task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            # The writer first: it creates the database and switches it to WAL, which a
            # read-only connection cannot do. Then the readers, all at once.
            await self._start_workers(task_group, bridge, [writer])
            transactions = writer.transactions
            assert transactions is not None
            self._wal.resolve(self._file.path, transactions.wal)
            await self._start_workers(task_group, bridge, readers)
        except BaseException as exc:
            self._state = _State.CLOSED
            _fork.unregister(self)
            await self._stop_workers()
            if isinstance(exc, sqlite3.Error):
                exc.add_note(f"while opening pool {self.name!r} on {options.database!r}")
            raise
        write_lane = self._write_lane = Lane(WRITE, self.name, [writer], bridge)
        read_lane = self._read_lane = Lane(READ, self.name, readers, bridge)
        write_lane.retired = read_lane.retired = self._retired
        self._start_operations(task_group, bridge, read_lane, write_lane)
        return self

    def _start_operations(
        self, task_group: TaskGroup, bridge: Bridge, read_lane: Lane, write_lane: Lane
    ) -> None:
        """Start the housekeeper and the leak tracker, if the options ask for them."""
        options = self._options
        upkeep = self._upkeep = Upkeep(self, read_lane, write_lane)
        task_group.start_soon(upkeep.run, name=f"litepool[{self.name}] upkeep")
        if options.wal_max_bytes is not None:
            housekeeper = self._housekeeper = Housekeeper(
                self.name,
                write_lane,
                read_lane,
                bridge,
                self._wal,
                options.wal_max_bytes,
                options.wal_reset_timeout,
            )
            task_group.start_soon(housekeeper.run, name=f"litepool[{self.name}] housekeeper")
        if options.leak_timeout is not None:
            leaks = self._leaks = LeakTracker(self.name, options.leak_timeout)
            read_lane.holders = functools.partial(leaks.holders, READ)
            write_lane.holders = functools.partial(leaks.holders, WRITE)
            task_group.start_soon(leaks.run, name=f"litepool[{self.name}] leak detection")

    def _forked_error(self) -> PoolForked:
        return PoolForked(
            f"pool {self.name!r} was opened in process {self._pid}; this is process "
            f"{os.getpid()}, a child created by os.fork(), which must not use its parent's "
            "SQLite connections. Open a new pool in the child."
        )

    def _after_fork(self) -> None:
        """In a child process just forked: refuse every use, touch no connection."""
        if self._state is not _State.OPEN:
            return
        self._state = _State.FORKED
        for lane in (self._read_lane, self._write_lane):
            if lane is not None:
                lane.closed = True
        _fork.abandon(self._workers)

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._state is _State.FORKED:
            raise self._forked_error()
        self._state = _State.CLOSED
        _fork.unregister(self)
        for task in (self._upkeep, self._housekeeper, self._leaks):
            if task is not None:
                task.stop()
        write_lane = self._write_lane
        writer = None if write_lane is None else write_lane.free()
        if writer is not None:
            # Queued ahead of the stop, not awaited: it runs before the writer closes.
            writer.submit(Job(optimize_job, interruptible=False))
        for lane in (self._read_lane, write_lane):
            if lane is not None:
                lane.close()
        await self._stop_workers()

    @protected
    async def _stop_workers(self) -> None:
        """Stop every worker, wait for its thread to return, then leave the task group."""
        for worker in self._workers:
            worker.stop()
        all_stopped = self._all_stopped
        assert all_stopped is not None
        assert self._task_group is not None
        interrupted: BaseException | None = None
        while self._threads:
            try:
                with anyio.CancelScope(shield=True):
                    await all_stopped.wait()
            except BaseException as exc:
                # A native asyncio cancellation (as at asyncio.run's shutdown) goes through
                # shields. The threads are stopping: wait for them all the same, then
                # raise it.
                interrupted = interrupted or exc
        try:
            # Every thread has returned, so this does not wait for them. The body's
            # exception is not passed in: the task group would wrap it in an
            # ExceptionGroup on trio.
            await self._task_group.__aexit__(None, None, None)
        finally:
            if interrupted is not None:
                raise interrupted

    def _new_worker(self, bridge: Bridge, *, writer: bool) -> Worker:
        options = self._options
        if writer:
            role = "writer"
        else:
            self._reader_number += 1
            role = f"reader-{self._reader_number}"
        worker = Worker(
            role,
            f"litepool[{options.name}] {role}",
            functools.partial(open_connection, options, writer=writer, database_file=self._file),
            bridge.post,
            bridge.alive,
        )
        worker.on_broken = functools.partial(bridge.call_soon, self._connection_broken)
        worker.on_exit = functools.partial(bridge.call_soon, self._thread_exited)
        return worker

    @protected
    async def _start_workers(
        self, task_group: TaskGroup, bridge: Bridge, workers: list[Worker]
    ) -> None:
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
            # A thread per connection for as long as the pool lives, never more than
            # that: and not borrowed from anyio's default limiter, which the rest of the
            # application shares.
            limiter = self._thread_limiter
            limiter.total_tokens = max(limiter.total_tokens, self._threads)
            task_group.start_soon(self._serve, worker, name=worker.thread_name)
        for worker, job in zip(workers, jobs, strict=True):
            await bridge.wait(worker, job)
            if job.error is not None:
                raise job.error
            self._opened += 1
            worker.opened = True
            worker.used = False
            worker.expires = (
                math.inf
                if worker.role == "writer"
                else lifetime_deadline(monotonic(), self._options.max_lifetime)
            )

    @protected
    async def _open_worker(self, *, writer: bool) -> Worker:
        """Open one more connection while the pool is open, for a lane to take in.

        Cancellation, or a failure to open, leaves nothing behind: the new worker is
        stopped.
        """
        bridge, task_group = self._bridge, self._task_group
        if self._state is not _State.OPEN or bridge is None or task_group is None:
            raise PoolClosed(f"pool {self.name!r} is closed")
        worker = self._new_worker(bridge, writer=writer)
        try:
            await self._start_workers(task_group, bridge, [worker])
            if self._state is not _State.OPEN:
                raise PoolClosed(f"pool {self.name!r} was closed while a connection opened")
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
            await anyio.to_thread.run_sync(worker.run, limiter=self._thread_limiter)
            returned = True
        except Exception as exc:
            returned = True
            if self._state is not _State.OPEN or worker.stopping:
                raise
            # The thread ended between jobs without being stopped: the pool keeps
            # serving on the other connections and replaces this one.
            logger.error(
                "pool %r: %s ended unexpectedly; replacing its connection",
                self.name,
                worker.thread_name,
                exc_info=exc,
            )
            if self._bridge is not None:
                self._bridge.drain()  # what the thread answered before it ended
            worker.fail_pending()
            self._lose(worker)
        finally:
            # Normally the thread has reported its return by now (the report is queued
            # before the call returns). It never will if this task was cancelled
            # natively before the thread took up worker.run, or if the thread died
            # before it could report.
            if worker.abandon() or returned:
                self._thread_exited(worker)

    @protected
    def _thread_exited(self, worker: Worker) -> None:
        """Loop side: ``worker``'s thread has returned (or will never run)."""
        if worker.exited:
            return
        worker.exited = True
        if worker.opened:
            worker.opened = False
            self._closed_connections += 1
        if self._state is _State.OPEN:
            # Its counts are final: keep them, and the worker need not be kept.
            self._retired_interrupted += worker.interrupted
            self._retired_rollbacks += worker.rollbacks
            self._workers.remove(worker)
        self._threads -= 1
        if not self._threads:
            assert self._all_stopped is not None
            self._all_stopped.set()

    # -- replacing connections -------------------------------------------------------

    def _lane_of(self, worker: Worker) -> Lane | None:
        return self._write_lane if worker.role == "writer" else self._read_lane

    @protected
    def _connection_broken(self, worker: Worker) -> None:
        """Loop side: a job on ``worker`` failed in a way that means it is broken."""
        if self._state is not _State.OPEN or worker.retiring or not worker.opened:
            return  # a connection that never opened is reported by its opener
        if self.check_file():
            return
        logger.warning(
            "pool %r: %s is broken (%s); replacing it",
            self.name,
            worker.thread_name,
            worker.broken,
        )
        self._lose(worker)

    @property
    def watches_file(self) -> bool:
        """Whether there is a database file to watch (not an in-memory database)."""
        return self._file.path is not None

    def check_file(self) -> bool:
        """Loop side: whether the database file was found deleted or replaced (now or
        before); the first time, every call is refused from then on."""
        if self._vanished is not None:
            return True
        reason = self._file.changed()
        if reason is None or self._state is not _State.OPEN:
            return False
        self._vanished = reason
        logger.error("%s", reason)
        error = DatabaseLost(reason)
        for lane in (self._read_lane, self._write_lane):
            if lane is not None:
                lane.close(error)
        # Calls queued now finish; later ones, and calls on checked-out handles, raise.
        for worker in self._workers:
            worker.stop(error)
        return True

    @protected
    def _lose(self, worker: Worker) -> None:
        """Take a broken connection out of service; the upkeep task replaces it."""
        lane = self._lane_of(worker)
        if lane is None or worker.retiring or worker not in lane.workers:
            return
        self._lost += 1
        lane.retire(worker)
        if self._upkeep is not None:
            self._upkeep.wake()

    @protected
    def _retired(self, worker: Worker) -> None:
        """A connection has left its lane: stop it behind the jobs queued on it."""
        worker.stop()
        if self._upkeep is not None:
            self._upkeep.wake()

    async def resize(self, readers: int) -> None:
        """Change the number of reader connections while the pool serves.

        Growing opens the new readers (concurrently with the pool's work) and returns
        once they serve; if one fails to open, none is added and the error is raised.
        Shrinking takes free readers out of service at once and busy ones when their
        borrowers give them back, letting statements already queued on them finish;
        it does not wait for their threads to end.

        Cancellation: a resize cancelled while new readers open adds none of them, and
        the pool keeps its former size.
        """
        readers = check_int(readers, "readers", 1)
        self._lane(READ)  # fail now if the pool is not open, before waiting for the lock
        lock = self._resize_lock
        assert lock is not None
        async with lock:
            lane = self._lane(READ)
            current = self._readers_target
            if readers > current:
                opened: list[Worker] = []
                try:
                    for _ in range(readers - current):
                        opened.append(await self._open_worker(writer=False))
                except BaseException:
                    for worker in opened:
                        worker.stop()
                    raise
                for worker in opened:
                    lane.add(worker)
            elif readers < current:
                surplus = len(lane.active()) - readers
                if surplus > 0:
                    # The least busy go first: free ones, then those with least queued.
                    ranked = sorted(lane.active(), key=lambda w: (w.held, w.queued))
                    for worker in ranked[:surplus]:
                        lane.retire(worker)
            self._readers_target = readers
            if self._upkeep is not None:
                self._upkeep.wake()


class Checkout:
    """The ``async with`` target returned by :meth:`Pool.read`, :meth:`Pool.write` and
    :meth:`Pool.connection`; it yields a :class:`Connection`."""

    __slots__ = (
        "_conn",
        "_kind",
        "_lane",
        "_line",
        "_pool",
        "_start",
        "_timeout",
        "_where",
        "task",
    )

    def __init__(self, pool: Pool, kind: str, timeout: float | None) -> None:
        self._pool = pool
        self._kind = kind
        self._timeout = timeout
        self._lane: Lane | None = None
        self._conn: Connection | None = None
        self._start = 0.0
        #: The task that entered the checkout (see Lane.acquire).
        self.task: object = None
        self._where = ""
        self._line = 0

    def describe(self) -> str:
        """The checkout and where its block was entered, for error messages."""
        return f"pool.{self._kind}() entered at {os.path.basename(self._where)}:{self._line}"

    @protected
    async def __aenter__(self) -> Connection:
        if self._lane is not None:
            raise RuntimeError("a checkout can be entered once; call pool.read() again")
        pool = self._pool
        lane = self._lane = pool._lane(self._kind)
        assert pool._bridge is not None
        self.task = pool._bridge.current_task()
        caller = sys._getframe(1)
        self._where, self._line = caller.f_code.co_filename, caller.f_lineno
        # One clock read when a connection is free; two when the checkout has to wait.
        if lane.idle and not lane.waiting and not pool._options.check:
            worker = await lane.acquire(self._timeout, self)
            start = self._start = monotonic()
            lane.acquire_wait.counts[0] += 1
        else:
            began = monotonic()
            worker = await lane.acquire(self._timeout, self, f"pool.{self._kind}()")
            if pool._options.check:
                worker = await self._checked(lane, worker, began)
            start = self._start = monotonic()
            lane.acquire_wait.add(start - began)
        lane.checkouts += 1
        if pool._leaks is not None:
            pool._leaks.add(self, self._kind, start)
        assert pool._bridge is not None
        conn = self._conn = Connection(
            worker, pool._bridge, self._kind, pool.name, pool._options.chunk_size, self._timeout
        )
        return conn

    @protected
    async def _checked(self, lane: Lane, worker: Worker, began: float) -> Worker:
        """``worker`` if it passes its check, else another that does (``check=True``).

        A connection that fails is counted as lost and replaced in the background.
        Cancellation while a check runs gives the connection back.
        """
        pool = self._pool
        bridge = pool._bridge
        assert bridge is not None
        while True:
            job = Job(check_job, (pool._file,))
            worker.submit(job)
            try:
                await bridge.wait(worker, job)
            except BaseException:
                lane.release(worker)
                raise
            error, job.error = job.error, None
            reason: str | None = job.result if error is None else str(error)
            if reason is None:
                return worker
            if not worker.retiring:  # else its error has been reported already
                logger.warning(
                    "pool %r: %s failed its check on checkout (%s); replacing it",
                    pool.name,
                    worker.thread_name,
                    reason,
                )
                pool._lose(worker)
            lane.release(worker)
            timeout = self._timeout
            if timeout is not None:
                timeout = max(0.0, timeout - (monotonic() - began))
            worker = await lane.acquire(timeout, self, f"pool.{self._kind}()")

    @protected
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, lane = self._conn, self._lane
        assert conn is not None
        assert lane is not None
        now = monotonic()
        lane.usage.add(now - self._start)
        if self._pool._leaks is not None:
            self._pool._leaks.remove(self, now)
        worker = conn._detach()
        if self._kind == WRITE and exc_type is None and not conn._begin_pending:
            if conn._aborted is not None or conn._inflight:
                self._release(lane, worker, conn)
                raise TransactionAborted(
                    conn._aborted
                    or f"pool {self._pool.name!r}: the pool.write() transaction was rolled "
                    "back because a statement was still running when its block ended"
                )
            if worker.stopping:
                lane.release(worker)
                raise PoolClosed(
                    f"pool {self._pool.name!r} was closed during the pool.write() block; "
                    "its transaction was rolled back"
                )
            await self._commit(lane, worker)
            return
        self._release(lane, worker, conn)

    @protected
    def _release(self, lane: Lane, worker: Worker, conn: Connection) -> None:
        # Any cleanup is queued ahead of the next borrower's first statement, so the
        # connection can be handed on at once, without waiting for it.
        if not worker.stopping and conn._needs_reset(worker):
            worker.submit(Job(reset, (), interruptible=False))
        lane.release(worker)

    @protected
    async def _commit(self, lane: Lane, worker: Worker) -> None:
        job = Job(commit_or_rollback, (), interruptible=False)
        worker.submit(job)
        # The next writer may queue its first statement behind our COMMIT right away.
        lane.release(worker)
        bridge = self._pool._bridge
        assert bridge is not None
        await bridge.wait_shielded(worker, job)
        error = job.error
        if error is not None:
            job.error = None
            raise error
