"""Online backups with pool.backup()."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

import litepool

from .conftest import CancellableTask

pytestmark = pytest.mark.anyio

ACCOUNTS = 200
TOTAL = ACCOUNTS * 100


async def make_accounts(pool: litepool.Pool) -> None:
    await pool.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER, pad BLOB)")
    await pool.executemany(
        "INSERT INTO accounts VALUES (?, 100, randomblob(3000))",
        [(i,) for i in range(ACCOUNTS)],
    )


def balances(path: str) -> tuple[int, int, str]:
    with sqlite3.connect(path) as copy:
        count, total = copy.execute("SELECT count(*), sum(balance) FROM accounts").fetchone()
        (check,) = copy.execute("PRAGMA integrity_check").fetchone()
    copy.close()
    return count, total, check


async def test_backup_is_a_consistent_copy_while_writers_run(db_path: str, tmp_path: Path) -> None:
    target = str(tmp_path / "copy.db")
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_accounts(pool)
        steps: list[tuple[int, int]] = []
        transfers = 0
        stop = anyio.Event()

        async def transfer() -> None:
            nonlocal transfers
            while not stop.is_set():
                async with pool.write() as conn:
                    await conn.execute(
                        "UPDATE accounts SET balance = balance - 1 WHERE id = ?",
                        (transfers % ACCOUNTS,),
                    )
                    await conn.execute(
                        "UPDATE accounts SET balance = balance + 1 WHERE id = ?",
                        ((transfers * 7 + 1) % ACCOUNTS,),
                    )
                transfers += 1

        def progress(remaining: int, total: int) -> None:
            steps.append((remaining, total))

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer)
            await pool.backup(target, pages=10, progress=progress)
            during = transfers
            stop.set()
        assert during > 0, "writers were blocked during the backup"
        assert len(steps) > 5
        assert steps[-1][0] == 0
        assert all(total == steps[0][1] for _, total in steps)
        assert [remaining for remaining, _ in steps] == sorted(
            (remaining for remaining, _ in steps), reverse=True
        )
    assert balances(target) == (ACCOUNTS, TOTAL, "ok")


async def test_backup_to_a_connection_and_in_one_step(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        copy = sqlite3.connect(":memory:", check_same_thread=False)
        calls: list[tuple[int, int]] = []
        await pool.backup(copy, pages=-1, progress=lambda *step: calls.append(step))
        assert copy.execute("SELECT sum(balance) FROM accounts").fetchone() == (TOTAL,)
        copy.close()
        assert len(calls) == 1
        assert calls[0][0] == 0


async def test_backup_of_an_in_memory_pool(tmp_path: Path) -> None:
    target = str(tmp_path / "from-memory.db")
    async with litepool.open_pool(":memory:", readers=1) as pool:
        await make_accounts(pool)
        await pool.backup(target)
    assert balances(target) == (ACCOUNTS, TOTAL, "ok")


async def test_cancelled_backup_stops_and_the_reader_comes_back(
    db_path: str, tmp_path: Path
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        steps = 0
        with anyio.CancelScope() as scope:

            def progress(remaining: int, total: int) -> None:
                nonlocal steps
                steps += 1
                if steps == 2:
                    scope.cancel()

            await pool.backup(tmp_path / "partial.db", pages=5, progress=progress)
        assert scope.cancelled_caught
        # The copy stopped at the next step instead of running to the end.
        async with pool.read(timeout=5) as conn:
            assert await conn.fetchval("SELECT count(*) FROM accounts") == ACCOUNTS
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
        # asyncio delivers the cancellation to the waiting task one loop step later,
        # which may let one more step run; trio delivers it at once.
        assert steps in (2, 3)
        stats = pool.statistics()
        assert (stats.read.idle, stats.read.in_use) == (1, 0)


async def test_progress_error_stops_the_backup(db_path: str, tmp_path: Path) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)

        def progress(remaining: int, total: int) -> None:
            raise KeyError("enough")

        with pytest.raises(KeyError, match="enough"):
            await pool.backup(tmp_path / "partial.db", pages=5, progress=progress)
        assert await pool.fetchval("SELECT count(*) FROM accounts") == ACCOUNTS


async def test_backup_arguments_are_checked(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=1)
    with pytest.raises(litepool.PoolClosed):
        await pool.backup("x.db")
    async with pool:
        with pytest.raises(TypeError, match="target must be a path"):
            await pool.backup(42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="pages must be >= 1, or -1"):
            await pool.backup("x.db", pages=0)
        with pytest.raises(TypeError, match="pages must be an int"):
            await pool.backup("x.db", pages=2.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="progress must be callable"):
            await pool.backup("x.db", progress=3)  # type: ignore[arg-type]


async def test_backup_cancelled_natively_or_by_scope_returns_the_reader(
    db_path: str, tmp_path: Path, anyio_backend: str, cancel_how: str
) -> None:
    """Cancelled from outside between two steps, by a cancel scope or by the backend's own
    cancellation (``Task.cancel()`` / a trio scope): the copy stops, the reader comes
    back clean, and the pool keeps serving."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_accounts(pool)
        task: CancellableTask
        steps = 0

        def progress(remaining: int, total: int) -> None:
            nonlocal steps
            steps += 1
            if steps == 2:
                task.cancel()

        async def copy() -> None:
            await pool.backup(tmp_path / "partial.db", pages=5, progress=progress)

        task = CancellableTask(copy, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
        assert task.outcome == "cancelled"
        async with pool.read(timeout=5) as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
        stats = pool.statistics()
        assert (stats.read.idle, stats.read.in_use, stats.read.waiting) == (1, 0, 0)
        assert await pool.fetchval("SELECT count(*) FROM accounts") == ACCOUNTS
