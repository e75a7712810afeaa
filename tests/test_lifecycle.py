"""Opening, closing, timeouts and threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import litepool

from .conftest import bound_read, held_by_another_task, litepool_threads

pytestmark = pytest.mark.anyio


async def test_every_worker_thread_is_joined_on_exit(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=3, name="joined") as pool:
        names = litepool_threads()
        assert sorted(names) == [
            "litepool[joined] reader-1",
            "litepool[joined] reader-2",
            "litepool[joined] reader-3",
            "litepool[joined] writer",
        ]
        async with pool.read() as conn:
            await conn.fetchval("SELECT 1")
    assert litepool_threads() == []


async def test_workers_do_not_use_the_default_thread_limiter(db_path: str) -> None:
    default = anyio.to_thread.current_default_thread_limiter()
    before = default.borrowed_tokens
    async with litepool.open_pool(db_path, readers=8):
        assert default.borrowed_tokens == before


async def test_timeout_names_lane_timeout_and_counts(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, acquire_timeout=0.05, name="tiny") as pool:
        async with held_by_another_task(pool.read()):
            with pytest.raises(litepool.PoolTimeout) as excinfo:
                async with pool.read() as conn:
                    await conn.fetchval("SELECT 1")  # pragma: no cover
            with pytest.raises(litepool.PoolTimeout) as bound_excinfo:
                async with bound_read(pool):
                    pass  # pragma: no cover
        message = str(excinfo.value)
        assert message == (
            "pool 'tiny': no read connection became free within 0.05 s "
            "(in use: 1, idle: 0, waiting: 0)"
        )
        assert str(bound_excinfo.value) == message
        async with held_by_another_task(pool.write()):
            with pytest.raises(litepool.PoolTimeout, match=r"no write connection .* within 0 s"):
                async with pool.write(timeout=0):
                    pass  # pragma: no cover
        stats = pool.statistics()
        assert (stats.read.timeouts, stats.write.timeouts) == (2, 1)
        assert (stats.read.idle, stats.write.idle) == (1, 1)
        # Still serving after the timeouts.
        async with pool.read(timeout=0) as conn:
            assert await conn.fetchval("SELECT 1") == 1


async def test_timeout_message_counts_other_waiters(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, acquire_timeout=None) as pool:

        async def patient() -> None:
            async with bound_read(pool):
                pass

        async with anyio.create_task_group() as tg, held_by_another_task(pool.read()):
            tg.start_soon(patient)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(litepool.PoolTimeout, match=r"in use: 1, idle: 0, waiting: 1\)"):
                async with bound_read(pool, timeout=0):
                    pass  # pragma: no cover
        # The holder, the patient one and the block whose reader timed out.
        assert pool.statistics().read.checkouts == 3


async def test_waiters_are_served_first_come_first_served(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        order: list[int] = []

        async def waiter(index: int) -> None:
            async with pool.write():
                order.append(index)

        async with anyio.create_task_group() as tg, pool.write():
            for index in range(10):
                tg.start_soon(waiter, index)
                await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 10
        assert order == list(range(10))


async def test_closed_pool_refuses_checkouts(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=1)
    with pytest.raises(litepool.PoolClosed, match="not open"):
        async with pool.read():
            pass  # pragma: no cover
    async with pool:
        assert not pool.closed
    assert pool.closed
    with pytest.raises(litepool.PoolClosed):
        async with pool.read():
            pass  # pragma: no cover
    with pytest.raises(RuntimeError, match="entered once"):
        async with pool:
            pass  # pragma: no cover


async def test_closing_wakes_waiters_with_pool_closed(db_path: str) -> None:
    outcomes: list[str] = []

    async def waiter(pool: litepool.Pool, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        try:
            async with pool.write():
                outcomes.append("got it")  # pragma: no cover
        except litepool.PoolClosed as exc:
            outcomes.append(str(exc))

    holder_done = anyio.Event()
    async with anyio.create_task_group() as outer:
        async with litepool.open_pool(db_path, readers=1, name="closing") as pool:

            async def holder() -> None:
                # The pool closes while this transaction is open: calls are refused and
                # the block says that its transaction was rolled back.
                with pytest.raises(litepool.PoolClosed, match=r"during the pool\.write"):
                    async with pool.write() as conn:
                        await conn.execute("CREATE TABLE t (x)")
                        await holder_done.wait()
                        with pytest.raises(litepool.PoolClosed):
                            await conn.execute("INSERT INTO t VALUES (1)")

            outer.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            await outer.start(waiter, pool)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 1
        holder_done.set()
    assert outcomes == ["pool 'closing' was closed while waiting"]
    assert litepool_threads() == []


async def test_body_exception_passes_through_unwrapped(db_path: str) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with litepool.open_pool(db_path, readers=1):
            raise KeyError("mine")
    assert litepool_threads() == []


async def test_missing_directory_fails_fast_and_cleanly(tmp_path: Path) -> None:
    import sqlite3

    with pytest.raises(sqlite3.OperationalError, match="unable to open") as excinfo:
        async with litepool.open_pool(tmp_path / "missing" / "x.db", readers=2):
            pass  # pragma: no cover
    assert any("while opening pool 'x.db'" in note for note in excinfo.value.__notes__)
    assert litepool_threads() == []


async def test_not_a_database_fails_fast(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database file" * 100)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        async with litepool.open_pool(path, readers=2):
            pass  # pragma: no cover
    assert litepool_threads() == []


async def test_configure_failure_on_a_reader_closes_everything(db_path: str) -> None:
    import sqlite3

    calls: list[bool] = []

    def configure(conn: sqlite3.Connection) -> None:
        calls.append(True)
        if len(calls) == 3:
            raise RuntimeError("configure failed")

    with pytest.raises(RuntimeError, match="configure failed"):
        async with litepool.open_pool(db_path, readers=4, configure=configure):
            pass  # pragma: no cover
    assert litepool_threads() == []


async def test_cancelled_while_opening_leaves_nothing_behind(db_path: str) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        async with litepool.open_pool(db_path, readers=2):
            pass  # pragma: no cover
    assert scope.cancelled_caught
    assert litepool_threads() == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_pool_never_closed_does_not_keep_the_process_alive(tmp_path: Path, backend: str) -> None:
    script = textwrap.dedent(
        f"""
        import anyio, litepool

        async def main():
            pool = litepool.open_pool({str(tmp_path / "leak.db")!r}, readers=2)
            await pool.__aenter__()  # never exited
            async with pool.read() as conn:
                await conn.fetchval("SELECT 1")

        try:
            anyio.run(main, backend={backend!r})
        except BaseException as exc:
            print("main ended with", type(exc).__name__)
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "done" in result.stdout, result.stderr
