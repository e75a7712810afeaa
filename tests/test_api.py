"""The public API of a pool and its connections, on a real database file."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import anyio
import anyio.to_thread
import pytest

import litepool

from .conftest import LONG_QUERY, StartSignal, bound_read

pytestmark = pytest.mark.anyio

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INTEGER);
INSERT INTO users (name, age) VALUES ('ada', 36), ('grace', 45), ('linus', 21);
"""


async def make_schema(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.executescript(SCHEMA)


async def test_read_write_connection_round_trip(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_schema(pool)
        async with pool.write() as conn:
            result = await conn.execute("INSERT INTO users (name, age) VALUES (?, ?)", ("alan", 41))
            assert result == litepool.ExecuteResult(rowcount=1, lastrowid=4)
            assert await conn.run_sync(lambda raw: raw.in_transaction) is True
        async with pool.read() as conn:
            assert await conn.fetchone("SELECT name, age FROM users WHERE id = ?", (4,)) == (
                "alan",
                41,
            )
            assert await conn.fetchall("SELECT id FROM users ORDER BY id") == [
                (1,),
                (2,),
                (3,),
                (4,),
            ]
            assert await conn.fetchval("SELECT count(*) FROM users") == 4
            assert await conn.fetchval("SELECT name FROM users WHERE id = -1") is None
            assert await conn.fetchone("SELECT * FROM users WHERE id = -1") is None
            assert (
                await conn.fetchval("SELECT name FROM users WHERE id = :id", {"id": 2}) == "grace"
            )


async def test_executemany_and_rowcount(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        async with pool.write() as conn:
            result = await conn.executemany(
                "INSERT INTO users (name) VALUES (?)", ((f"user{i}",) for i in range(10))
            )
            assert result.rowcount == 10
            changed = await conn.execute("UPDATE users SET age = 1 WHERE age IS NULL")
            assert changed.rowcount == 10
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM users") == 13


async def test_write_rolls_back_on_exception(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        with pytest.raises(KeyError):
            async with pool.write() as conn:
                await conn.execute("DELETE FROM users")
                raise KeyError("boom")
        # Through the writer: its ROLLBACK was queued ahead of this statement.
        async with pool.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM users") == 3
        assert pool.statistics().rollbacks == 1


async def test_write_without_statements_commits_nothing(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        async with pool.write():
            pass
        async with pool.connection() as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
        assert pool.statistics().rollbacks == 0


async def test_write_statement_error_is_callers_and_tx_continues(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO users (name) VALUES ('x')")
            with pytest.raises(sqlite3.IntegrityError):
                await conn.execute("INSERT INTO users (name) VALUES ('x')")
            await conn.execute("INSERT INTO users (name) VALUES ('y')")
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM users") == 5


async def test_first_statement_error_still_begins_transaction(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            async with pool.write() as conn:
                await conn.execute("DELETE FROM users")
                await conn.execute("SELECT * FROM nope")
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM users") == 3


async def test_connection_is_autocommit_with_manual_transactions(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        async with pool.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("DELETE FROM users WHERE id = 1")
            await conn.rollback()
            await conn.execute("BEGIN")
            await conn.execute("DELETE FROM users WHERE id = 2")
            await conn.commit()
            await conn.execute("BEGIN")
            await conn.execute("DELETE FROM users WHERE id = 3")
            # left open: rolled back when the block ends
        async with pool.read() as conn:
            assert await conn.fetchall("SELECT id FROM users ORDER BY id") == [(1,), (3,)]


async def test_commit_and_rollback_belong_to_connection_checkouts(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        async with pool.write() as conn:
            with pytest.raises(litepool.PoolError, match=r"commit\(\) is for pool.connection"):
                await conn.commit()
        async with pool.read() as conn:
            with pytest.raises(litepool.PoolError, match="read-only"):
                await conn.rollback()


async def test_readers_are_read_only(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        async with pool.read() as conn:
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                await conn.execute("DELETE FROM users")


async def test_executescript_stays_inside_write_transaction(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_schema(pool)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            async with pool.write() as conn:
                await conn.execute("DELETE FROM users WHERE id = 1")
                await conn.executescript(
                    "INSERT INTO users (name) VALUES ('a;b'); -- a comment; with semicolons\n"
                    "INSERT INTO missing VALUES (1);"
                )
        async with pool.read() as conn:
            # Neither the DELETE nor the script's first INSERT was committed.
            assert await conn.fetchval("SELECT count(*) FROM users") == 3


async def test_iterate_streams_in_chunks(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, chunk_size=7) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE n (i INTEGER)")
            await conn.executemany("INSERT INTO n VALUES (?)", ((i,) for i in range(100)))
        async with pool.read() as conn:
            seen = [row[0] async for row in conn.iterate("SELECT i FROM n ORDER BY i")]
            assert seen == list(range(100))
            exact = [row async for row in conn.iterate("SELECT i FROM n LIMIT 14")]
            assert len(exact) == 14
            empty = [row async for row in conn.iterate("SELECT i FROM n WHERE i < 0")]
            assert empty == []
            rows = conn.iterate("SELECT i FROM n ORDER BY i", chunk_size=3)
            assert [await rows.__anext__() for _ in range(4)] == [(0,), (1,), (2,), (3,)]
            await rows.aclose()
            with pytest.raises(StopAsyncIteration):
                await rows.__anext__()
            # The connection is usable after an abandoned iteration.
            assert await conn.fetchval("SELECT count(*) FROM n") == 100


async def test_abandoned_iterator_is_closed_on_return(db_path: str) -> None:
    async with litepool.open_pool(
        db_path, readers=1, chunk_size=2, pragmas={"busy_timeout": 100}
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE n (i INTEGER)")
            await conn.executemany("INSERT INTO n VALUES (?)", ((i,) for i in range(10)))
        async with pool.read() as conn:
            async for _row in conn.iterate("SELECT i FROM n"):
                break
        async with pool.connection() as conn:
            await conn.execute("INSERT INTO n VALUES (10)")
            # A half-read cursor left open on the reader would pin the WAL: the checkpoint
            # would report busy instead of truncating it.
            busy, _, _ = await conn.fetchone("PRAGMA wal_checkpoint(TRUNCATE)")
            assert busy == 0


async def test_run_sync_runs_on_the_connection(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool, pool.read() as conn:
        assert await conn.run_sync(lambda raw, x: raw.execute("SELECT ?", (x,)).fetchone(), 5) == (
            5,
        )

        def fails(raw: sqlite3.Connection) -> None:
            raise ValueError("from run_sync")

        with pytest.raises(ValueError, match="from run_sync"):
            await conn.run_sync(fails)
        with pytest.raises(TypeError, match="callable"):
            await conn.run_sync(42)  # type: ignore[arg-type]


async def test_configure_and_row_factories(db_path: str) -> None:
    def configure(raw: sqlite3.Connection) -> None:
        raw.create_function("double", 1, lambda x: 2 * x)

    async with litepool.open_pool(db_path, readers=1, configure=configure) as pool:
        await make_schema(pool)
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT double(21)") == 42
    async with (
        litepool.open_pool(db_path, readers=1, row_factory=sqlite3.Row) as pool,
        pool.read() as conn,
    ):
        row = await conn.fetchone("SELECT id, name FROM users WHERE id = 1")
        assert row["name"] == "ada"
        assert await conn.fetchval("SELECT name FROM users WHERE id = 1") == "ada"
    async with (
        litepool.open_pool(db_path, readers=1, row_factory=dict) as pool,
        pool.read() as conn,
    ):
        assert await conn.fetchall("SELECT id, name FROM users WHERE id < 3") == [
            {"id": 1, "name": "ada"},
            {"id": 2, "name": "grace"},
        ]

    def upper_first(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> str:
        return str(row[0]).upper()

    async with (
        litepool.open_pool(db_path, readers=1, row_factory=upper_first) as pool,
        pool.read() as conn,
    ):
        assert await conn.fetchone("SELECT name FROM users WHERE id = 1") == "ADA"


async def test_pragmas_defaults_and_overrides(db_path: str) -> None:
    async with litepool.open_pool(
        db_path, readers=1, pragmas={"busy_timeout": 1234, "foreign_keys": None}
    ) as pool:
        async with pool.connection() as conn:
            assert await conn.fetchval("PRAGMA journal_mode") == "wal"
            assert await conn.fetchval("PRAGMA busy_timeout") == 1234
            assert await conn.fetchval("PRAGMA synchronous") == 1  # NORMAL
            assert await conn.fetchval("PRAGMA foreign_keys") == 0
        async with pool.read() as conn:
            assert await conn.fetchval("PRAGMA query_only") == 1
            assert await conn.fetchval("PRAGMA busy_timeout") == 1234
            assert await conn.fetchval("PRAGMA temp_store") == 2  # MEMORY


async def test_memory_database_is_shared_by_all_connections() -> None:
    async with litepool.open_pool(":memory:", readers=3) as pool:
        await make_schema(pool)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO users (name) VALUES ('mem')")

        async def count(results: list[int]) -> None:
            async with pool.read() as conn:
                results.append(await conn.fetchval("SELECT count(*) FROM users"))

        results: list[int] = []
        async with bound_read(pool), bound_read(pool), anyio.create_task_group() as tg:
            tg.start_soon(count, results)  # the third reader, distinct from the two held
        assert results == [4]
    # A second ':memory:' pool is a different database.
    async with litepool.open_pool(":memory:", readers=1) as pool, pool.read() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sqlite_master") == 0


async def test_memory_database_concurrent_reads_and_writes() -> None:
    async with litepool.open_pool(":memory:", readers=2) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE n (i INTEGER)")

        async def writer() -> None:
            for i in range(50):
                async with pool.write() as conn:
                    await conn.execute("INSERT INTO n VALUES (?)", (i,))

        async def reader() -> None:
            for _ in range(50):
                async with pool.read() as conn:
                    await conn.fetchval("SELECT count(*) FROM n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            tg.start_soon(reader)
            tg.start_soon(reader)
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM n") == 50


async def test_sqlite_errors_are_sqlite3_exceptions(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool, pool.read() as conn:
        with pytest.raises(sqlite3.OperationalError, match="syntax error"):
            await conn.fetchall("SELEKT 1")
        with pytest.raises(sqlite3.ProgrammingError, match="bindings"):
            await conn.fetchall("SELECT ?, ?", (1,))
        with pytest.raises(TypeError, match="params must be a sequence"):
            await conn.fetchall("SELECT ?", "x")
        with pytest.raises(TypeError, match="sql must be a str"):
            await conn.fetchall(b"SELECT 1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="chunk_size"):
            conn.iterate("SELECT 1", chunk_size=0)
        # The connection is still good after each error.
        assert await conn.fetchval("SELECT 1") == 1


async def test_connection_used_after_block_raises(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        async with pool.read() as conn:
            rows = conn.iterate("SELECT 1")
        assert conn.released
        assert "released" in repr(conn)
        with pytest.raises(litepool.ConnectionReleased, match="after its 'async with' block"):
            await conn.fetchval("SELECT 1")
        with pytest.raises(litepool.ConnectionReleased):
            await rows.__anext__()
        checkout = pool.read()
        async with checkout:
            pass
        with pytest.raises(RuntimeError, match="entered once"):
            async with checkout:
                pass


async def test_one_task_can_hold_several_connections(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        async with bound_read(pool) as a, bound_read(pool) as b, pool.write() as w:
            assert pool.statistics().read.in_use == 2
            assert pool.statistics().write.in_use == 1
            assert await a.fetchval("SELECT 1") == await b.fetchval("SELECT 1")
            await w.execute("CREATE TABLE t (x)")
        stats = pool.statistics()
        assert (stats.read.idle, stats.read.in_use, stats.write.idle) == (2, 0, 1)


async def test_statistics_count_checkouts(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=3, name="stats") as pool:
        for _ in range(5):
            async with pool.read():
                pass
        async with pool.write():
            pass
        await pool.fetchval("SELECT 1")
        await pool.execute("CREATE TABLE t (x)")
        await pool.execute("INSERT INTO t VALUES (1)")
        stats = pool.statistics()
        assert (stats.name, stats.closed, stats.interrupted, stats.rollbacks) == (
            "stats",
            False,
            0,
            0,
        )
        lanes = [
            (lane.size, lane.idle, lane.in_use, lane.waiting, lane.checkouts, lane.statements)
            for lane in (stats.read, stats.write)
        ]
        assert lanes == [(3, 3, 0, 0, 5, 1), (1, 1, 0, 0, 1, 2)]
        assert (stats.read.timeouts, stats.write.timeouts) == (0, 0)
        assert (stats.read.acquire_wait.count, stats.read.usage.count) == (5, 5)
        assert stats.readers == 3
        with pytest.raises(AttributeError):
            stats.name = "x"  # type: ignore[misc]
    assert pool.statistics().closed


async def test_results_before_a_long_statement_are_not_held_back(
    db_path: str, start_signal: StartSignal
) -> None:
    """Answers are posted in batches, but never held behind a long statement."""
    release = threading.Event()
    blocked = threading.Event()

    def block(raw: sqlite3.Connection) -> None:
        blocked.set()
        release.wait(10)

    async with (
        litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool,
        pool.read() as conn,
        anyio.create_task_group() as tg,
    ):
        # Queue [block, short, long] on the one reader, so that the worker takes them in
        # one batch once block() returns.
        tg.start_soon(conn.run_sync, block)
        await anyio.to_thread.run_sync(blocked.wait, 10)
        short: list[int] = []
        answered = anyio.Event()

        async def run_short() -> None:
            short.append(await conn.fetchval("SELECT 7"))
            answered.set()

        tg.start_soon(run_short)
        await anyio.wait_all_tasks_blocked()  # queued second
        tg.start_soon(conn.fetchval, LONG_QUERY)
        await anyio.wait_all_tasks_blocked()  # queued third
        release.set()
        await start_signal.wait()  # the long statement runs now
        with anyio.fail_after(5):
            await answered.wait()
        assert short == [7]
        tg.cancel_scope.cancel()
