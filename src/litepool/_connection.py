"""The connection handle a checkout yields, and the statements it runs on the worker.

Every method is one round trip to the connection's thread: the statement runs, its rows
are fetched and its cursor is closed in the same job, so no statement is left half-run
(which would pin the WAL and make a later ``interrupt()`` hit the wrong statement).
"""

from __future__ import annotations

import functools
import sqlite3
from collections import deque
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from ._errors import ConnectionReleased, PoolError, PoolForked, TransactionAborted
from ._fork import inherited
from ._interrupt import protected
from ._script import split_script
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge

T = TypeVar("T")
P = ParamSpec("P")

Params = Sequence[Any] | Mapping[str, Any]

READ: Final = "read"
WRITE: Final = "write"
CONNECTION: Final = "connection"


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """What a statement run by ``execute`` or ``executemany`` reports: the rows changed,
    the last rowid inserted, and the rows it returned (a ``RETURNING`` clause's)."""

    rowcount: int
    """Rows changed by the statement (``-1`` where SQLite does not say, as for a
    ``SELECT``)."""
    lastrowid: int | None
    """The rowid of the last row inserted on the connection, if any."""
    rows: list[Any] = field(default_factory=list)
    """The rows the statement returned, made by the pool's row factory: those of an
    ``INSERT``, ``UPDATE`` or ``DELETE ... RETURNING`` (of every parameter set, in order,
    for ``executemany``), or of a query. Empty for a statement that returns none."""

    if not TYPE_CHECKING:
        # Habits from aiosqlite and the DB-API, where execute() returns a cursor. Only at
        # run time: type checkers should report these as the errors they are.

        def __getattr__(self, name: str) -> Any:
            if name in _CURSOR_MEMBERS:
                raise AttributeError(
                    f"ExecuteResult has no {name!r}: execute() returns its result, not a "
                    "cursor, and has already fetched any rows into result.rows. For a "
                    "query, write 'row = await conn.fetchone(sql, params)' (or fetchall, "
                    "fetchval, or 'async for row in conn.iterate(sql, params)')",
                    name=name,
                    obj=self,
                )
            raise AttributeError(
                f"'ExecuteResult' object has no attribute {name!r}", name=name, obj=self
            )

        def __aiter__(self) -> Any:
            raise TypeError(
                "an ExecuteResult is not iterated with 'async for': its rows are already "
                "in result.rows ('for row in result.rows'); to stream a query's rows, "
                "write 'async for row in conn.iterate(sql, params)'"
            )

        def __iter__(self) -> Any:
            raise TypeError(
                "an ExecuteResult is not iterable: its rows are in result.rows, its "
                "counts in result.rowcount and result.lastrowid"
            )


#: What a DB-API or aiosqlite cursor has and an :class:`ExecuteResult` has not.
_CURSOR_MEMBERS: Final = frozenset(
    {"fetchone", "fetchall", "fetchmany", "close", "description", "arraysize", "execute",
     "executemany", "executescript", "setinputsizes", "setoutputsize", "connection"}
)  # fmt: skip


# -- job functions: run on the worker thread, first argument is the worker ----------


# Every job closes its cursor in ``finally``: a cursor left to the garbage collector may
# be finalized on another thread, which then waits for this connection's lock (held for
# as long as its next statement runs) and keeps the statement's snapshot meanwhile.


def execute_job(worker: Worker, sql: str, params: Params) -> ExecuteResult:
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
        if cursor.description is None:
            return ExecuteResult(cursor.rowcount, cursor.lastrowid, [])
        # A RETURNING clause (or a query): its rows, and the rowcount, which sqlite3
        # knows only once the statement has run to its end.
        rows = cursor.fetchall()
        return ExecuteResult(cursor.rowcount, cursor.lastrowid, rows)
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()


def executemany_job(worker: Worker, sql: str, seq: Iterable[Params]) -> ExecuteResult:
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        if "returning" not in sql.lower():
            cursor.executemany(sql, seq)
            return ExecuteResult(cursor.rowcount, cursor.lastrowid, [])
        # sqlite3's executemany() drops the rows of a RETURNING clause and reports a
        # rowcount of 0; run the parameter sets one by one to keep both. (A statement
        # that only mentions the word takes this path too, with the same result.)
        rows: list[Any] = []
        rowcount = 0
        for params in seq:
            cursor.execute(sql, params)
            rows += cursor.fetchall()
            if cursor.rowcount > 0:
                rowcount += cursor.rowcount
        return ExecuteResult(rowcount, cursor.lastrowid, rows)
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()


