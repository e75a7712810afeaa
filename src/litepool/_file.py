"""The database file a pool opened, so that it notices the file vanish or change.

On unix a deleted file keeps working for the connections that have it open: their
writes succeed and go to an inode that no path leads to any more, so they are lost the
moment the pool closes, and SQLite reports nothing in WAL mode. A file replaced under
the pool (a restore copied over it, a ``mv``) is the same from the pool's side. And a
new connection opened on a path whose file is gone creates a new, empty database there.

So the pool remembers which file its first connection opened (its device and inode,
read from the path SQLite resolved), opens every later connection in a mode that never
creates a file, checks that each one opened that same file, and compares the path with
it at every write transaction and at least every second
(:data:`CHECK_INTERVAL`). Once they differ the pool refuses every call with
:class:`~litepool.DatabaseLost`: only opening a pool may create its file.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl, urlencode

from ._errors import DatabaseLost

#: Seconds between two looks at the path while the pool is open.
CHECK_INTERVAL: Final = 0.5


class DatabaseFile:
    """Which file the pool opened; filled by the first connection, on its thread."""

    __slots__ = ("identity", "path", "pool_name", "reopen", "reopen_uri", "resolved")

    pool_name: str
    resolved: bool
    path: str | None
    identity: tuple[int, int] | None
    reopen: str
    reopen_uri: bool

    def __init__(self, pool_name: str, database: str, uri: bool) -> None:
        self.pool_name = pool_name
        #: Whether the first connection has opened (and :meth:`resolve` run).
        self.resolved = False
        #: The main database file's absolute path, or None (in-memory, temporary).
        self.path = None
        #: ``(st_dev, st_ino)`` of that file when the pool opened it.
        self.identity = None
        #: What later connections open, and whether it is a URI: until the first
        #: connection has opened, what the pool was given.
        self.reopen = database
        self.reopen_uri = uri

    def resolve(self, conn: sqlite3.Connection, database: str, uri: bool) -> None:
        """After the first connection opened ``database``: note its file, and how to
        open the same file later without ever creating it."""
        cursor = conn.cursor()
        try:
            cursor.row_factory = None
            rows = cursor.execute("PRAGMA database_list").fetchall()
        finally:
            cursor.close()
        self.resolved = True
        filename = next((str(file) for _, name, file in rows if name == "main"), "")
        identity = _stat(filename) if filename else None
        if identity is None:
            return  # in memory, or a temporary database: nothing to watch
        self.path, self.identity = filename, identity
        # The absolute path: a later chdir() must not make it another file.
        self.reopen = _without_create(Path(filename).as_uri(), database if uri else "")
        self.reopen_uri = True

    def changed(self) -> str | None:
        """Why the file at the path is no longer the one the pool opened, or None."""
        path = self.path
        if path is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return self._reason("deleted or moved")
        if (stat.st_dev, stat.st_ino) == self.identity:
            return None
        return self._reason("replaced by another file")

    def _reason(self, what: str) -> str:
        return (
            f"pool {self.pool_name!r}: the database file {self.path!r} was {what} after "
            "the pool opened it; writes would go to a file no path leads to any more, so "
            "the pool refuses every call. Leave the pool's block and open it again"
        )

    def check(self) -> None:
        """Raise :class:`~litepool.DatabaseLost` if :meth:`changed` says so."""
        reason = self.changed()
        if reason is not None:
            raise DatabaseLost(reason)


def _stat(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _without_create(file_uri: str, given: str) -> str:
    """``file_uri`` with the query of the URI the pool was ``given`` (its ``vfs``,
    ``cache``, ...) and ``mode=rw``, so that opening it never creates the file, unless
    the given URI already says how to open it (``mode=ro``)."""
    query = given.partition("?")[2].partition("#")[0]
    params = parse_qsl(query, keep_blank_values=True)
    if not any(key == "mode" for key, _ in params):
        params.append(("mode", "rw"))
    return f"{file_uri}?{urlencode(params)}"
