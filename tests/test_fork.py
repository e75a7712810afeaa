"""Fork safety: a child process refuses its parent's pool and never touches it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import pytest

import litepool

pytestmark = pytest.mark.anyio


def in_child(pool: litepool.Pool, conn: litepool.Connection, backend: str) -> int:
    """Runs in the forked child; returns its exit status (0: every use was refused)."""
    failures: list[str] = []

    async def main() -> None:
        attempts: dict[str, Callable[[], Awaitable[object]]] = {
            "fetchval": lambda: pool.fetchval("SELECT 1"),
            "execute": lambda: pool.execute("INSERT INTO t VALUES (2)"),
            "checkpoint": lambda: pool.checkpoint("TRUNCATE"),
            "inherited handle": lambda: conn.fetchval("SELECT 1"),
        }
        for what, attempt in attempts.items():
            try:
                await attempt()
            except litepool.PoolForked as exc:
                if "os.fork()" not in str(exc):
                    failures.append(f"{what}: unclear message {exc}")
            else:
                failures.append(f"{what} was allowed")
        try:
            async with pool.read():
                failures.append("read() was allowed")
        except litepool.PoolForked:
            pass
        if not pool.closed:
            failures.append("the pool says it is open")
        # A new pool in the child works.
        async with litepool.open_pool(":memory:", readers=1) as fresh:
            if await fresh.fetchval("SELECT 41 + 1") != 42:
                failures.append("a new pool does not work")

    # The forking thread's event loop state came along; run the child's own loop on a
    # fresh thread.
    thread = threading.Thread(target=lambda: anyio.run(main, backend=backend))
    thread.start()
    thread.join()
    for failure in failures:
        os.write(2, f"child: {failure}\n".encode())
    return 1 if failures else 0


async def test_a_forked_child_refuses_the_pool(db_path: str, anyio_backend: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool, pool.read() as conn:
        await pool.execute("CREATE TABLE t (x)")
        await pool.execute("INSERT INTO t VALUES (1)")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 2
            try:
                status = in_child(pool, conn, anyio_backend)
            finally:
                # Leave at once: the child must not run the parent's clean-up (pytest's,
                # the pool's, the interpreter's finalizers).
                os._exit(status)
        _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's pool, and the handle it holds, are untouched by the child.
        assert await conn.fetchval("SELECT count(*) FROM t") == 1
        await pool.execute("INSERT INTO t VALUES (2)")
        assert await pool.fetchval("SELECT count(*) FROM t") == 2
        assert (await pool.checkpoint("PASSIVE")).busy is False


async def test_a_child_never_finalizes_the_inherited_connections(
    db_path: str, anyio_backend: str
) -> None:
    """Finalizing an inherited ``sqlite3.Connection`` (at the child's exit, or when the
    last reference goes) would close it: the child keeps every one alive for good.

    No housekeeping: an idle pool's worker threads hold no reference of their own to
    their connections, so the counts before the fork are the child's starting point."""
    async with litepool.open_pool(db_path, readers=2, wal_max_bytes=None) as pool:
        await pool.execute("CREATE TABLE t (x)")
        await pool.execute("INSERT INTO t VALUES (1)")
        assert pool._supervisor is not None
        connections = [worker.conn for worker in pool._supervisor._workers]
        before = [sys.getrefcount(conn) for conn in connections]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            after = [sys.getrefcount(conn) for conn in connections]
            # One reference never given back, one in the list of inherited objects.
            os._exit(0 if [b + 2 for b in before] == after else 3)
        _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert [sys.getrefcount(conn) for conn in connections] == before
        assert await pool.fetchval("SELECT count(*) FROM t") == 1
