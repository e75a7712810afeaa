"""Every function that runs on a worker's thread: the jobs.

A job is ``fn(worker, *args)``, queued on a :class:`~litepool._worker.Worker` and run
on its thread, which owns the SQLite connection. Nothing here awaits and nothing here
touches the event loop's state: a job reads and writes its connection, the worker's
thread-side fields (``conn``, ``cursors``, ``transactions``, ``rollbacks``) and the
figures it reports (:class:`~litepool._wal.WalState`).

Every job that opens a cursor closes it in ``finally``: a cursor left to the garbage
collector may be finalized on another thread, which then waits for this connection's
lock (held for as long as its next statement runs), and it keeps its statement's
snapshot meanwhile, pinning the WAL.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

import anyio.from_thread

from ._file import DatabaseFile
from ._options import PoolOptions
from ._script import split_script
from ._transactions import Transactions, interrupted
from ._wal import CheckpointResult, WalState
from ._worker import Worker

logger = logging.getLogger("litepool")

Params = Sequence[Any] | Mapping[str, Any]


@final
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


def _conn(worker: Worker) -> sqlite3.Connection:
    conn = worker.conn
    assert conn is not None, "jobs run once the connection has opened"
    return conn


def _transactions(worker: Worker) -> Transactions:
    transactions = worker.transactions
    assert transactions is not None, "managed transactions run on the writer"
    return transactions


# -- opening ---------------------------------------------------------------------------


def open_job(worker: Worker, options: PoolOptions, database_file: DatabaseFile) -> None:
    """Queued first on every worker: open its connection; on the writer, set up its
    managed transactions."""
    worker.open()
    if worker.role == "writer":
        worker.transactions = Transactions(
            _conn(worker), pool_name=options.name, database_file=database_file
        )


def check_job(worker: Worker, database_file: DatabaseFile) -> str | None:
    """For ``check=True``: why the connection should not be used, or None.

    One cheap statement that starts a read transaction (an I/O error shows here), and a
    look at whether the file at the database's path is still the one it opened.
    """
    cursor = _conn(worker).cursor()
    try:
        cursor.execute("PRAGMA schema_version").fetchone()
    finally:
        cursor.close()
    return database_file.changed()


# -- statements ------------------------------------------------------------------------


def _run(worker: Worker, sql: str, params: Params, take: Callable[[sqlite3.Cursor], Any]) -> Any:
    """One statement on a cursor of its own: what ``take(cursor)`` makes of it."""
    cursor = _conn(worker).cursor()
    try:
        cursor.execute(sql, params)
        return take(cursor)
    finally:
        cursor.close()


def _result(cursor: sqlite3.Cursor) -> ExecuteResult:
    if cursor.description is None:
        return ExecuteResult(cursor.rowcount, cursor.lastrowid, [])
    # A RETURNING clause (or a query): its rows, and the rowcount, which sqlite3 knows
    # only once the statement has run to its end.
    rows = cursor.fetchall()
    return ExecuteResult(cursor.rowcount, cursor.lastrowid, rows)


def _one(cursor: sqlite3.Cursor) -> Any:
    return cursor.fetchone()


def _all(cursor: sqlite3.Cursor) -> list[Any]:
    return cursor.fetchall()


def execute_job(worker: Worker, sql: str, params: Params) -> ExecuteResult:
    return _run(worker, sql, params, _result)  # type: ignore[no-any-return]


def fetchone_job(worker: Worker, sql: str, params: Params) -> Any:
    return _run(worker, sql, params, _one)


def fetchall_job(worker: Worker, sql: str, params: Params) -> list[Any]:
    return _run(worker, sql, params, _all)  # type: ignore[no-any-return]


def fetchval_job(worker: Worker, sql: str, params: Params) -> Any:
    cursor = _conn(worker).cursor()
    try:
        cursor.row_factory = None  # the first column, whatever the pool's row factory
        row = cursor.execute(sql, params).fetchone()
    finally:
        cursor.close()
    return None if row is None else row[0]


def executemany_job(worker: Worker, sql: str, seq: Iterable[Params]) -> ExecuteResult:
    cursor = _conn(worker).cursor()
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
    finally:
        cursor.close()


def script_job(worker: Worker, script: str) -> None:
    # sqlite3's executescript() commits a pending transaction first, which would end
    # pool.write()'s transaction behind its back; run the statements one by one instead.
    cursor = _conn(worker).cursor()
    try:
        for statement in split_script(script):
            if worker.current_cancelled():
                # Between two statements nothing runs for interrupt() to stop.
                raise interrupted()
            cursor.execute(statement)
    finally:
        cursor.close()


def run_user(worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(sqlite3_connection, *args)``, for ``Connection.run_sync``."""
    return fn(_conn(worker), *args)


