"""Online backups: a consistent copy of the database while the pool keeps serving.

The copy runs on a reader, checked out for its duration, with :mod:`sqlite3`'s backup
API, ``pages`` pages per step. In WAL mode the reader first opens a read transaction, so
every step copies the same snapshot: the copy is consistent and is never restarted by
a commit, and writers are never blocked (a WAL reader does not block the writer; it only
keeps the housekeeper from resetting the WAL until the copy is done). Without WAL (an
in-memory pool), each step takes the database's read lock only while it runs, and SQLite
restarts the copy if the writer changed the database in between.

:mod:`sqlite3` runs every step of a copy inside one call, so the copy is one job on the
reader's thread. Between two steps that thread checks whether the caller was cancelled
(then the copy stops, and the target is left incomplete) and, if a ``progress`` callback
was given, has the event loop call it, waiting for it before the next step.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio.from_thread

from ._worker import Worker

if TYPE_CHECKING:
    from ._pool import Pool

#: ``pool.backup(pages=...)``'s default: pages copied per step (4 MiB with 4 KiB pages).
DEFAULT_BACKUP_PAGES: Final = 1024

#: Seconds the copy sleeps before it retries a step that found the database locked.
BACKUP_RETRY_SLEEP: Final = 0.05

Progress = Callable[[int, int], object]
Target = str | os.PathLike[str] | sqlite3.Connection


def check_backup_args(target: object, pages: object, progress: object) -> str | sqlite3.Connection:
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str | sqlite3.Connection):
        raise TypeError(
            f"target must be a path (str or os.PathLike) or an sqlite3.Connection, not {target!r}"
        )
    if target == "":
        raise ValueError("target must name a file")
    if isinstance(pages, bool) or not isinstance(pages, int):
        raise TypeError(f"pages must be an int, not {pages!r}")
    if pages == 0 or pages < -1:
        raise ValueError(f"pages must be >= 1, or -1 for everything in one step, got {pages!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, not {progress!r}")
    return target


class _Cancelled(Exception):
    """Raised on the reader's thread to stop a copy whose caller was cancelled."""


def backup_job(
    worker: Worker, target: str | sqlite3.Connection, pages: int, progress: Progress | None
) -> None:
    """Job, on a checked-out reader: copy the database to ``target`` step by step."""
    conn = worker.conn
    assert conn is not None
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


async def backup(
    pool: Pool,
    target: str | sqlite3.Connection,
    *,
    pages: int,
    progress: Progress | None,
    timeout: float | None,
) -> None:
    async with pool.read(timeout=timeout) as conn:
        await conn._call(backup_job, target, pages, progress)
