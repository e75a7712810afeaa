"""The pool: a task group that owns one writer and N reader connections."""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, TypeVarTuple, Unpack, final

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from . import _fork
from ._backup import DEFAULT_BACKUP_PAGES, Target, check_backup_args
from ._bridge import current_bridge
from ._checkout import Checkout, CheckoutSetup
from ._connection import check_params_seq, check_sql
from ._errors import DatabaseLost, PoolClosed, PoolForked
from ._file import DatabaseFile
from ._housekeeping import DEFAULT_WAL_MAX_BYTES, DEFAULT_WAL_RESET_TIMEOUT, Housekeeper
from ._interrupt import protected
from ._lane import Kind, Lane
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
)
from ._rows import Row
from ._statements import (
    ExecuteResult,
    Params,
    Progress,
    backup_job,
    checkpoint_job,
    execute_job,
    executemany_job,
    fetchall_job,
    fetchone_job,
    fetchval_job,
    in_transaction,
    run_user,
    snapshot_job,
)
from ._stats import PoolStatistics
from ._supervisor import Supervisor
from ._wal import CheckpointResult, WalState, check_mode
from ._worker import Job

logger = logging.getLogger("litepool")

T = TypeVar("T")
PosArgsT = TypeVarTuple("PosArgsT")


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


