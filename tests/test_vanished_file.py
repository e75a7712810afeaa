"""A database file deleted or replaced under an open pool: noticed within a second, at
the latest at the next write, and from then on every call is refused. No write is
reported committed into a file that no path leads to, and the pool never creates a new,
empty database in place of the one it opened."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import litepool

from .conftest import litepool_threads

pytestmark = pytest.mark.anyio


async def make_table(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await conn.execute("INSERT INTO t (v) VALUES ('kept')")


def exists(path: str) -> bool:
    return os.path.exists(path)


def remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


async def write_block(pool: litepool.Pool, value: str) -> None:
    async with pool.write() as conn:
        await conn.execute("INSERT INTO t (v) VALUES (?)", (value,))


@pytest.mark.parametrize("check", [False, True])
async def test_writes_after_the_file_is_deleted_are_refused(db_path: str, check: bool) -> None:
    async with litepool.open_pool(db_path, readers=2, check=check, name="gone") as pool:
        await make_table(pool)
        remove(db_path)
        refused = 0
        for i in range(200):
            with pytest.raises(litepool.DatabaseLost, match="deleted or moved"):
                await write_block(pool, f"lost-{i}")
            refused += 1
        assert refused == 200
        with pytest.raises(litepool.DatabaseLost):
            await pool.execute("INSERT INTO t (v) VALUES ('single')")
        for call in (pool.fetchval("SELECT count(*) FROM t"), pool.checkpoint()):
            with pytest.raises(litepool.DatabaseLost):
                await call
        with pytest.raises(litepool.DatabaseLost):
            async with pool.read():
                pass  # pragma: no cover
    # Only opening a pool may create its file: nothing was created in its place.
    assert not exists(db_path)
    assert litepool_threads() == []


async def test_a_vanished_file_is_noticed_within_a_second_without_writes(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        assert await pool.fetchval("SELECT v FROM t") == "kept"
        remove(db_path)
        with anyio.fail_after(1.5):
            while True:
                try:
                    await pool.fetchval("SELECT v FROM t")
                except litepool.DatabaseLost:
                    break
                await anyio.sleep(0.05)  # polling the pool is the point
        with pytest.raises(litepool.DatabaseLost):
            async with pool.read() as conn:
                await conn.fetchval("SELECT 1")  # pragma: no cover
    assert not exists(db_path)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
async def test_a_file_replaced_by_a_copy_is_refused_and_left_alone(
    tmp_path: Path, journal_mode: str
) -> None:
    path = str(tmp_path / "app.db")
    async with litepool.open_pool(
        path, readers=1, pragmas={"journal_mode": journal_mode}, name="replaced"
    ) as pool:
        await make_table(pool)
        await pool.checkpoint("TRUNCATE")
        copy = str(tmp_path / "copy.db")
        shutil.copyfile(path, copy)
        conn = sqlite3.connect(copy)
        conn.execute("INSERT INTO t (v) VALUES ('only in the copy')")
        conn.commit()
        conn.close()
        os.replace(copy, path)
        with pytest.raises(litepool.DatabaseLost, match="replaced by another file"):
            await pool.execute("INSERT INTO t (v) VALUES ('refused')")
        with pytest.raises(litepool.DatabaseLost):
            await pool.fetchall("SELECT v FROM t")
    conn = sqlite3.connect(path)
    try:
        assert [row[0] for row in conn.execute("SELECT v FROM t")] == ["kept", "only in the copy"]
    finally:
        conn.close()


async def test_block_in_progress_when_the_file_vanishes_is_not_reported_committed(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        with pytest.raises(litepool.DatabaseLost):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t (v) VALUES ('begun before')")
                remove(db_path)
                await conn.execute("INSERT INTO t (v) VALUES ('after')")
        stats = pool.statistics()
        assert stats.rollbacks >= 1


async def test_check_notices_the_file_replaced_on_checkout(tmp_path: Path) -> None:
    path = str(tmp_path / "app.db")
    other = str(tmp_path / "other.db")
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("INSERT INTO t VALUES (1, 'from the new file')")
    conn.commit()
    conn.close()
    async with litepool.open_pool(path, readers=1, check=True, name="moved") as pool:
        await make_table(pool)
        os.replace(other, path)
        with pytest.raises(litepool.DatabaseLost, match="replaced"):
            async with pool.read() as reader:
                await reader.fetchval("SELECT v FROM t WHERE id = 1")  # pragma: no cover


async def test_replacement_connections_never_create_the_file(db_path: str) -> None:
    """Readers replaced for age while the file is gone open it without creating it, so
    they fail (and are retried) instead of opening a new, empty database there."""
    opened: list[Any] = []
    replacing = threading.Event()

    def configure(conn: sqlite3.Connection) -> None:
        opened.append(conn)
        if len(opened) >= 6:  # the writer, two readers, and replacements: upkeep runs
            replacing.set()

    async with litepool.open_pool(
        db_path, readers=2, max_lifetime=0.05, configure=configure
    ) as pool:
        await make_table(pool)
        assert await anyio.to_thread.run_sync(replacing.wait, 5)
        remove(db_path)
        with anyio.fail_after(2):
            while True:
                try:
                    await pool.fetchval("SELECT 1")
                except litepool.DatabaseLost:
                    break
                await anyio.sleep(0.02)  # polling the pool is the point
        assert not exists(db_path)
    assert not exists(db_path)
