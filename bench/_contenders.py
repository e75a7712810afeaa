"""The contenders: each one runs the same four operations its own way.

Every contender gets the same pragmas (:data:`._db.PRAGMAS`: WAL, which the database file
already carries, ``synchronous=NORMAL``, ``busy_timeout=5000``, ``foreign_keys=on``,
``temp_store=memory``, ``cache_size=-16000``, ``journal_size_limit``) and runs the same
SQL (:mod:`._db`). Each uses its library the way its documentation shows, with the
fewest calls that API offers for the job:

* ``sqlite3``: one plain connection in one thread, no event loop, operations one after
  another: the floor that any async wrapper adds its cost to.
* ``litepool-asyncio`` / ``litepool-trio``: one call on the pool per operation, the
  fewest round trips litepool offers: ``pool.fetchone()`` / ``pool.fetchall()`` for
  reads, ``pool.execute()`` for the single-row insert (its own ``BEGIN IMMEDIATE`` ...
  ``COMMIT``), and ``pool.run_write()`` for the transfer: one plain function on the
  writer's ``sqlite3.Connection`` reads both balances and writes both, inside
  ``BEGIN IMMEDIATE`` ... ``COMMIT``, as one job.
* ``litepool-checkouts-asyncio`` / ``litepool-checkouts-trio``: the way the README
  shows, one checkout block per operation: ``async with pool.read() as conn`` around
  ``conn.fetchone()`` / ``conn.fetchall()``, ``async with pool.write() as conn`` around
  the insert, and for the transfer a ``pool.write()`` block with four awaited statements
  (two reads, two writes).
* ``aiosqlite-shared``: one connection shared by every task, ``execute_fetchall`` for
  reads (one round trip), write transactions ``BEGIN IMMEDIATE`` ... ``commit()`` under an
  ``asyncio.Lock``.
* ``aiosqlite-per-op``: a new connection (and its pragmas) for every operation, closed
  after it; write transactions ``BEGIN IMMEDIATE`` ... ``commit()``, serialised by SQLite's
  own lock and busy timeout.
* ``aiosqlitepool``: ``SQLiteConnectionPool`` over aiosqlite connections made by a
  connection factory that applies the pragmas, as its README shows; reads with
  ``execute_fetchall``; writes ``execute`` then ``commit()`` with the driver's default
  transaction handling, since the pool leaves transactions to the application.
* ``sqlite-anyio-asyncio`` / ``sqlite-anyio-trio``: one shared connection, reads with
  ``execute`` + ``fetchall``, write transactions ``BEGIN IMMEDIATE`` ... ``commit()`` under
  an ``anyio.Lock``.

The comparison libraries are optional: they are imported only when their contender runs,
and a contender whose library is missing is reported as not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from litepool import Pool, open_pool

from . import _db
from ._db import HEAVY_READ, INSERT_COMMENT, POINT_READ, PRAGMA_SCRIPT, READ_BALANCE, WRITE_BALANCE

if TYPE_CHECKING:
    import aiosqlite
    import sqlite_anyio

CommentRow = tuple[int, int, str, int]


class AsyncOps(Protocol):
    """The operations a workload runs, on an async contender."""

    async def point_read(self, key: int) -> Any: ...

    async def heavy_read(self, user: int) -> list[Any]: ...

    async def insert_comment(self, row: CommentRow) -> None: ...

    async def transfer(self, source: int, target: int, amount: int) -> None: ...


class SyncOps(Protocol):
    """The same operations on a synchronous contender."""

    def point_read(self, key: int) -> Any: ...

    def heavy_read(self, user: int) -> list[Any]: ...

    def insert_comment(self, row: CommentRow) -> None: ...

    def transfer(self, source: int, target: int, amount: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Settings:
    """How big the pools are: litepool's readers, and aiosqlitepool's size."""

    readers: int = 4
    #: aiosqlitepool's ``pool_size``: as many connections as litepool has (readers + 1).
    pool_size: int = 5


AsyncOpener = Callable[[str, Settings], AbstractAsyncContextManager[AsyncOps]]
SyncOpener = Callable[[str, Settings], AbstractContextManager[SyncOps]]


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    description: str
    #: ``"asyncio"`` or ``"trio"``; None for the synchronous floor.
    backend: str | None
    #: Modules that must be importable; the contender is "not installed" otherwise.
    requires: tuple[str, ...]
    open_async: AsyncOpener | None = None
    open_sync: SyncOpener | None = None

    def missing(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]


def _moved(have: int, amount: int) -> int:
    """Transfer at most what the source account holds: balances never go below zero."""
    return min(amount, have)


def _move(conn: sqlite3.Connection, source: int, target: int, amount: int) -> None:
    """The transfer's body, between ``BEGIN IMMEDIATE`` and ``COMMIT``, on a plain
    connection: the floor runs it itself, litepool hands it to ``pool.run_write()``."""
    (have,) = conn.execute(READ_BALANCE, (source,)).fetchone()
    (other,) = conn.execute(READ_BALANCE, (target,)).fetchone()
    moved = _moved(have, amount)
    conn.execute(WRITE_BALANCE, (have - moved, source))
    conn.execute(WRITE_BALANCE, (other + moved, target))


# -- sqlite3: the floor ---------------------------------------------------------------------


class _Sqlite3Ops:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def point_read(self, key: int) -> Any:
        return self._conn.execute(POINT_READ, (key,)).fetchone()

    def heavy_read(self, user: int) -> list[Any]:
        return self._conn.execute(HEAVY_READ, (user,)).fetchall()

    def insert_comment(self, row: CommentRow) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(INSERT_COMMENT, row)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def transfer(self, source: int, target: int, amount: int) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            _move(conn, source, target, amount)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


@contextmanager
def _open_sqlite3(path: str, settings: Settings) -> Iterator[SyncOps]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _db.apply_pragmas(conn)
        yield _Sqlite3Ops(conn)
    finally:
        conn.close()


# -- litepool -------------------------------------------------------------------------------


class _LitepoolOps:
    """One call on the pool per operation: the fewest round trips litepool offers."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def point_read(self, key: int) -> Any:
        return await self._pool.fetchone(POINT_READ, (key,))

    async def heavy_read(self, user: int) -> list[Any]:
        return await self._pool.fetchall(HEAVY_READ, (user,))

    async def insert_comment(self, row: CommentRow) -> None:
        # One statement, its own BEGIN IMMEDIATE ... COMMIT, in one round trip.
        await self._pool.execute(INSERT_COMMENT, row)

    async def transfer(self, source: int, target: int, amount: int) -> None:
        # The whole read-modify-write runs on the writer's thread as one job.
        await self._pool.run_write(_move, source, target, amount)


