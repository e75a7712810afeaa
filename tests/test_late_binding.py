"""``pool.read()`` blocks take a reader of their own only when a call needs one.

Plain queries in a read block are dispatched like ``pool.fetchone()``; the first call
that needs the state of one connection (a transaction, ``iterate()``, ``run_sync``, a
pragma, a temporary table ...) takes a reader for the rest of the block. What the block
sees must not change: each test here would fail if a call that needs its connection
ran on another one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import litepool

from .conftest import (
    LONG_QUERY,
    CancellableTask,
    StartSignal,
    cancel_while_waiting,
    held_by_another_task,
    litepool_threads,
)

pytestmark = pytest.mark.anyio


def thread_name(raw: sqlite3.Connection) -> str:
    return threading.current_thread().name


async def make_table(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE t (x INTEGER)")
        await conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])


async def test_plain_queries_take_no_reader(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 3
            assert await conn.fetchall("  -- a comment first\n select x FROM t") == [
                (0,),
                (1,),
                (2,),
            ]
            assert await conn.fetchone("WITH c AS (SELECT 7) SELECT * FROM c") == (7,)
            assert (await conn.execute("VALUES (1)")).rows == [(1,)]
            stats = pool.statistics().read
            assert (stats.in_use, stats.idle, stats.statements) == (0, 2, 4)
        stats = pool.statistics().read
        assert (stats.checkouts, stats.acquire_wait.count, stats.usage.count) == (1, 1, 1)


Bind = Callable[[litepool.Connection], Awaitable[Any]]


async def _iterate(conn: litepool.Connection) -> Any:
    async for row in conn.iterate("SELECT x FROM t"):
        return row
    return None  # pragma: no cover


BINDING_CALLS: dict[str, Bind] = {
    "BEGIN": lambda conn: conn.execute("BEGIN"),
    "iterate()": _iterate,
    "run_sync()": lambda conn: conn.run_sync(thread_name),
    "PRAGMA": lambda conn: conn.fetchval("PRAGMA query_only"),
    "SAVEPOINT": lambda conn: conn.execute("SAVEPOINT sp"),
    "executescript()": lambda conn: conn.executescript("SELECT 1; SELECT 2"),
    "ATTACH": lambda conn: conn.execute("ATTACH ':memory:' AS side"),
}


@pytest.mark.parametrize("call", list(BINDING_CALLS))
async def test_a_call_that_needs_its_connection_binds_a_reader(db_path: str, call: str) -> None:
    async with litepool.open_pool(db_path, readers=3) as pool:
        await make_table(pool)
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            assert pool.statistics().read.in_use == 0
            await BINDING_CALLS[call](conn)
            assert pool.statistics().read.in_use == 1
            mine = await conn.run_sync(thread_name)
            # From now on every call, queries too, runs on that one reader.
            for _ in range(10):
                assert await conn.fetchval("SELECT 1") == 1
                assert await conn.run_sync(thread_name) == mine
            assert pool.statistics().read.in_use == 1
        stats = pool.statistics().read
        assert (stats.in_use, stats.idle, stats.checkouts) == (0, 3, 1)


async def test_state_made_in_the_block_is_seen_by_its_later_queries(db_path: str) -> None:
    """Three readers and a queue of dispatched work: a later query that ran anywhere
    else would not find the attached database, or would see the newer snapshot."""
    async with litepool.open_pool(db_path, readers=3) as pool:
        await make_table(pool)
        for _ in range(5):
            async with pool.read() as conn:
                await conn.execute("ATTACH ? AS side", (db_path,))
                assert await conn.fetchval("SELECT count(*) FROM side.t") == 3
                assert await conn.fetchval("SELECT count(*) FROM side.t") == 3
                await conn.execute("DETACH side")
        async with pool.read() as conn:
            await conn.execute("BEGIN")
            assert await conn.fetchval("SELECT count(*) FROM t") == 3
            await pool.execute("INSERT INTO t VALUES (3)")
            # Still the snapshot the transaction began with.
            assert await conn.fetchval("SELECT count(*) FROM t") == 3
            await conn.execute("COMMIT")
            assert await conn.fetchval("SELECT count(*) FROM t") == 4


async def test_tasks_binding_one_block_at_once_share_one_reader(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=3) as pool:
        await make_table(pool)
        names: list[str] = []
        async with pool.read() as conn:

            async def bind() -> None:
                names.append(await conn.run_sync(thread_name))

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(bind)
            assert pool.statistics().read.in_use == 1
        assert len(set(names)) == 1
        stats = pool.statistics().read
        assert (stats.in_use, stats.idle) == (0, 3)


async def test_binding_waits_for_a_reader_and_keeps_the_order(db_path: str) -> None:
    """With every reader held elsewhere, the binding call waits; the one that ran out of
    time leaves nothing behind, and a later one binds once a reader is free."""
    async with litepool.open_pool(db_path, readers=1, name="wait") as pool:
        await make_table(pool)
        async with pool.read() as conn:
            async with held_by_another_task(pool.read()):
                with pytest.raises(litepool.PoolTimeout, match="no read connection"):
                    with anyio.fail_after(5):
                        async with pool.read(timeout=0.05) as other:
                            await other.execute("BEGIN")
                stats = pool.statistics().read
                assert (stats.in_use, stats.waiting, stats.timeouts) == (1, 0, 1)
            await conn.execute("BEGIN")
            assert pool.statistics().read.in_use == 1
        assert pool.statistics().read.idle == 1


async def test_cancelled_while_binding_takes_nothing_and_the_block_goes_on(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.read() as conn:

            async def bind() -> None:
                await conn.run_sync(thread_name)

            task = CancellableTask(bind, cancel_how, anyio_backend)
            await cancel_while_waiting(pool, "read", task, pool.read())
            stats = pool.statistics().read
            assert (stats.in_use, stats.waiting) == (0, 0)
            # Not bound: the next call that needs a reader takes one.
            assert await conn.run_sync(thread_name) in litepool_threads()
            assert pool.statistics().read.in_use == 1
        assert pool.statistics().read.idle == 1


async def test_cancelled_while_a_dispatched_query_waits_leaves_nothing_behind(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)

        async def query() -> None:
            async with pool.read() as conn:
                await conn.fetchval("SELECT count(*) FROM t")

        task = CancellableTask(query, cancel_how, anyio_backend)
        await cancel_while_waiting(pool, "read", task, pool.read())
        stats = pool.statistics().read
        assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0)
        async with pool.read(timeout=0) as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 3


async def test_a_call_binding_after_the_block_ended_gives_the_reader_back(
    db_path: str,
) -> None:
    """A task that outlives the block asks for a reader while the block ends: it gets
    ConnectionReleased, and the reader it was handed goes back to the pool."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        outcome: list[BaseException] = []
        # Leaving: the read block ends first, while its late call still waits; then the
        # held reader is given back and handed to that call, which must give it back.
        async with (
            anyio.create_task_group() as tg,
            held_by_another_task(pool.read()),
            pool.read() as conn,
        ):

            async def late() -> None:
                try:
                    await conn.run_sync(thread_name)
                except litepool.ConnectionReleased as exc:
                    outcome.append(exc)

            tg.start_soon(late)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().read.waiting == 1
        assert len(outcome) == 1
        assert "after its 'async with' block ended" in str(outcome[0])
        stats = pool.statistics().read
        assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0)


