"""``litepool.aiosqlitepool``: every duration checked, and the migration from
aiosqlitepool (its exception names, ``async with pool:`` across tasks).

Connections are counted for real: :class:`Opener` opens plain ``sqlite3`` connections
on threads, records every one, and tells which are still open; the aiosqlite tests
count aiosqlite's own threads.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import traceback
import unittest
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc
import pytest

import litepool
from litepool.aiosqlitepool import (
    PoolClosedError,
    PoolConnectionAcquireTimeoutError,
    SQLiteConnectionPool,
)

pytestmark = pytest.mark.anyio


class RawConn:
    """An async connection over a plain ``sqlite3`` connection, with the pool's protocol."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    async def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, params)

    async def fetchval(self, sql: str) -> Any:
        return self.raw.execute(sql).fetchone()[0]

    async def rollback(self) -> None:
        self.raw.rollback()

    async def close(self) -> None:
        self.raw.close()

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction


def is_open(raw: sqlite3.Connection) -> bool:
    try:
        raw.total_changes  # noqa: B018  # raises on a closed connection
    except sqlite3.ProgrammingError:
        return False
    return True


class Opener:
    """A connection factory that opens each connection on a thread of its own.

    ``gate`` holds the threads before they connect, so that a test can act while a
    connection is being made; ``fail`` makes them raise instead. Every connection opened
    is recorded in ``opened``.
    """

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.calls = 0
        self.opened: list[sqlite3.Connection] = []
        self._entered = threading.Semaphore(0)
        self._running = 0
        self._lock = threading.Condition()

    async def connect(self) -> RawConn:
        self.calls += 1
        with self._lock:
            self._running += 1
        raw = await anyio.to_thread.run_sync(self._open, abandon_on_cancel=True)
        return RawConn(raw)

    def _open(self) -> sqlite3.Connection:
        try:
            self._entered.release()
            self.gate.wait()
            if self.fail:
                raise sqlite3.OperationalError("unable to open database file")
            raw = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.opened.append(raw)
            return raw
        finally:
            with self._lock:
                self._running -= 1
                self._lock.notify_all()

    async def entered(self) -> None:
        """Wait until a call's thread has started (and waits at the gate)."""
        assert await anyio.to_thread.run_sync(self._entered.acquire, True, 10.0)

    def _wait_idle(self) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: self._running == 0, 10.0)

    async def still_open(self) -> int:
        """Let every call finish, then count its connections that are still open (and
        close them, so that a failing test leaves nothing behind)."""
        self.gate.set()
        await anyio.to_thread.run_sync(self._wait_idle)
        leaked = [raw for raw in self.opened if is_open(raw)]
        for raw in leaked:
            raw.close()
        return len(leaked)


@pytest.fixture
def opener(tmp_path: Path) -> Opener:
    return Opener(tmp_path / "opened.db")


def assert_settled(pool: SQLiteConnectionPool[Any]) -> None:
    assert (pool.in_use, pool.waiting) == (0, 0)
    assert pool.idle == pool.connections <= pool.pool_size


async def _checkout(pool: SQLiteConnectionPool[Any]) -> None:
    async with pool.connection():
        pass  # pragma: no cover


def _aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


# -- every duration is checked before anything runs ------------------------------------

BAD_DURATIONS = [
    pytest.param(-1, ValueError, "must be >= 0 seconds or None, got -1", id="-1"),
    pytest.param(-0.5, ValueError, "must be >= 0 seconds or None, got -0.5", id="-0.5"),
    pytest.param(-math.inf, ValueError, "must be >= 0 seconds or None, got -inf", id="-inf"),
    pytest.param(math.nan, ValueError, "must be >= 0 seconds or None, got nan", id="nan"),
    pytest.param(  # an int beyond a float's range
        -(10**400), ValueError, "must be >= 0 seconds or None, got -10000", id="-10**400"
    ),
    pytest.param("1", TypeError, "must be a number of seconds or None, not '1'", id="str"),
    pytest.param(b"1", TypeError, "must be a number of seconds or None, not b'1'", id="bytes"),
    pytest.param(True, TypeError, "must be a number of seconds or None, not True", id="True"),
    pytest.param(False, TypeError, "must be a number of seconds or None, not False", id="False"),
    pytest.param([1], TypeError, r"must be a number of seconds or None, not \[1\]", id="list"),
]


@pytest.mark.parametrize(("value", "error", "message"), BAD_DURATIONS)
@pytest.mark.parametrize("argument", ["acquisition_timeout", "idle_timeout", "operation_timeout"])
def test_bad_durations_are_refused_by_the_constructor(
    argument: str, value: object, error: type[Exception], message: str
) -> None:
    async def factory() -> RawConn:
        raise AssertionError("not called")  # pragma: no cover

    with pytest.raises(error, match=f"^{argument} {message}"):
        kwargs: dict[str, Any] = {argument: value}
        SQLiteConnectionPool(factory, **kwargs)