@final
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
        self._pid = 0
        self._file = DatabaseFile(options.name, options.database, options.uri)
        self._wal = WalState()
        # Set while the pool is open (from its first await in __aenter__ on).
        self._task_group: TaskGroup | None = None
        self._supervisor: Supervisor | None = None
        self._setup: CheckoutSetup | None = None
        self._housekeeper: Housekeeper | None = None
        self._leaks: LeakTracker | None = None

    def __repr__(self) -> str:
        readers = (
            self._options.readers if self._supervisor is None else self._supervisor.readers_target
        )
        return f"<litepool.Pool {self._options.name!r} {self._state.value} readers={readers}>"

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
        return Checkout(self._open_lane, Kind.READ, self._timeout(timeout))

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
        return Checkout(self._open_lane, Kind.WRITE, self._timeout(timeout))

    def connection(self, *, timeout: float | _Unset | None = _UNSET) -> Checkout:
        """Check out the writer with no automatic transaction (autocommit mode).

        For schema changes, ``PRAGMA``\\ s, ``VACUUM`` and transactions you manage with
        ``BEGIN`` / :meth:`Connection.commit`. A transaction still open when the block
        ends is rolled back.
        """
        return Checkout(self._open_lane, Kind.CONNECTION, self._timeout(timeout))

    def _timeout(self, timeout: float | _Unset | None) -> float | None:
        if timeout is _UNSET:
            return self._options.acquire_timeout
        return check_timeout(timeout, "timeout")

    def _lane(self, kind: Kind) -> Lane:
        """The lane serving ``kind``, or the error that says why the pool cannot."""
        supervisor = self._supervisor
        if self._state is not _State.OPEN or supervisor is None:
            if self._state is _State.FORKED:
                raise self._forked_error()
            raise PoolClosed(
                f"pool {self.name!r} is not open; use it inside 'async with open_pool(...)'"
            )
        if supervisor.vanished is not None:
            raise DatabaseLost(supervisor.vanished)
        lane = supervisor.read_lane if kind is Kind.READ else supervisor.write_lane
        assert lane is not None
        return lane

    def _open_lane(self, kind: Kind) -> tuple[Lane, CheckoutSetup]:
        lane = self._lane(kind)
        assert self._setup is not None
        return lane, self._setup

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
        return await self._statement(Kind.READ, fetchone_job, (sql, params), wait, "fetchone")

    async def fetchall(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> list[Any]:
        """Run one query on a reader and return every row; see :meth:`fetchone`."""
        check_sql(sql, params)
        wait = self._timeout(timeout)
        rows: list[Any] = await self._statement(
            Kind.READ, fetchall_job, (sql, params), wait, "fetchall"
        )
        return rows

    async def fetchval(
        self, sql: str, params: Params = (), *, timeout: float | _Unset | None = _UNSET
    ) -> Any:
        """Run one query on a reader and return the first column of its first row, or
        None; see :meth:`fetchone`."""
        check_sql(sql, params)
        wait = self._timeout(timeout)
        return await self._statement(Kind.READ, fetchval_job, (sql, params), wait, "fetchval")

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
            Kind.WRITE, in_transaction, (wait, execute_job, (sql, params)), wait, "execute"
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
            Kind.WRITE,
            in_transaction,
            (wait, executemany_job, (sql, seq_of_params)),
            wait,
            "executemany",
        )
        return result

    async def run_write(
        self,
        fn: Callable[[sqlite3.Connection, Unpack[PosArgsT]], T],
        *args: *PosArgsT,
        timeout: float | _Unset | None = _UNSET,
    ) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on the writer's thread, as one
        transaction of its own, and return what it returns (use :func:`functools.partial`
        for keyword arguments).

        ``BEGIN IMMEDIATE``, ``fn`` and ``COMMIT`` run as one job, in one round trip: the
        fastest way to do a read-modify-write. If ``fn`` raises, the transaction is
        rolled back and the exception raised here. It queues first come, first served
        with :meth:`write` checkouts and single statements, and is batched with them.
        Waits for the writer (and for another process's write lock) up to ``timeout``
        seconds (default: the pool's ``acquire_timeout``). ``fn`` must not end the
        transaction itself: ``COMMIT``, ``ROLLBACK`` and ``conn.commit()`` are refused
        (:class:`~litepool.StatementRefused`); savepoints work. Do not keep the
        connection beyond the call: it belongs to the pool.

        Cancellation: if ``fn`` had not started it never runs; while it runs, its SQLite
        statements are interrupted, and it is rolled back unless it has already
        committed. A cancelled call may have committed (if the cancellation came after
        the COMMIT).

        ::

            def transfer(db, source, target, amount):
                (balance,) = db.execute(
                    "SELECT balance FROM accounts WHERE id = ?", (source,)
                ).fetchone()
                if balance < amount:
                    raise ValueError("insufficient funds")
                db.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                    (amount, source),
                )
                db.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?",
                    (amount, target),
                )

            await pool.run_write(transfer, 1, 2, 10)
        """
        if not callable(fn):
            raise TypeError(f"run_write() needs a callable, not {fn!r}")
        wait = self._timeout(timeout)
        result: T = await self._statement(
            Kind.WRITE,
            in_transaction,
            (wait, run_user, (fn, args)),
            wait,
            "run_write",
        )
        return result

    async def run_read(
        self,
        fn: Callable[[sqlite3.Connection, Unpack[PosArgsT]], T],
        *args: *PosArgsT,
        timeout: float | _Unset | None = _UNSET,
    ) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on a reader's thread, inside one read
        transaction (every statement of ``fn`` sees the same snapshot of the
        database), and return what it returns.

        One job, in one round trip, queued like :meth:`fetchone` (``timeout`` as there).
        The connection is read-only. Do not keep it beyond the call.

        Cancellation: as for :meth:`fetchone`; nothing is held afterwards.
        """
        if not callable(fn):
            raise TypeError(f"run_read() needs a callable, not {fn!r}")
        wait = self._timeout(timeout)
        result: T = await self._statement(
            Kind.READ,
            snapshot_job,
            (fn, args),
            wait,
            "run_read",
        )
        return result

    async def _statement(
        self,
        kind: Kind,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        wait: float | None,
        method: str,
    ) -> Any:
        """Run ``fn(worker, *args)`` on a connection of the ``kind`` lane that no checkout
        holds, waiting up to ``wait`` seconds for one; ``wait`` has been checked by the
        caller before anything else ran."""
        return await self._lane(kind).run(Job(fn, args), wait, f"pool.{method}()")

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
            Kind.WRITE, checkpoint_job, (mode, self._wal), wait, "checkpoint"
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
        self._lane(Kind.READ)  # fail now if the pool is not open
        async with self.read(timeout=timeout) as conn:
            await conn._call(backup_job, target, pages, progress)

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
        self._lane(Kind.READ)  # fail now if the pool is not open, before waiting
        assert self._supervisor is not None
        await self._supervisor.resize(readers)

    # -- introspection ---------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's counts; see :class:`~litepool.PoolStatistics`."""
        supervisor = self._supervisor
        read = None if supervisor is None else supervisor.read_lane
        write = None if supervisor is None else supervisor.write_lane
        if supervisor is None or read is None or write is None:
            raise PoolClosed(f"pool {self.name!r} has not been opened")
        counts = supervisor.counts()
        wal = self._wal
        return PoolStatistics(
            name=self.name,
            closed=self.closed,
            read=read.statistics(),
            write=write.statistics(),
            interrupted=counts.interrupted,
            rollbacks=counts.rollbacks,
            connections_opened=counts.opened,
            connections_closed=counts.closed,
            connections_replaced=counts.replaced,
            connections_lost=counts.lost,
            connections_failed=counts.failed,
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
        options = self._options
        bridge = current_bridge()
        if options.leak_timeout is not None:
            self._leaks = LeakTracker(self.name, options.leak_timeout)
        task_group = self._task_group = anyio.create_task_group()
        supervisor = self._supervisor = Supervisor(
            options,
            self._file,
            bridge,
            task_group,
            None if self._leaks is None else self._leaks.holders,
        )
        await task_group.__aenter__()
        try:
            await supervisor.open()
        except BaseException as exc:
            self._state = _State.CLOSED
            _fork.unregister(self)
            await self._stop()
            if isinstance(exc, sqlite3.Error):
                exc.add_note(f"while opening pool {self.name!r} on {options.database!r}")
            raise
        transactions = supervisor.writer.transactions
        assert transactions is not None
        self._wal.resolve(self._file.path, transactions.wal)
        read_lane, write_lane = supervisor.read_lane, supervisor.write_lane
        assert read_lane is not None
        assert write_lane is not None
        self._setup = CheckoutSetup(
            pool_name=self.name,
            bridge=bridge,
            chunk_size=options.chunk_size,
            leaks=self._leaks,
            check=self._file if options.check else None,
            lose=supervisor.lose,
        )
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
            task_group.start_soon(housekeeper.run, name=housekeeper.name)
        if self._leaks is not None:
            task_group.start_soon(self._leaks.run, name=self._leaks.name)
        return self

    def _forked_error(self) -> PoolForked:
        return PoolForked(
            f"pool {self.name!r} was opened in process {self._pid}; this is process "
            f"{os.getpid()}, a child created by os.fork(), which must not use its parent's "
            "SQLite connections. Open a new pool in the child."
        )

    def _after_fork(self) -> None:
        """In a child process just forked: refuse every use, touch no connection."""
        if self._state is not _State.OPEN or self._supervisor is None:
            return
        self._state = _State.FORKED
        _fork.abandon(self._supervisor.forked())

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
        for task in (self._housekeeper, self._leaks):
            if task is not None:
                task.stop()
        supervisor = self._supervisor
        assert supervisor is not None
        supervisor.close()
        for lane in (supervisor.read_lane, supervisor.write_lane):
            if lane is not None:
                lane.close()
        await self._stop()

    @protected
    async def _stop(self) -> None:
        """Stop every worker, wait for its thread to return, then leave the task group."""
        supervisor, task_group = self._supervisor, self._task_group
        assert supervisor is not None
        assert task_group is not None
        try:
            await supervisor.stop()
        finally:
            # Every thread has returned, so this does not wait for them. The body's
            # exception is not passed in: the task group would wrap it in an
            # ExceptionGroup on trio.
            await task_group.__aexit__(None, None, None)
