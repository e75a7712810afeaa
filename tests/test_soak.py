"""A soak test: the mixed workload (90 % point reads, 10 % writes) with cancellations, for
a while, watching what a leak would make grow: threads, open file descriptors, resident
memory and the WAL file.

Run with ``pytest -s`` to see the figures. The normal suite soaks for a second or two per
backend; ``pytest --long`` for three minutes per backend.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import litepool

from .conftest import LONG_QUERY, LoopWatchdog, StartSignal, litepool_threads

pytestmark = pytest.mark.anyio

ROWS = 2_000
COUNTERS = 50
READERS = 4
TASKS = 32
MiB = 1024 * 1024


@dataclass(frozen=True)
class Resources:
    threads: int
    litepool_threads: int
    fds: int
    rss: int  # bytes
    wal: int  # bytes

    @classmethod
    def now(cls, db_path: str) -> Resources:
        wal = Path(db_path + "-wal")
        return cls(
            threads=threading.active_count(),
            litepool_threads=len(litepool_threads()),
            fds=len(os.listdir("/proc/self/fd")),
            rss=resident_memory(),
            wal=wal.stat().st_size if wal.exists() else 0,
        )

    def __str__(self) -> str:
        return (
            f"threads {self.threads} (litepool {self.litepool_threads}), fds {self.fds}, "
            f"RSS {self.rss / MiB:.1f} MiB, WAL {self.wal / MiB:.2f} MiB"
        )


def resident_memory() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class Workload:
    def __init__(self, pool: litepool.Pool, seed: int) -> None:
        self.pool = pool
        self.seed = seed
        self.counts: Counter[str] = Counter()
        self.increments = 0  # writes whose block returned: each added 1 to a counter

    async def read(self, rng: random.Random) -> None:
        key = rng.randrange(ROWS)
        async with self.pool.read() as conn:
            row = await conn.fetchone("SELECT id, payload FROM items WHERE id = ?", (key,))
        assert row is not None
        assert row[0] == key

    async def write(self, rng: random.Random) -> None:
        async with self.pool.write() as conn:
            await conn.execute(
                "UPDATE counters SET n = n + 1 WHERE id = ?", (rng.randrange(COUNTERS),)
            )
            await conn.execute(
                "UPDATE items SET payload = ? WHERE id = ?",
                (rng.randbytes(rng.randrange(16, 200)), rng.randrange(ROWS)),
            )
        self.increments += 1

    async def long_query(self) -> None:
        async with self.pool.read() as conn:
            await conn.fetchval(LONG_QUERY)

    async def one(self, rng: random.Random) -> None:
        roll = rng.random()
        run: Callable[[], Awaitable[None]]
        if roll < 0.002:
            op, run = "long query", self.long_query
            deadline: float | None = rng.choice((0.001, 0.005))
        else:
            op = "read" if roll < 0.9 else "write"
            run = functools.partial(self.read if op == "read" else self.write, rng)
            # About one operation in twenty runs under a deadline that may cut it short.
            deadline = rng.choice((0.0, 0.0002, 0.001, 0.003)) if rng.random() < 0.05 else None
        if deadline is None:
            await run()
            self.counts[op] += 1
            return
        with anyio.move_on_after(deadline) as scope:
            await run()
        self.counts[f"{op} cancelled" if scope.cancelled_caught else op] += 1

    async def run_for(self, seconds: float, phase: str) -> None:
        stop_at = time.monotonic() + seconds

        async def task(index: int) -> None:
            rng = random.Random(f"{self.seed}/{phase}/{index}")
            while time.monotonic() < stop_at:
                await self.one(rng)

        async with anyio.create_task_group() as tg:
            for index in range(TASKS):
                tg.start_soon(task, index)


async def setup(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, payload BLOB)")
        await conn.execute("CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER)")
        await conn.executemany(
            "INSERT INTO items VALUES (?, ?)", [(i, bytes(64)) for i in range(ROWS)]
        )
        await conn.executemany(
            "INSERT INTO counters VALUES (?, 0)", [(i,) for i in range(COUNTERS)]
        )


async def test_soak(db_path: str, anyio_backend: str, long_run: bool) -> None:
    seconds = 180.0 if long_run else 1.5
    before_open = Resources.now(db_path)
    signal = StartSignal()
    watchdog = LoopWatchdog()
    async with (
        watchdog,
        litepool.open_pool(
            db_path, readers=READERS, acquire_timeout=10, configure=watchdog.chain(signal.configure)
        ) as pool,
    ):
        await setup(pool)
        workload = Workload(pool, seed=7)
        # Warm up first: caches, statement caches and allocator pools fill once.
        await workload.run_for(max(0.5, seconds / 10), "warm-up")
        start = Resources.now(db_path)
        started = time.monotonic()
        ops_before = sum(workload.counts.values())
        await workload.run_for(seconds, "soak")
        elapsed = time.monotonic() - started
        end = Resources.now(db_path)
        ops = sum(workload.counts.values()) - ops_before

        stats = pool.statistics()
        assert (stats.read.in_use, stats.read.waiting, stats.read.idle) == (0, 0, READERS)
        assert (stats.write.in_use, stats.write.waiting, stats.write.idle) == (0, 0, 1)
        async with pool.read() as conn:
            total = await conn.fetchval("SELECT sum(n) FROM counters")
            assert await conn.fetchval("SELECT count(*) FROM items") == ROWS
        # A write that returned is committed; one cut short is rolled back.
        assert total == workload.increments
    after_close = Resources.now(db_path)

    cancelled = sum(n for op, n in workload.counts.items() if op.endswith("cancelled"))
    print(f"\nsoak {anyio_backend}: {ops} operations in {elapsed:.1f} s ({ops / elapsed:.0f}/s)")
    print(f"  by kind: {dict(sorted(workload.counts.items()))}; cancelled: {cancelled}")
    print(f"  before opening: {before_open}")
    print(f"  start (warm):   {start}")
    print(f"  end:            {end}")
    print(f"  after closing:  {after_close}")
    print(f"  RSS growth: {(end.rss - start.rss) / MiB:+.1f} MiB; committed writes {total}")

    assert ops > 0
    assert start.litepool_threads == end.litepool_threads == READERS + 1
    assert after_close.litepool_threads == 0
    assert end.threads <= start.threads
    assert end.fds <= start.fds
    assert after_close.fds <= before_open.fds, "files still open after the pool closed"
    # 16 MiB of slack, plus 64 bytes per operation: a leak of a few hundred bytes per
    # operation breaks it in the long run.
    assert end.rss - start.rss < 16 * MiB + ops * 64, "resident memory keeps growing"
    assert end.wal < 32 * MiB, "the WAL keeps growing: checkpoints cannot catch up"
