"""Habits from aiosqlite and other libraries get an error that says what to write."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import anyio
import pytest

import litepool

from .conftest import LONG_QUERY, CancellableTask, StartSignal

pytestmark = pytest.mark.anyio


async def test_awaiting_open_pool_says_to_use_async_with(db_path: str) -> None:
    pool: Any = litepool.open_pool(db_path, name="app")
    with pytest.raises(TypeError) as caught:
        await pool
    assert "async with litepool.open_pool(...) as pool:" in str(caught.value)
    assert "'app'" in str(caught.value)
    async with pool:  # nothing was opened: the pool can still be used as it should
        assert await pool.fetchval("SELECT 1") == 1


async def test_a_result_used_as_a_cursor_says_what_to_write(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool, pool.read() as conn:
        result: Any = await conn.execute("SELECT 1")
        for name in ("fetchone", "fetchall", "fetchmany", "description", "close"):
            with pytest.raises(AttributeError) as caught:
                getattr(result, name)
            message = str(caught.value)
            assert f"ExecuteResult has no {name!r}" in message
            assert "await conn.fetchone(sql, params)" in message
            assert "result.rows" in message
            assert not hasattr(result, name)
        with pytest.raises(AttributeError, match="object has no attribute 'other'"):
            _ = result.other
        with pytest.raises(TypeError, match=r"rows are already in result\.rows") as iterated:
            async for _ in result:
                pass
        assert "async for row in conn.iterate(sql, params)" in str(iterated.value)
        with pytest.raises(TypeError, match=r"its rows are in result\.rows"):
            _rowcount, _lastrowid = result
        assert result.rows == [(1,)]


async def test_execute_used_as_a_cursor_says_what_to_write(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        await pool.execute("CREATE TABLE t (x)")
        with warnings.catch_warnings():
            # The coroutine behind the misused call must not be left to warn that it was
            # never awaited: the error says everything.
            warnings.simplefilter("error")
            async with pool.write() as conn:
                with pytest.raises(TypeError) as caught:
                    async with conn.execute("SELECT x FROM t") as _cursor:  # type: ignore[attr-defined]
                        pass
                message = str(caught.value)
                assert "conn.execute() is awaited, not entered with 'async with'" in message
                assert "result = await conn.execute(sql, ...)" in message
                assert "await conn.fetchall(sql, params)" in message
                with pytest.raises(TypeError, match="not iterated with 'async for'"):
                    async for _ in conn.executemany("INSERT INTO t VALUES (?)", [(1,)]):  # type: ignore[attr-defined]
                        pass
                # Neither ran; the transaction goes on.
                await conn.execute("INSERT INTO t VALUES (2)")
            gc.collect()
        assert await pool.fetchall("SELECT x FROM t") == [(2,)]

        # conn.execute() returns a wrapper around its coroutine: started as a task of its
        # own and cancelled there, it behaves as the coroutine would.
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM t")
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.execute, "INSERT INTO t VALUES (1)")
                tg.start_soon(conn.executemany, "INSERT INTO t VALUES (?)", [(2,), (3,)])
            assert await conn.fetchval("SELECT count(*) FROM t") == 3

            task = CancellableTask(
                lambda: conn.execute(f"INSERT INTO t SELECT ({LONG_QUERY})"),
                cancel_how,
                anyio_backend,
            )
            async with anyio.create_task_group() as tg:
                await tg.start(task.run)
                await start_signal.wait()
                task.cancel()
            assert task.outcome == "cancelled"
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.execute, f"INSERT INTO t SELECT ({LONG_QUERY})")
                    await start_signal.wait()
                    tg.cancel_scope.cancel()
            assert await conn.fetchval("SELECT count(*) FROM t") == 3
        assert pool.statistics().interrupted == 2