def snapshot_job(worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """``fn(sqlite3_connection, *args)`` inside one read transaction, for
    ``Pool.run_read``: every statement of it sees the same snapshot."""
    conn = _conn(worker)
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        _close_cursors(worker)
        if conn.in_transaction:
            conn.rollback()  # a read transaction: nothing to keep, and open cursors end


# -- iterate() -------------------------------------------------------------------------


def iter_open(worker: Worker, key: int, sql: str, params: Params, size: int) -> list[Any]:
    cursor = worker.cursors[key] = _conn(worker).cursor()
    try:
        cursor.execute(sql, params)
    except BaseException:
        iter_close(worker, key)
        raise
    return iter_next(worker, key, size)


def iter_next(worker: Worker, key: int, size: int) -> list[Any]:
    cursor = worker.cursors[key]
    try:
        rows = cursor.fetchmany(size)
    except BaseException:
        iter_close(worker, key)
        raise
    if len(rows) < size:
        iter_close(worker, key)
    return rows


def iter_close(worker: Worker, key: int) -> None:
    cursor = worker.cursors.pop(key, None)
    if cursor is not None:
        cursor.close()


def _close_cursors(worker: Worker) -> None:
    if worker.cursors:
        for cursor in worker.cursors.values():
            cursor.close()
        worker.cursors.clear()


# -- transactions ----------------------------------------------------------------------


def in_transaction(
    worker: Worker, timeout: float | None, fn: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    """``fn(worker, *args)`` inside BEGIN IMMEDIATE ... COMMIT, rolled back if anything
    fails; waits up to ``timeout`` seconds for the write lock (see
    :mod:`._transactions`). A single statement's job."""
    _transactions(worker).begin(timeout, worker.current_cancelled)
    try:
        result = fn(worker, *args)
        if worker.current_cancelled():
            # The statement finished before the interrupt reached it; its caller is gone,
            # so do not commit what it can no longer be told about.
            raise interrupted()
    except BaseException:
        _end(worker, commit=False)
        raise
    _end(worker, commit=True)
    return result


def _end(worker: Worker, *, commit: bool) -> None:
    """End the managed transaction: COMMIT (or not); if that fails or was not asked
    for, ROLLBACK, so that the next writer starts clean; raise what COMMIT raised."""
    conn = _conn(worker)
    transactions = _transactions(worker)
    try:
        if commit:
            transactions.commit()
    finally:
        try:
            if conn.in_transaction:
                worker.rollbacks += 1
                transactions.rollback()
        finally:
            transactions.end()


def begin_then(
    worker: Worker, timeout: float | None, fn: Callable[..., Any], args: tuple[Any, ...]
) -> Any:
    """The first statement of a ``pool.write()`` block, with its BEGIN IMMEDIATE."""
    # BEGIN IMMEDIATE rides with the transaction's first statement: one round trip saved.
    # IMMEDIATE takes the write lock now, so a read-modify-write cannot lose an update and
    # a conflict waits for the lock instead of failing with SQLITE_BUSY_SNAPSHOT.
    _transactions(worker).begin(timeout, worker.current_cancelled)
    return fn(worker, *args)


def caller_block_then(worker: Worker, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """The first statement of a ``pool.connection()`` block."""
    # Such a block manages its own transactions: its statements wait for locks for the
    # configured busy_timeout, put back to the pool's own by the reset at the block's end.
    _transactions(worker).begin_caller_block()
    return fn(worker, *args)


def commit_job(worker: Worker) -> None:
    """``Connection.commit()`` in a ``pool.connection()`` block."""
    _conn(worker).commit()


def rollback_job(worker: Worker) -> None:
    """``Connection.rollback()`` in a ``pool.connection()`` block."""
    _conn(worker).rollback()


def commit_or_rollback(worker: Worker) -> None:
    """The end of a ``pool.write()`` block: COMMIT; if that fails, ROLLBACK so that the
    next writer starts clean, and raise."""
    _close_cursors(worker)
    _end(worker, commit=True)


def reset(worker: Worker) -> None:
    """Make the connection clean for its next borrower: no cursor, no transaction."""
    _close_cursors(worker)
    conn = _conn(worker)
    transactions = worker.transactions
    if conn.in_transaction:
        worker.rollbacks += 1
        try:
            if transactions is not None:
                transactions.rollback()
            else:
                conn.rollback()
        except sqlite3.Error:
            logger.exception("%s: rollback on return failed", worker.thread_name)
    if transactions is not None:
        transactions.end()


# -- checkpoints and upkeep --------------------------------------------------------------


def _checkpoint(worker: Worker, mode: str, state: WalState, limit: float) -> CheckpointResult:
    """One checkpoint in ``mode``, waiting for readers for up to ``limit`` seconds (and
    no longer once its caller is cancelled)."""
    state.note_size()
    busy, log, done = _transactions(worker).checkpoint(mode, limit, worker.current_cancelled)
    result = CheckpointResult(bool(busy), log, done)
    state.checkpointed(mode, result)
    return result


def checkpoint_job(worker: Worker, mode: str, state: WalState) -> CheckpointResult:
    """One checkpoint in ``mode``, as :meth:`Pool.checkpoint` asks for it: waiting modes
    wait for up to ``busy_timeout``."""
    return _checkpoint(worker, mode, state, _transactions(worker).busy_ms / 1000)


def passive_job(worker: Worker, state: WalState) -> None:
    """The housekeeper's PASSIVE checkpoint, which never waits for anybody."""
    _checkpoint(worker, "PASSIVE", state, 0)


def wal_reset_job(worker: Worker, state: WalState, limit: float) -> bool:
    """The housekeeper's TRUNCATE checkpoint, waiting up to ``limit`` seconds for older
    readers; True if it reset the WAL."""
    return not _checkpoint(worker, "TRUNCATE", state, limit).busy


#: ``PRAGMA analysis_limit`` for ``PRAGMA optimize``: it bounds the work each ANALYZE
#: does, so that closing stays fast on a large database.
OPTIMIZE_ANALYSIS_LIMIT: Final = 400


def optimize_job(worker: Worker) -> None:
    """``PRAGMA optimize``, as SQLite recommends before a long-lived connection closes
    (and every ``optimize_interval``). A failure is only logged."""
    conn = _conn(worker)
    try:
        conn.execute(f"PRAGMA analysis_limit={OPTIMIZE_ANALYSIS_LIMIT}").fetchall()
        conn.execute("PRAGMA optimize").fetchall()
    except sqlite3.Error as exc:
        logger.warning("%s: PRAGMA optimize failed: %s", worker.thread_name, exc)


# -- backups ---------------------------------------------------------------------------

#: Seconds the copy sleeps before it retries a step that found the database locked.
BACKUP_RETRY_SLEEP: Final = 0.05

Progress = Callable[[int, int], object]


class _Cancelled(Exception):
    """Raised on the reader's thread to stop a copy whose caller was cancelled."""


def backup_job(
    worker: Worker, target: str | sqlite3.Connection, pages: int, progress: Progress | None
) -> None:
    """On a checked-out reader: copy the database to ``target`` step by step.

    :mod:`sqlite3` runs every step of a copy inside one call. In WAL mode the reader
    first opens a read transaction, so every step copies the same snapshot: the copy is
    consistent, never restarted by a commit, and writers are never blocked. Without WAL
    (an in-memory pool) each step takes the read lock only while it runs, and SQLite
    restarts the copy if the writer changed the database in between. Between two steps
    the thread checks whether the caller was cancelled (then the copy stops, leaving the
    target incomplete) and has the event loop call ``progress``, waiting for it.
    """
    conn = _conn(worker)
    destination = sqlite3.connect(target) if isinstance(target, str) else target
    try:
        cursor = conn.cursor()
        try:
            cursor.row_factory = None  # plain tuples, whatever the pool's row factory
            pinned = str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal"
            if pinned:
                # One read snapshot for every step: the copy is consistent, never restarts.
                cursor.execute("BEGIN")
                cursor.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            cursor.close()

        def step_done(status: int, remaining: int, total: int) -> None:
            if worker.current_cancelled():
                raise _Cancelled
            if progress is not None:
                anyio.from_thread.run_sync(progress, remaining, total)

        try:
            conn.backup(destination, pages=pages, progress=step_done, sleep=BACKUP_RETRY_SLEEP)
        finally:
            if pinned and conn.in_transaction:
                conn.execute("ROLLBACK")
    finally:
        if destination is not target:
            destination.close()