class _LitepoolCheckoutOps:
    """One checkout block per operation, as the README shows: a reader or the writer
    held for the block, every statement in it awaited on its own."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def point_read(self, key: int) -> Any:
        async with self._pool.read() as conn:
            return await conn.fetchone(POINT_READ, (key,))

    async def heavy_read(self, user: int) -> list[Any]:
        async with self._pool.read() as conn:
            return await conn.fetchall(HEAVY_READ, (user,))

    async def insert_comment(self, row: CommentRow) -> None:
        async with self._pool.write() as conn:
            await conn.execute(INSERT_COMMENT, row)

    async def transfer(self, source: int, target: int, amount: int) -> None:
        async with self._pool.write() as conn:
            have = await conn.fetchval(READ_BALANCE, (source,))
            other = await conn.fetchval(READ_BALANCE, (target,))
            moved = _moved(have, amount)
            await conn.execute(WRITE_BALANCE, (have - moved, source))
            await conn.execute(WRITE_BALANCE, (other + moved, target))


def _litepool_opener(ops: Callable[[Pool], AsyncOps]) -> AsyncOpener:
    """How a litepool contender opens: the same pool, used through ``ops``."""

    @asynccontextmanager
    async def open_litepool(path: str, settings: Settings) -> AsyncIterator[AsyncOps]:
        # litepool's default pragmas are the benchmark's PRAGMAS plus journal_mode=wal.
        async with open_pool(path, readers=settings.readers) as pool:
            yield ops(pool)

    return open_litepool


def _litepool_contenders(
    prefix: str, how: str, ops: Callable[[Pool], AsyncOps]
) -> tuple[Contender, ...]:
    """One way of using litepool, on asyncio and on trio."""
    opener = _litepool_opener(ops)
    return tuple(
        Contender(f"{prefix}-{backend}", f"litepool on {backend}: {how}", backend, requires, opener)
        for backend, requires in (("asyncio", ()), ("trio", ("trio",)))
    )


# -- aiosqlite ------------------------------------------------------------------------------


async def _aiosqlite_connect(path: str, *, autocommit: bool = True) -> aiosqlite.Connection:
    import aiosqlite

    if autocommit:
        db = await aiosqlite.connect(path, isolation_level=None)
    else:  # the driver's default, implicit transactions
        db = await aiosqlite.connect(path)
    try:
        await db.executescript(PRAGMA_SCRIPT)
    except BaseException:
        await db.close()
        raise
    return db


async def _first(rows: Awaitable[Any]) -> Any:
    result = list(await rows)
    return result[0] if result else None


class _AiosqliteSharedOps:
    __slots__ = ("_db", "_lock")

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    async def point_read(self, key: int) -> Any:
        return await _first(self._db.execute_fetchall(POINT_READ, (key,)))

    async def heavy_read(self, user: int) -> list[Any]:
        return list(await self._db.execute_fetchall(HEAVY_READ, (user,)))

    async def insert_comment(self, row: CommentRow) -> None:
        db = self._db
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(INSERT_COMMENT, row)
                await db.commit()
            except BaseException:
                await db.rollback()
                raise

    async def transfer(self, source: int, target: int, amount: int) -> None:
        db = self._db
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                (have,) = await _first(db.execute_fetchall(READ_BALANCE, (source,)))
                (other,) = await _first(db.execute_fetchall(READ_BALANCE, (target,)))
                moved = _moved(have, amount)
                await db.execute(WRITE_BALANCE, (have - moved, source))
                await db.execute(WRITE_BALANCE, (other + moved, target))
                await db.commit()
            except BaseException:
                await db.rollback()
                raise


@asynccontextmanager
async def _open_aiosqlite_shared(path: str, settings: Settings) -> AsyncIterator[AsyncOps]:
    db = await _aiosqlite_connect(path)
    try:
        yield _AiosqliteSharedOps(db)
    finally:
        await db.close()


class _AiosqlitePerOpOps:
    __slots__ = ("_path",)

    def __init__(self, path: str) -> None:
        self._path = path

    async def point_read(self, key: int) -> Any:
        db = await _aiosqlite_connect(self._path)
        try:
            return await _first(db.execute_fetchall(POINT_READ, (key,)))
        finally:
            await db.close()

    async def heavy_read(self, user: int) -> list[Any]:
        db = await _aiosqlite_connect(self._path)
        try:
            return list(await db.execute_fetchall(HEAVY_READ, (user,)))
        finally:
            await db.close()

    async def insert_comment(self, row: CommentRow) -> None:
        db = await _aiosqlite_connect(self._path)
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(INSERT_COMMENT, row)
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        finally:
            await db.close()

    async def transfer(self, source: int, target: int, amount: int) -> None:
        db = await _aiosqlite_connect(self._path)
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                (have,) = await _first(db.execute_fetchall(READ_BALANCE, (source,)))
                (other,) = await _first(db.execute_fetchall(READ_BALANCE, (target,)))
                moved = _moved(have, amount)
                await db.execute(WRITE_BALANCE, (have - moved, source))
                await db.execute(WRITE_BALANCE, (other + moved, target))
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
        finally:
            await db.close()


@asynccontextmanager
async def _open_aiosqlite_per_op(path: str, settings: Settings) -> AsyncIterator[AsyncOps]:
    yield _AiosqlitePerOpOps(path)


# -- aiosqlitepool --------------------------------------------------------------------------


class _AiosqlitepoolOps:
    __slots__ = ("_pool",)

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def point_read(self, key: int) -> Any:
        async with self._pool.connection() as conn:
            return await _first(conn.execute_fetchall(POINT_READ, (key,)))

    async def heavy_read(self, user: int) -> list[Any]:
        async with self._pool.connection() as conn:
            return list(await conn.execute_fetchall(HEAVY_READ, (user,)))

    async def insert_comment(self, row: CommentRow) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(INSERT_COMMENT, row)
            await conn.commit()

    async def transfer(self, source: int, target: int, amount: int) -> None:
        # The pool manages connections, not transactions (its README): the driver opens
        # a deferred transaction before the first UPDATE; the SELECTs run outside it.
        async with self._pool.connection() as conn:
            (have,) = await _first(conn.execute_fetchall(READ_BALANCE, (source,)))
            (other,) = await _first(conn.execute_fetchall(READ_BALANCE, (target,)))
            moved = _moved(have, amount)
            await conn.execute(WRITE_BALANCE, (have - moved, source))
            await conn.execute(WRITE_BALANCE, (other + moved, target))
            await conn.commit()


@asynccontextmanager
async def _open_aiosqlitepool(path: str, settings: Settings) -> AsyncIterator[AsyncOps]:
    from aiosqlitepool import SQLiteConnectionPool  # type: ignore[import-untyped]  # no stubs

    async def connection_factory() -> aiosqlite.Connection:
        return await _aiosqlite_connect(path, autocommit=False)

    async with SQLiteConnectionPool(connection_factory, pool_size=settings.pool_size) as pool:
        yield _AiosqlitepoolOps(pool)


# -- sqlite-anyio ---------------------------------------------------------------------------


class _SqliteAnyioOps:
    __slots__ = ("_conn", "_lock")

    def __init__(self, conn: sqlite_anyio.Connection) -> None:
        self._conn = conn
        self._lock = anyio.Lock()

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        cursor = await self._conn.execute(sql, params)
        return await cursor.fetchall()

    async def point_read(self, key: int) -> Any:
        rows = await self._fetchall(POINT_READ, (key,))
        return rows[0] if rows else None

    async def heavy_read(self, user: int) -> list[Any]:
        return await self._fetchall(HEAVY_READ, (user,))

    async def insert_comment(self, row: CommentRow) -> None:
        conn = self._conn
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute(INSERT_COMMENT, row)
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise

    async def transfer(self, source: int, target: int, amount: int) -> None:
        conn = self._conn
        async with self._lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                ((have,),) = await self._fetchall(READ_BALANCE, (source,))
                ((other,),) = await self._fetchall(READ_BALANCE, (target,))
                moved = _moved(have, amount)
                await conn.execute(WRITE_BALANCE, (have - moved, source))
                await conn.execute(WRITE_BALANCE, (other + moved, target))
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise


@asynccontextmanager
async def _open_sqlite_anyio(path: str, settings: Settings) -> AsyncIterator[AsyncOps]:
    import sqlite_anyio

    conn = await sqlite_anyio.connect(path)
    try:
        cursor = await conn.cursor()
        await cursor.executescript(PRAGMA_SCRIPT)
        yield _SqliteAnyioOps(conn)
    finally:
        await conn.close()


# -- the list -------------------------------------------------------------------------------

CONTENDERS: Final[tuple[Contender, ...]] = (
    Contender(
        "sqlite3",
        "plain sqlite3, one thread, no event loop, one operation after another",
        None,
        (),
        open_sync=_open_sqlite3,
    ),
    *_litepool_contenders(
        "litepool", "pool.fetchone/fetchall/execute, pool.run_write()", _LitepoolOps
    ),
    *_litepool_contenders(
        "litepool-checkouts",
        "a pool.read() or pool.write() block per operation",
        _LitepoolCheckoutOps,
    ),
    Contender(
        "aiosqlite-shared",
        "aiosqlite, one shared connection, asyncio.Lock around write transactions",
        "asyncio",
        ("aiosqlite",),
        open_async=_open_aiosqlite_shared,
    ),
    Contender(
        "aiosqlite-per-op",
        "aiosqlite, a new connection opened and closed for every operation",
        "asyncio",
        ("aiosqlite",),
        open_async=_open_aiosqlite_per_op,
    ),
    Contender(
        "aiosqlitepool",
        "aiosqlitepool over aiosqlite, as its README shows",
        "asyncio",
        ("aiosqlite", "aiosqlitepool"),
        open_async=_open_aiosqlitepool,
    ),
    Contender(
        "sqlite-anyio-asyncio",
        "sqlite-anyio on asyncio, one shared connection, anyio.Lock around writes",
        "asyncio",
        ("sqlite_anyio",),
        open_async=_open_sqlite_anyio,
    ),
    Contender(
        "sqlite-anyio-trio",
        "sqlite-anyio on trio, one shared connection, anyio.Lock around writes",
        "trio",
        ("sqlite_anyio", "trio"),
        open_async=_open_sqlite_anyio,
    ),
)

BY_NAME: Final = {contender.name: contender for contender in CONTENDERS}
