"""The connection handle a checkout yields, and the statements it runs on the worker.

Every method is one round trip to the connection's thread: the statement runs, its rows
are fetched and its cursor is closed in the same job, so no statement is left half-run
(which would pin the WAL and make a later ``interrupt()`` hit the wrong statement).
"""

from __future__ import annotations

import enum
import functools
import re
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
)
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, final

import anyio

from ._errors import ConnectionReleased, PoolError, PoolForked, TransactionAborted
from ._fork import inherited
from ._interrupt import protected
from ._lane import Kind
from ._statements import (
    ExecuteResult,
    Params,
    begin_then,
    caller_block_then,
    commit_job,
    execute_job,
    executemany_job,
    fetchall_job,
    fetchone_job,
    fetchval_job,
    iter_close,
    iter_next,
    iter_open,
    rollback_job,
    run_user,
    script_job,
)
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge

T = TypeVar("T")
P = ParamSpec("P")

READ: Final = Kind.READ
WRITE: Final = Kind.WRITE
CONNECTION: Final = Kind.CONNECTION


class Ending(enum.Enum):
    """What must happen to a checkout's connection when its block ends."""

    RELEASE = "release"
    """Nothing to undo: hand it on as it is."""
    RESET = "reset"
    """Queue a reset (no cursor, no transaction) ahead of the next borrower, and hand it
    on at once."""
    COMMIT = "commit"
    """A ``pool.write()`` block that ended normally: COMMIT, then report how it went."""
    ABORTED = "aborted"
    """A ``pool.write()`` block that ended normally with its transaction void: reset,
    and raise :class:`~litepool.TransactionAborted`."""


# The first word of a statement, after white space and comments.
_FIRST_WORD: Final = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*([A-Za-z]*)", re.DOTALL)
_QUERY_WORDS: Final = frozenset({"SELECT", "WITH", "VALUES"})


@functools.lru_cache(maxsize=512)
def is_query(sql: str) -> bool:
    """Whether ``sql`` is a plain query (``SELECT``, ``WITH``, ``VALUES``), which needs
    no state of its connection: not a transaction, a pragma, a temporary table ..."""
    match = _FIRST_WORD.match(sql)
    return match is not None and match.group(1).upper() in _QUERY_WORDS


def _begin_failed(worker: Worker) -> bool:
    transactions = worker.transactions
    return transactions is not None and transactions.begin_failed


def check_sql(sql: object, params: object) -> None:
    if type(sql) is str and type(params) is tuple:
        return
    if not isinstance(sql, str):
        raise TypeError(f"sql must be a str, not {type(sql).__name__}: {sql!r}")
    if params is None:
        raise TypeError(
            "params must be a sequence or a mapping of values, not None (for a statement "
            "with no parameters, leave params out, or pass ())"
        )
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


