"""Refusing transaction control inside the transactions the pool manages.

A ``pool.write()`` block (and every ``pool.execute()``) is one transaction that the pool
begins and ends. A ``COMMIT``, ``END`` or ``ROLLBACK`` sent by the block itself, as SQL
or inside a script, would end it early: every later statement would then commit on its
own, and the block's exception would roll back nothing. So while such a transaction is
open, the writer's authorizer refuses transaction statements when SQLite prepares them
(SQLite shows them to the authorizer as ``SQLITE_TRANSACTION``); savepoints
(``SQLITE_SAVEPOINT``) stay allowed.

The authorizer only sees statements being prepared, and :mod:`sqlite3` keeps prepared
statements in a cache keyed by their text. A ``COMMIT`` that a ``pool.connection()``
block prepared, where it is allowed, would therefore run unchecked from the cache inside
a later ``pool.write()``. The guard notes when a transaction statement was prepared
outside a managed transaction, and before the next managed one it installs the
authorizer again, which makes SQLite prepare every cached statement anew. The pool's
own statements use texts of their own (and :meth:`sqlite3.Connection.commit`, which is
never cached), so they never put such a statement in the cache.

Everything here runs on the writer's thread.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from ._errors import StatementRefused

#: The pool's own BEGIN: a text no caller writes, so that its cached statement is never
#: the one a caller's ``BEGIN IMMEDIATE`` finds in the cache.
BEGIN_IMMEDIATE: Final = "BEGIN IMMEDIATE -- litepool"

_OFF: Final = 0  # no managed transaction: the caller manages transactions
_GUARDED: Final = 1  # inside a managed transaction: transaction statements are refused
_OWN: Final = 2  # the pool's own BEGIN, COMMIT or ROLLBACK is being prepared

_TRANSACTION: Final = sqlite3.SQLITE_TRANSACTION
_DENY: Final = sqlite3.SQLITE_DENY
_OK: Final = sqlite3.SQLITE_OK
#: The error code of a statement the authorizer denied (sqlite3.h).
_SQLITE_AUTH: Final = 23


class TransactionGuard:
    """The writer's authorizer and the state it consults."""

    __slots__ = ("_conn", "_prepared_outside", "_refused", "_state")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._state = _OFF
        self._prepared_outside = False
        self._refused: str | None = None
        conn.set_authorizer(self._authorize)

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

    def begin(self) -> None:
        """Run the pool's own ``BEGIN IMMEDIATE`` and guard the transaction it opens."""
        self._state = _OWN
        try:
            self._conn.execute(BEGIN_IMMEDIATE)
        finally:
            self._state = _OFF
        self.enter()

    def enter(self) -> None:
        """A managed transaction is open: refuse transaction statements from now on."""
        if self._prepared_outside:
            # Expire every cached statement, so that a cached COMMIT is prepared (and
            # seen) again before it can run.
            self._conn.set_authorizer(self._authorize)
            self._prepared_outside = False
        self._state = _GUARDED

    def commit(self) -> None:
        """The pool's own COMMIT of the managed transaction."""
        self._state = _OWN
        try:
            self._conn.commit()
        finally:
            self._state = _OFF

    def rollback(self) -> None:
        """The pool's own ROLLBACK of the managed transaction."""
        self._state = _OWN
        try:
            self._conn.rollback()
        finally:
            self._state = _OFF

    def leave(self) -> None:
        """The managed transaction is over (or never began): the caller decides again."""
        self._state = _OFF

    def refusal(self, error: BaseException) -> BaseException:
        """``error`` as the caller should see it: a :class:`StatementRefused` naming the
        statement if the guard refused one while it ran, else ``error`` itself."""
        refused, self._refused = self._refused, None
        if refused is None or getattr(error, "sqlite_errorcode", None) != _SQLITE_AUTH:
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
