"""Read-modify-write transactions from many tasks lose nothing."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

import litepool

pytestmark = pytest.mark.anyio

ACCOUNTS = 10
START_BALANCE = 1000


async def run_transfers(pool: litepool.Pool, tasks: int, transfers_per_task: int) -> int:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        await conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)", [(i, START_BALANCE) for i in range(ACCOUNTS)]
        )
    done = 0

    async def transfer(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        for _ in range(transfers_per_task):
            source, target = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            async with pool.write() as conn:
                # Read both, then write both back: the classic lost-update pattern.
                source_balance = await conn.fetchval(
                    "SELECT balance FROM accounts WHERE id = ?", (source,)
                )
                target_balance = await conn.fetchval(
                    "SELECT balance FROM accounts WHERE id = ?", (target,)
                )
                await anyio.lowlevel.checkpoint()  # let every other task run in between
                await conn.execute(
                    "UPDATE accounts SET balance = ? WHERE id = ?",
                    (source_balance - amount, source),
                )
                await conn.execute(
                    "UPDATE accounts SET balance = ? WHERE id = ?",
                    (target_balance + amount, target),
                )
            done += 1

    async with anyio.create_task_group() as tg:
        for seed in range(tasks):
            tg.start_soon(transfer, seed)
    return done


@pytest.mark.parametrize("database", ["file", ":memory:"])
async def test_transfers_from_20_tasks_keep_the_total(db_path: str, database: str) -> None:
    path = db_path if database == "file" else ":memory:"
    async with litepool.open_pool(path, readers=2) as pool:
        done = await run_transfers(pool, tasks=20, transfers_per_task=25)
        assert done == 500
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT sum(balance) FROM accounts") == (
                ACCOUNTS * START_BALANCE
            )
        stats = pool.statistics()
        assert stats.write.checkouts == 501
        assert stats.rollbacks == 0


async def test_readers_see_only_committed_totals_during_transfers(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=3) as pool:
        totals: list[int] = []
        finished = anyio.Event()

        async def audit() -> None:
            while not finished.is_set():
                async with pool.read() as conn:
                    totals.append(await conn.fetchval("SELECT sum(balance) FROM accounts"))

        async with anyio.create_task_group() as tg:
            async with pool.connection() as conn:
                await conn.execute(
                    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)"
                )
                await conn.executemany(
                    "INSERT INTO accounts VALUES (?, ?)",
                    [(i, START_BALANCE) for i in range(ACCOUNTS)],
                )
            tg.start_soon(audit)
            for round_ in range(100):
                async with pool.write() as conn:
                    await conn.execute(
                        "UPDATE accounts SET balance = balance - 7 WHERE id = ?",
                        (round_ % ACCOUNTS,),
                    )
                    await anyio.lowlevel.checkpoint()
                    await conn.execute(
                        "UPDATE accounts SET balance = balance + 7 WHERE id = ?",
                        ((round_ + 1) % ACCOUNTS,),
                    )
            finished.set()
        assert totals
        assert set(totals) == {ACCOUNTS * START_BALANCE}
