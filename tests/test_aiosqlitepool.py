"""``litepool.aiosqlitepool``: no connection lost, every duration checked, and the
migration from aiosqlitepool (its exception names, ``async with pool:`` across tasks).

Connections are counted for real: :class:`Opener` opens plain ``sqlite3`` connections
on threads, records every one, and tells which are still open; the aiosqlite tests
count aiosqlite's own threads. Like aiosqlite's connect, a cancelled call of
:class:`Opener` does not stop its thread, which opens the connection anyway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import sqlite3
import threading
import traceback
import unittest
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import litepool
from litepool.aiosqlitepool import (
    PoolClosedError,
    PoolConnectionAcquireTimeoutError,
    SQLiteConnectionPool,
)

from .conftest import CancellableTask

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


async def give_up_while_making(
    pool: SQLiteConnectionPool[Any],
    making: Callable[[], Awaitable[object]],
    cancel_how: str,
    anyio_backend: str,
) -> None:
    """Cancel a checkout once ``making()`` says its connection is being made."""
    task = CancellableTask(lambda: _checkout(pool), cancel_how, anyio_backend)
    async with anyio.create_task_group() as tg:
        await tg.start(task.run)
        await making()
        task.cancel()
    assert task.outcome == "cancelled"


# -- a connection whose checkout gave up is not lost -----------------------------------


async def test_connection_made_for_a_cancelled_checkout_goes_to_the_next_one(
    opener: Opener, anyio_backend: str, cancel_how: str
) -> None:
    opener.gate.clear()
    pool = SQLiteConnectionPool(opener.connect, pool_size=1)
    try:
        await give_up_while_making(pool, opener.entered, cancel_how, anyio_backend)
        assert_settled(pool)  # the slot came back at once

        got: list[RawConn] = []

        async def next_checkout() -> None:
            async with pool.connection(timeout=0) as conn:
                got.append(conn)
                assert await conn.fetchval("SELECT 1") == 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_checkout)
            await anyio.wait_all_tasks_blocked()
            # It waits for the connection already being made, instead of making another.
            assert opener.calls == 1
            opener.gate.set()
        assert [conn.raw for conn in got] == opener.opened
        assert_settled(pool)
        assert pool.connections == 1
    finally:
        await pool.close()
    assert await opener.still_open() == 0


async def test_connection_made_after_operation_timeout_goes_to_the_next_checkout(
    opener: Opener,
) -> None:
    opener.gate.clear()
    # Long enough for the next checkout to see the connection arrive on a busy machine.
    pool = SQLiteConnectionPool(opener.connect, pool_size=1, operation_timeout=0.5, name="slow")
    try:
        with pytest.raises(litepool.PoolTimeout, match=r"operation_timeout \(0\.5 s\)"):
            async with pool.connection():
                pass  # pragma: no cover
        assert_settled(pool)
        opener.gate.set()
        async with pool.connection(timeout=0) as conn:
            assert await conn.fetchval("SELECT 2") == 2
        assert len(opener.opened) == 1
    finally:
        await pool.close()
    assert await opener.still_open() == 0


async def test_close_waits_for_connections_being_made_and_closes_them(
    opener: Opener, anyio_backend: str
) -> None:
    opener.gate.clear()
    pool = SQLiteConnectionPool(opener.connect, pool_size=2)
    tasks = [CancellableTask(lambda: _checkout(pool), "scope", anyio_backend) for _ in "ab"]
    async with anyio.create_task_group() as tg:
        for task in tasks:
            await tg.start(task.run)
            await opener.entered()  # one factory call each
        for task in tasks:
            task.cancel()
    closed = anyio.Event()

    async def close() -> None:
        await pool.close()
        closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        await anyio.wait_all_tasks_blocked()
        assert not closed.is_set()  # both connections are still being made
        opener.gate.set()
    assert len(opener.opened) == 2
    assert pool.connections == 0
    assert await opener.still_open() == 0


async def test_close_waits_for_a_checkout_waiting_on_a_new_connection(
    opener: Opener,
) -> None:
    opener.gate.clear()
    pool = SQLiteConnectionPool(opener.connect, pool_size=1)
    outcome: list[str] = []

    async def checkout() -> None:
        try:
            async with pool.connection():
                outcome.append("got one")  # pragma: no cover
        except PoolClosedError as exc:
            outcome.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(checkout)
        await opener.entered()
        tg.start_soon(pool.close)
        await anyio.wait_all_tasks_blocked()
        assert outcome == [f"pool {pool.name!r} is closed"]
        opener.gate.set()
    assert pool.connections == 0
    assert len(opener.opened) == 1
    assert await opener.still_open() == 0


async def test_cancelled_close_leaves_nothing_behind(
    opener: Opener, anyio_backend: str, cancel_how: str
) -> None:
    opener.gate.clear()
    pool = SQLiteConnectionPool(opener.connect, pool_size=1)
    await give_up_while_making(pool, opener.entered, "scope", anyio_backend)
    closer = CancellableTask(pool.close, cancel_how, anyio_backend)
    async with anyio.create_task_group() as tg:
        await tg.start(closer.run)
        await anyio.wait_all_tasks_blocked()  # close() waits for the connection
        closer.cancel()
    assert closer.outcome == "cancelled"
    assert pool.closed
    opener.gate.set()
    await pool.close()  # waits for it again
    assert len(opener.opened) == 1
    assert pool.connections == 0
    assert await opener.still_open() == 0


async def _cancel_steps_after_release(
    path: Path, steps: int, cancel_how: str, anyio_backend: str
) -> str | None:
    gate = anyio.Event()
    made: list[sqlite3.Connection] = []

    async def connect() -> RawConn:
        await gate.wait()
        made.append(sqlite3.connect(path))
        return RawConn(made[-1])

    pool = SQLiteConnectionPool(connect, pool_size=1)

    async def checkout() -> None:
        async with pool.connection() as conn:
            await conn.fetchval("SELECT 1")

    try:
        task = CancellableTask(checkout, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await anyio.wait_all_tasks_blocked()
            gate.set()
            for _ in range(steps):
                await anyio.lowlevel.checkpoint()
            task.cancel()
        assert_settled(pool)
        async with pool.connection(timeout=0) as conn:
            assert await conn.fetchval("SELECT 2") == 2
        assert len(made) == 1
    finally:
        await pool.close()
    assert not any(is_open(raw) for raw in made)
    return task.outcome


async def test_cancelled_around_the_moment_its_connection_arrives(
    tmp_path: Path, anyio_backend: str, cancel_how: str
) -> None:
    """The checkout waiting for a new connection is cancelled 0 to 5 scheduling steps
    after the factory's awaitable is released: before it ends, in the step it ends, or
    after the checkout has its connection. Whichever happens, nothing is lost."""
    outcomes = Counter(
        [
            await _cancel_steps_after_release(
                tmp_path / "race.db", steps, cancel_how, anyio_backend
            )
            for steps in range(6)
        ]
    )
    assert outcomes["cancelled"] > 0


async def test_close_cancels_a_factory_call_that_overruns(
    caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    started = anyio.Event()
    cancelled: list[bool] = []

    async def never_connects() -> RawConn:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)
        raise AssertionError("unreachable")  # pragma: no cover

    pool = SQLiteConnectionPool(never_connects, pool_size=1, operation_timeout=0.1)
    await give_up_while_making(pool, started.wait, "scope", anyio_backend)
    assert not cancelled  # the checkout gave up; the factory call goes on
    before = anyio.current_time()
    await pool.close()
    assert anyio.current_time() - before >= 0.09
    assert cancelled == [True]
    assert (
        "pool 'never_connects': 1 connection factory call(s) still running "
        "operation_timeout (0.1 s) after close(); cancelling them"
    ) in caplog.text


async def test_factory_failure_after_its_checkout_left_is_logged(
    opener: Opener, caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    opener.gate.clear()
    opener.fail = True
    pool = SQLiteConnectionPool(opener.connect, pool_size=1, name="failing")
    await give_up_while_making(pool, opener.entered, "native", anyio_backend)
    opener.gate.set()
    await pool.close()  # waits for the call to end
    records = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in records] == [
        "pool 'failing': making a connection failed after its checkout had left"
    ]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], sqlite3.OperationalError)
    assert_settled(pool)


async def test_factory_failure_reaches_the_checkout_that_took_the_call_over(
    opener: Opener, anyio_backend: str
) -> None:
    opener.gate.clear()
    opener.fail = True
    async with SQLiteConnectionPool(opener.connect, pool_size=1, name="failing") as pool:
        await give_up_while_making(pool, opener.entered, "scope", anyio_backend)
        errors: list[BaseException] = []

        async def next_checkout() -> None:
            with pytest.raises(sqlite3.OperationalError) as excinfo:
                await _checkout(pool)
            errors.append(excinfo.value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(next_checkout)
            await anyio.wait_all_tasks_blocked()
            opener.gate.set()
        assert "while pool 'failing' was creating a connection" in errors[0].__notes__
        assert opener.calls == 1
        assert_settled(pool)


async def test_no_connection_outlives_close_after_a_storm_of_give_ups(
    opener: Opener,
) -> None:
    """Checkouts under ``move_on_after`` deadlines of 0 to 3 ms and an
    ``operation_timeout`` of 2 ms, while each connection takes a thread hop to open:
    checkouts give up while waiting, while their connection is made and inside their
    block. No connection is lost: none is open after ``close()``, and no more are ever
    opened than ``pool_size`` plus one for each block that ended cancelled (whose
    connection the pool closes, since a driver may have left an interrupt pending on
    it)."""
    pool = SQLiteConnectionPool(opener.connect, pool_size=3, operation_timeout=0.002)
    outcomes: Counter[str] = Counter()

    async def user(index: int) -> None:
        for round_ in range(15):
            step = (index + round_) % 8
            with anyio.move_on_after(0.0005 * step if step < 7 else None) as scope:
                try:
                    async with pool.connection(timeout=None) as conn:
                        outcomes["blocks ended cancelled"] += 1
                        await conn.fetchval("SELECT 1")
                        await anyio.sleep(0.0005 * (round_ % 3))
                        outcomes["blocks ended cancelled"] -= 1
                except litepool.PoolTimeout:
                    outcomes["operation timeout"] += 1
                    continue
            outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1

    try:
        async with anyio.create_task_group() as tg:
            for index in range(12):
                tg.start_soon(user, index)
        assert outcomes["cancelled"] > 0
        assert outcomes["completed"] > 0
        assert_settled(pool)
    finally:
        await pool.close()
    assert 1 <= len(opener.opened) <= pool.pool_size + outcomes["blocks ended cancelled"]
    assert await opener.still_open() == 0


def _aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiosqlite is asyncio-only
async def test_no_aiosqlite_connection_is_left_open(
    tmp_path: Path, anyio_backend: str, cancel_how: str
) -> None:
    """aiosqlitepool's documented factory: connect, then set a pragma. Checkouts are
    cancelled (and a factory overruns ``operation_timeout``) while it runs; after
    ``close()`` no aiosqlite connection, that is no aiosqlite thread, is left."""
    path = str(tmp_path / "aiosqlite.db")
    gate = anyio.Event()
    connected = anyio.Event()
    made: list[aiosqlite.Connection] = []

    async def connect() -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path)
        made.append(conn)
        connected.set()
        await gate.wait()
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    threads_before = _aiosqlite_threads()
    pool = SQLiteConnectionPool(connect, pool_size=2, operation_timeout=0.5)
    try:
        await give_up_while_making(pool, connected.wait, cancel_how, anyio_backend)

        async def overrun() -> None:
            with pytest.raises(PoolConnectionAcquireTimeoutError, match="operation_timeout"):
                await _checkout(pool)

        # One checkout waits for the call the cancelled one left, the other makes a
        # second call; both give up after operation_timeout.
        async with anyio.create_task_group() as tg:
            tg.start_soon(overrun)
            tg.start_soon(overrun)
        # Both calls went on; the pool keeps what they make.
        gate.set()
        async with pool.connection() as first, pool.connection() as second:
            assert {first, second} == set(made)
    finally:
        await pool.close()
    # aiosqlite's close() returns before its thread has ended: give each a moment.
    for thread in _aiosqlite_threads() - threads_before:
        await anyio.to_thread.run_sync(thread.join, 5.0)
    assert len(made) == 2
    assert not _aiosqlite_threads() - threads_before


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


# -- event loops: one after another, never two at once ---------------------------------

TWO_LOOPS = (
    r"pool 'shared' is used from two event loops at once: checkouts of another event "
    r"loop wait for its slots"
)


async def _take_turns(pool: SQLiteConnectionPool[RawConn]) -> tuple[list[int], int]:
    """Three tasks queue for the one connection of a pool, and are served in order."""
    order: list[int] = []

    async def use(label: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        async with pool.connection() as conn:
            order.append(await conn.fetchval(f"SELECT {label}"))

    async with anyio.create_task_group() as tg, pool.connection():
        for label in range(3):
            await tg.start(use, label)
            await anyio.wait_all_tasks_blocked()  # queued, in this order
        queued = pool.waiting
    return order, queued


def test_pool_serves_one_event_loop_after_another(opener: Opener) -> None:
    """Made outside any event loop, then used by ``anyio.run`` under asyncio, trio and
    asyncio again (what ``asyncio.run`` called twice, or test runners with an event loop
    per test, do), with checkouts waiting each time."""
    pool = SQLiteConnectionPool(opener.connect, pool_size=1)
    try:
        for backend in ("asyncio", "trio", "asyncio"):
            assert anyio.run(_take_turns, pool, backend=backend) == ([0, 1, 2], 3)
            assert_settled(pool)
    finally:
        anyio.run(pool.close)
    assert len(opener.opened) == 1
    assert anyio.run(opener.still_open) == 0


async def test_waiting_from_a_second_event_loop_at_once_is_refused(opener: Opener) -> None:
    pool = SQLiteConnectionPool(opener.connect, pool_size=1, name="shared")
    served: list[str] = []

    async def wait_here() -> None:
        async with pool.connection():
            served.append("this loop")

    def check_out_from_another_loop() -> None:
        async def checkout() -> None:
            async with pool.connection(timeout=1):
                served.append("the other loop")  # pragma: no cover

        with pytest.raises(RuntimeError, match=TWO_LOOPS):
            asyncio.run(checkout())

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg, pool.connection():
                tg.start_soon(wait_here)
                await anyio.wait_all_tasks_blocked()
                await anyio.to_thread.run_sync(check_out_from_another_loop)
                assert pool.waiting == 1  # still queued, and still first
        assert served == ["this loop"]
        assert_settled(pool)
    finally:
        await pool.close()
    assert await opener.still_open() == 0


async def test_slot_given_back_in_a_second_event_loop_reaches_the_first(
    opener: Opener,
) -> None:
    """A checkout of another event loop takes the free slot (nothing to refuse yet), and
    gives it back while a task of this loop waits: the slot reaches that task, woken from
    this loop's own thread, and the other loop is told of the misuse."""
    pool = SQLiteConnectionPool(opener.connect, pool_size=1, name="shared")
    held, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_in_another_loop() -> None:
        async def hold() -> None:
            async with pool.connection():
                held.set()
                release.wait(10)  # blocks that loop: nothing else runs in it

        try:
            asyncio.run(hold())
        except RuntimeError as exc:
            errors.append(exc)

    served: list[int] = []

    async def wait_here() -> None:
        async with pool.connection(timeout=10) as conn:
            served.append(await conn.fetchval("SELECT 7"))

    thread = threading.Thread(target=hold_in_another_loop)
    thread.start()
    try:
        with anyio.fail_after(20):
            assert await anyio.to_thread.run_sync(held.wait, 10.0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_here)
                await anyio.wait_all_tasks_blocked()
                assert pool.waiting == 1
                release.set()
            await anyio.to_thread.run_sync(thread.join, 10.0)
        assert served == [7]
        assert len(errors) == 1
        assert re.match(TWO_LOOPS, str(errors[0]))
        assert_settled(pool)
    finally:
        release.set()
        await pool.close()
    assert await opener.still_open() == 0


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
