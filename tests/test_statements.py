"""Single statements through the pool itself: pool.fetchone(), pool.execute(), ..."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

import anyio
import anyio.to_thread
import pytest

import litepool

from .conftest import LONG_QUERY, CancellableTask, StartSignal, held_by_another_task

pytestmark = pytest.mark.anyio


async def test_single_statement_round_trip(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, row_factory=dict) as pool:
        await pool.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
        result = await pool.execute("INSERT INTO users (name) VALUES (?)", ("ada",))
        assert result == litepool.ExecuteResult(rowcount=1, lastrowid=1)
        many = await pool.executemany(
            "INSERT INTO users (name) VALUES (?)", [("grace",), ("linus",)]
        )
        assert many.rowcount == 2
        assert await pool.fetchone("SELECT name FROM users WHERE id = ?", (1,)) == {"name": "ada"}
        assert await pool.fetchall("SELECT id FROM users ORDER BY id") == [
            {"id": 1},
            {"id": 2},
            {"id": 3},
        ]
        assert await pool.fetchval("SELECT count(*) FROM users") == 3
        assert await pool.fetchval("SELECT name FROM users WHERE id = 99") is None
        assert await pool.fetchone("SELECT name FROM users WHERE id = 99") is None


async def test_failed_statement_is_rolled_back_whole(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute("CREATE TABLE u (name TEXT UNIQUE)")
        with pytest.raises(sqlite3.IntegrityError):
            await pool.executemany("INSERT INTO u VALUES (?)", [("a",), ("b",), ("a",)])
        assert await pool.fetchval("SELECT count(*) FROM u") == 0
        assert pool.statistics().rollbacks == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            # Reads go to read-only connections.
            await pool.fetchall("DELETE FROM u")
        with pytest.raises(TypeError, match="params must be a sequence"):
            await pool.fetchone("SELECT ?", "x")
        with pytest.raises(TypeError, match="seq_of_params"):
            await pool.executemany("INSERT INTO u VALUES (?)", "abc")


async def test_statements_never_run_inside_a_checkouts_transaction(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute("CREATE TABLE t (x INTEGER)")
        async with anyio.create_task_group() as tg, pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            # Queued behind this checkout, not inside its transaction.
            tg.start_soon(pool.execute, "INSERT INTO t VALUES (2)")
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 1
            # Had it run inside this transaction, this would delete its row too.
            await conn.execute("DELETE FROM t")
        assert await pool.fetchall("SELECT x FROM t") == [(2,)]


async def test_statements_wait_behind_held_readers_and_time_out(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, acquire_timeout=0.05) as pool:
        async with held_by_another_task(pool.read()):
            with pytest.raises(litepool.PoolTimeout, match="no read connection"):
                await pool.fetchval("SELECT 1")
            with pytest.raises(litepool.PoolTimeout, match="within 0 s"):
                await pool.fetchval("SELECT 1", timeout=0)
        assert await pool.fetchval("SELECT 1", timeout=0) == 1
        assert pool.statistics().read.timeouts == 2


async def test_reads_spread_when_a_reader_is_busy(db_path: str, start_signal: StartSignal) -> None:
    """A long query on one reader does not hold up short ones queued after it."""
    async with (
        litepool.open_pool(db_path, readers=2, configure=start_signal.configure) as pool,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(pool.fetchval, LONG_QUERY)
        await start_signal.wait()
        # Once the busy reader has answered nothing for longer than the pool's spill
        # delay, the next read goes to the other reader and comes back while the long
        # query still runs (it would wait for minutes behind it otherwise).
        await anyio.to_thread.run_sync(time.sleep, 0.01)
        with anyio.fail_after(5):
            assert await pool.fetchval("SELECT 7") == 7
        tg.cancel_scope.cancel()


def _name_threads(conn: sqlite3.Connection) -> None:
    # SQL function thread_name(): which reader's thread ran the statement.
    conn.create_function("thread_name", 0, lambda: threading.current_thread().name)


#: About a million steps of a recursive CTE: tens of milliseconds, far above the time up
#: to which the pool queues statements on one busy thread.
SLOW_QUERY = (
    "SELECT thread_name(), (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
    "WHERE i < 1000000) SELECT count(*) FROM r)"
)


async def test_short_statements_gather_on_one_reader(db_path: str) -> None:
    """Many short statements at once are answered by one thread, in one batch or few,
    rather than waking every reader."""
    async with litepool.open_pool(db_path, readers=4, configure=_name_threads) as pool:
        # The pool learns how long such a statement takes: a running average that
        # weighs the newest statement 0.2, so the first statement's one-time costs
        # (preparing it, the first call of the function) fade only after some twenty.
        for _ in range(30):
            await pool.fetchval("SELECT thread_name()")
        names: list[str] = []

        async def read() -> None:
            names.append(await pool.fetchval("SELECT thread_name()"))

        async with anyio.create_task_group() as tg:
            for _ in range(32):
                tg.start_soon(read)
        assert len(names) == 32
        # All on one thread, short of a burst that the machine stretches past the pool's
        # spill delay; a pool that spread them would give each reader 8 or fewer.
        assert Counter(names).most_common(1)[0][1] >= 24, names


async def test_long_statements_spread_over_readers(db_path: str) -> None:
    """Statements that each take longer than the pool queues on one thread go to
    different readers and run side by side."""
    async with litepool.open_pool(db_path, readers=4, configure=_name_threads) as pool:
        for _ in range(2):  # the pool learns how long such a statement takes
            await pool.fetchone(SLOW_QUERY)
        rows: list[tuple[str, int]] = []

        async def read() -> None:
            rows.append(await pool.fetchone(SLOW_QUERY))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(read)
        assert [count for _, count in rows] == [1_000_000] * 4
        assert len({name for name, _ in rows}) == 4, rows


async def test_cancelled_read_statement_is_interrupted(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:

        async def long_read() -> None:
            await pool.fetchval(LONG_QUERY)

        task = CancellableTask(long_read, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        assert await pool.fetchval("SELECT 5", timeout=1) == 5
        assert pool.statistics().interrupted == 1


async def test_cancelled_write_statement_is_rolled_back(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    """A write cancelled while it runs is rolled back; one still queued never runs."""
    started = threading.Event()
    release = threading.Event()

    def configure(conn: sqlite3.Connection) -> None:
        def block() -> int:
            started.set()
            release.wait(10)
            return 1

        conn.create_function("block", 0, block)

    async with litepool.open_pool(db_path, readers=1, configure=configure) as pool:
        await pool.execute("CREATE TABLE t (x INTEGER)")

        async def blocked_insert() -> None:
            await pool.execute("INSERT INTO t SELECT block()")

        async def queued_insert() -> None:
            await pool.execute("INSERT INTO t VALUES (2)")

        first = CancellableTask(blocked_insert, cancel_how, anyio_backend)
        second = CancellableTask(queued_insert, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await anyio.to_thread.run_sync(started.wait, 10)
            await tg.start(second.run)
            await anyio.wait_all_tasks_blocked()
            second.cancel()  # still queued behind the first: skipped
            await anyio.wait_all_tasks_blocked()
            first.cancel()  # running: stopped once block() returns, before its COMMIT
            await anyio.wait_all_tasks_blocked()  # the cancellation has reached the job
            release.set()
        assert (first.outcome, second.outcome) == ("cancelled", "cancelled")
        async with pool.connection() as conn:
            assert await conn.fetchall("SELECT x FROM t") == []
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False


async def test_statements_after_close_raise(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=1)
    with pytest.raises(litepool.PoolClosed):
        await pool.fetchval("SELECT 1")
    async with pool:
        pass
    with pytest.raises(litepool.PoolClosed):
        await pool.execute("SELECT 1")
