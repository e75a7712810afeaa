"""A task that asks for a connection only it could give back is told so at once,
instead of waiting for itself while every other writer stalls."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import litepool

from .conftest import bound_read

pytestmark = pytest.mark.anyio

THIS_FILE = os.path.basename(__file__)

Call = Callable[[litepool.Pool], Awaitable[Any]]


async def _enter(checkout: Any) -> None:
    async with checkout:
        pass  # pragma: no cover


WRITER_CALLS: dict[str, Call] = {
    "pool.write()": lambda pool: _enter(pool.write()),
    "pool.connection()": lambda pool: _enter(pool.connection()),
    "pool.execute()": lambda pool: pool.execute("INSERT INTO t VALUES (1)"),
    "pool.executemany()": lambda pool: pool.executemany("INSERT INTO t VALUES (?)", [(1,)]),
    "pool.checkpoint()": lambda pool: pool.checkpoint(),
    "pool.run_write()": lambda pool: pool.run_write(lambda db: None),
}


async def _query_in(checkout: litepool.Checkout) -> None:
    async with checkout as conn:
        await conn.fetchval("SELECT 1")  # pragma: no cover


READER_CALLS: dict[str, Call] = {
    "pool.read()": lambda pool: _enter(bound_read(pool)),
    "pool.read() query": lambda pool: _query_in(pool.read()),
    "pool.fetchone()": lambda pool: pool.fetchone("SELECT 1"),
    "pool.fetchall()": lambda pool: pool.fetchall("SELECT 1"),
    "pool.fetchval()": lambda pool: pool.fetchval("SELECT 1"),
    "pool.backup()": lambda pool: pool.backup(":memory:"),
    "pool.run_read()": lambda pool: pool.run_read(lambda db: None),
}


@pytest.mark.parametrize("outer", ["write", "connection"])
@pytest.mark.parametrize("inner", list(WRITER_CALLS))
async def test_writer_call_inside_a_writer_checkout_of_the_same_task_raises_at_once(
    db_path: str, outer: str, inner: str
) -> None:
    # acquire_timeout=None: before, this waited forever.
    async with litepool.open_pool(db_path, readers=1, acquire_timeout=None) as pool:
        await pool.execute("CREATE TABLE t (v)")
        with anyio.fail_after(5):
            async with getattr(pool, outer)() as conn:
                line = _line_of_checkout()
                with pytest.raises(litepool.WouldDeadlock) as caught:
                    await WRITER_CALLS[inner](pool)
                message = str(caught.value)
                assert inner in message
                assert f"pool.{outer}() entered at {THIS_FILE}:{line}" in message, message
                assert "the writer" in message
                await conn.execute("INSERT INTO t VALUES (2)")
        # Nothing was left behind: the writer serves the next caller at once.
        stats = pool.statistics().write
        assert (stats.idle, stats.waiting) == (1, 0)
        await pool.execute("INSERT INTO t VALUES (3)")
        assert await pool.fetchval("SELECT group_concat(v) FROM t") == "2,3"


def _line_of_checkout() -> int:
    """The line of the ``async with`` that entered the checkout around the caller."""
    import sys

    frame = sys._getframe(1)
    return frame.f_lineno - 1


@pytest.mark.parametrize("inner", list(READER_CALLS))
async def test_reader_call_in_a_task_holding_every_reader_raises_at_once(
    tmp_path: Path, inner: str
) -> None:
    async with litepool.open_pool(tmp_path / "t.db", readers=2, acquire_timeout=None) as pool:
        with anyio.fail_after(5):
            async with bound_read(pool), bound_read(pool):
                with pytest.raises(litepool.WouldDeadlock, match=r"every reader \(2\)"):
                    await READER_CALLS[inner](pool)
        stats = pool.statistics().read
        assert (stats.idle, stats.waiting) == (2, 0)


async def test_reader_call_in_a_task_holding_some_readers_is_served(tmp_path: Path) -> None:
    async with litepool.open_pool(tmp_path / "t.db", readers=2) as pool, pool.read() as first:
        assert await pool.fetchval("SELECT 1") == 1
        async with pool.read() as second:
            assert await first.fetchval("SELECT 2") == 2
            assert await second.fetchval("SELECT 3") == 3


async def test_another_task_asking_for_the_held_writer_waits_for_it(db_path: str) -> None:
    """Only the holder itself is refused: a child task (which the holder may well be
    waiting for, but need not be) queues as usual and gets the writer once it is free."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute("CREATE TABLE t (v)")
        async with anyio.create_task_group() as tg, pool.write() as conn:
            tg.start_soon(pool.execute, "INSERT INTO t VALUES ('child')")
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 1
            await conn.execute("INSERT INTO t VALUES ('parent')")
        assert await pool.fetchval("SELECT group_concat(v) FROM t") == "parent,child"


async def test_other_writers_are_not_stalled_by_a_nested_call(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute("CREATE TABLE t (v)")
        done = anyio.Event()

        async def other_writer() -> None:
            await pool.execute("INSERT INTO t VALUES ('other')")
            done.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                async with pool.write() as conn:
                    tg.start_soon(other_writer)
                    await anyio.wait_all_tasks_blocked()
                    with pytest.raises(litepool.WouldDeadlock):
                        await pool.execute("INSERT INTO t VALUES ('nested')")
                    await conn.execute("INSERT INTO t VALUES ('holder')")
                await done.wait()
        assert await pool.fetchval("SELECT group_concat(v) FROM t") == "holder,other"


async def test_nested_checkout_refused_while_others_queue(db_path: str) -> None:
    """The task holding the writer is refused even when other tasks are queued for it:
    its own request would sit behind theirs, and theirs behind its checkout."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute("CREATE TABLE t (v)")
        async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(pool.write())
            tg.start_soon(pool.execute, "INSERT INTO t VALUES ('queued')")
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5), pytest.raises(litepool.WouldDeadlock):
                await pool.execute("INSERT INTO t VALUES ('nested')")
            await stack.aclose()
        assert await pool.fetchval("SELECT group_concat(v) FROM t") == "queued"