@pytest.mark.parametrize(("value", "error", "message"), BAD_DURATIONS)
@pytest.mark.parametrize("state", ["free", "busy", "closed"])
async def test_bad_checkout_timeouts_are_refused_before_anything_runs(
    opener: Opener, state: str, value: object, error: type[Exception], message: str
) -> None:
    pool = SQLiteConnectionPool(opener.connect, pool_size=1)
    try:
        holder = pool.connection()
        if state == "busy":
            await holder.__aenter__()
        elif state == "closed":
            await pool.close()
        calls = opener.calls
        with pytest.raises(error, match=f"^timeout {message}"):
            pool.connection(timeout=value)  # type: ignore[arg-type]
        assert opener.calls == calls  # nothing ran
        if state == "busy":
            await holder.__aexit__(None, None, None)
    finally:
        await pool.close()
    assert await opener.still_open() == 0


async def test_durations_beyond_a_float_mean_no_limit(opener: Opener) -> None:
    huge = 10**400
    async with SQLiteConnectionPool(
        opener.connect, acquisition_timeout=huge, idle_timeout=huge, operation_timeout=huge
    ) as pool:
        async with pool.connection(timeout=huge) as conn:
            assert await conn.fetchval("SELECT 3") == 3
        async with pool.connection(timeout=math.inf):
            pass
        assert len(opener.opened) == 1  # not expired
    assert await opener.still_open() == 0


# -- aiosqlitepool's exception names ---------------------------------------------------


def test_exceptions_keep_aiosqlitepool_names_and_are_litepool_errors() -> None:
    assert issubclass(PoolConnectionAcquireTimeoutError, litepool.PoolTimeout)
    assert issubclass(PoolConnectionAcquireTimeoutError, TimeoutError)
    assert issubclass(PoolClosedError, litepool.PoolClosed)
    for cls in (PoolConnectionAcquireTimeoutError, PoolClosedError, SQLiteConnectionPool):
        assert cls.__module__ == "litepool.aiosqlitepool"
    assert litepool.SQLiteConnectionPool is SQLiteConnectionPool
    # aiosqlitepool's exceptions take no argument and carry a message attribute.
    for error in (PoolConnectionAcquireTimeoutError(), PoolClosedError()):
        assert error.message == str(error) != ""


async def test_the_pool_raises_aiosqlitepool_exceptions(anyio_backend: str) -> None:
    gate = anyio.Event()

    async def slow() -> RawConn:
        await gate.wait()
        return RawConn(sqlite3.connect(":memory:"))

    pool = SQLiteConnectionPool(slow, pool_size=1, operation_timeout=0.2, name="p")
    # Making a connection overran operation_timeout.
    with pytest.raises(PoolConnectionAcquireTimeoutError) as timed_out:
        await _checkout(pool)
    assert timed_out.value.message == str(timed_out.value)
    gate.set()
    async with pool.connection():
        # No slot became free.
        with pytest.raises(PoolConnectionAcquireTimeoutError, match="within 0 s"):
            async with pool.connection(timeout=0):
                pass  # pragma: no cover
        waiter_error: list[BaseException] = []

        async def wait() -> None:
            try:
                async with pool.connection(timeout=None):
                    pass  # pragma: no cover
            except PoolClosedError as exc:
                waiter_error.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await pool.close()  # wakes the waiter
        assert [type(exc) for exc in waiter_error] == [PoolClosedError]
    with pytest.raises(PoolClosedError, match="pool 'p' is closed") as closed:
        await _checkout(pool)
    assert closed.value.message == "pool 'p' is closed"
    with pytest.raises(PoolClosedError):
        async with pool:
            pass  # pragma: no cover
    # A traceback names the public module, not a private one.
    text = "".join(traceback.format_exception(closed.value))
    assert "litepool.aiosqlitepool.PoolClosedError: pool 'p' is closed" in text
    assert repr(pool).startswith("<litepool.aiosqlitepool.SQLiteConnectionPool 'p' closed")


async def test_except_clauses_written_for_aiosqlitepool_still_match(
    opener: Opener,
) -> None:
    """The ``except`` clauses of code written for aiosqlitepool, with the import renamed."""
    pool = SQLiteConnectionPool(opener.connect, pool_size=1, acquisition_timeout=0.01)
    caught: list[str] = []
    async with pool.connection():
        try:
            await _checkout(pool)
        except PoolConnectionAcquireTimeoutError:
            caught.append("timeout")
    await pool.close()
    try:
        await _checkout(pool)
    except PoolClosedError:
        caught.append("closed")
    assert caught == ["timeout", "closed"]
    assert await opener.still_open() == 0


# -- async with pool: entered and left in different tasks ------------------------------


async def test_async_with_pool_may_be_entered_and_left_in_different_tasks(
    opener: Opener,
) -> None:
    """What pytest-asyncio fixtures and IsolatedAsyncioTestCase do: each step runs in a
    task of its own."""
    pool = SQLiteConnectionPool(opener.connect, pool_size=2, name="shared")
    entered: list[object] = []

    async def enter() -> None:
        entered.append(await pool.__aenter__())

    async def use() -> None:
        async with pool.connection() as first, pool.connection() as second:
            await first.execute("CREATE TABLE IF NOT EXISTS t (x)")
            assert await second.fetchval("SELECT 5") == 5

    async def leave() -> None:
        await pool.__aexit__(None, None, None)

    for step in (enter, use, use, leave):
        async with anyio.create_task_group() as tg:
            tg.start_soon(step)
    assert entered == [pool]
    assert pool.closed
    assert pool.connections == 0
    assert await opener.still_open() == 0