def _executescript(worker: Worker, script: str) -> None:
    # sqlite3's executescript() commits a pending transaction first, which would end
    # pool.write()'s transaction behind its back; run the statements one by one instead.
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        for statement in split_script(script):
            if worker.current_cancelled():
                # Between two statements nothing runs for interrupt() to stop.
                raise sqlite3.OperationalError("interrupted")
            cursor.execute(statement)
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()


def fetchone_job(worker: Worker, sql: str, params: Params) -> Any:
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        return cursor.execute(sql, params).fetchone()
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()


def fetchall_job(worker: Worker, sql: str, params: Params) -> list[Any]:
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        return cursor.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()


def fetchval_job(worker: Worker, sql: str, params: Params) -> Any:
    cursor = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        cursor.row_factory = None  # the first column, whatever the pool's row factory
        row = cursor.execute(sql, params).fetchone()
    except sqlite3.OperationalError as exc:
        _refused_write(worker, exc)
        raise
    finally:
        cursor.close()
    return None if row is None else row[0]


def _refused_write(worker: Worker, error: sqlite3.OperationalError) -> None:
    """Raise instead of ``error`` an error that says where the statement should have gone,
    if it is a write that a reader refused; else return (the caller re-raises ``error``).

    The new error is an :class:`sqlite3.OperationalError` too, with the same SQLite
    error code and the message of ``error`` first, caused by ``error``: code that
    catches the original keeps catching it.
    """
    # Errors of the sqlite3 module itself (a text that is not UTF-8) carry no code.
    code = getattr(error, "sqlite_errorcode", None)
    if worker.role == "writer" or code != sqlite3.SQLITE_READONLY:
        return
    hinted = sqlite3.OperationalError(
        f"{error} (readers are read-only: pool.fetchone(), fetchall(), fetchval() and "
        "pool.read() run on them. Run a statement that writes with pool.execute(), "
        "whose result holds the rows of a RETURNING clause in .rows, or inside "
        "pool.write())"
    )
    hinted.sqlite_errorcode = code
    hinted.sqlite_errorname = error.sqlite_errorname
    raise hinted from error


def _iter_open(worker: Worker, key: int, sql: str, params: Params, size: int) -> list[Any]:
    cursor = worker.cursors[key] = worker.conn.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql, params)
    except BaseException as exc:
        _iter_close(worker, key)
        if isinstance(exc, sqlite3.OperationalError):
            _refused_write(worker, exc)
        raise
    return _iter_next(worker, key, size)


def _iter_next(worker: Worker, key: int, size: int) -> list[Any]:
    cursor = worker.cursors[key]
    try:
        rows = cursor.fetchmany(size)
    except BaseException:
        _iter_close(worker, key)
        raise
    if len(rows) < size:
        _iter_close(worker, key)
    return rows


def _iter_close(worker: Worker, key: int) -> None:
    cursor = worker.cursors.pop(key, None)
    if cursor is not None:
        cursor.close()