@final
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
        "_bind",
        "_binding",
        "_bridge",
        "_dirty",
        "_dispatch",
        "_inflight",
        "_iterators",
        "_kind",
        "_pool_name",
        "_released",
        "_timeout",
        "_worker",
        "chunk_size",
    )

    def __init__(
        self,
        worker: Worker | None,
        bridge: Bridge,
        kind: Kind,
        pool_name: str,
        chunk_size: int,
        timeout: float | None,
        *,
        bind: Callable[[], Awaitable[Worker]] | None = None,
        dispatch: Callable[[Job, float | None, str], Awaitable[Any]] | None = None,
    ) -> None:
        # The connection's worker; None for a pool.read() handle not bound to a reader
        # yet: its plain queries are dispatched (``dispatch``) like pool.fetchone(), and
        # the first call that needs a reader of its own takes one (``bind``).
        self._worker = worker
        self._bind = bind
        self._binding: anyio.Event | None = None
        self._dispatch = dispatch
        self._released = False
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
        state = "released" if self._released else "active"
        return f"<litepool.Connection {self._kind.value} of pool {self._pool_name!r} ({state})>"

    @property
    def kind(self) -> str:
        """``"read"``, ``"write"`` or ``"connection"``: the checkout that yielded it."""
        return self._kind.value

    @property
    def released(self) -> bool:
        """True once the ``async with`` block has ended."""
        return self._released

    # -- plumbing --------------------------------------------------------------------

    def _usable(self) -> Worker | None:
        """The connection's worker (None: not bound yet), if calls may use it."""
        if self._released:
            raise ConnectionReleased(
                f"this {self._kind.value} connection of pool {self._pool_name!r} was used "
                "after its 'async with' block ended; check out a new one"
            )
        worker = self._worker
        if worker is None:
            return None
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
    async def _call(
        self, fn: Callable[..., Any], *args: Any, interruptible: bool = True, plain: bool = False
    ) -> Any:
        """Run ``fn(worker, *args)`` on the connection's thread and return its result.

        ``plain`` says that the call needs no state of the connection (a query): a
        handle not bound to a reader then dispatches it like ``pool.fetchone()``.
        """
        worker = self._usable()
        if worker is None:
            assert self._bind is not None
            assert self._dispatch is not None
            if plain:
                self._inflight += 1
                try:
                    return await self._dispatch(
                        Job(fn, args, interruptible), self._timeout, "pool.read()"
                    )
                finally:
                    self._inflight -= 1
            worker = await self._bound()
        began = self._begin_pending
        if began:
            self._begin_pending = False
            if self._kind is WRITE:
                job = Job(begin_then, (self._timeout, fn, args))
            else:
                job = Job(caller_block_then, (fn, args), interruptible)
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
            if self._kind is WRITE:
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
            if began and self._kind is WRITE and _begin_failed(worker):
                # BEGIN itself failed (another process held the lock past the timeout):
                # nothing has run, so the next call may simply try again.
                self._begin_pending = True
            elif self._kind is WRITE and not (
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

    async def _bound(self) -> Worker:
        """The reader of this ``pool.read()`` handle, taken now if it has none yet.

        One call takes it; calls made meanwhile (from other tasks) wait for that one and
        use the same reader, or try in turn if it failed or was cancelled.
        """
        while (binding := self._binding) is not None:
            await binding.wait()
            worker = self._usable()
            if worker is not None:
                return worker
        assert self._bind is not None
        binding = self._binding = anyio.Event()
        try:
            worker = self._worker = await self._bind()
        finally:
            self._binding = None
            binding.set()
        return worker

    @protected
    def _finish(self, ended_normally: bool) -> tuple[Worker | None, Ending, str]:
        """The block has ended: detach from the connection (None: it never took one),
        and say what must happen to it (and, for :attr:`Ending.ABORTED`, why)."""
        worker = self._worker
        self._worker = None
        self._released = True
        if worker is None:
            return None, Ending.RELEASE, ""
        if self._kind is WRITE and ended_normally and not self._begin_pending:
            if self._aborted is not None:
                return worker, Ending.ABORTED, self._aborted
            if self._inflight:
                return (
                    worker,
                    Ending.ABORTED,
                    (
                        f"pool {self._pool_name!r}: the pool.write() transaction was rolled "
                        "back because a statement was still running when its block ended"
                    ),
                )
            return worker, Ending.COMMIT, ""
        if self._dirty or self._inflight or self._iterators:
            return worker, Ending.RESET, ""
        if self._kind is CONNECTION and not self._begin_pending:
            return worker, Ending.RESET, ""  # it puts the writer's own busy_timeout back
        conn = worker.conn
        if conn is not None and conn.in_transaction:
            return worker, Ending.RESET, ""
        return worker, Ending.RELEASE, ""

    # -- statements ------------------------------------------------------------------

    @_awaited
    async def execute(self, sql: str, params: Params = ()) -> ExecuteResult:
        """Run one statement; return its ``rowcount``, ``lastrowid`` and the rows it
        returned (a ``RETURNING`` clause's) in ``rows``."""
        check_sql(sql, params)
        result: ExecuteResult = await self._call(
            execute_job, sql, params, plain=self._worker is None and is_query(sql)
        )
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
        await self._call(script_job, script)

    async def fetchone(self, sql: str, params: Params = ()) -> Any:
        """The first row of the result, or None."""
        check_sql(sql, params)
        return await self._call(
            fetchone_job, sql, params, plain=self._worker is None and is_query(sql)
        )

    async def fetchall(self, sql: str, params: Params = ()) -> list[Any]:
        """Every row of the result."""
        check_sql(sql, params)
        rows: list[Any] = await self._call(
            fetchall_job, sql, params, plain=self._worker is None and is_query(sql)
        )
        return rows

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row, or None if there is no row."""
        check_sql(sql, params)
        return await self._call(
            fetchval_job, sql, params, plain=self._worker is None and is_query(sql)
        )

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
        result: T = await self._call(run_user, fn, args)
        return result

    async def commit(self) -> None:
        """Commit the open transaction (only on :meth:`Pool.connection` handles)."""
        self._check_manual("commit")
        await self._call(commit_job, interruptible=False)

    async def rollback(self) -> None:
        """Roll back the open transaction (only on :meth:`Pool.connection` handles)."""
        self._check_manual("rollback")
        await self._call(rollback_job, interruptible=False)

    def _check_manual(self, what: str) -> None:
        if self._kind is not CONNECTION:
            hint = (
                "pool.write() commits when its block ends and rolls back on an exception"
                if self._kind is WRITE
                else "reader connections are read-only"
            )
            raise PoolError(f"{what}() is for pool.connection() handles; {hint}")


@final
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
                rows = await conn._call(iter_open, key, self._sql, self._params, self._size)
            else:
                rows = await conn._call(iter_next, key, self._size)
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
            await self._conn._call(iter_close, id(self), interruptible=False)
