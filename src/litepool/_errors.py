"""The pool's own exceptions.

SQLite's errors are not wrapped: they reach the caller as the ``sqlite3`` exceptions
they are, so that code written against :mod:`sqlite3` keeps catching what it expects.
"""

from __future__ import annotations

import sqlite3


class PoolError(Exception):
    """Base class of every error raised by litepool itself."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection became free within the acquire timeout.

    The message names the pool, the lane (``read`` or ``write``), the timeout and the
    lane's counts at the moment of failure.
    """


class PoolClosed(PoolError):
    """The pool is closed (or closing): no connection can be checked out or used."""


class ConnectionReleased(PoolError):
    """A connection handle was used after its ``async with`` block had ended.

    The underlying SQLite connection may already belong to another task, so the call is
    refused instead of being run on it.
    """


class ConnectionLost(PoolError):
    """The connection's worker thread ended unexpectedly, so the call could not run.

    Raised by calls queued on that connection after its thread ended. The pool counts the
    connection as lost and opens a replacement in the background; later checkouts get a
    working connection.
    """


class TransactionAborted(PoolError):
    """The transaction of a :meth:`Pool.write` block is void.

    Either a statement inside it was cancelled, so whether it ran is unknown, or SQLite
    rolled the whole transaction back after an error (disk full, an I/O error, an
    ``INSERT OR ROLLBACK`` conflict), so later statements would each commit on their own.
    Later calls on the handle raise this, and the block rolls back when it ends (raising
    this too if the block itself ended normally). Nothing of the block is committed.
    """


class PoolForked(PoolError):
    """The pool was opened in another process: this is a child created with
    :func:`os.fork` after the pool had been opened.

    The child inherits the parent's SQLite connections, but not the threads that own
    them, and SQLite connections must never be used across a fork. The child's copy of
    the pool refuses every use, and never closes (or otherwise touches) the inherited
    connections. Open a new pool in the child instead.
    """


class StatementRefused(PoolError, sqlite3.ProgrammingError):
    """A statement was refused before it ran, because it would break a guarantee.

    Raised for ``BEGIN``, ``COMMIT``, ``END`` and ``ROLLBACK`` (as SQL, in a script, or
    from a ``run_sync`` function) inside a :meth:`Pool.write` block or a
    :meth:`Pool.execute` call, whose transaction the pool begins and ends itself: ending
    it early would let the rest of the block commit piece by piece. The transaction is
    still open and the caller may go on. ``SAVEPOINT``, ``RELEASE`` and ``ROLLBACK TO``
    are allowed. It is also an :class:`sqlite3.ProgrammingError`.
    """


class WouldDeadlock(PoolError, RuntimeError):
    """The call could only be served by a connection that the calling task holds itself.

    For example ``pool.execute()``, ``pool.write()`` or ``pool.connection()`` inside a
    ``pool.write()`` block of the same task (there is one writer, and this task holds
    it), or a reader checkout in a task that holds every reader. Waiting would wait for
    itself, so the call raises at once; the message names the checkout the task holds
    and where it was taken. Use the connection you hold, or leave its block first.
    """


class DatabaseLost(PoolError):
    """The database file the pool opened is no longer at its path.

    It was deleted, moved, or replaced by another file (a restore copied over it) after
    the pool opened it. The pool's connections still have the old file open, so their
    writes would succeed and then be lost with it; the pool therefore refuses every
    read and write from the moment it notices (within a second, and at the latest at
    the next write transaction), and never creates a new, empty database in its place.
    Leave the pool's block and open a new pool.
    """


def hint_read_only(error: BaseException) -> BaseException:
    """``error`` as a reader's caller should see it: a write that a read-only reader
    refused also says which call to use instead.

    The new error is an :class:`sqlite3.OperationalError` too, with the same SQLite
    error code and the message of ``error`` first, caused by ``error``: code that
    catches the original keeps catching it.
    """
    # Errors of the sqlite3 module itself (a text that is not UTF-8) carry no code.
    code = getattr(error, "sqlite_errorcode", None)
    if code != sqlite3.SQLITE_READONLY or not isinstance(error, sqlite3.OperationalError):
        return error
    hinted = sqlite3.OperationalError(
        f"{error} (readers are read-only: pool.fetchone(), fetchall(), fetchval() and "
        "pool.read() run on them. Run a statement that writes with pool.execute(), "
        "whose result holds the rows of a RETURNING clause in .rows, or inside "
        "pool.write())"
    )
    hinted.sqlite_errorcode = code
    hinted.sqlite_errorname = error.sqlite_errorname
    hinted.__cause__ = error
    return hinted
