"""Connections kept healthy while the pool serves: replacement of broken, old and idle
connections, the ``check`` option, ``pool.resize()`` and periodic ``PRAGMA optimize``.

Replacements happen on a background task and a worker thread, with no event a test can
wait on; tests poll the pool's statistics under a deadline instead (``until``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import litepool
from litepool._supervisor import LIFETIME_JITTER, Reader, due, lifetime_deadline
from tests.conftest import CancellableTask, bound_read, litepool_threads

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        # The condition changes on worker threads and in the pool's own tasks; nothing
        # signals it, so it is polled.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def make_table(pool: litepool.Pool, rows: int = 100) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(rows)])


class FileDescriptors:
    """Which file descriptors each connection opened on the database, by opening order.

    Used as the pool's ``configure``: it runs on each new connection's thread, once the
    connection has read the database (so its database and WAL files are open).
    Connections opened at the same time cannot be told apart: open them one by one.
    """

    def __init__(self, path: str) -> None:
        self._prefix = os.path.abspath(path)
        self._lock = threading.Lock()
        self.seen: set[int] = set()
        self.per_connection: list[set[int]] = []

    def _open_fds(self) -> set[int]:
        fds = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith(self._prefix):
                    fds.add(int(fd))
        return fds

    def __call__(self, conn: sqlite3.Connection) -> None:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        with self._lock:
            now = self._open_fds()
            self.per_connection.append(now - self.seen)
            self.seen |= now

    def break_connection(self, index: int) -> None:
        """Make connection ``index``'s WAL file fail every read and write with a real
        disk I/O error (its descriptor now refers to a directory).

        Only the WAL file's descriptor: SQLite keeps a closed connection's database file
        descriptor for reuse by the next connection to that file, which would inherit
        the fault; each connection opens its WAL file afresh.
        """
        wal = [
            fd
            for fd in self.per_connection[index]
            if os.readlink(f"/proc/self/fd/{fd}").endswith("-wal")
        ]
        assert len(wal) == 1, self.per_connection[index]
        bad = os.open(os.path.dirname(self._prefix), os.O_RDONLY)
        try:
            os.dup2(bad, wal[0])
        finally:
            os.close(bad)


#: For pools whose WAL descriptors a test breaks: no housekeeping checkpoint, which could
#: copy the WAL into the database first and spare the readers from reading it.
FAULTY: dict[str, Any] = {"wal_max_bytes": None}


# -- pure decisions ----------------------------------------------------------------------


def test_lifetimes_are_jittered_below_the_maximum() -> None:
    deadlines = [lifetime_deadline(100.0, 60.0) for _ in range(200)]
    assert all(100.0 + 60.0 * (1 - LIFETIME_JITTER) <= d <= 160.0 for d in deadlines)
    assert len(set(deadlines)) > 150  # spread out, not one instant
    assert lifetime_deadline(100.0, None) == float("inf")


def test_due_picks_expired_and_idle_connections_only() -> None:
    old = Reader("old", expires=5.0, idle_since=None, leaving=False)
    young = Reader("young", expires=50.0, idle_since=None, leaving=False)
    assert due([young, old], now=10.0, max_idle=None) == ("old", 10.0)
    assert due([young], now=10.0, max_idle=None) == (None, 50.0)
    # Idle: only once it has served something and while nobody holds or queues on it,
    # which the supervisor tells as idle_since (None otherwise).
    never = Reader("never used", expires=float("inf"), idle_since=None, leaving=False)
    assert due([never], now=10.0, max_idle=5.0) == (None, float("inf"))
    idle = Reader("idle", expires=float("inf"), idle_since=1.0, leaving=False)
    assert due([idle], now=10.0, max_idle=5.0) == ("idle", 10.0)
    assert due([idle], now=3.0, max_idle=5.0) == (None, 6.0)
    # One already leaving is not picked twice.
    leaving = Reader("leaving", expires=5.0, idle_since=None, leaving=True)
    assert due([leaving], now=10.0, max_idle=None) == (None, float("inf"))


# -- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_lifetime": 0}, ValueError, "max_lifetime must be > 0 seconds or None, got 0"),
        ({"max_lifetime": -1.0}, ValueError, "max_lifetime must be >= 0 seconds"),
        ({"max_lifetime": "1h"}, TypeError, "max_lifetime must be a number of seconds"),
        ({"max_idle": 0.0}, ValueError, "max_idle must be > 0 seconds or None, got 0.0"),
        ({"max_idle": float("nan")}, ValueError, "max_idle must be >= 0 seconds"),
        ({"optimize_interval": 0}, ValueError, "optimize_interval must be > 0 seconds"),
        ({"check": "yes"}, TypeError, "check must be a bool, not 'yes'"),
        ({"check": 1}, TypeError, "check must be a bool, not 1"),
    ],
)
def test_bad_upkeep_options_are_refused_by_name(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        litepool.open_pool("x.db", **kwargs)  # type: ignore[arg-type]


# -- broken connections ----------------------------------------------------------------------


async def test_io_error_replaces_the_connection_and_the_pool_serves_on(db_path: str) -> None:
    fds = FileDescriptors(db_path)
    async with litepool.open_pool(db_path, readers=1, configure=fds, **FAULTY, name="io") as pool:
        await make_table(pool)
        assert await pool.fetchval("SELECT count(*) FROM t") == 100
        fds.break_connection(1)  # 0 is the writer, 1 the reader
        await pool.execute("INSERT INTO t VALUES (100, 'new')")  # the reader must read
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await pool.fetchval("SELECT count(*) FROM t")
        await until(lambda: pool.statistics().connections_replaced == 1)
        assert await pool.fetchval("SELECT count(*) FROM t") == 101
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT v FROM t WHERE id = 100") == "new"
        stats = pool.statistics()
        assert (stats.connections_lost, stats.connections_failed) == (1, 0)
        assert stats.read.size == 1
        await until(lambda: pool.statistics().connections_closed == 1)
        assert sorted(litepool_threads()) == ["litepool[io] reader-2", "litepool[io] writer"]
    assert litepool_threads() == []


async def test_statement_errors_keep_the_connection(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, name="keep") as pool:
        await make_table(pool)
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            await pool.fetchval("SELEKT 1")
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            await pool.execute("INSERT INTO t VALUES (1, 'again')")
        with pytest.raises(sqlite3.ProgrammingError, match="bindings"):
            await pool.fetchval("SELECT ?", (1, 2))
        async with pool.read() as conn:
            with pytest.raises(sqlite3.OperationalError, match="no such table"):
                await conn.fetchall("SELECT * FROM missing")
        assert await pool.fetchval("SELECT count(*) FROM t") == 100
        stats = pool.statistics()
        assert (stats.connections_lost, stats.connections_replaced) == (0, 0)
        assert stats.connections_opened == 2
        assert sorted(litepool_threads()) == ["litepool[keep] reader-1", "litepool[keep] writer"]


async def test_broken_connection_held_by_a_checkout_leaves_when_given_back(
    db_path: str,
) -> None:
    fds = FileDescriptors(db_path)
    async with litepool.open_pool(db_path, readers=1, configure=fds, **FAULTY, name="held") as pool:
        await make_table(pool)
        async with bound_read(pool) as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 100
            fds.break_connection(1)
            await pool.execute("INSERT INTO t VALUES (100, 'new')")
            with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
                await conn.fetchval("SELECT count(*) FROM t")
            # The replacement serves others meanwhile; this borrower keeps its handle.
            await until(lambda: pool.statistics().connections_replaced == 1)
            assert await pool.fetchval("SELECT count(*) FROM t") == 101
            assert pool.statistics().read.size == 2  # the broken one, still held
        assert pool.statistics().read.size == 1
        await until(lambda: pool.statistics().connections_closed == 1)
        assert await pool.fetchval("SELECT count(*) FROM t") == 101


async def test_broken_writer_is_replaced(db_path: str) -> None:
    fds = FileDescriptors(db_path)
    async with litepool.open_pool(db_path, readers=1, configure=fds, **FAULTY, name="w") as pool:
        await make_table(pool)
        fds.break_connection(0)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (100, 'lost')")
        await until(lambda: pool.statistics().connections_replaced == 1)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (101, 'kept')")
        assert await pool.fetchall("SELECT id FROM t WHERE id >= 100") == [(101,)]
        assert pool.statistics().connections_lost == 1


async def test_failed_replacement_is_retried_and_counted(db_path: str) -> None:
    fds = FileDescriptors(db_path)
    failures = {"left": 0}

    def configure(conn: sqlite3.Connection) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("configure failed on purpose")
        fds(conn)

    async with litepool.open_pool(
        db_path, readers=1, configure=configure, **FAULTY, name="r"
    ) as pool:
        await make_table(pool)
        assert await pool.fetchval("SELECT count(*) FROM t") == 100
        failures["left"] = 2
        fds.break_connection(1)
        await pool.execute("INSERT INTO t VALUES (100, 'new')")
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            await pool.fetchval("SELECT count(*) FROM t")
        await until(lambda: pool.statistics().connections_replaced == 1)
        stats = pool.statistics()
        assert (stats.connections_failed, stats.connections_lost) == (2, 1)
        assert await pool.fetchval("SELECT count(*) FROM t") == 101


# -- lifetime and idleness ---------------------------------------------------------------------


async def test_readers_past_their_lifetime_are_replaced_without_failing_a_call(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=2, max_lifetime=0.2, name="life") as pool:
        await make_table(pool)
        calls = 0
        while pool.statistics().connections_replaced < 4:
            assert await pool.fetchval("SELECT count(*) FROM t") == 100
            async with pool.read() as conn:
                assert await conn.fetchval("SELECT v FROM t WHERE id = 7") == "v7"
            calls += 1
        stats = pool.statistics()
        assert stats.connections_lost == 0
        assert stats.read.size == 2
        assert stats.write.size == 1
        assert calls > 0
    assert litepool_threads() == []


async def test_held_reader_is_replaced_only_after_it_comes_back(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, max_lifetime=0.05, name="hold") as pool:
        await make_table(pool)
        async with pool.read() as conn:
            # Readers may have been replaced already while the table was made: this one
            # is the reader held now, and it expires while held.
            held = await conn.run_sync(lambda raw: threading.current_thread().name)
            replaced = pool.statistics().connections_replaced
            await until(lambda: pool.statistics().connections_replaced > replaced)
            # Expired and replaced, but still this borrower's, and still working.
            assert await conn.fetchval("SELECT count(*) FROM t") == 100
            assert held in litepool_threads()
        await until(lambda: held not in litepool_threads())


async def test_idle_reader_is_replaced(db_path: str) -> None:
    async with litepool.open_pool(
        db_path, readers=1, max_lifetime=None, max_idle=0.05, name="idle"
    ) as pool:
        await make_table(pool)
        assert await pool.fetchval("SELECT count(*) FROM t") == 100
        await until(lambda: pool.statistics().connections_replaced == 1)
        await until(
            lambda: (
                sorted(litepool_threads()) == ["litepool[idle] reader-2", "litepool[idle] writer"]
            )
        )
        # The fresh reader has served nothing: it is not idle in that sense, so it stays
        # until it is used.
        assert pool.statistics().connections_replaced == 1
        assert await pool.fetchval("SELECT count(*) FROM t") == 100


# -- check ---------------------------------------------------------------------------------------


async def test_check_on_checkout_swaps_a_broken_connection(db_path: str) -> None:
    fds = FileDescriptors(db_path)
    async with litepool.open_pool(
        db_path, readers=1, configure=fds, check=True, **FAULTY, name="check"
    ) as pool:
        await make_table(pool)
        await pool.resize(2)  # one at a time, so that each one's descriptors are known
        async with pool.read() as first, pool.read() as second:
            for conn in (first, second):  # each reader has read the table
                assert await conn.fetchval("SELECT count(*) FROM t") == 100
        fds.break_connection(1)
        fds.break_connection(2)
        await pool.execute("INSERT INTO t VALUES (100, 'new')")
        for _ in range(3):
            async with pool.read() as conn:  # never hands out a broken one
                assert await conn.fetchval("SELECT count(*) FROM t") == 101
        stats = pool.statistics()
        assert stats.connections_lost == 2
        assert stats.read.checkouts == 2 + 3


async def test_check_cancelled_gives_the_connection_back(
    db_path: str, cancel_how: str, anyio_backend: str
) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def configure(conn: sqlite3.Connection) -> None:
        def hold(value: int) -> int:
            entered.set()
            gate.wait(10)
            return value

        conn.create_function("hold", 1, hold)

    async with litepool.open_pool(
        db_path, readers=1, configure=configure, check=True, name="cc"
    ) as pool:
        await make_table(pool)

        async def checkout() -> None:
            async with pool.read():
                pass

        # Keep the reader's thread busy so that the check queues behind a query.
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.fetchval, "SELECT hold(1)")
            await anyio.to_thread.run_sync(entered.wait, 10)
            task = CancellableTask(checkout, cancel_how, anyio_backend)
            await tg.start(task.run)
            await anyio.wait_all_tasks_blocked()
            task.cancel()
            gate.set()
        assert task.outcome == "cancelled"
        stats = pool.statistics()
        assert (stats.read.idle, stats.read.in_use, stats.connections_lost) == (1, 0, 0)
        async with pool.read(timeout=5) as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 100


# -- resize ----------------------------------------------------------------------------------


async def test_resize_grows_and_shrinks_the_readers(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, name="rs") as pool:
        await make_table(pool)
        await pool.resize(3)
        assert pool.statistics().read.size == 3
        assert len(litepool_threads()) == 4
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(bound_read(pool, timeout=5)) for _ in range(3)]
            for conn in conns:
                assert await conn.fetchval("SELECT count(*) FROM t") == 100
            await pool.resize(1)  # every reader is held: each leaves when given back
            assert pool.statistics().read.size == 3
            assert await conns[0].fetchval("SELECT count(*) FROM t") == 100
        assert pool.statistics().read.size == 1
        await until(lambda: len(litepool_threads()) == 2)
        assert await pool.fetchval("SELECT count(*) FROM t") == 100
        assert "readers=1" in repr(pool)
        stats = pool.statistics()
        assert (stats.connections_opened, stats.connections_replaced) == (4, 0)
        with pytest.raises(ValueError, match="readers must be >= 1, got 0"):
            await pool.resize(0)
        with pytest.raises(TypeError, match="readers must be an int, not '2'"):
            await pool.resize("2")  # type: ignore[arg-type]
    with pytest.raises(litepool.PoolClosed):
        await pool.resize(2)


async def test_resize_that_fails_to_open_changes_nothing(db_path: str) -> None:
    fail = {"on": False}

    def configure(conn: sqlite3.Connection) -> None:
        if fail["on"]:
            raise RuntimeError("no more connections today")

    async with litepool.open_pool(db_path, readers=1, configure=configure, name="rf") as pool:
        await make_table(pool)
        fail["on"] = True
        with pytest.raises(RuntimeError, match="no more connections today"):
            await pool.resize(3)
        stats = pool.statistics()
        assert stats.read.size == 1
        assert stats.connections_failed == 1
        await until(lambda: len(litepool_threads()) == 2)
        assert await pool.fetchval("SELECT count(*) FROM t") == 100


async def test_cancelled_resize_adds_nothing(
    db_path: str, cancel_how: str, anyio_backend: str
) -> None:
    gate = threading.Event()
    opening = threading.Event()
    block = {"on": False}

    def configure(conn: sqlite3.Connection) -> None:
        if block["on"]:
            opening.set()
            gate.wait(10)

    async with litepool.open_pool(db_path, readers=1, configure=configure, name="rc") as pool:
        await make_table(pool)
        block["on"] = True

        async def grow() -> None:
            await pool.resize(2)

        task = CancellableTask(grow, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await anyio.to_thread.run_sync(opening.wait, 10)
            task.cancel()
        gate.set()
        assert task.outcome == "cancelled"
        assert pool.statistics().read.size == 1
        await until(lambda: len(litepool_threads()) == 2)
        block["on"] = False
        await pool.resize(2)  # the lock was released
        assert pool.statistics().read.size == 2


async def test_resize_under_load_loses_no_call(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, name="load") as pool:
        await make_table(pool)
        done = anyio.Event()
        answered = 0

        async def reader() -> None:
            nonlocal answered
            while not done.is_set():
                assert await pool.fetchval("SELECT count(*) FROM t") == 100
                answered += 1

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(reader)
            for size in (4, 1, 3, 1, 2):
                await pool.resize(size)
                await anyio.sleep(0.02)  # let readers run on this size
            done.set()
        assert answered > 0
        assert pool.statistics().read.size == 2
        await until(lambda: len(litepool_threads()) == 3)


# -- optimize --------------------------------------------------------------------------------


async def test_optimize_runs_periodically_on_the_writer(db_path: str) -> None:
    statements: list[str] = []

    def configure(conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA query_only").fetchone() == (0,):  # the writer
            conn.set_trace_callback(statements.append)

    async with litepool.open_pool(
        db_path, readers=1, configure=configure, optimize_interval=0.02, name="opt"
    ) as pool:
        await make_table(pool)
        await until(lambda: statements.count("PRAGMA optimize") >= 2)