def in_transaction(
    worker: Worker, timeout: float | None, fn: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    """``fn`` inside BEGIN IMMEDIATE ... COMMIT, rolled back if anything fails; waits
    up to ``timeout`` seconds for the write lock (see :mod:`._transactions`)."""
    conn = worker.conn
    transactions = worker.transactions
    assert conn is not None
    assert transactions is not None
    transactions.begin(timeout, worker.current_cancelled)
    try:
        result = fn(worker, *args)
        if worker.current_cancelled():
            # The statement finished before the interrupt reached it; its caller is gone,
            # so do not commit what it can no longer be told about.
            raise sqlite3.OperationalError("interrupted")
        transactions.commit()
    except BaseException:
        if conn.in_transaction:
            worker.rollbacks += 1
            transactions.rollback()
        raise
    finally:
        transactions.end()
    return result


def _run_user(worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(worker.conn, *args)


def _begin_then(
    worker: Worker, timeout: float | None, fn: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    # BEGIN IMMEDIATE rides with the transaction's first statement: one round trip saved.
    # IMMEDIATE takes the write lock now, so a read-modify-write cannot lose an update and
    # a conflict waits for the lock instead of failing with SQLITE_BUSY_SNAPSHOT.
    transactions = worker.transactions
    assert transactions is not None
    worker.begin_failed = True
    transactions.begin(timeout, worker.current_cancelled)
    worker.begin_failed = False
    return fn(worker, *args)


def _caller_busy_then(worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    # A pool.connection() block manages its own transactions: its statements wait for
    # locks for the configured busy_timeout, restored by the reset at the block's end.
    transactions = worker.transactions
    assert transactions is not None
    transactions.begin_caller_block()
    return fn(worker, *args)


def _commit(worker: Worker) -> None:
    worker.conn.commit()  # type: ignore[union-attr]


def _rollback(worker: Worker) -> None:
    worker.conn.rollback()  # type: ignore[union-attr]


def check_sql(sql: object, params: object) -> None:
    if type(sql) is str and type(params) is tuple:
        return
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, not {type(sql).__name__}: {sql!r}")
    if isinstance(params, str | bytes | bytearray):
        raise TypeError(
            f"params must be a sequence or a mapping of values, not {type(params).__name__} "
            f"{params!r} (for one value, write ({params!r},))"
        )


def check_params_seq(seq_of_params: object) -> None:
    if isinstance(seq_of_params, str | bytes | bytearray):
        raise TypeError(
            f"seq_of_params must be an iterable of parameter sets, not {seq_of_params!r}"
        )


class _Awaited(Coroutine[Any, Any, T]):
    """The coroutine of a :class:`Connection` method that aiosqlite users may enter with
    ``async with`` or iterate with ``async for`` (where aiosqlite returns a cursor): those
    raise a ``TypeError`` that says what to write instead. Awaiting it, or running it as
    a task, is awaiting the method's own coroutine.
    """

    __slots__ = ("_coro", "_what")

    def __init__(self, coro: Coroutine[Any, Any, T], what: str) -> None:
        self._coro = coro
        self._what = what

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    def send(self, value: Any) -> Any:
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the deprecated form

    def close(self) -> None:
        self._coro.close()

    def __getattr__(self, name: str) -> Any:
        # cr_frame, cr_running, ...: what asyncio, trio and anyio read of a task's
        # coroutine when this is run as a task of its own.
        if name.startswith("cr_"):
            return getattr(self._coro, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _misused(self, how: str) -> TypeError:
        self._coro.close()  # never awaited: do not let it warn about that as well
        return TypeError(
            f"conn.{self._what}() is awaited, not {how} (it returns an ExecuteResult, not "
            f"a cursor): write 'result = await conn.{self._what}(sql, ...)', whose "
            "result.rows holds the rows of a RETURNING clause; for a query, write "
            "'rows = await conn.fetchall(sql, params)', 'await conn.fetchone(...)', or "
            "'async for row in conn.iterate(sql, params)'"
        )

    if not TYPE_CHECKING:
        # Only at run time: type checkers report these uses as the errors they are.

        async def __aenter__(self) -> Any:
            raise self._misused("entered with 'async with'")

        async def __aexit__(self, *exc_info: object) -> None:
            return None

        def __aiter__(self) -> Any:
            raise self._misused("iterated with 'async for'")


def _awaited(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Make ``method`` return an :class:`_Awaited` around its coroutine."""
    what = method.__name__

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        return _Awaited(method(*args, **kwargs), what)

    return call


class Connection:
    """A checked-out connection: valid only inside the ``async with`` block that yielded it.

    Every method runs in one round trip on the connection's own thread. If the calling
    task is cancelled while a method waits, the cancellation propagates at once and the
    statement is interrupted (or skipped if it had not started); treat a cancelled call
    as one that may have run. After the block has ended, every method raises
    :class:`ConnectionReleased`.
    """

    __slots__ = (
        "_aborted",
        "_begin_pending",
        "_bridge",
        "_dirty",
        "_inflight",
        "_iterators",
        "_kind",
        "_pool_name",
        "_timeout",
        "_worker",
        "chunk_size",
    )

    def __init__(
        self,
        worker: Worker,
        bridge: Bridge,
        kind: str,
        pool_name: str,
        chunk_size: int,
        timeout: float | None,
    ) -> None:
        self._worker: Worker | None = worker
        self._bridge = bridge
        self._kind = kind
        self._pool_name = pool_name
        # How long BEGIN IMMEDIATE may wait for another process's write lock.
        self._timeout = timeout
        # The first call also begins the transaction (pool.write()) or puts back the
        # configured busy_timeout (pool.connection()).
        self._begin_pending = kind != READ
        self._inflight = 0
        self._iterators = 0
        self._dirty = False
        # Set once a pool.write() transaction can no longer commit: the reason.
        self._aborted: str | None = None
        self.chunk_size: int = chunk_size

    def __repr__(self) -> str:
        state = "released" if self._worker is None else "active"
        return f"<litepool.Connection {self._kind} of pool {self._pool_name!r} ({state})>"

    @property
    def kind(self) -> str:
        """``"read"``, ``"write"`` or ``"connection"``: the checkout that yielded it."""
        return self._kind

    @property
    def released(self) -> bool:
        """True once the ``async with`` block has ended."""
        return self._worker is None

    # -- plumbing --------------------------------------------------------------------

    def _usable(self) -> Worker:
        worker = self._worker
        if worker is None:
            raise ConnectionReleased(
                f"this {self._kind} connection of pool {self._pool_name!r} was used after "
                "its 'async with' block ended; check out a new one"
            )
        if worker.stopping:
            if inherited(worker):
                raise PoolForked(
                    f"pool {self._pool_name!r} was opened in the parent of this process, "
                    "which was created by os.fork(); its connections cannot be used here"
                )
            raise worker.stopped_error()
        if self._aborted is not None:
            raise TransactionAborted(self._aborted)
        return worker

    @protected
    async def _call(self, fn: Callable[..., Any], *args: Any, interruptible: bool = True) -> Any:
        worker = self._usable()
        began = self._begin_pending
        if began:
            self._begin_pending = False
            if self._kind == WRITE:
                job = Job(_begin_then, (self._timeout, fn, args))
            else:
                job = Job(_caller_busy_then, (fn, args), interruptible)
        else:
            job = Job(fn, args, interruptible)
        self._inflight += 1
        worker.submit(job)
        try:
            await self._bridge.wait(worker, job)
        except BaseException:
            # Cancelled: the job may still be running, so its outcome and the
            # connection's state are unknown until the worker has finished it.
            self._dirty = True
            if self._kind == WRITE:
                self._aborted = (
                    f"a statement of this pool.write() transaction (pool "
                    f"{self._pool_name!r}) was cancelled, so whether it ran is unknown; the "
                    "transaction is rolled back when the block ends"
                )
            raise
        finally:
            self._inflight -= 1
        error = job.error
        if error is not None:
            job.error = None
            if began and self._kind == WRITE and worker.begin_failed:
                # BEGIN itself failed (another process held the lock past the timeout):
                # nothing has run, so the next call may simply try again.
                self._begin_pending = True
            elif self._kind == WRITE and not (
                worker.conn is not None and worker.conn.in_transaction
            ):
                # SQLite rolled the whole transaction back on this error (disk full, I/O
                # error, a ROLLBACK conflict clause): statements after it would each
                # commit on their own, so the block may not go on.
                self._aborted = (
                    f"the pool.write() transaction of pool {self._pool_name!r} ended when a "
                    f"statement failed ({type(error).__name__}: {error}); nothing of it was "
                    "committed. Leave the block and run the transaction again"
                )
            raise error
        return job.result

    @protected
    def _detach(self) -> Worker:
        worker = self._worker
        assert worker is not None
        self._worker = None
        return worker

    def _needs_reset(self, worker: Worker) -> bool:
        if self._dirty or self._inflight or self._iterators:
            return True
        if self._kind == CONNECTION and not self._begin_pending:
            return True  # the reset puts the writer's own busy_timeout back
        conn = worker.conn
        return conn is not None and conn.in_transaction

    # -- statements ------------------------------------------------------------------

    @_awaited
    async def execute(self, sql: str, params: Params = ()) -> ExecuteResult:
        """Run one statement; return its ``rowcount`` and ``lastrowid``."""
        check_sql(sql, params)
        result: ExecuteResult = await self._call(execute_job, sql, params)
        return result

    @_awaited
    async def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> ExecuteResult:
        """Run one statement once per parameter set (consumed on the connection's thread)."""
        check_sql(sql, ())
        if isinstance(seq_of_params, str | bytes | bytearray):
            raise TypeError(
                f"seq_of_params must be an iterable of parameter sets, not {seq_of_params!r}"
            )
        result: ExecuteResult = await self._call(executemany_job, sql, seq_of_params)
        return result

    async def executescript(self, script: str) -> None:
        """Run several ``;``-separated statements, without parameters.

        Unlike :meth:`sqlite3.Connection.executescript`, this never commits a pending
        transaction: inside :meth:`Pool.write` the script is part of the transaction.
        If a statement fails, the statements before it have run and the error is raised.
        """
        check_sql(script, ())
        await self._call(_executescript, script)

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        """The first row of the result, or None."""
        check_sql(sql, params)
        return await self._call(fetchone_job, sql, params)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        """Every row of the result."""
        check_sql(sql, params)
        rows: list[Any] = await self._call(fetchall_job, sql, params)
        return rows

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None if there is no row."""
        check_sql(sql, params)
        return await self._call(fetchval_job, sql, params)

    def iterate(self, sql: str, params: Params = (), *, chunk_size: int | None = None) -> Rows:
        """Stream the rows of a query, fetching ``chunk_size`` rows per round trip.

        The query's cursor stays open on the connection between chunks; it is closed
        when the rows run out, when :meth:`Rows.aclose` is called, or at the latest when
        the connection is returned to the pool.
        """
        check_sql(sql, params)
        size = self.chunk_size if chunk_size is None else chunk_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self._usable()
        return Rows(self, sql, params, size)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(sqlite3_connection, *args)`` on the connection's own thread.

        The escape hatch for what the handle does not wrap: the backup API,
        ``create_function``, ``blobopen``, pragmas with results. Do not keep the
        :class:`sqlite3.Connection` beyond the call; it belongs to the pool.
        """
        if not callable(fn):
            raise TypeError(f"run_sync() needs a callable, not {fn!r}")
        result: T = await self._call(_run_user, fn, args)
        return result

    async def commit(self) -> None:
        """Commit the open transaction (only on :meth:`Pool.connection` handles)."""
        self._check_manual("commit")
        await self._call(_commit, interruptible=False)

    async def rollback(self) -> None:
        """Roll back the open transaction (only on :meth:`Pool.connection` handles)."""
        self._check_manual("rollback")
        await self._call(_rollback, interruptible=False)

    def _check_manual(self, what: str) -> None:
        if self._kind != CONNECTION:
            hint = (
                "pool.write() commits when its block ends and rolls back on an exception"
                if self._kind == WRITE
                else "reader connections are read-only"
            )
            raise PoolError(f"{what}() is for pool.connection() handles; {hint}")


class Rows(AsyncIterator[Any]):
    """Async iterator over a query's rows, fetched in chunks. See :meth:`Connection.iterate`."""

    __slots__ = ("_buffer", "_conn", "_done", "_open", "_params", "_size", "_sql")

    def __init__(self, conn: Connection, sql: str, params: Params, size: int) -> None:
        self._conn = conn
        self._sql = sql
        self._params = params
        self._size = size
        self._buffer: deque[Any] = deque()
        self._open = False  # a cursor is open on the worker
        self._done = False

    def __aiter__(self) -> Rows:
        return self

    async def __anext__(self) -> Any:
        if self._buffer:
            return self._buffer.popleft()
        if self._done:
            raise StopAsyncIteration
        conn = self._conn
        key = id(self)
        try:
            if not self._open:
                self._open = True
                conn._iterators += 1
                rows = await conn._call(_iter_open, key, self._sql, self._params, self._size)
            else:
                rows = await conn._call(_iter_next, key, self._size)
        except BaseException:
            # Whatever the worker left open is closed when the connection is returned.
            self._finish()
            raise
        if len(rows) < self._size:
            self._finish()
        if not rows:
            raise StopAsyncIteration
        self._buffer.extend(rows)
        return self._buffer.popleft()

    def _finish(self) -> None:
        self._done = True
        if self._open:
            self._open = False
            self._conn._iterators -= 1

    async def aclose(self) -> None:
        """Close the query's cursor now instead of when the connection is returned."""
        was_open = self._open
        self._buffer.clear()
        self._finish()
        if was_open and not self._conn.released:
            await self._conn._call(_iter_close, id(self), interruptible=False)
