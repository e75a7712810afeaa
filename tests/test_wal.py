"""WAL housekeeping: checkpoints that keep the WAL under ``wal_max_bytes``."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

import litepool

from .conftest import CancellableTask

pytestmark = pytest.mark.anyio

BOUND = 4 * 1024 * 1024
PAYLOAD = 2000  # bytes per inserted row


def wal_size(db_path: str) -> int:
    try:
        return os.stat(db_path + "-wal").st_size
    except FileNotFoundError:
        return 0


async def wal_load(pool: litepool.Pool, db_path: str, *, writes: int | None) -> tuple[int, int]:
    """Writers, readers, and a read transaction open at every moment.

    Two writer tasks insert rows; two reader tasks run single queries; one task keeps a
    read transaction open at all times by opening the next one before closing the
    previous one. Runs for ``writes`` inserts, or (``None``) until the WAL file passes
    ``BOUND``. Returns the largest WAL size seen and the number of inserts.
    """
    peak = 0
    done = 0
    stop = anyio.Event()

    def look() -> None:
        nonlocal peak
        peak = max(peak, wal_size(db_path))
        if (writes is None and peak > BOUND) or (writes is not None and done >= writes):
            stop.set()

    async def writer() -> None:
        nonlocal done
        while not stop.is_set():
            await pool.execute("INSERT INTO t (payload) VALUES (randomblob(?))", (PAYLOAD,))
            done += 1
            look()

    async def reader() -> None:
        while not stop.is_set():
            await pool.fetchval("SELECT max(id) FROM t")
            look()

    async def open_pin() -> tuple[litepool.Checkout, litepool.Connection]:
        checkout = pool.read()
        conn = await checkout.__aenter__()
        await conn.execute("BEGIN")
        await conn.fetchval("SELECT max(id) FROM t")  # the read transaction starts here
        return checkout, conn

    async def pinner() -> None:
        held = await open_pin()
        pinned.set()
        try:
            while not stop.is_set():
                await anyio.sleep(0.01)  # hold it while writes go on
                following = await open_pin()  # opened before the previous one closes
                await held[0].__aexit__(None, None, None)
                held = following
        finally:
            await held[0].__aexit__(None, None, None)

    pinned = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pinner)
        await pinned.wait()
        for _ in range(2):
            tg.start_soon(writer)
            tg.start_soon(reader)
        with anyio.fail_after(30):
            await stop.wait()
    return max(peak, wal_size(db_path)), done


async def test_housekeeping_keeps_the_wal_under_its_bound(
    tmp_path: Path, anyio_backend: str
) -> None:
    # Without housekeeping, the WAL grows past the bound: SQLite's own PASSIVE
    # checkpoints can never finish while a reader always has a transaction open.
    plain = str(tmp_path / "plain.db")
    async with litepool.open_pool(plain, readers=4, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        grown, writes = await wal_load(pool, plain, writes=None)
        assert pool.statistics().checkpoints == 0
    assert grown > BOUND

    # The same load, with housekeeping, for three times as many writes.
    kept = str(tmp_path / "kept.db")
    async with litepool.open_pool(kept, readers=4, wal_max_bytes=BOUND) as pool:
        await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        peak, done = await wal_load(pool, kept, writes=3 * writes)
        stats = pool.statistics()
    print(
        f"\n[{anyio_backend}] WAL bound {BOUND} bytes; without housekeeping "
        f"{grown} bytes after {writes} writes; with housekeeping at most {peak} bytes "
        f"over {done} writes ({stats.checkpoints} checkpoints, {stats.checkpoints_busy} "
        "busy)"
    )
    assert peak < BOUND
    assert stats.checkpoints > 0
    assert stats.wal_bytes_peak is not None
    assert stats.wal_bytes_peak < BOUND


async def test_checkpoint_modes(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (x)")
        await pool.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
        result = await pool.checkpoint()
        assert isinstance(result, litepool.CheckpointResult)
        busy, log, checkpointed = result
        assert (busy, log == checkpointed) == (False, True)
        assert log > 0
        for mode in ("FULL", "restart", "TRUNCATE"):
            assert (await pool.checkpoint(mode)).busy is False
        assert wal_size(db_path) == 0
        stats = pool.statistics()
        assert (stats.checkpoints, stats.checkpoints_busy) == (4, 0)
        assert (stats.checkpoint_mode, stats.wal_bytes) == ("TRUNCATE", 0)
        assert stats.wal_bytes_peak is not None
        assert stats.wal_bytes_peak > 0
        with pytest.raises(ValueError, match="mode must be one of PASSIVE, FULL"):
            await pool.checkpoint("NOW")


async def test_a_reader_in_a_transaction_makes_a_checkpoint_busy(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (x)")
        async with pool.read() as reader:
            await reader.execute("BEGIN")
            await reader.fetchval("SELECT count(*) FROM t")
            await pool.execute("INSERT INTO t VALUES (1)")
            assert (await pool.checkpoint("PASSIVE")).busy is False  # never waits
            async with pool.connection() as conn:
                await conn.execute("PRAGMA busy_timeout=10")
            result = await pool.checkpoint("RESTART")
            assert result.busy is True
        assert (await pool.checkpoint("TRUNCATE")).busy is False
        assert pool.statistics().checkpoints_busy == 1


async def test_checkpoint_without_wal(tmp_path: Path) -> None:
    async with litepool.open_pool(":memory:", readers=1) as pool:
        await pool.execute("CREATE TABLE t (x)")
        await pool.execute("INSERT INTO t VALUES (1)")
        assert await pool.checkpoint() == (False, -1, -1)
        assert pool.statistics().wal_bytes is None
    journal = str(tmp_path / "journal.db")
    async with litepool.open_pool(journal, pragmas={"journal_mode": "delete"}) as pool:
        await pool.execute("CREATE TABLE t (x)")
        assert await pool.checkpoint("TRUNCATE") == (False, -1, -1)


async def test_housekeeper_checkpoints_when_writes_pause(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=1024 * 1024) as pool:
        await pool.execute("CREATE TABLE t (x)")
        for _ in range(20):
            await pool.execute("INSERT INTO t VALUES (randomblob(1000))")
        with anyio.fail_after(5):
            # The housekeeper has no event to wait for: poll its statistics.
            while not pool.statistics().checkpoints:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        # The last one runs within two intervals of the last write; then nothing more
        # while nothing is written.
        await anyio.sleep(0.1)
        stats = pool.statistics()
        assert stats.checkpoints in (1, 2)
        assert (stats.checkpoint_mode, stats.checkpoints_busy) == ("PASSIVE", 0)
        assert stats.wal_bytes == wal_size(db_path) > 0  # PASSIVE keeps the file
        await anyio.sleep(0.1)
        assert pool.statistics().checkpoints == stats.checkpoints
    # The housekeeper stopped with the pool, which closed cleanly: the last connection
    # to close removed the WAL.
    assert wal_size(db_path) == 0


async def test_housekeeper_resets_the_wal_past_the_bound(db_path: str) -> None:
    bound = 256 * 1024
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=bound) as pool:
        await pool.execute("CREATE TABLE t (x)")
        # Far past the bound in one transaction: the housekeeper must cut the file down.
        await pool.executemany("INSERT INTO t VALUES (randomblob(4000))", [() for _ in range(200)])
        assert wal_size(db_path) > bound
        with anyio.fail_after(5):
            # The housekeeper has no event to wait for: poll its statistics.
            while pool.statistics().checkpoint_mode != "TRUNCATE":  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert pool.statistics().wal_bytes == 0


async def test_housekeeping_off(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (x)")
        for _ in range(5):
            await pool.execute("INSERT INTO t VALUES (1)")
            await anyio.sleep(0.02)
        assert pool.statistics().checkpoints == 0
        assert "housekeeper" not in " ".join(_task_names())


async def test_housekeeping_failure_is_logged_and_survived(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=1024 * 1024) as pool:
        await pool.execute("CREATE TABLE t (x)")
        # The writer's connection refuses checkpoints for a while: the housekeeper logs it.
        refuse = True

        def authorizer(action: int, *args: Any) -> int:
            if refuse and action == sqlite3.SQLITE_PRAGMA and args[0] == "wal_checkpoint":
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        async with pool.connection() as conn:
            await conn.run_sync(lambda raw: raw.set_authorizer(authorizer))
        with anyio.fail_after(5):
            while "housekeeping checkpoint failed" not in caplog.text:
                await pool.execute("INSERT INTO t VALUES (1)")
                await anyio.sleep(0.005)
        refuse = False
        before = pool.statistics().checkpoints
        with anyio.fail_after(5):
            while pool.statistics().checkpoints == before:
                await pool.execute("INSERT INTO t VALUES (1)")
                await anyio.sleep(0.005)


def _task_names() -> list[str]:
    return [str(task.name) for task in anyio.get_running_tasks()]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "wal_max_bytes must be >= 65536, got 0"),
        (-5, ValueError, "wal_max_bytes must be >= 65536"),
        ("64MB", TypeError, "wal_max_bytes must be an int, not '64MB'"),
        (True, TypeError, "wal_max_bytes must be an int, not True"),
        (1.5e6, TypeError, "wal_max_bytes must be an int"),
    ],
)
def test_wal_max_bytes_is_checked(
    tmp_path: Path, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        litepool.open_pool(tmp_path / "x.db", wal_max_bytes=value)  # type: ignore[arg-type]


async def test_closing_runs_pragma_optimize_on_the_writer(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool, pool.connection() as conn:
        await conn.execute("CREATE TABLE t (x, y)")
        await conn.execute("CREATE INDEX t_x ON t (x)")
        await conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i) for i in range(100)])
        # A query that wants statistics on t_x: PRAGMA optimize remembers it.
        await conn.fetchall("SELECT y FROM t WHERE x = 5")
    with sqlite3.connect(db_path) as check:
        analyzed = check.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
        ).fetchone()
    check.close()
    assert analyzed == (1,)


async def test_housekeeping_works_with_any_row_factory(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The housekeeper reads pragmas as plain tuples whatever the pool's row factory."""
    async with litepool.open_pool(db_path, readers=1, row_factory=dict) as pool:
        await pool.execute("CREATE TABLE t (x)")
        await pool.execute("INSERT INTO t VALUES (1)")
        result = await pool.checkpoint("TRUNCATE")
        assert result.busy is False
        assert pool.statistics().checkpoints >= 1
        target = db_path + ".copy"
        await pool.backup(target)
    async with litepool.open_pool(target, readers=1, row_factory=dict) as copy:
        assert await copy.fetchall("SELECT x FROM t") == [{"x": 1}]
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_checkpoint_cancelled_while_queued_never_runs(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    """A checkpoint waits its turn behind a pool.write() checkout; cancelled there (scope
    or native), it holds nothing and runs nothing, and the writer goes on."""
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (x)")

        async def checkpoint() -> None:
            await pool.checkpoint("TRUNCATE")

        task = CancellableTask(checkpoint, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg, pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (1)")
            await tg.start(task.run)
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 1
            task.cancel()
            await anyio.wait_all_tasks_blocked()
            assert pool.statistics().write.waiting == 0
        assert task.outcome == "cancelled"
        stats = pool.statistics()
        assert (stats.write.idle, stats.write.in_use, stats.checkpoints) == (1, 0, 0)
        assert await pool.fetchval("SELECT count(*) FROM t") == 1
        assert (await pool.checkpoint("PASSIVE")).busy is False
