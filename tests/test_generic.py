"""``litepool.SQLiteConnectionPool``: aiosqlitepool's call shape, litepool's guarantees.

Every test runs against real driver connections on real database files in ``tmp_path``.
aiosqlite is asyncio-only (its worker thread answers through the asyncio loop with
``call_soon_threadsafe``, and its first call fails under trio), so tests that use it run
on asyncio only; sqlite-anyio is an anyio driver, so those tests run on asyncio and on
trio. The comparisons with the real aiosqlitepool at the end are asyncio-only for the
same reason: aiosqlitepool is built on asyncio.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import aiosqlitepool  # type: ignore[import-untyped]
import anyio
import anyio.lowlevel
import pytest
import sqlite_anyio

import litepool
from litepool.aiosqlitepool import SQLiteConnectionPool

from .conftest import CancellableTask

pytestmark = pytest.mark.anyio

#: (backend, driver) pairs: aiosqlite on asyncio only, sqlite-anyio on both backends.
DRIVERS = pytest.mark.parametrize(
    ("anyio_backend", "driver"),
    [("asyncio", "aiosqlite"), ("asyncio", "sqlite-anyio"), ("trio", "sqlite-anyio")],
    ids=["aiosqlite-asyncio", "sqlite_anyio-asyncio", "sqlite_anyio-trio"],
)
ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])


class Counting:
    """A real driver connection, forwarding every call and counting the pool's calls.

    ``in_transaction`` is forwarded when the driver has it (aiosqlite); for a driver
    that lacks it (sqlite-anyio) reading it raises ``AttributeError``, as on the
    driver's own connection.
    """

    def __init__(self, real: aiosqlite.Connection | sqlite_anyio.Connection) -> None:
        self.real = real
        self.calls: Counter[str] = Counter()
        self.closed = anyio.Event()

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["execute"] += 1
        return self.real.execute(*args, **kwargs)

    async def rollback(self) -> None:
        self.calls["rollback"] += 1
        await self.real.rollback()

    async def commit(self) -> None:
        await self.real.commit()

    async def close(self) -> None:
        self.calls["close"] += 1
        await self.real.close()
        self.closed.set()

    @property
    def in_transaction(self) -> bool:
        value: bool = getattr(self.real, "in_transaction")  # noqa: B009
        return value


class Driver:
    """Opens real connections of one driver on one database file, and keeps them."""

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self.made: list[Counting] = []

    async def connect(self) -> Counting:
        real: aiosqlite.Connection | sqlite_anyio.Connection
        if self.name == "aiosqlite":
            real = await aiosqlite.connect(self.path)
        else:
            real = await sqlite_anyio.connect(self.path)
        conn = Counting(real)
        self.made.append(conn)
        return conn

    def calls(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for conn in self.made:
            total += conn.calls
        return total

    def pool(self, **kwargs: Any) -> SQLiteConnectionPool[Counting]:
        return SQLiteConnectionPool(self.connect, **kwargs)

    async def close_leftovers(self) -> None:
        """Close what a pool under test failed to close, so that a failing pool fails
        its test instead of leaving a driver thread that keeps the test run alive."""
        for conn in self.made:
            if not conn.closed.is_set():
                await conn.real.close()


@pytest.fixture
async def drv(driver: str, tmp_path: Path) -> AsyncIterator[Driver]:
    made = Driver(driver, str(tmp_path / "generic.db"))
    yield made
    await made.close_leftovers()


async def fetchval(conn: Counting | aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    cursor = await conn.execute(sql, params)
    row = await cursor.fetchone()
    await cursor.close()
    return None if row is None else row[0]


async def create_table(pool: SQLiteConnectionPool[Counting]) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        await conn.commit()


def assert_settled(pool: SQLiteConnectionPool[Any]) -> None:
    """No slot is held or awaited, and every open connection is idle."""
    assert (pool.in_use, pool.waiting) == (0, 0)
    assert pool.idle == pool.connections <= pool.pool_size


# -- arguments -------------------------------------------------------------------------


async def _connect_nothing() -> Counting:
    raise AssertionError("not called")  # pragma: no cover


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pool_size": 0}, ValueError, "pool_size must be >= 1, got 0"),
        ({"pool_size": -2}, ValueError, "pool_size must be >= 1, got -2"),
        ({"pool_size": 2.5}, TypeError, "pool_size must be an int >= 1, not 2.5"),
        ({"pool_size": True}, TypeError, "pool_size must be an int >= 1, not True"),
        ({"pool_size": None}, TypeError, "pool_size must be an int >= 1, not None"),
        (
            {"acquisition_timeout": -1},
            ValueError,
            "acquisition_timeout must be >= 0 seconds or None, got -1",
        ),
        (
            {"acquisition_timeout": math.nan},
            ValueError,
            "acquisition_timeout must be >= 0 seconds or None, got nan",
        ),
        (
            {"acquisition_timeout": "30"},
            TypeError,
            "acquisition_timeout must be a number of seconds or None, not '30'",
        ),
        ({"idle_timeout": -0.5}, ValueError, "idle_timeout must be >= 0 seconds or None"),
        ({"operation_timeout": -3}, ValueError, "operation_timeout must be >= 0 seconds"),
        ({"name": ""}, TypeError, "name must be a non-empty str, not ''"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        SQLiteConnectionPool(_connect_nothing, **kwargs)


def test_factory_must_be_callable() -> None:
    with pytest.raises(TypeError, match="connection_factory must be an async callable"):
        SQLiteConnectionPool("app.db")  # type: ignore[arg-type]


def test_bad_per_checkout_timeout_is_named() -> None:
    pool = SQLiteConnectionPool(_connect_nothing)
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds or None, got -1"):
        pool.connection(timeout=-1)


async def test_sync_factory_is_refused_and_gives_the_slot_back() -> None:
    def not_async() -> object:
        return object()

    factory: Any = not_async  # what a type checker would have refused
    async with SQLiteConnectionPool(factory, pool_size=1, name="sync") as pool:
        for _ in range(2):  # the second attempt proves the slot came back
            with pytest.raises(TypeError, match="connection_factory of pool 'sync' must be async"):
                async with pool.connection(timeout=0):
                    pass  # pragma: no cover
        assert_settled(pool)


# -- the basics ------------------------------------------------------------------------


@DRIVERS
async def test_round_trip_and_reuse(drv: Driver) -> None:
    async with drv.pool(pool_size=3) as pool:
        assert pool.connections == 0  # created on demand
        await create_table(pool)
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO t VALUES (?)", (7,))
            await conn.commit()
        async with pool.connection() as conn:
            assert await fetchval(conn, "SELECT sum(x) FROM t") == 7
        assert len(drv.made) == 1  # the one connection was reused
        assert_settled(pool)
    assert pool.closed
    assert pool.connections == 0
    assert drv.calls()["close"] == 1


@DRIVERS
async def test_one_task_may_hold_several_checkouts(drv: Driver) -> None:
    async with drv.pool(pool_size=2) as pool:
        async with pool.connection() as first, pool.connection() as second:
            assert first is not second
            assert pool.in_use == 2
            with pytest.raises(litepool.PoolTimeout):
                async with pool.connection(timeout=0):
                    pass  # pragma: no cover
        assert_settled(pool)


@DRIVERS
async def test_factory_failure_propagates_and_gives_the_slot_back(
    drv: Driver, tmp_path: Path
) -> None:
    drv.path = str(tmp_path / "missing-directory" / "x.db")
    threads_before = set(threading.enumerate())
    async with drv.pool(pool_size=1, name="broken") as pool:
        for _ in range(2):  # the second attempt fails the same way: the slot came back
            with pytest.raises(sqlite3.OperationalError) as excinfo:
                async with pool.connection(timeout=0):
                    pass  # pragma: no cover
            assert "while pool 'broken' was creating a connection" in excinfo.value.__notes__
        assert_settled(pool)
        assert pool.connections == 0
        # After a failed connect, aiosqlite stops its thread without waiting for it; let
        # it finish while this test's event loop can still take the thread's answer.
        for thread in set(threading.enumerate()) - threads_before:
            if "_connection_worker_thread" in thread.name:  # aiosqlite's thread function
                await anyio.to_thread.run_sync(thread.join, 10.0)
                assert not thread.is_alive()


@DRIVERS
async def test_connection_closed_by_its_borrower_is_replaced(
    drv: Driver, caplog: pytest.LogCaptureFixture
) -> None:
    async with drv.pool(pool_size=1, name="replaced") as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER)")
            await conn.close()
        # Its rollback failed, so the pool closed it and gave the slot back.
        assert "pool 'replaced': rollback of a returned connection failed" in caplog.text
        assert_settled(pool)
        assert pool.connections == 0
        async with pool.connection(timeout=0) as conn:
            assert await fetchval(conn, "SELECT count(*) FROM t") == 0
        assert len(drv.made) == 2


# -- no round trip per checkout; rollback only when needed -----------------------------


@DRIVERS
async def test_no_round_trip_per_checkout(drv: Driver) -> None:
    async with drv.pool(pool_size=2) as pool:
        for _ in range(20):
            async with pool.connection():
                pass
        calls = drv.calls()
        assert len(drv.made) == 1
        assert calls["execute"] == 0  # no health check
        if drv.name == "aiosqlite":
            assert calls["rollback"] == 0  # it says it is not in a transaction
        else:
            # sqlite-anyio connections do not expose in_transaction: the state is
            # unknown, so every return rolls back (one round trip, never on checkout).
            assert calls["rollback"] == 20


@DRIVERS
async def test_rollback_only_when_a_transaction_is_open(drv: Driver) -> None:
    async with drv.pool(pool_size=1) as pool:
        await create_table(pool)
        rollbacks_before = drv.calls()["rollback"]
        # A committed write: nothing to roll back.
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.commit()
        # An uncommitted write (the drivers' default transaction handling opened one).
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO t VALUES (2)")
        # A clean read that ends with an exception: the state is unknown, roll back.
        with pytest.raises(KeyError):
            async with pool.connection() as conn:
                await fetchval(conn, "SELECT 1")
                raise KeyError("boom")
        async with pool.connection() as conn:
            assert await fetchval(conn, "SELECT group_concat(x) FROM t") == "1"
        rollbacks = drv.calls()["rollback"] - rollbacks_before
        expected = 2 if drv.name == "aiosqlite" else 4  # sqlite-anyio: every return
        assert rollbacks == expected
        assert len(drv.made) == 1
        assert_settled(pool)


# -- timeouts and fairness -------------------------------------------------------------


@DRIVERS
async def test_fractional_timeouts_are_honoured(drv: Driver) -> None:
    async with drv.pool(pool_size=1, acquisition_timeout=0.25, name="frac") as pool:
        # A free slot with timeout 0: taken at once (a connection is created for it).
        async with pool.connection(timeout=0):
            pass
        async with pool.connection():
            started = time.monotonic()
            with pytest.raises(litepool.PoolTimeout, match=r"within 0\.25 s") as excinfo:
                async with pool.connection():
                    pass  # pragma: no cover
            waited = time.monotonic() - started
            # Neither truncated to 0 nor rounded up to a whole second.
            assert 0.24 <= waited < 1.0, waited
            assert "pool 'frac'" in str(excinfo.value)
            assert "pool_size: 1, in use: 1" in str(excinfo.value)
            assert isinstance(excinfo.value, TimeoutError)
            started = time.monotonic()
            with pytest.raises(litepool.PoolTimeout, match=r"within 0\.1 s"):
                async with pool.connection(timeout=0.1):
                    pass  # pragma: no cover
            assert 0.09 <= time.monotonic() - started < 1.0
        assert_settled(pool)


@DRIVERS
async def test_waiters_are_served_first_come_first_served(drv: Driver) -> None:
    async with drv.pool(pool_size=1) as pool:
        order: list[int] = []

        async def waiter(index: int, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()
            async with pool.connection():
                order.append(index)

        holder = pool.connection()
        await holder.__aenter__()
        async with anyio.create_task_group() as tg:
            for index in range(6):
                await tg.start(waiter, index)
                await anyio.wait_all_tasks_blocked()
            assert pool.waiting == 6
            await holder.__aexit__(None, None, None)
            # The slot went to the first waiter: a newcomer cannot barge in ahead of it.
            with pytest.raises(litepool.PoolTimeout):
                async with pool.connection(timeout=0):
                    pass  # pragma: no cover
        assert order == list(range(6))
        assert_settled(pool)


# -- cancellation: the cases that lose slots in aiosqlitepool --------------------------


@DRIVERS
async def test_cancelled_while_waiting_holds_nothing(
    drv: Driver, anyio_backend: str, cancel_how: str
) -> None:
    async with drv.pool(pool_size=1) as pool:

        async def wait() -> None:
            async with pool.connection():
                pass  # pragma: no cover

        task = CancellableTask(wait, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg, pool.connection():
            await tg.start(task.run)
            await anyio.wait_all_tasks_blocked()
            assert pool.waiting == 1
            task.cancel()
            await anyio.wait_all_tasks_blocked()
            assert pool.waiting == 0
        assert task.outcome == "cancelled"
        assert_settled(pool)
        async with pool.connection(timeout=0) as conn:
            assert await fetchval(conn, "SELECT 1") == 1


@DRIVERS
async def test_cancelled_in_the_same_step_as_the_hand_off(
    drv: Driver, anyio_backend: str, cancel_how: str
) -> None:
    async with drv.pool(pool_size=1) as pool:
        got: list[str] = []

        def make_waiter(label: str) -> CancellableTask:
            async def wait() -> None:
                async with pool.connection():
                    got.append(label)

            return CancellableTask(wait, cancel_how, anyio_backend)

        first, second = make_waiter("first"), make_waiter("second")
        async with anyio.create_task_group() as tg:
            holder = pool.connection()
            await holder.__aenter__()
            await tg.start(first.run)
            await anyio.wait_all_tasks_blocked()
            await tg.start(second.run)
            await anyio.wait_all_tasks_blocked()
            assert pool.waiting == 2
            # The release hands the slot to `first` (the token is released last, with no
            # await after it), and `first` is cancelled before it can run.
            await holder.__aexit__(None, None, None)
            first.cancel()
        if first.outcome == "cancelled":
            assert got == ["second"]
        else:
            # Only Task.cancel() is edge-triggered: it always wins against the hand-off.
            assert (anyio_backend, cancel_how) != ("asyncio", "native")
            assert got == ["first", "second"]
        assert second.outcome == "completed"
        assert_settled(pool)
        assert pool.connections == 1
        async with pool.connection(timeout=0):
            pass


@DRIVERS
async def test_move_on_after_around_checkout_never_leaks(drv: Driver) -> None:
    """Deadlines that expire while waiting, at the hand-off, inside the block, and while
    the connection goes back: every slot comes back."""
    # A lost slot shows as a PoolTimeout, not as a test that never ends.
    async with drv.pool(pool_size=2, acquisition_timeout=10) as pool:
        outcomes: Counter[str] = Counter()

        async def user(index: int) -> None:
            for round_ in range(15):
                step = (index + round_) % 8  # deadlines of 0 to 3 ms, and none at all
                with anyio.move_on_after(0.0005 * step if step < 7 else None) as scope:
                    async with pool.connection() as conn:
                        await fetchval(conn, "SELECT ?", (index,))
                outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1

        async with anyio.create_task_group() as tg:
            for index in range(12):
                tg.start_soon(user, index)
        assert outcomes["cancelled"] > 0
        assert outcomes["completed"] > 0
        assert_settled(pool)
        # The full capacity is there: both slots at once, without waiting.
        async with pool.connection(timeout=0), pool.connection(timeout=0):
            assert pool.connections <= 2


@DRIVERS
async def test_cancelled_while_releasing(drv: Driver, anyio_backend: str, cancel_how: str) -> None:
    """The block ends with a transaction open and a cancellation pending, so the
    cancellation lands on the release's rollback."""
    async with drv.pool(pool_size=1) as pool:
        await create_table(pool)
        task: CancellableTask

        async def write_then_cancel() -> None:
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")  # uncommitted
                task.cancel()  # pending: delivered at the first await of the release
            await anyio.lowlevel.checkpoint()

        task = CancellableTask(write_then_cancel, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
        assert task.outcome == "cancelled"
        assert_settled(pool)
        if (anyio_backend, cancel_how) == ("asyncio", "native"):
            # Task.cancel() goes through shields: the rollback was interrupted, so the
            # connection could not be trusted and was closed instead of reused.
            assert pool.connections == 0
            assert drv.made[0].calls["close"] == 1
        else:
            # The rollback ran shielded; the connection is back, rolled back.
            assert pool.connections == 1
        async with pool.connection(timeout=0) as conn:
            assert await fetchval(conn, "SELECT count(*) FROM t") == 0


@DRIVERS
async def test_cancelled_while_the_connection_is_being_created(
    drv: Driver, anyio_backend: str, cancel_how: str
) -> None:
    entered = anyio.Event()
    gate = anyio.Event()

    async def slow_connect() -> Counting:
        entered.set()
        await gate.wait()
        return await drv.connect()

    async with SQLiteConnectionPool(slow_connect, pool_size=1) as pool:

        async def checkout() -> None:
            async with pool.connection():
                pass  # pragma: no cover

        task = CancellableTask(checkout, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await entered.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        assert_settled(pool)
        assert pool.connections == 0
        gate.set()
        async with pool.connection(timeout=0) as conn:
            assert await fetchval(conn, "SELECT 1") == 1
        assert len(drv.made) == 1


async def test_creation_overrunning_operation_timeout_gives_the_slot_back(
    anyio_backend: str,
) -> None:
    async def never_connects() -> Counting:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async with SQLiteConnectionPool(never_connects, pool_size=1, operation_timeout=0.05) as pool:
        for _ in range(2):
            with pytest.raises(litepool.PoolTimeout, match=r"operation_timeout \(0\.05 s\)"):
                async with pool.connection(timeout=0):
                    pass  # pragma: no cover
        assert_settled(pool)


# -- an interrupt left behind by a cancelled block stays with its connection -----------


class LateInterrupt:
    """A driver connection over ``sqlite3`` that interrupts itself when its caller is
    cancelled, as sqlite-anyio does, at the worst moment sqlite-anyio can: after the
    statement has reached its first row, and with that statement's cursor never
    finished. (sqlite-anyio's cursor then stays referenced from the cancellation's
    traceback, in a reference cycle, until the garbage collector runs.) SQLite keeps
    such an interrupt pending for as long as a statement of the connection is unfinished,
    so the connection fails every later statement with "interrupted".
    """

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self.unfinished: list[sqlite3.Cursor] = []

    def execute(self, sql: str) -> sqlite3.Cursor:
        return self.raw.execute(sql)

    async def execute_until_cancelled(self, sql: str) -> None:
        cursor = self.raw.execute(sql)  # at its first row: the statement is unfinished
        try:
            await anyio.sleep_forever()
        except BaseException:
            self.raw.interrupt()
            self.unfinished.append(cursor)
            raise

    async def rollback(self) -> None:
        self.raw.rollback()

    async def close(self) -> None:
        self.raw.close()


async def _cancel_in_the_block(
    pool: SQLiteConnectionPool[LateInterrupt], how: str, anyio_backend: str
) -> None:
    """Run a block whose statement is cancelled, the way ``how`` says; the block ends
    with a cancellation, or with the timeout error it was turned into."""

    async def block() -> None:
        async with pool.connection() as conn:
            await conn.execute_until_cancelled("SELECT 1 UNION ALL SELECT 2")

    if how in ("scope", "native"):
        task = CancellableTask(block, how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await anyio.wait_all_tasks_blocked()
            task.cancel()
        assert task.outcome == "cancelled"
    elif how == "anyio timeout":
        with pytest.raises(TimeoutError), anyio.fail_after(0):
            await block()
    elif anyio_backend == "asyncio":
        import asyncio

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0):
                await block()
    else:
        import trio

        with pytest.raises(trio.TooSlowError), trio.fail_after(0):
            await block()


@pytest.mark.parametrize("how", ["scope", "native", "anyio timeout", "native timeout"])
async def test_an_interrupt_left_behind_by_a_cancelled_block_never_reaches_the_next(
    tmp_path: Path, anyio_backend: str, how: str
) -> None:
    """The connection of a block that ended with a cancellation, or with the timeout
    error that ``anyio.fail_after``, ``asyncio.timeout`` or ``trio.fail_after`` turn one
    into, is closed rather than reused: its driver may have left an interrupt pending
    on it, which would fail the next borrower's statement."""
    made: list[LateInterrupt] = []

    async def connect() -> LateInterrupt:
        made.append(LateInterrupt(sqlite3.connect(tmp_path / "late.db")))
        return made[-1]

    async with SQLiteConnectionPool(connect, pool_size=1) as pool:
        async with pool.connection():  # made now, so that the block is entered at once
            pass
        await _cancel_in_the_block(pool, how, anyio_backend)
        assert made[0].unfinished  # the interrupt is pending on that connection
        assert_settled(pool)
        async with pool.connection(timeout=0) as conn:
            assert conn.execute("SELECT 42").fetchone() == (42,)
        assert len(made) == 2
    for conn in made:  # the first when its block ended, the second by the pool's close
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.raw.execute("SELECT 1")


# -- idle connections ------------------------------------------------------------------


@DRIVERS
async def test_idle_connections_are_closed_by_the_next_checkout_after_idle_timeout(
    drv: Driver,
) -> None:
    """The pool has no task of its own, also under ``async with pool:``: an idle
    connection past ``idle_timeout`` stays open until the next checkout closes it."""
    async with drv.pool(pool_size=2, idle_timeout=0.2) as pool:
        async with pool.connection():
            pass
        async with pool.connection():  # within idle_timeout: reused
            pass
        returned = anyio.current_time()
        assert len(drv.made) == 1
        await anyio.sleep_until(returned + 0.25)  # the passing of idle_timeout itself
        assert pool.idle == pool.connections == 1
        assert drv.made[0].calls["close"] == 0
        async with pool.connection() as conn:
            assert drv.made[0].calls["close"] == 1
            assert await fetchval(conn, "SELECT 1") == 1
        assert len(drv.made) == 2
        assert pool.connections == 1


@DRIVERS
async def test_expired_connections_are_closed_by_the_next_checkout(drv: Driver) -> None:
    """Without ``async with pool:`` there is no task to close them; a checkout does."""
    pool = drv.pool(pool_size=2, idle_timeout=0)
    try:
        async with pool.connection():
            pass
        assert pool.idle == 1
        async with pool.connection():
            assert drv.made[0].calls["close"] == 1
            assert pool.connections == 1
        assert len(drv.made) == 2
    finally:
        await pool.close()
    assert drv.made[1].calls["close"] == 1


@DRIVERS
async def test_idle_connections_are_reused_most_recent_first(drv: Driver) -> None:
    async with drv.pool(pool_size=3, idle_timeout=None) as pool:
        async with pool.connection() as a, pool.connection() as b, pool.connection() as c:
            pass
        async with pool.connection() as again:
            assert again is a  # the last one returned (blocks exit innermost first)
        assert {b, c} <= set(drv.made)
        assert pool.connections == 3


# -- closing ---------------------------------------------------------------------------


@DRIVERS
async def test_close_wakes_waiters_and_closes_every_connection(drv: Driver) -> None:
    pool = drv.pool(pool_size=2)
    outcome: list[str] = []

    async def wait() -> None:
        try:
            async with pool.connection():
                outcome.append("got one")  # pragma: no cover
        except litepool.PoolClosed as exc:
            outcome.append(str(exc))

    async with pool.connection() as held:
        async with pool.connection():
            pass
        async with pool.connection():
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                assert pool.waiting == 1
                # Two concurrent close() calls: both return once closing is done.
                tg.start_soon(pool.close)
                await pool.close()
            assert outcome == [f"pool {pool.name!r} is closed"]
            assert pool.closed
            with pytest.raises(litepool.PoolClosed):
                async with pool.connection():
                    pass  # pragma: no cover
        # Connections still checked out are closed when their block ends.
        assert held.calls["close"] == 0
    assert all(conn.calls["close"] == 1 for conn in drv.made)
    assert pool.connections == 0
    with pytest.raises(litepool.PoolClosed):
        async with pool:
            pass  # pragma: no cover


@DRIVERS
async def test_pool_is_entered_once(drv: Driver) -> None:
    async with drv.pool() as pool:
        with pytest.raises(RuntimeError, match="already entered"):
            await pool.__aenter__()


# -- side by side with the real aiosqlitepool (asyncio only) ---------------------------


class PoolLike(Protocol):
    def connection(self) -> AbstractAsyncContextManager[Any]: ...

    async def close(self) -> None: ...


async def _hand_off(pool: PoolLike) -> None:
    async def wait() -> None:
        async with pool.connection():
            pass

    waiter = CancellableTask(wait, "native", "asyncio")
    async with anyio.create_task_group() as tg:
        holder = pool.connection()
        await holder.__aenter__()
        await tg.start(waiter.run)
        await anyio.wait_all_tasks_blocked()
        await holder.__aexit__(None, None, None)
        waiter.cancel()


async def _release_scope(pool: PoolLike) -> None:
    with anyio.CancelScope() as scope:
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            scope.cancel()


async def _release_native(pool: PoolLike) -> None:
    task: CancellableTask

    async def write_then_cancel() -> None:
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            task.cancel()

    task = CancellableTask(write_then_cancel, "native", "asyncio")
    async with anyio.create_task_group() as tg:
        await tg.start(task.run)


async def _move_on_after(pool: PoolLike) -> None:
    async def user(index: int) -> None:
        for round_ in range(20):
            with anyio.move_on_after(0.0005 * ((index + round_) % 7)):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")

    async with anyio.create_task_group() as tg:
        for index in range(8):
            tg.start_soon(user, index)


SCENARIOS: dict[str, Callable[[PoolLike], Awaitable[None]]] = {
    "cancelled in the same step as the hand-off (Task.cancel)": _hand_off,
    "cancelled while releasing (cancel scope)": _release_scope,
    "cancelled while releasing (Task.cancel)": _release_native,
    "move_on_after around pool.connection() under contention": _move_on_after,
}


async def _slot_lost(pool: PoolLike) -> bool:
    """Whether the pool's only slot is gone: a checkout of the idle pool times out."""
    try:
        async with pool.connection():
            return False
    except (litepool.PoolTimeout, aiosqlitepool.PoolConnectionAcquireTimeoutError):
        return True


@ASYNCIO_ONLY
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_aiosqlitepool_loses_the_slot_where_litepool_does_not(
    scenario: str, tmp_path: Path
) -> None:
    """The same scenario against both pools of one aiosqlite connection each.

    aiosqlitepool takes its connection back with an awaited rollback that is not
    shielded, and hands connections over through tasks reading an ``asyncio.Queue``:
    these cancellations strand its only connection, so the next checkout of the idle
    pool times out (after 1 s: its timeouts are whole seconds). Both pools get the same
    timeout; litepool's pool answers at once. (A waiter cancelled while simply queued
    does not leak in aiosqlitepool, so that case is not compared here.)
    """
    path = str(tmp_path / "side-by-side.db")
    async with aiosqlite.connect(path) as setup:
        await setup.execute("CREATE TABLE t (x INTEGER)")
        await setup.commit()
    lost: dict[str, bool] = {}
    for label in ("aiosqlitepool", "litepool"):
        drv = Driver("aiosqlite", path)
        pool: PoolLike
        if label == "aiosqlitepool":
            pool = aiosqlitepool.SQLiteConnectionPool(
                drv.connect, pool_size=1, acquisition_timeout=1
            )
        else:
            pool = drv.pool(pool_size=1, acquisition_timeout=1)
        try:
            async with pool.connection():  # warm up: one open connection
                pass
            await SCENARIOS[scenario](pool)
            lost[label] = await _slot_lost(pool)
        finally:
            await pool.close()
            await drv.close_leftovers()
    assert lost == {"aiosqlitepool": True, "litepool": False}


@ASYNCIO_ONLY
async def test_aiosqlitepool_truncates_fractional_timeouts(tmp_path: Path) -> None:
    """``acquisition_timeout=0.5`` becomes ``int(0.5) == 0`` in aiosqlitepool: every
    checkout fails, even of an idle pool. litepool's pool waits the half second."""
    path = str(tmp_path / "timeouts.db")

    def connect() -> aiosqlite.Connection:
        return aiosqlite.connect(path)

    theirs = aiosqlitepool.SQLiteConnectionPool(connect, pool_size=1, acquisition_timeout=0.5)
    try:
        with pytest.raises(aiosqlitepool.PoolConnectionAcquireTimeoutError):
            async with theirs.connection():
                pass  # pragma: no cover
    finally:
        await theirs.close()

    async with (
        SQLiteConnectionPool(connect, pool_size=1, acquisition_timeout=0.5) as ours,
        ours.connection(),
    ):
        started = time.monotonic()
        with pytest.raises(litepool.PoolTimeout, match=r"within 0\.5 s"):
            async with ours.connection():
                pass  # pragma: no cover
        assert 0.49 <= time.monotonic() - started < 1.0


@ASYNCIO_ONLY
async def test_aiosqlitepool_pays_two_round_trips_per_checkout(tmp_path: Path) -> None:
    """The same counting wrapper around real aiosqlite connections, 10 empty checkouts:
    aiosqlitepool sends ``SELECT 1`` on every checkout and rolls back on every return;
    litepool's pool does neither for a connection that is not in a transaction."""
    counts: dict[str, Counter[str]] = {}
    for label in ("aiosqlitepool", "litepool"):
        drv = Driver("aiosqlite", str(tmp_path / f"{label}.db"))
        pool: PoolLike
        if label == "aiosqlitepool":
            pool = aiosqlitepool.SQLiteConnectionPool(drv.connect, pool_size=1)
        else:
            pool = drv.pool(pool_size=1)
        try:
            async with pool.connection():  # warm up (aiosqlitepool health-checks it too)
                pass
            before = drv.calls()
            for _ in range(10):
                async with pool.connection():
                    pass
            counts[label] = drv.calls() - before
        finally:
            await pool.close()
            await drv.close_leftovers()
    assert counts["aiosqlitepool"] == Counter(execute=10, rollback=10)
    assert counts["litepool"] == Counter()
