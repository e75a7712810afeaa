"""A nursery of trio workers sharing one pool, with a deadline that cancels slow queries.

A small report generator: workers take report queries from a channel and run each one
on a reader of the shared pool under a deadline. A query that overruns its deadline is
interrupted inside SQLite (not merely abandoned), its reader goes back to the pool, and
the worker moves on to the next query. At the end the program checks that every reader
is back and idle, and exits with 1 if anything went wrong.

Run it::

    pip install "litepool[trio]"
    python examples/trio_workers.py [--workers 3] [--deadline 0.2] [--database reports.db]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import trio

import litepool

#: (name, SQL) pairs; the two "slow" ones would run for minutes without a deadline.
REPORTS: list[tuple[str, str]] = [
    ("orders", "SELECT count(*) FROM orders"),
    ("revenue", "SELECT sum(amount) FROM orders"),
    ("top customer", "SELECT customer FROM orders GROUP BY customer ORDER BY sum(amount) DESC"),
    (
        "slow: runaway recursion",
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
    ),
    ("largest order", "SELECT max(amount) FROM orders"),
    ("customers", "SELECT count(DISTINCT customer) FROM orders"),
    (
        "slow: cross join",
        "SELECT count(*) FROM orders a, orders b, orders c WHERE a.amount + b.amount > c.amount",
    ),
    ("average order", "SELECT round(avg(amount), 2) FROM orders"),
]

ORDERS = 2000


async def create_data(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS orders "
            "(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount INTEGER NOT NULL)"
        )
    async with pool.write() as conn:
        await conn.execute("DELETE FROM orders")
        await conn.executemany(
            "INSERT INTO orders (customer, amount) VALUES (?, ?)",
            ((f"customer-{i % 37}", (i * 7919) % 500 + 1) for i in range(ORDERS)),
        )


async def worker(
    number: int,
    pool: litepool.Pool,
    queue: trio.MemoryReceiveChannel[tuple[str, str]],
    deadline: float,
    results: dict[str, str],
) -> None:
    async with queue:
        async for name, sql in queue:
            started = time.perf_counter()
            with trio.move_on_after(deadline) as scope:
                async with pool.read() as conn:
                    value = await conn.fetchval(sql)
            elapsed = time.perf_counter() - started
            if scope.cancelled_caught:
                results[name] = "cancelled"
                print(
                    f"worker {number}: {name!r} cancelled at its {deadline:g} s deadline "
                    f"(gave way after {elapsed:.3f} s)",
                    flush=True,
                )
            else:
                results[name] = "ok"
                print(f"worker {number}: {name!r} = {value} in {elapsed * 1000:.1f} ms", flush=True)


async def main(database: str, workers: int, deadline: float) -> int:
    results: dict[str, str] = {}
    async with litepool.open_pool(database, readers=workers) as pool:
        await create_data(pool)
        send, receive = trio.open_memory_channel[tuple[str, str]](0)
        async with trio.open_nursery() as nursery:
            for number in range(1, workers + 1):
                nursery.start_soon(worker, number, pool, receive.clone(), deadline, results)
            receive.close()
            async with send:
                for report in REPORTS:
                    await send.send(report)
        stats = pool.statistics()
        # Every reader is back, and the pool still answers after the cancellations.
        async with pool.read() as conn:
            still_there = await conn.fetchval("SELECT count(*) FROM orders")
    ok = sum(outcome == "ok" for outcome in results.values())
    cancelled = sum(outcome == "cancelled" for outcome in results.values())
    print(
        f"done: {ok} ok, {cancelled} cancelled, {stats.interrupted} interrupted in SQLite; "
        f"readers idle {stats.read.idle}/{stats.read.size}; "
        f"orders still readable: {still_there}",
        flush=True,
    )
    slow = {name for name, _ in REPORTS if name.startswith("slow")}
    expected = {name: "cancelled" if name in slow else "ok" for name, _ in REPORTS}
    healthy = stats.read.idle == stats.read.size and still_there == ORDERS
    return 0 if results == expected and healthy else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=None, help="default: a temporary file")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=0.2, help="seconds per query")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = args.database or os.path.join(directory, "reports.db")
        raise SystemExit(trio.run(main, path, args.workers, args.deadline))
