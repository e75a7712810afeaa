"""The WAL stays under twice ``wal_max_bytes`` under the loads that made it run away:
a writer that is never idle (several tasks on ``pool.write()``), and read transactions
that always overlap (slow ``iterate()`` scans), while writers and readers keep going."""

from __future__ import annotations

import os
import time

import anyio
import pytest

import litepool

pytestmark = pytest.mark.anyio

BOUND = 4 * 1024 * 1024
ROW = 4096  # bytes of each inserted row
WARM_UP = 1.0  # seconds before the bound must hold


class WalWatch:
    """Samples the size of the ``-wal`` file every few milliseconds."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + "-wal"
        self.peak = 0
        self.samples = 0

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    async def run(self, until: float) -> None:
        started = time.monotonic()
        while time.monotonic() < until:
            size = self.size()
            if time.monotonic() - started >= WARM_UP:
                self.peak = max(self.peak, size)
                self.samples += 1
            await anyio.sleep(0.005)


async def test_busy_writer_cannot_keep_the_wal_growing(db_path: str, long_run: bool) -> None:
    """Four tasks loop on ``pool.write()`` (the writer is never idle, its queue never
    empty) while four readers scan the whole table over and over (some read
    transaction is nearly always open)."""
    seconds = 15.0 if long_run else 5.0
    async with litepool.open_pool(db_path, readers=4, wal_max_bytes=BOUND) as pool:
        await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        stop = time.monotonic() + seconds
        watch = WalWatch(db_path)
        writes = scans = 0

        async def writer() -> None:
            nonlocal writes
            while time.monotonic() < stop:
                async with pool.write() as conn:
                    await conn.execute("INSERT INTO t (payload) VALUES (randomblob(?))", (ROW,))
                writes += 1

        async def reader() -> None:
            nonlocal scans
            while time.monotonic() < stop:
                await pool.fetchval("SELECT count(*), sum(length(payload)) FROM t")
                scans += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, stop)
            for _ in range(4):
                tg.start_soon(writer)
                tg.start_soon(reader)
        stats = pool.statistics()
    print(
        f"\nbusy writer: WAL peak {watch.peak / 2**20:.2f} MiB (bound {BOUND / 2**20:g} MiB), "
        f"{writes} writes, {scans} scans, {stats.checkpoints} checkpoints, "
        f"{stats.checkpoints_busy} busy, {stats.wal_reset_timeouts} gave up"
    )
    assert watch.samples > 100
    assert watch.peak <= 2 * BOUND
    assert writes > 100 * seconds
    assert scans > 10 * seconds
    assert stats.checkpoints > 0


async def test_overlapping_slow_scans_cannot_keep_the_wal_growing(
    db_path: str, long_run: bool
) -> None:
    """Four readers each stream a whole table through ``conn.iterate()`` to a slow
    consumer (about a second per scan), staggered so that some read snapshot is always
    open, while one writer inserts rows steadily."""
    seconds = 15.0 if long_run else 6.0
    # Each scan is open for about a second; on a loaded machine one may last longer than
    # the 2 s default of wal_reset_timeout, and the reset would then rightly give up:
    # that is tested on its own below. This test is about the bound.
    async with litepool.open_pool(
        db_path, readers=4, wal_max_bytes=BOUND, wal_reset_timeout=10
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
            await conn.executemany(
                "INSERT INTO items (v) VALUES (?)", [(f"item {i}",) for i in range(2000)]
            )
            await conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, payload BLOB)")
        stop = time.monotonic() + seconds
        watch = WalWatch(db_path)
        rows = scans = 0

        async def writer() -> None:
            nonlocal rows
            while time.monotonic() < stop:
                await pool.execute("INSERT INTO log (payload) VALUES (randomblob(?))", (ROW,))
                rows += 1

        async def scanner(delay: float) -> None:
            nonlocal scans
            await anyio.sleep(delay)  # staggered starts: the scans overlap
            while time.monotonic() < stop:
                seen = 0
                async with pool.read() as conn:
                    async for _ in conn.iterate("SELECT id, v FROM items", chunk_size=100):
                        seen += 1
                        if seen % 100 == 0:
                            await anyio.sleep(0.05)  # a slow consumer: ~1 s per scan
                assert seen == 2000
                scans += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run, stop)
            tg.start_soon(writer)
            for i in range(4):
                tg.start_soon(scanner, i * 0.25)
        stats = pool.statistics()
    print(
        f"\noverlapping scans: WAL peak {watch.peak / 2**20:.2f} MiB (bound "
        f"{BOUND / 2**20:g} MiB), {rows} rows written, {scans} scans, {stats.checkpoints} "
        f"checkpoints, {stats.checkpoints_busy} busy, {stats.wal_reset_timeouts} gave up"
    )
    assert watch.samples > 100
    assert watch.peak <= 2 * BOUND
    # In 15 s: at least 1,500 rows written and 8 full scans.
    assert rows >= 100 * seconds
    assert scans >= 8 * seconds / 15


async def test_read_that_outlasts_the_reset_is_named_counted_and_left_alone(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A read transaction held open past ``wal_reset_timeout``: the reset gives up, says
    who holds it and where, counts it, and the reader goes on; once it ends, the next
    reset succeeds."""
    bound = 256 * 1024
    async with litepool.open_pool(
        db_path, readers=2, wal_max_bytes=bound, wal_reset_timeout=0.3
    ) as pool:
        await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        line = _line() + 1
        async with pool.read() as reader:
            await reader.execute("BEGIN")
            assert await reader.fetchval("SELECT count(*) FROM t") == 0  # a snapshot
            for _ in range(100):  # far past half the bound
                await pool.execute("INSERT INTO t (payload) VALUES (randomblob(?))", (ROW,))
            with anyio.fail_after(10):
                while not pool.statistics().wal_reset_timeouts:
                    await pool.execute("INSERT INTO t (payload) VALUES (randomblob(?))", (ROW,))
            # The reader was not stopped: its snapshot still reads as before.
            assert await reader.fetchval("SELECT count(*) FROM t") == 0
            message = next(
                r.getMessage() for r in caplog.records if "wal_reset_timeout" in r.getMessage()
            )
            assert f"pool.read() entered at {os.path.basename(__file__)}:{line}" in message
            assert "reader-" in message
        # The transaction has ended: the next reset cuts the WAL.
        with anyio.fail_after(10):
            while WalWatch(db_path).size() > bound:
                await pool.execute("INSERT INTO t (payload) VALUES (randomblob(?))", (ROW,))
        assert pool.statistics().wal_reset_timeouts >= 1


def _line() -> int:
    import sys

    return sys._getframe(1).f_lineno


async def test_closing_the_pool_stops_a_reset_waiting_for_readers(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=2, wal_max_bytes=256 * 1024, wal_reset_timeout=None)
    await pool.__aenter__()
    try:
        await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        checkout = pool.read()
        reader = await checkout.__aenter__()
        await reader.execute("BEGIN")
        await reader.fetchval("SELECT count(*) FROM t")
        await pool.executemany("INSERT INTO t (payload) VALUES (randomblob(?))", [(ROW,)] * 100)
        # The reset starts, then waits (with no limit) for the open read transaction.
        with anyio.fail_after(5):
            while pool.statistics().wal_bytes_peak is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)  # no event says that a reset began
        await anyio.sleep(0.1)
    finally:
        started = time.monotonic()
        await pool.__aexit__(None, None, None)  # the read transaction is still open
    assert time.monotonic() - started < 0.5
    await checkout.__aexit__(None, None, None)
