"""The writer's transactions, on the writer's thread: how they begin, end and are kept
whole.

Every transaction the pool manages (a ``pool.write()`` block, a ``pool.execute()``) goes
through :class:`Transactions`, which does three things around SQLite's own
``BEGIN IMMEDIATE`` ... ``COMMIT``:

**Waiting for the write lock without losing the caller.** Another process may hold the
database's write lock. SQLite's busy handler cannot be interrupted
(``sqlite3.Connection.interrupt()`` does not end its wait), and it sleeps ever longer
between tries (1, 2, 5, 10, ... up to 100 ms), so a process that has just committed
takes the lock again long before a sleeping one wakes. So in WAL mode the writer's
``busy_timeout`` is cut to :data:`SLICE_MS` and ``BEGIN IMMEDIATE`` is tried again after
each slice (starting SQLite's sleeps again from 1 ms) for as long as the caller allows:
until it is cancelled (the writer then gives way within a slice) or the call's
``timeout`` passes (:class:`~litepool.PoolTimeout`). So no "database is locked" reaches a
caller before its own deadline. Inside the transaction nothing waits for a lock in WAL
mode; the configured ``busy_timeout`` is put back for ``pool.connection()`` blocks, which
manage their own transactions, and stays in place in the other journal modes.

**Refusing transaction statements inside.** A ``COMMIT``, ``END`` or ``ROLLBACK`` sent by
the block itself, as SQL or in a script, would end the transaction early, and every
later statement would commit on its own. While a managed transaction is open the
writer's authorizer refuses transaction statements when SQLite prepares them (they show
as ``SQLITE_TRANSACTION``; savepoints, ``SQLITE_SAVEPOINT``, stay allowed). The
authorizer only sees statements being prepared, and :mod:`sqlite3` caches prepared
statements by their text: a ``COMMIT`` prepared in a ``pool.connection()`` block, where
it is allowed, would run from the cache unchecked. So when a transaction statement was
prepared outside a managed transaction, the authorizer is installed again before the
next one, which makes SQLite prepare every cached statement anew. The pool's own
statements use texts of their own, so they never leave such a statement in the cache.

**Checking the file.** Before ``COMMIT`` (and when a ``pool.connection()`` block begins)
the database's path is compared with the file the pool opened
(:class:`._file.DatabaseFile`); if it was deleted or replaced, the transaction is rolled
back and :class:`~litepool.DatabaseLost` raised, so no write is reported committed into a
file nobody can open again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final

from ._errors import DatabaseLost, PoolTimeout, StatementRefused
from ._file import DatabaseFile

#: The pool's own transaction statements: texts no caller writes, so that their cached
#: statements are never the ones a caller's ``COMMIT`` finds in the cache.
BEGIN_IMMEDIATE: Final = "BEGIN IMMEDIATE -- litepool"
COMMIT: Final = "COMMIT -- litepool"
ROLLBACK: Final = "ROLLBACK -- litepool"

#: The writer's ``busy_timeout`` in WAL mode, in milliseconds: the longest SQLite's busy
#: handler keeps the thread before the pool looks at its caller again.
SLICE_MS: Final = 20

_OFF: Final = 0  # no managed transaction: the caller manages transactions
_GUARDED: Final = 1  # inside a managed transaction: transaction statements are refused
_OWN: Final = 2  # the pool's own BEGIN, COMMIT or ROLLBACK is being prepared

_TRANSACTION: Final = sqlite3.SQLITE_TRANSACTION
_DENY: Final = sqlite3.SQLITE_DENY
_OK: Final = sqlite3.SQLITE_OK
# Result codes (sqlite3.h): a lock held elsewhere, and a statement the authorizer denied.
_SQLITE_BUSY: Final = 5
_SQLITE_AUTH: Final = 23
#: Primary codes of errors that a file deleted or replaced under the writer may cause:
#: SQLITE_READONLY (READONLY_DBMOVED), SQLITE_IOERR, SQLITE_CANTOPEN.
_FILE_ERRORS: Final = (8, 10, 14)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (any SQLITE_BUSY code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_BUSY


def interrupted() -> sqlite3.OperationalError:
    """The error of a call stopped because its caller was cancelled."""
    return sqlite3.OperationalError("interrupted")


class Transactions:
    """The writer connection's managed transactions; see the module's docstring."""

    __slots__ = (
        "_busy_ms",
        "_caller_busy",
        "_conn",
        "_execute",
        "_file",
        "_pool_name",
        "_prepared_outside",
        "_refused",
        "_sliced",
        "_state",
        "begin_failed",
    )

    begin_failed: bool

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        pool_name: str,
        database_file: DatabaseFile,
    ) -> None:
        self._conn = conn
        self._execute = conn.execute
        self._pool_name = pool_name
        self._file = database_file
        self._state = _OFF
        self._prepared_outside = False
        self._refused: str | None = None
        self._busy_ms = int(self._pragma("busy_timeout"))
        self._sliced = str(self._pragma("journal_mode")).lower() == "wal"
        self._caller_busy = False
        #: Whether the last begin() failed (nothing ran: a later call may try again).
        self.begin_failed = False
        if self._sliced:
            self._pragma(f"busy_timeout={min(self._busy_ms, SLICE_MS)}")
        conn.set_authorizer(self._authorize)

    def _pragma(self, pragma: str) -> Any:
        cursor = self._conn.cursor()
        try:
            cursor.row_factory = None
            row = cursor.execute(f"PRAGMA {pragma}").fetchone()
        finally:
            cursor.close()
        return None if row is None else row[0]

    @property
    def wal(self) -> bool:
        """Whether the database was in WAL mode when the writer opened."""
        return self._sliced

    @property
    def busy_ms(self) -> int:
        """The ``busy_timeout`` the pool was configured with, in milliseconds."""
        return self._busy_ms

    # -- the authorizer ----------------------------------------------------------------

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None
    ) -> int:
        if action != _TRANSACTION:
            return _OK
        state = self._state
        if state == _GUARDED:
            self._refused = arg1 or "transaction control"
            return _DENY
        if state == _OFF:
            self._prepared_outside = True
        return _OK

    def caller_error(self, error: BaseException) -> BaseException:
        """``error`` as the caller should see it: a :class:`StatementRefused` naming the
        statement if the authorizer refused one while it ran; a
        :class:`~litepool.DatabaseLost` if it came from the database file having been
        deleted or replaced (rollback-journal modes report a replaced file as "attempt
        to write a readonly database"); else ``error`` itself."""
        refused, self._refused = self._refused, None
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _FILE_ERRORS:
            reason = self._file.changed()
            if reason is not None:
                lost = DatabaseLost(reason)
                lost.__cause__ = error
                return lost
        if refused is None or code != _SQLITE_AUTH:
            return error
        statement = "COMMIT (or END)" if refused == "COMMIT" else refused
        refusal = StatementRefused(
            f"{statement} is not allowed here: the pool began this transaction and ends "
            "it itself (pool.write() commits when its block ends and rolls back on an "
            "exception; pool.execute() is a transaction of its own). The statement did "
            "not run and the transaction is still open. Use SAVEPOINT / RELEASE / "
            "ROLLBACK TO for a partial rollback, or pool.connection() to manage the "
            "transaction yourself."
        )
        refusal.__cause__ = error
        return refusal

    # -- a managed transaction ---------------------------------------------------------

    def begin(self, timeout: float | None, stop: Callable[[], bool]) -> None:
        """Begin a managed transaction with ``BEGIN IMMEDIATE``.

        :param timeout: seconds to wait for the write lock, or None for no limit.
        :param stop: whether the caller has been cancelled; polled between tries.
        :raises PoolTimeout: the write lock stayed taken for ``timeout`` seconds.
        :raises sqlite3.OperationalError: ``interrupted`` if ``stop()`` said so.
        """
        self._state = _OWN
        self.begin_failed = True
        try:
            self._execute(BEGIN_IMMEDIATE)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
            self._begin_again(timeout, stop, exc)
        finally:
            self._state = _OFF
        self.begin_failed = False
        if self._prepared_outside:
            # Expire every cached statement, so that a cached COMMIT is prepared (and
            # seen) again before it can run.
            self._conn.set_authorizer(self._authorize)
            self._prepared_outside = False
        self._state = _GUARDED

    def _begin_again(
        self, timeout: float | None, stop: Callable[[], bool], busy: BaseException
    ) -> None:
        """``BEGIN IMMEDIATE`` met another connection's lock: try again after each slice
        until it succeeds, the caller is cancelled, or ``timeout`` has passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if stop():
                raise interrupted() from busy
            if deadline is not None and time.monotonic() >= deadline:
                raise PoolTimeout(
                    f"pool {self._pool_name!r}: the database's write lock did not come free "
                    f"within {timeout:g} s: another connection to the file (another "
                    "process?) held it the whole time"
                ) from busy
            try:
                self._execute(BEGIN_IMMEDIATE)
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
                busy = exc

    def commit(self) -> None:
        """The pool's own COMMIT. Failing (a deferred constraint, a lock that
        rollback-journal modes wait for beyond ``busy_timeout``, or the database file
        found deleted or replaced), the transaction stays open for :meth:`rollback`.
        """
        # A file deleted or replaced since the pool opened it: what would be committed
        # could never be read again, so it is not reported committed.
        self._file.check()
        self._state = _OWN
        try:
            self._execute(COMMIT)
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or not self._sliced:
                raise
            self._commit_again()
        finally:
            self._state = _GUARDED

    def _commit_again(self) -> None:
        """COMMIT met a lock (rollback-journal modes): try again after each slice, for
        up to the configured ``busy_timeout`` in all."""
        deadline = time.monotonic() + self._busy_ms / 1000
        while True:
            try:
                self._execute(COMMIT)
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise

    def rollback(self) -> None:
        """The pool's own ROLLBACK."""
        state, self._state = self._state, _OWN
        try:
            self._execute(ROLLBACK)
        finally:
            self._state = state

    def end(self) -> None:
        """The managed transaction (or the ``pool.connection()`` block) is over: let
        the next caller decide about transactions."""
        self._state = _OFF
        if self._caller_busy:
            self._caller_busy = False
            self._pragma(f"busy_timeout={min(self._busy_ms, SLICE_MS)}")

    def begin_caller_block(self) -> None:
        """A ``pool.connection()`` block begins: check the file (its writes are not
        checked at a COMMIT of the pool's), and let its statements wait for locks as
        configured, until :meth:`end`."""
        self._file.check()
        if self._sliced and not self._caller_busy and self._busy_ms > SLICE_MS:
            self._caller_busy = True
            self._pragma(f"busy_timeout={self._busy_ms}")

    def checkpoint(self, mode: str, limit: float, stop: Callable[[], bool]) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(mode)``, tried again while it reports busy, for up to
        ``limit`` seconds, unless ``stop()``; returns SQLite's ``(busy, log,
        checkpointed)``."""
        deadline = time.monotonic() + limit
        while True:
            cursor = self._conn.cursor()
            try:
                cursor.row_factory = None
                busy, log, done = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            finally:
                cursor.close()
            if not busy or mode == "PASSIVE" or stop() or time.monotonic() >= deadline:
                return int(busy), int(log), int(done)