def test_isolated_asyncio_test_case_holds_the_pool_across_its_tasks(tmp_path: Path) -> None:
    """aiosqlitepool-style tests, run by unittest: ``asyncSetUp``, the test and
    ``asyncTearDown`` (and async clean-ups) each run in a task of their own."""
    path = str(tmp_path / "unittest.db")
    pools: list[SQLiteConnectionPool[aiosqlite.Connection]] = []

    def connect() -> aiosqlite.Connection:
        return aiosqlite.connect(path)

    class EnterInSetUp(unittest.IsolatedAsyncioTestCase):
        async def asyncSetUp(self) -> None:
            self.pool = SQLiteConnectionPool(connect, pool_size=1, acquisition_timeout=0.1)
            await self.pool.__aenter__()
            pools.append(self.pool)

        async def asyncTearDown(self) -> None:
            await self.pool.__aexit__(None, None, None)

        async def test_write_and_read(self) -> None:
            async with self.pool.connection() as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.commit()
            async with self.pool.connection() as conn:
                cursor = await conn.execute("SELECT count(*) FROM t")
                assert (await cursor.fetchone() or (0,))[0] >= 1

        async def test_timeout(self) -> None:
            async with self.pool.connection():
                with pytest.raises(PoolConnectionAcquireTimeoutError):
                    async with self.pool.connection():
                        pass  # pragma: no cover

    class EnterAsyncContext(EnterInSetUp):
        async def asyncSetUp(self) -> None:
            pool = SQLiteConnectionPool(connect, pool_size=1, acquisition_timeout=0.1)
            self.pool = await self.enterAsyncContext(pool)
            pools.append(self.pool)

        async def asyncTearDown(self) -> None:
            pass  # the clean-up registered by enterAsyncContext leaves the block

    loader = unittest.TestLoader()
    suite = unittest.TestSuite(
        [
            loader.loadTestsFromTestCase(EnterInSetUp),
            loader.loadTestsFromTestCase(EnterAsyncContext),
        ]
    )
    result = unittest.TestResult()
    threads_before = _aiosqlite_threads()
    suite.run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert problems == []
    assert result.testsRun == 4
    assert len(pools) == 4
    assert all(pool.closed and pool.connections == 0 for pool in pools)
    for thread in _aiosqlite_threads() - threads_before:
        thread.join(5.0)
    assert not _aiosqlite_threads() - threads_before


# -- the documented ways to hold open_pool() in tests ----------------------------------


@pytest.fixture
async def held_pool(tmp_path: Path) -> AsyncIterator[litepool.Pool]:
    """As docs/migration.md shows: anyio's plugin runs setup and teardown in one task."""
    async with litepool.open_pool(tmp_path / "fixture.db", readers=1) as pool:
        yield pool


async def test_open_pool_held_by_an_anyio_fixture(held_pool: litepool.Pool) -> None:
    await held_pool.execute("CREATE TABLE t (x)")
    await held_pool.execute("INSERT INTO t VALUES (1)")
    assert await held_pool.fetchval("SELECT count(*) FROM t") == 1


class PoolHolder:
    """As docs/migration.md shows: open_pool() in a task of its own, for test cases
    whose set-up and tear-down run in different tasks."""

    def __init__(self, pool: litepool.Pool) -> None:
        self._pool = pool
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> litepool.Pool:
        opened: asyncio.Future[litepool.Pool] = asyncio.get_running_loop().create_future()

        async def hold() -> None:
            try:
                async with self._pool as pool:
                    opened.set_result(pool)
                    await self._stop.wait()
            except Exception as exc:
                if opened.done():
                    raise  # from closing the pool: PoolHolder's exit raises it
                opened.set_exception(exc)  # from opening it: entering raises it

        self._task = asyncio.create_task(hold())
        return await opened

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._stop.set()
        await self._task


def test_open_pool_held_across_an_isolated_asyncio_test_case(tmp_path: Path) -> None:
    path = tmp_path / "testcase.db"
    pools: list[litepool.Pool] = []

    class UserTests(unittest.IsolatedAsyncioTestCase):
        async def asyncSetUp(self) -> None:
            holder = PoolHolder(litepool.open_pool(path, readers=1))
            self.pool = await self.enterAsyncContext(holder)
            pools.append(self.pool)

        async def test_write_and_read(self) -> None:
            await self.pool.execute("CREATE TABLE IF NOT EXISTS t (x)")
            await self.pool.execute("INSERT INTO t VALUES (1)")
            assert await self.pool.fetchval("SELECT count(*) FROM t") == 1

    result = unittest.TestResult()
    unittest.TestLoader().loadTestsFromTestCase(UserTests).run(result)
    assert [text for _, text in result.errors + result.failures] == []
    assert result.testsRun == 1
    assert pools[0].closed
