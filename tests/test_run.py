"""``pool.run_write()`` and ``pool.run_read()``: a whole transaction in one job."""

from __future__ import annotations

import random
import sqlite3
import threading

import anyio
import anyio.to_thread
import pytest

import litepool

from .conftest import LONG_QUERY, CancellableTask, StartSignal, cancel_while_waiting

pytestmark = pytest.mark.anyio

ACCOUNTS = 20
START = 100


async def make_accounts(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        await conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)", [(i, START) for i in range(ACCOUNTS)]
        )


def transfer(db: sqlite3.Connection, source: int, target: int, amount: int) -> int:
    (balance,) = db.execute("SELECT balance FROM accounts WHERE id = ?", (source,)).fetchone()
    db.execute("UPDATE accounts SET balance = ? WHERE id = ?", (balance - amount, source))
    db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, target))
    return int(balance - amount)


def total(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT sum(balance) FROM accounts").fetchone()[0])


async def test_concurrent_transfers_keep_the_total(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_accounts(pool)
        rng = random.Random(1)

        async def mover() -> None:
            for _ in range(50):
                source, target = rng.sample(range(ACCOUNTS), 2)
                left = await pool.run_write(transfer, source, target, 1)
                assert isinstance(left, int)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(mover)
        assert await pool.run_read(total) == ACCOUNTS * START
        stats = pool.statistics()
        assert stats.write.statements >= 1000
        assert stats.write.checkouts == 1  # the table's


async def test_failing_function_rolls_back_and_raises(db_path: str) -> None:
    class Refused(Exception):
        pass

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        raise Refused("changed my mind")

    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        with pytest.raises(Refused, match="changed my mind"):
            await pool.run_write(half_done)
        assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 1") == START
        assert pool.statistics().rollbacks == 1


async def test_function_cannot_end_its_transaction(db_path: str) -> None:
    def sneaky(db: sqlite3.Connection) -> None:
        db.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        db.commit()

    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        with pytest.raises(litepool.StatementRefused):
            await pool.run_write(sneaky)
        assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 1") == START


async def test_run_write_cancelled_while_waiting_for_the_writer(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)

        async def move() -> None:
            await pool.run_write(transfer, 1, 2, 50)

        task = CancellableTask(move, cancel_how, anyio_backend)
        await cancel_while_waiting(pool, "write", task, pool.write())
        assert pool.statistics().write.waiting == 0
        assert await pool.run_read(total) == ACCOUNTS * START
        assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 1") == START


async def test_run_write_cancelled_while_it_runs_is_rolled_back(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    def long_transfer(db: sqlite3.Connection) -> None:
        transfer(db, 1, 2, 50)
        db.execute(LONG_QUERY).fetchall()  # interrupted when the caller is cancelled

    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        await make_accounts(pool)
        task = CancellableTask(lambda: pool.run_write(long_transfer), cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        # The writer serves the next caller: the transfer was interrupted and rolled back.
        assert await pool.run_write(transfer, 3, 4, 1) == START - 1
        assert await pool.fetchval("SELECT balance FROM accounts WHERE id = 1") == START
        stats = pool.statistics()
        assert stats.interrupted == 1
        assert stats.rollbacks == 1


async def test_run_read_sees_one_snapshot(db_path: str) -> None:
    """A commit that lands between two statements of the function is not seen by the
    second: the function runs inside one read transaction."""
    read_once, committed = threading.Event(), threading.Event()

    def twice(db: sqlite3.Connection) -> tuple[int, int]:
        first = total(db)
        read_once.set()
        assert committed.wait(10)
        return first, total(db)

    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        async with anyio.create_task_group() as tg:
            result: list[tuple[int, int]] = []

            async def read() -> None:
                result.append(await pool.run_read(twice))

            tg.start_soon(read)
            assert await anyio.to_thread.run_sync(read_once.wait, 10)
            await pool.execute("UPDATE accounts SET balance = balance + 1000 WHERE id = 0")
            committed.set()
        assert result == [(ACCOUNTS * START, ACCOUNTS * START)]
        assert await pool.run_read(total) == ACCOUNTS * START + 1000


async def test_run_read_cancelled_while_it_runs_leaves_the_reader_clean(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    def long_read(db: sqlite3.Connection) -> None:
        db.execute(LONG_QUERY).fetchall()

    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        await make_accounts(pool)
        task = CancellableTask(lambda: pool.run_read(long_read), cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        await pool.execute("UPDATE accounts SET balance = 7 WHERE id = 0")
        # The reader's transaction was ended: it sees the new commit.
        assert (
            await pool.run_read(
                lambda db: db.execute("SELECT balance FROM accounts WHERE id = 0").fetchone()[0]
            )
            == 7
        )
        assert pool.statistics().interrupted == 1


async def test_run_read_cancelled_while_waiting_for_a_reader(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    ran: list[int] = []

    def read(db: sqlite3.Connection) -> int:
        ran.append(1)
        return total(db)

    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        task = CancellableTask(lambda: pool.run_read(read), cancel_how, anyio_backend)
        await cancel_while_waiting(pool, "read", task, pool.read())
        assert ran == []  # it never started, and never will
        stats = pool.statistics().read
        assert (stats.waiting, stats.in_use, stats.idle) == (0, 0, 1)
        assert await pool.run_read(read) == ACCOUNTS * START
        assert ran == [1]


async def test_run_read_refuses_writes_with_a_hint(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        with pytest.raises(sqlite3.OperationalError, match=r"readonly.*pool.execute\(\)"):
            await pool.run_read(lambda db: db.execute("UPDATE accounts SET balance = 0"))


async def test_arguments_are_checked(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        with pytest.raises(TypeError, match="run_write\\(\\) needs a callable"):
            await pool.run_write("UPDATE")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="run_read\\(\\) needs a callable"):
            await pool.run_read(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be >= 0"):
            await pool.run_write(total, timeout=-1)
