"""Waits of the pool's inside SQLite's busy handler give way to cancellation.

``sqlite3.Connection.interrupt()`` does not end SQLite's busy wait, so a checkpoint
waiting for readers, or a ``BEGIN IMMEDIATE`` waiting for another process's lock, kept
the writer for the whole ``busy_timeout`` (5 s by default) after its caller had been
cancelled. The pool now waits in short slices and looks at its caller between them.
"""

from __future__ import annotations

import sys
import time

import anyio
import pytest

import litepool

from .conftest import CancellableTask
from .test_faults import LOCK_HOLDER, LockHolder, make_table

pytestmark = pytest.mark.anyio

#: How soon after its caller's cancellation the writer must serve the next caller.
GIVE_WAY = 0.1


async def test_cancelled_checkpoint_frees_the_writer_at_once(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1, wal_max_bytes=None) as pool:
        await make_table(pool)
        async with pool.read() as reader:
            # An open read transaction on the WAL's last frames: TRUNCATE must wait for it.
            await reader.execute("BEGIN")
            await reader.fetchval("SELECT count(*) FROM t")
            await pool.execute("INSERT INTO t VALUES (50, 'after the snapshot')")

            async def checkpoint() -> None:
                await pool.checkpoint("TRUNCATE")

            task = CancellableTask(checkpoint, cancel_how, anyio_backend)
            async with anyio.create_task_group() as tg:
                await tg.start(task.run)
                # The checkpoint is waiting in SQLite's busy handler for the reader.
                await anyio.sleep(0.2)
                task.cancel()
            assert task.outcome == "cancelled"
            cancelled = time.monotonic()
            await pool.execute("INSERT INTO t VALUES (51, 'next writer')")
            freed_after = time.monotonic() - cancelled
            assert freed_after < GIVE_WAY, freed_after
        result = await pool.checkpoint("TRUNCATE")
        assert not result.busy


async def test_cancelled_begin_frees_the_writer_at_once(
    db_path: str, anyio_backend: str, cancel_how: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with await anyio.open_process([sys.executable, "-c", LOCK_HOLDER, db_path]) as proc:
            holder = LockHolder(proc)
            await holder.expect(b"locked")

            async def write() -> None:
                async with pool.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (60, 'waits for the lock')")

            task = CancellableTask(write, cancel_how, anyio_backend)
            async with anyio.create_task_group() as tg:
                await tg.start(task.run)
                await anyio.sleep(0.2)  # BEGIN IMMEDIATE is waiting for the other process
                task.cancel()
            assert task.outcome == "cancelled"
            cancelled = time.monotonic()
            # A PASSIVE checkpoint needs no write lock: it runs as soon as the writer's
            # thread has let go of the cancelled BEGIN.
            await pool.checkpoint("PASSIVE")
            freed_after = time.monotonic() - cancelled
            assert freed_after < GIVE_WAY, freed_after
            await holder.release()
        await pool.execute("INSERT INTO t VALUES (61, 'after')")
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT count(*) FROM t WHERE id = 60") == 0