async def test_check_on_checkout_takes_the_reader_on_entry(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, check=True) as pool, pool.read() as conn:
        assert pool.statistics().read.in_use == 1
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("way", ["read blocks", "single statements"])
async def test_short_queries_gathered_behind_a_long_one_move_to_a_free_reader(
    db_path: str, start_signal: StartSignal, way: str
) -> None:
    """Queries queued on a reader in the same instant as a long one would otherwise wait
    for it to end (here: never, until it is cancelled); they move to the idle reader."""
    async with litepool.open_pool(db_path, readers=2, configure=start_signal.configure) as pool:
        await make_table(pool)
        done = 0

        async def short(index: int) -> None:
            nonlocal done
            if way == "read blocks":
                async with pool.read() as conn:
                    assert await conn.fetchval("SELECT ? + count(*) FROM t", (index,)) == index + 3
            else:
                assert await pool.fetchval("SELECT ? + count(*) FROM t", (index,)) == index + 3
            done += 1

        async def long() -> None:
            if way == "read blocks":
                async with pool.read() as conn:
                    await conn.fetchval(LONG_QUERY)
            else:
                await pool.fetchval(LONG_QUERY)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as outer:
                outer.start_soon(long)
                async with anyio.create_task_group() as tg:
                    # Queued in the same step as the long query: on its reader.
                    for index in range(20):
                        tg.start_soon(short, index)
                # Every short one answered while the long one still runs.
                assert done == 20
                outer.cancel_scope.cancel()
        stats = pool.statistics()
        assert stats.interrupted == 1
        assert (stats.read.in_use, stats.read.idle) == (0, 2)
