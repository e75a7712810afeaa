"""Operational statistics: connection counts, acquire-wait and usage histograms."""

from __future__ import annotations

import anyio
import pytest

import litepool

from .conftest import bound_read

pytestmark = pytest.mark.anyio


def test_histogram_buckets() -> None:
    from litepool._stats import Recorder

    recorder = Recorder()
    for seconds in (0.0, 0.0001, 0.0002, 0.05, 2.0, 10.0, 11.0):
        recorder.add(seconds)
    histogram = recorder.snapshot()
    assert histogram.bounds == litepool.HISTOGRAM_BOUNDS == (0.0001, 0.001, 0.01, 0.1, 1, 10)
    # Upper bounds are inclusive; the last bucket has none.
    assert histogram.counts == (2, 1, 0, 1, 0, 2, 1)
    assert histogram.count == 7
    assert histogram.total == pytest.approx(23.0503)


async def test_connections_opened_and_closed(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=3)
    async with pool:
        stats = pool.statistics()
        assert (stats.connections_opened, stats.connections_closed) == (4, 0)
        assert stats.connections_replaced == 0
    stats = pool.statistics()
    assert (stats.connections_opened, stats.connections_closed) == (4, 4)


async def test_checkouts_fill_the_histograms(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        for _ in range(3):
            async with pool.read():
                pass
        async with pool.write() as conn:
            await conn.execute("CREATE TABLE t (x)")
        # Single statements are not checkouts.
        await pool.fetchval("SELECT 1")
        stats = pool.statistics()
        assert stats.read.acquire_wait.counts[0] == 3  # free connections: zero wait
        assert stats.read.acquire_wait.count == 3
        assert stats.read.acquire_wait.total == 0
        assert stats.read.usage.count == 3
        assert stats.write.usage.count == 1
        assert stats.write.acquire_wait.count == 1


async def test_a_waiting_checkout_records_its_wait_and_the_holder_its_usage(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        got_it = anyio.Event()

        async def waiter() -> None:
            async with bound_read(pool):
                got_it.set()

        async with anyio.create_task_group() as tg:
            async with bound_read(pool):
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                await anyio.sleep(0.02)  # held, and waited for, at least this long
            await got_it.wait()
        read = pool.statistics().read
        assert read.acquire_wait.count == 2
        assert read.acquire_wait.total >= 0.015
        # The wait landed in the (10 ms, 100 ms] bucket or above; the first checkout in
        # the zero bucket.
        assert read.acquire_wait.counts[0] == 1
        assert sum(read.acquire_wait.counts[3:]) == 1
        assert read.usage.count == 2
        assert read.usage.total >= 0.015


async def test_statistics_equality_ignores_the_operational_figures(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        before = pool.statistics()
        async with pool.connection():
            pass
        after = pool.statistics()
    assert before.write.checkouts + 1 == after.write.checkouts
    assert before.write.usage != after.write.usage
    assert before.read == after.read
