"""Cancellation at every await point of a checkout, forced deterministically.

Each race is set up so that the cancellation lands exactly where it is meant to: a waiter
is known to be queued (``wait_all_tasks_blocked``), a statement is known to be running (it
calls ``signal_started()``), or the cancellation is issued in the same synchronous step as
the hand-off it races with. Each runs with anyio cancel scopes and with the backend's
native cancellation (``asyncio.Task.cancel()`` / ``trio.CancelScope``).
"""

from __future__ import annotations

import sqlite3
import threading
import time

import anyio
import anyio.lowlevel
import pytest

import litepool

from .conftest import LONG_QUERY, CancellableTask, StartSignal, bound_read

pytestmark = pytest.mark.anyio


def assert_all_idle(pool: litepool.Pool) -> None:
    stats = pool.statistics()
    assert (stats.read.idle, stats.read.in_use, stats.read.waiting) == (stats.read.size, 0, 0)
    assert (stats.write.idle, stats.write.in_use, stats.write.waiting) == (1, 0, 0)


async def test_cancelled_while_waiting_for_checkout(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:

        async def wait_for_reader() -> None:
            async with bound_read(pool):
                pass  # pragma: no cover

        waiter = CancellableTask(wait_for_reader, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg, bound_read(pool):
            await tg.start(waiter.run)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().read.waiting == 1
            waiter.cancel()
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().read.waiting == 0
        assert waiter.outcome == "cancelled"
        assert_all_idle(pool)
        async with pool.read(timeout=0) as conn:
            assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("lane", ["read", "write"])
async def test_cancelled_in_the_same_step_as_the_hand_off(
    db_path: str, anyio_backend: str, cancel_how: str, lane: str
) -> None:
    """The connection is released to a waiter and the waiter is cancelled before it runs."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        checkout = (lambda: bound_read(pool)) if lane == "read" else pool.write
        got: list[str] = []

        def make_waiter(label: str) -> CancellableTask:
            async def wait() -> None:
                async with checkout():
                    got.append(label)

            return CancellableTask(wait, cancel_how, anyio_backend)

        first, second = make_waiter("first"), make_waiter("second")
        async with anyio.create_task_group() as tg:
            holder = checkout()
            await holder.__aenter__()
            await tg.start(first.run)
            await anyio.wait_all_tasks_blocked()
            await tg.start(second.run)
            await anyio.wait_all_tasks_blocked()
            assert getattr(pool.statistics(), lane).waiting == 2
            # One synchronous step: the release hands the connection to `first`, which is
            # cancelled before it can run. The connection must pass on to `second`.
            await holder.__aexit__(None, None, None)
            first.cancel()
        # Either the cancellation won (first holds nothing, second got the connection) or
        # the hand-off won (first used the connection and returned it, then second did).
        # Nothing may be lost or stranded either way.
        if first.outcome == "cancelled":
            assert got == ["second"]
        else:
            # Only Task.cancel() is edge-triggered: it always wins against the hand-off.
            assert (anyio_backend, cancel_how) != ("asyncio", "native")
            assert got == ["first", "second"]
        assert second.outcome == "completed"
        assert_all_idle(pool)


async def test_cancelled_in_the_same_step_as_the_hand_off_with_no_one_behind(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:

        async def wait() -> None:
            async with bound_read(pool):
                pass

        waiter = CancellableTask(wait, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            holder = bound_read(pool)
            await holder.__aenter__()
            await tg.start(waiter.run)
            await anyio.wait_all_tasks_blocked()
            await holder.__aexit__(None, None, None)
            waiter.cancel()
        assert waiter.outcome in {"cancelled", "completed"}
        assert_all_idle(pool)
        async with pool.read(timeout=0) as conn:
            assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("bound", [False, True], ids=["late", "bound"])
async def test_timeouts_around_checkout_never_leak(db_path: str, bound: bool) -> None:
    """``move_on_after`` around ``pool.read()`` under contention: every slot comes back,
    whether the block's queries are dispatched or it holds a reader of its own."""
    async with litepool.open_pool(db_path, readers=2) as pool:
        completed = 0

        async def user(index: int) -> None:
            nonlocal completed
            for round_ in range(30):
                # Deadlines from 0 to 3.5 ms, and every eighth round none at all.
                step = (index + round_) % 8
                with anyio.move_on_after(0.0005 * step if step < 7 else None):
                    async with bound_read(pool) if bound else pool.read() as conn:
                        await conn.fetchval("SELECT ?", (index,))
                        completed += 1

        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(user, index)
        assert_all_idle(pool)
        assert completed > 0
        # The full capacity is there: both readers at once, without waiting.
        async with bound_read(pool, timeout=0), bound_read(pool, timeout=0):
            pass


async def test_cancelled_statement_is_interrupted_and_connection_returns(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:

        async def long_query() -> None:
            async with pool.read() as conn:
                await conn.fetchval(LONG_QUERY)

        task = CancellableTask(long_query, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()  # the statement is running on the worker now
            cancelled_at = time.monotonic()
            task.cancel()
        gave_way_after = time.monotonic() - cancelled_at
        assert task.outcome == "cancelled"
        assert gave_way_after < 0.05
        # The statement itself was stopped, and the connection serves the next caller.
        async with pool.read(timeout=1) as conn:
            assert await conn.fetchval("SELECT 42") == 42
        assert pool.statistics().interrupted == 1
        assert_all_idle(pool)


async def test_long_query_gives_way_within_50ms_of_the_deadline(
    db_path: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        deadline = 0.2
        started = time.monotonic()
        with anyio.move_on_after(deadline) as scope:
            async with pool.read() as conn:
                await conn.fetchval(LONG_QUERY)
        late = time.monotonic() - started - deadline
        assert scope.cancelled_caught
        assert late < 0.05, f"gave way {late * 1000:.1f} ms after the deadline"
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM sqlite_master") == 0
        assert pool.statistics().interrupted == 1


async def test_cancel_inside_write_rolls_back(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER)")

        async def write_then_hang() -> None:
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.fetchval(LONG_QUERY)

        task = CancellableTask(write_then_hang, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        async with pool.write(timeout=1) as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
            await conn.execute("INSERT INTO t VALUES (2)")
        async with pool.read() as conn:
            assert await conn.fetchall("SELECT x FROM t") == [(2,)]
        assert pool.statistics().rollbacks == 1
        assert_all_idle(pool)


async def test_cancel_arriving_at_commit_still_commits(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    """A cancellation that arrives once the body has finished does not undo the body.

    Cancel scopes (anyio's and trio's): the COMMIT is shielded, the block exits normally
    and the cancellation is delivered at the next checkpoint. ``Task.cancel()``: the
    cancellation propagates from the block at once, while the queued COMMIT completes.
    """
    async with litepool.open_pool(db_path, readers=1) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER)")
        task: CancellableTask
        block_exited = False

        async def write_and_cancel_self() -> None:
            nonlocal block_exited
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                task.cancel()  # pending: delivered at the COMMIT's await
            block_exited = True
            await anyio.lowlevel.checkpoint()

        task = CancellableTask(write_and_cancel_self, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
        assert task.outcome == "cancelled"
        assert block_exited == ((anyio_backend, cancel_how) != ("asyncio", "native"))
        # Through the writer, whose queue runs the COMMIT first even when its caller left
        # without waiting for it.
        async with pool.connection() as conn:
            assert await conn.fetchall("SELECT x FROM t") == [(1,)]
        assert_all_idle(pool)


async def test_cancelled_statement_voids_the_transaction(
    db_path: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER)")
        with pytest.raises(litepool.TransactionAborted, match="rolled back"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                with anyio.move_on_after(0.05):
                    await conn.fetchval(LONG_QUERY)
                with pytest.raises(litepool.TransactionAborted, match="was cancelled"):
                    await conn.execute("INSERT INTO t VALUES (2)")
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        assert_all_idle(pool)


async def test_queued_statement_of_a_cancelled_caller_never_runs(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    """Two tasks share one checkout; the second's INSERT is cancelled while still queued."""
    release_first = threading.Event()
    first_running = threading.Event()

    def block(raw: sqlite3.Connection) -> None:
        first_running.set()
        release_first.wait(10)

    async with litepool.open_pool(db_path, readers=1) as pool, pool.connection() as conn:
        await conn.execute("CREATE TABLE t (x INTEGER)")

        async def insert() -> None:
            await conn.execute("INSERT INTO t VALUES (1)")

        second = CancellableTask(insert, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run_sync, block)
            await anyio.to_thread.run_sync(first_running.wait, 10)
            await tg.start(second.run)
            await anyio.wait_all_tasks_blocked()
            second.cancel()
            await anyio.wait_all_tasks_blocked()
            release_first.set()
        assert second.outcome == "cancelled"
        assert await conn.fetchval("SELECT count(*) FROM t") == 0


async def test_cancelled_manual_transaction_is_rolled_back_on_return(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (x INTEGER)")

        async def manual() -> None:
            async with pool.connection() as conn:
                await conn.execute("BEGIN")
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.fetchval(LONG_QUERY)

        task = CancellableTask(manual, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        async with pool.connection() as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        assert_all_idle(pool)
