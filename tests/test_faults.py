"""Faults from outside the pool and bad input from its caller.

Each fault must reach the caller as a clear error (or the documented behaviour), lose no
committed data, and leave the pool serving once the fault is gone. The faults are real:
another process holding SQLite's lock, a database that fills up, a file that is not a
database or is read-only, a worker thread that dies, and exceptions such as
``KeyboardInterrupt`` in the task that holds a connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import litepool

from .conftest import LONG_QUERY, StartSignal, bound_read, litepool_threads

pytestmark = pytest.mark.anyio


def assert_all_idle(pool: litepool.Pool) -> None:
    stats = pool.statistics()
    assert (stats.read.idle, stats.read.in_use, stats.read.waiting) == (stats.read.size, 0, 0)
    assert (stats.write.idle, stats.write.in_use, stats.write.waiting) == (1, 0, 0)


async def make_table(pool: litepool.Pool, rows: int = 3) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        await conn.executemany(
            "INSERT INTO t VALUES (?, ?)", [(i, f"committed-{i}") for i in range(rows)]
        )


async def rows_via_reader(pool: litepool.Pool) -> list[Any]:
    async with pool.read() as conn:
        return await conn.fetchall("SELECT id, v FROM t ORDER BY id")


def committed_rows(path: str) -> list[Any]:
    """The table as a fresh connection of our own sees it: what is really committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        conn.close()


async def serves(pool: litepool.Pool, new_id: int) -> None:
    """The pool takes a write and every reader sees it (all held at once, so each one)."""
    async with pool.write(timeout=5) as conn:
        await conn.execute("INSERT INTO t VALUES (?, ?)", (new_id, f"after-{new_id}"))
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(pool.statistics().readers):
            conn = await stack.enter_async_context(bound_read(pool, timeout=5))
            assert await conn.fetchval("SELECT v FROM t WHERE id = ?", (new_id,)) == (
                f"after-{new_id}"
            )


# -- another process holds the lock ------------------------------------------------------

LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys

    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT INTO t VALUES (100, 'from the other process')")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    conn.close()
    print("released", flush=True)
    """
)


class LockHolder:
    """A child process that holds the database's write lock until told to let go."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdout is not None
        assert process.stdin is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def expect(self, line: bytes) -> None:
        with anyio.fail_after(30):
            assert await self._stdout.receive_until(b"\n", 1000) == line

    async def release(self) -> None:
        await self._stdin.send(b"release\n")
        await self.expect(b"released")
        with anyio.fail_after(30):
            assert await self.process.wait() == 0


async def test_lock_held_by_another_process_waits_for_the_callers_timeout(db_path: str) -> None:
    """Writes wait for another process's lock until their own timeout, never failing
    with "database is locked" earlier (busy_timeout does not cut them short); then they
    raise PoolTimeout naming the lock. pool.connection() blocks manage their own
    transactions and fail after busy_timeout, as plain sqlite3 does."""
    busy_ms = 100
    async with litepool.open_pool(db_path, readers=2, pragmas={"busy_timeout": busy_ms}) as pool:
        await make_table(pool)
        async with await anyio.open_process([sys.executable, "-c", LOCK_HOLDER, db_path]) as proc:
            holder = LockHolder(proc)
            await holder.expect(b"locked")

            for call in ("write", "execute"):
                started = time.monotonic()
                with pytest.raises(litepool.PoolTimeout, match="write lock did not come free"):
                    if call == "write":
                        async with pool.write(timeout=0.6) as conn:
                            await conn.execute("INSERT INTO t VALUES (10, 'lost to the lock')")
                    else:
                        await pool.execute("INSERT INTO t VALUES (10, 'lost')", timeout=0.6)
                waited = time.monotonic() - started
                # The caller's timeout, not the 100 ms busy_timeout, bounded the wait.
                assert 0.6 <= waited < 2.5, (call, waited)
            # A cancel scope ends the wait within a slice of the busy handler.
            started = time.monotonic()
            with anyio.move_on_after(0.3) as scope:
                await pool.execute("INSERT INTO t VALUES (10, 'cancelled')")
            assert scope.cancelled_caught
            assert time.monotonic() - started < 0.3 + 0.1
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (11, 'autocommit')")
            # WAL: readers are not blocked by the other process's write lock, and see
            # only what is committed.
            assert await rows_via_reader(pool) == committed_rows(db_path)
            assert len(await rows_via_reader(pool)) == 3
            assert_all_idle(pool)

            await holder.release()

        # The fault is gone: the writer works, every reader sees the other process's row.
        await serves(pool, 20)
        assert [row[0] for row in await rows_via_reader(pool)] == [0, 1, 2, 20, 100]
        assert_all_idle(pool)
    assert litepool_threads() == []
    assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2, 20, 100]


async def test_write_that_waits_for_another_process_succeeds_once_it_lets_go(
    db_path: str,
) -> None:
    """No "database is locked" before the caller's deadline: a write queued while
    another process holds the lock for longer than busy_timeout goes through when it
    lets go."""
    async with litepool.open_pool(db_path, readers=1, pragmas={"busy_timeout": 50}) as pool:
        await make_table(pool)
        async with await anyio.open_process([sys.executable, "-c", LOCK_HOLDER, db_path]) as proc:
            holder = LockHolder(proc)
            await holder.expect(b"locked")
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.execute, "INSERT INTO t VALUES (10, 'waited')")
                # Held for six busy_timeouts (the condition under test, not a wait for
                # something to happen): the write keeps waiting.
                await anyio.sleep(0.3)
                assert not committed_rows(db_path)[3:]
                await holder.release()
        assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2, 10, 100]


async def test_begin_that_met_the_lock_is_tried_again_in_the_same_block(db_path: str) -> None:
    """A caller may catch the timeout of BEGIN inside ``pool.write()`` and try again."""
    async with litepool.open_pool(db_path, readers=1, pragmas={"busy_timeout": 50}) as pool:
        await make_table(pool)
        async with await anyio.open_process([sys.executable, "-c", LOCK_HOLDER, db_path]) as proc:
            holder = LockHolder(proc)
            await holder.expect(b"locked")
            async with pool.write(timeout=0.1) as conn:
                with pytest.raises(litepool.PoolTimeout, match="write lock"):
                    await conn.execute("INSERT INTO t VALUES (10, 'first try')")
                await holder.release()
                # BEGIN IMMEDIATE rides with this statement again.
                await conn.execute("INSERT INTO t VALUES (10, 'second try')")
                assert await conn.run_sync(lambda raw: raw.in_transaction) is True
        assert committed_rows(db_path)[-2:] == [(10, "second try"), (100, "from the other process")]
        assert_all_idle(pool)


# -- the disk fills ----------------------------------------------------------------------


async def limit_pages(pool: litepool.Pool, spare: int) -> int:
    """Cap the database (through the writer) a few pages above its current size."""
    async with pool.connection() as conn:
        pages = int(await conn.fetchval("PRAGMA page_count"))
        limit = int(await conn.fetchval(f"PRAGMA max_page_count = {pages + spare}"))
    assert limit == pages + spare
    return limit


async def test_disk_full_rolls_back_the_transaction_and_readers_keep_working(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        before = await rows_via_reader(pool)
        await limit_pages(pool, spare=2)

        with pytest.raises(sqlite3.OperationalError, match="full") as excinfo:
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'small, fits')")
                # A reader meanwhile sees the committed rows only.
                assert await rows_via_reader(pool) == before
                await conn.execute("INSERT INTO t VALUES (11, zeroblob(1000000))")
        assert excinfo.value.sqlite_errorname == "SQLITE_FULL"
        assert await rows_via_reader(pool) == before
        assert committed_rows(db_path) == before
        assert_all_idle(pool)

        # Still full: a second attempt fails the same way and changes nothing.
        with pytest.raises(sqlite3.OperationalError, match="full"):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO t VALUES (12, zeroblob(1000000))")
        assert committed_rows(db_path) == before

        # The fault is gone (room again): the pool takes writes and readers see them.
        await limit_pages(pool, spare=10_000)
        await serves(pool, 20)
        assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2, 20]
        assert_all_idle(pool)
    assert litepool_threads() == []


async def test_filling_up_loses_no_block_that_returned(db_path: str) -> None:
    """Blocks that returned are committed, blocks that raised SQLITE_FULL are not."""
    async with litepool.open_pool(
        db_path, readers=2, pragmas={"max_page_count": 40, "page_size": 4096}
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        returned: list[int] = []
        failed: list[tuple[int, str]] = []
        for block in range(200):
            try:
                async with pool.write() as conn:
                    for part in range(3):
                        await conn.execute(
                            "INSERT INTO t VALUES (?, zeroblob(1500))", (block * 10 + part,)
                        )
            except sqlite3.OperationalError as exc:
                failed.append((block, exc.sqlite_errorname))
                if len(failed) == 5:
                    break
            else:
                returned.append(block)
        assert {name for _, name in failed} == {"SQLITE_FULL"}
        assert returned, "nothing fitted"
        assert len(failed) == 5, "the database never filled up"
        expected = sorted(block * 10 + part for block in returned for part in range(3))
        async with pool.read() as conn:
            assert [row[0] for row in await conn.fetchall("SELECT id FROM t ORDER BY id")] == (
                expected
            )
        # SQLite itself rolled each failed transaction back; the writer is clean.
        async with pool.connection() as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
        assert_all_idle(pool)
    raw = sqlite3.connect(db_path)
    try:
        assert [row[0] for row in raw.execute("SELECT id FROM t ORDER BY id")] == expected
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        raw.close()


async def test_filling_up_under_many_writers_and_wal_resets_loses_nothing(db_path: str) -> None:
    """The database fills up while twelve tasks write at once (blocks and single
    statements), readers read, and the housekeeper keeps resetting a small WAL: every
    write that returned is there, none that raised is, readers never fail, and the pool
    writes again once there is room."""
    async with litepool.open_pool(
        db_path,
        readers=2,
        wal_max_bytes=64 * 1024,
        pragmas={"max_page_count": 60, "page_size": 4096},
    ) as pool:
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        returned: set[int] = set()
        errors: list[str] = []
        full = 0
        stop = anyio.Event()
        next_id = 0

        def new_id() -> int:
            nonlocal next_id
            next_id += 1
            return next_id

        async def block_writer() -> None:
            nonlocal full
            while not stop.is_set():
                ids = (new_id(), new_id())
                try:
                    async with pool.write() as conn:
                        for i in ids:
                            await conn.execute("INSERT INTO t VALUES (?, zeroblob(1500))", (i,))
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorname != "SQLITE_FULL":
                        errors.append(repr(exc))
                    full += 1
                    if full >= 40:
                        stop.set()
                else:
                    returned.update(ids)

        async def statement_writer() -> None:
            nonlocal full
            while not stop.is_set():
                i = new_id()
                try:
                    await pool.execute("INSERT INTO t VALUES (?, zeroblob(1500))", (i,))
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorname != "SQLITE_FULL":
                        errors.append(repr(exc))
                    full += 1
                    if full >= 40:
                        stop.set()
                else:
                    returned.add(i)

        async def reader() -> None:
            while not stop.is_set():
                try:
                    await pool.fetchval("SELECT count(*) FROM t")
                except Exception as exc:  # no reader may fail
                    errors.append(repr(exc))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(block_writer)
                for _ in range(4):
                    tg.start_soon(statement_writer)
                for _ in range(2):
                    tg.start_soon(reader)
        assert errors == []
        assert returned, "nothing fitted"
        async with pool.read() as conn:
            assert {row[0] for row in await conn.fetchall("SELECT id FROM t")} == returned
        # Room again: the pool writes.
        await pool.execute("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT 10)")
        await pool.execute("INSERT INTO t VALUES (0, 'after')")
        assert_all_idle(pool)
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert raw.execute("SELECT v FROM t WHERE id = 0").fetchone() == ("after",)
    finally:
        raw.close()


@pytest.mark.parametrize("cause", ["disk full", "INSERT OR ROLLBACK"])
async def test_caught_error_that_ended_the_transaction_commits_no_part_of_it(
    db_path: str, cause: str
) -> None:
    """Some errors make SQLite roll back the whole transaction by itself (SQLITE_FULL may,
    ``INSERT OR ROLLBACK`` and ``RAISE(ROLLBACK)`` do). A caller that catches such an error
    inside ``pool.write()`` and goes on must not get part of its block committed: either
    the block commits everything but the failed statement, or it raises and commits
    nothing.
    """
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        before = committed_rows(db_path)
        if cause == "disk full":
            await limit_pages(pool, spare=2)
            failing = "INSERT INTO t VALUES (11, zeroblob(1000000))"
        else:
            failing = "INSERT OR ROLLBACK INTO t VALUES (0, 'duplicate key')"
        raised: BaseException | None = None
        try:
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'first of the block')")
                with pytest.raises(sqlite3.Error):
                    await conn.execute(failing)
                await conn.execute("INSERT INTO t VALUES (12, 'after the caught error')")
        except (sqlite3.Error, litepool.TransactionAborted) as exc:
            # litepool voids the handle once SQLite has ended the transaction: the next
            # statement raises TransactionAborted, naming the error that ended it.
            raised = exc
        after = committed_rows(db_path)
        block_rows = [row for row in after if row not in before]
        if raised is None:
            assert block_rows == [(10, "first of the block"), (12, "after the caught error")]
        else:
            assert block_rows == [], (
                f"the block raised {raised!r} but committed part of its transaction: {block_rows}"
            )
        assert_all_idle(pool)


# -- opening fails -----------------------------------------------------------------------


class ConfigureFailed(Exception):
    pass


@pytest.mark.parametrize("error", [ConfigureFailed, KeyboardInterrupt])
async def test_configure_failing_for_the_first_connection(
    db_path: str, error: type[BaseException]
) -> None:
    calls: list[str] = []

    def configure(conn: sqlite3.Connection) -> None:
        calls.append(threading.current_thread().name)
        raise error("configure refused")

    with pytest.raises(error, match="configure refused"):
        async with litepool.open_pool(db_path, readers=3, configure=configure, name="cfg"):
            pass  # pragma: no cover
    # The writer is opened first and alone: its failure stops everything there.
    assert calls == ["litepool[cfg] writer"]
    assert litepool_threads() == []

    # Once configure works, the same file opens and serves.
    async with litepool.open_pool(db_path, readers=3) as pool:
        await make_table(pool)
        await serves(pool, 20)
        assert_all_idle(pool)
    assert litepool_threads() == []


async def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"not an SQLite file at all\n" * 400)
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database") as excinfo:
        async with litepool.open_pool(path, readers=2):
            pass  # pragma: no cover
    assert any("while opening pool 'junk.db'" in note for note in excinfo.value.__notes__)
    assert litepool_threads() == []
    assert path.read_bytes() == b"not an SQLite file at all\n" * 400  # left untouched

    path.unlink()
    async with litepool.open_pool(path, readers=2) as pool:
        await make_table(pool)
        await serves(pool, 20)
    assert litepool_threads() == []


async def test_missing_directory_then_created(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "not-yet" / "app.db"
    with pytest.raises(sqlite3.OperationalError, match="unable to open database file"):
        async with litepool.open_pool(path, readers=2):
            pass  # pragma: no cover
    assert litepool_threads() == []
    # Nothing had opened, so nothing was broken or replaced: the error says it all.
    assert [r.getMessage() for r in caplog.records if r.name == "litepool"] == []
    assert not path.parent.exists()

    path.parent.mkdir()
    async with litepool.open_pool(path, readers=2) as pool:
        await make_table(pool)
        await serves(pool, 20)
    assert litepool_threads() == []


async def test_read_only_database(db_path: str) -> None:
    """A database that may only be read: reads work, every write fails clearly.

    File permissions do not stop the superuser, which tests may run as, so the database is
    made read-only the way SQLite itself enforces for every user: ``mode=ro``.
    """
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
    before = committed_rows(db_path)
    read_only = Path(db_path).as_uri() + "?mode=ro"
    async with litepool.open_pool(read_only, uri=True, readers=2, name="ro") as pool:
        assert await rows_via_reader(pool) == before
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'nope')")
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM t")
        with pytest.raises(sqlite3.OperationalError, match="readonly database"):
            async with pool.connection() as conn:
                await conn.executescript("CREATE TABLE u (x); INSERT INTO u VALUES (1);")
        # Reads still work, through the readers and the writer.
        assert await rows_via_reader(pool) == before
        async with pool.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM t") == len(before)
        assert_all_idle(pool)
    assert litepool_threads() == []
    assert committed_rows(db_path) == before

    # Writable again: the pool serves writes.
    async with litepool.open_pool(db_path, readers=2) as pool:
        await serves(pool, 20)
    assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2, 20]


# -- a worker thread dies, or its code raises what it should not ---------------------------


class Departure(BaseException):
    """A BaseException that is none of the standard ones."""


def raiser(error: type[BaseException]) -> Callable[[sqlite3.Connection], None]:
    def fn(raw: sqlite3.Connection) -> None:
        raise error("raised on the worker thread")

    return fn


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, Departure])
@pytest.mark.parametrize("kind", ["read", "write", "connection"])
async def test_base_exception_in_run_sync_reaches_the_caller_and_the_worker_lives(
    db_path: str, error: type[BaseException], kind: str
) -> None:
    async with litepool.open_pool(db_path, readers=2, name="base") as pool:
        await make_table(pool)
        threads = sorted(litepool_threads())
        checkout = {"read": pool.read, "write": pool.write, "connection": pool.connection}[kind]
        with pytest.raises(error, match="raised on the worker thread"):
            async with checkout() as conn:
                if kind == "write":
                    await conn.execute("INSERT INTO t VALUES (10, 'rolled back')")
                await conn.run_sync(raiser(error))
        assert sorted(litepool_threads()) == threads  # no worker thread ended
        assert_all_idle(pool)
        assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2]
        await serves(pool, 20)
        async with pool.connection() as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
    assert litepool_threads() == []


class WorkerKilled(Exception):
    """Raised asynchronously inside a worker thread, outside any job."""


def kill_thread(name: str) -> None:
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    assert thread.ident is not None
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerKilled)
    )
    assert hit == 1


async def test_worker_thread_that_dies_is_replaced_and_the_pool_keeps_serving(
    db_path: str,
) -> None:
    """A worker thread killed between jobs: the call it was about to run (if any) fails
    with ConnectionLost instead of hanging, the pool replaces the connection in the
    background and keeps serving, and the committed data is intact. If the error lands
    inside a job instead, the caller gets it and the worker lives on.
    """
    with anyio.fail_after(20):
        async with litepool.open_pool(db_path, readers=1, name="dies") as pool:
            await make_table(pool)
            kill_thread("litepool[dies] reader-1")
            outcomes: set[str] = set()
            while not pool.statistics().connections_replaced and "job" not in outcomes:
                try:
                    async with pool.read() as conn:  # wakes the reader's thread
                        assert await conn.fetchval("SELECT count(*) FROM t") == 3
                except WorkerKilled:
                    outcomes.add("job")  # landed inside a job: the worker lives
                except litepool.ConnectionLost:
                    outcomes.add("lost")  # the job the dying thread had taken
            await serves(pool, 20)
            stats = pool.statistics()
            if "job" in outcomes:
                assert stats.connections_lost == stats.connections_replaced == 0
                assert sorted(litepool_threads()) == [
                    "litepool[dies] reader-1",
                    "litepool[dies] writer",
                ]
            else:
                assert stats.connections_lost == stats.connections_replaced == 1
                assert stats.read.size == 1
                assert sorted(litepool_threads()) == [
                    "litepool[dies] reader-2",
                    "litepool[dies] writer",
                ]
    assert litepool_threads() == []
    assert [row[0] for row in committed_rows(db_path)][:3] == [0, 1, 2]


async def test_idle_worker_thread_that_dies_is_replaced_in_the_background(
    db_path: str,
) -> None:
    """Killed while it waits for work, the thread ends on its own; the pool notices,
    replaces the connection without any caller's help, and serves on."""
    with anyio.fail_after(20):
        async with litepool.open_pool(db_path, readers=2, name="idle") as pool:
            await make_table(pool)
            kill_thread("litepool[idle] reader-1")
            # No event to wait on: the thread ends when its idle poll wakes it.
            while not pool.statistics().connections_replaced:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            stats = pool.statistics()
            assert (stats.connections_lost, stats.connections_replaced) == (1, 1)
            assert stats.read.size == 2
            assert stats.connections_opened - stats.connections_closed == 3
            assert sorted(litepool_threads()) == [
                "litepool[idle] reader-2",
                "litepool[idle] reader-3",
                "litepool[idle] writer",
            ]
            await serves(pool, 20)
    assert litepool_threads() == []


async def test_calls_on_a_checkout_whose_thread_died_raise_connection_lost(
    db_path: str,
) -> None:
    """The thread of a checked-out connection dies: the borrower's later calls fail with
    ConnectionLost at once, the block ends cleanly, and the pool serves on."""
    with anyio.fail_after(20):
        async with litepool.open_pool(db_path, readers=1, name="held") as pool:
            await make_table(pool)
            async with bound_read(pool) as conn:
                assert await conn.fetchval("SELECT count(*) FROM t") == 3
                kill_thread("litepool[held] reader-1")
                # No event to wait on: the thread ends when its idle poll wakes it.
                while "litepool[held] reader-1" in litepool_threads():  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                for _ in range(2):
                    with pytest.raises(litepool.ConnectionLost, match="reader-1"):
                        await conn.fetchval("SELECT count(*) FROM t")
            async with pool.read(timeout=5) as conn:
                assert await conn.fetchval("SELECT count(*) FROM t") == 3
            stats = pool.statistics()
            assert (stats.connections_lost, stats.connections_replaced) == (1, 1)
            assert_all_idle(pool)
            await serves(pool, 20)
    assert litepool_threads() == []


GARBAGE_CHILD = textwrap.dedent(
    """
    import gc, sys, threading, time
    import anyio, litepool

    path, backend = sys.argv[1], sys.argv[2]
    running = threading.Event()
    LONG_QUERY = (
        "WITH RECURSIVE r(i) AS (SELECT started() UNION ALL SELECT i + 1 FROM r) "
        "SELECT count(*) FROM r"
    )

    connections = []

    def configure(conn):
        connections.append(conn)
        conn.create_function("started", 0, lambda: running.set() or 1)

    def unblock():
        # If the loop is stuck, stop the query it waits for, so that the test can end.
        for conn in connections:
            conn.interrupt()

    async def wait_until_running():
        assert await anyio.to_thread.run_sync(running.wait, 10)
        running.clear()

    async def main():
        async with litepool.open_pool(path, readers=1, configure=configure) as pool:

            async def long_read():
                async with pool.read() as conn:
                    await conn.fetchval(LONG_QUERY)

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_read)
                await wait_until_running()
                tg.cancel_scope.cancel()  # interrupts the first long query
            # One round trip: the reader has answered the cancelled query and dropped it.
            async with pool.read() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_read)
                await wait_until_running()  # the second one runs on the same reader
                watchdog = threading.Timer(3.0, unblock)
                watchdog.start()
                started = time.monotonic()
                gc.collect()
                print(f"collected in {time.monotonic() - started:.3f} s", flush=True)
                watchdog.cancel()
                tg.cancel_scope.cancel()
            async with pool.read() as conn:
                assert await conn.fetchval("SELECT 1") == 1

    gc.disable()  # the collection happens exactly while the second query runs
    anyio.run(main, backend=backend)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_garbage_left_by_a_cancelled_query_never_blocks_the_event_loop(
    tmp_path: Path, backend: str
) -> None:
    """A long query cancelled by its deadline must leave nothing behind that can later
    stop the event loop. Here the garbage collector runs on the loop's thread (as it may
    at any allocation) while the same reader runs a second long query: the collection must
    not wait for that query, or the loop can never deliver the cancellation that would
    end it, and the process hangs. It runs in a child process so that a hang is a failure.
    """
    result = subprocess.run(
        [sys.executable, "-c", GARBAGE_CHILD, str(tmp_path / "garbage.db"), backend],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert lines, result.stderr
    collected_in = float(lines[0].split()[2])
    assert collected_in < 1.0, (
        f"the event loop stood still for {collected_in:.1f} s: a garbage collection on its "
        "thread waited for the long query that only the loop could cancel (it ended "
        "because the test interrupted the query from another thread)"
    )
    assert lines[-1] == "done", result.stdout + result.stderr


async def test_closing_after_a_cancelled_query_closes_every_file(
    db_path: str, start_signal: StartSignal
) -> None:
    """When the pool's block ends every connection is closed: its files too. A statement
    interrupted by a cancellation must not keep its connection half-open (SQLite defers
    the close of a connection whose statements are not finalized) until some later garbage
    collection finalizes it, on whatever thread that runs.
    """
    fds_before = open_fds()
    gc.disable()  # garbage is collected when the pool has closed, not by chance before
    try:
        async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
            await make_table(pool)

            async def long_read() -> None:
                async with pool.read() as conn:
                    await conn.fetchval(LONG_QUERY)

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_read)
                await start_signal.wait()
                tg.cancel_scope.cancel()
            async with pool.read() as conn:  # the reader has answered the cancelled job
                assert await conn.fetchval("SELECT count(*) FROM t") == 3
        fds_after = open_fds()
        wal_left = wal_exists(db_path)
    finally:
        gc.enable()
    assert litepool_threads() == []
    assert fds_after == fds_before, (
        f"{len(fds_after - fds_before)} files still open after the pool closed: "
        f"{sorted(fds_after - fds_before)}"
    )
    assert not wal_left, "the WAL was not checkpointed away: a connection is still open"


def wal_exists(db_path: str) -> bool:
    return Path(db_path + "-wal").exists()


def open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
    return fds


# -- bad input ---------------------------------------------------------------------------

BAD_STATEMENTS: list[tuple[str, Any, type[Exception], str]] = [
    ("INSERT INTO t VALUES (?, ?)", (10,), sqlite3.ProgrammingError, "Incorrect number"),
    ("INSERT INTO t VALUES (?, ?)", (10, 2, 3), sqlite3.ProgrammingError, "Incorrect number"),
    ("INSERT INTO t VALUES (:a, :b)", {"a": 10}, sqlite3.ProgrammingError, "binding"),
    ("INSERT INTO t VALUES (?, ?)", (10, object()), sqlite3.ProgrammingError, "not supported"),
    ("INSERT INTO t VALUES (?, ?)", (10, 2**70), OverflowError, "too large"),
    ("INSERT INTO t VALUES (?, ?)", "ab", TypeError, "params must be a sequence"),
    ("SELEKT * FROM t", (), sqlite3.OperationalError, "syntax error"),
    ("SELECT * FROM missing", (), sqlite3.OperationalError, "no such table"),
    ("this is not SQL at all", (), sqlite3.OperationalError, "syntax error"),
    ("SELECT 1; SELECT 2", (), sqlite3.ProgrammingError, "one statement at a time"),
    ("INSERT INTO t VALUES (0, 'duplicate key')", (), sqlite3.IntegrityError, "UNIQUE"),
]


@pytest.mark.parametrize(
    ("sql", "params", "error", "match"),
    BAD_STATEMENTS,
    ids=[f"{error.__name__}:{match}" for _, _, error, match in BAD_STATEMENTS],
)
async def test_bad_statement_gives_its_error_and_loses_nothing(
    db_path: str, sql: str, params: Any, error: type[Exception], match: str
) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        before = committed_rows(db_path)
        # Propagating out of pool.write(): the whole transaction is rolled back.
        with pytest.raises(error, match=match):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'same transaction')")
                await conn.execute(sql, params)
        assert committed_rows(db_path) == before
        # Caught inside pool.write(): documented to leave the transaction open, so the
        # rest of the block commits.
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (10, 'kept')")
            with pytest.raises(error, match=match):
                await conn.execute(sql, params)
            await conn.execute("INSERT INTO t VALUES (11, 'kept too')")
        assert committed_rows(db_path) == [*before, (10, "kept"), (11, "kept too")]
        # On a reader and on the autocommit connection.
        with pytest.raises((error, sqlite3.OperationalError)):
            async with pool.read() as conn:
                await conn.execute(sql, params)
        with pytest.raises(error, match=match):
            async with pool.connection() as conn:
                await conn.execute(sql, params)
        assert_all_idle(pool)
        await serves(pool, 20)
        assert len(committed_rows(db_path)) == len(before) + 3


async def test_sql_that_is_not_a_string_is_refused_before_it_reaches_the_worker(
    db_path: str,
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.write() as conn:
            for bad in (b"SELECT 1", None, 42):
                with pytest.raises(TypeError, match="sql must be a str"):
                    await conn.execute(bad, ())  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="seq_of_params"):
                await conn.executemany("INSERT INTO t VALUES (?, ?)", "xy")
            with pytest.raises(TypeError, match=r"params must be .* not None"):
                await conn.execute("SELECT 1", None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"params must be .* not None"):
            await pool.fetchval("SELECT 1", None)  # type: ignore[arg-type]
        # Nothing was sent, so nothing began: the block committed nothing.
        stats = pool.statistics()
        assert (stats.rollbacks, stats.write.checkouts) == (0, 2)
        await serves(pool, 20)


async def test_failing_parameter_iterator_rolls_back_the_transaction(db_path: str) -> None:
    def params() -> Iterator[tuple[int, str]]:
        yield (10, "first")
        yield (11, "second")
        raise ValueError("the iterator broke")

    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        before = committed_rows(db_path)
        with pytest.raises(ValueError, match="the iterator broke"):
            async with pool.write() as conn:
                await conn.executemany("INSERT INTO t VALUES (?, ?)", params())
        assert committed_rows(db_path) == before
        await serves(pool, 20)


async def test_huge_parameters(db_path: str) -> None:
    blob = bytes(range(256)) * (50 * 1024 * 1024 // 256)  # 50 MiB
    text = "é" * (10 * 1024 * 1024)  # 20 MiB of UTF-8
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (?, ?)", (10, blob))
            await conn.execute("INSERT INTO t VALUES (?, ?)", (11, text))
        async with pool.read() as conn:
            assert await conn.fetchval("SELECT length(v) FROM t WHERE id = 10") == len(blob)
            got = await conn.fetchval("SELECT v FROM t WHERE id = 10")
            assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
            assert await conn.fetchval("SELECT v FROM t WHERE id = 11") == text
        del got
        assert_all_idle(pool)
        await serves(pool, 20)


async def test_parameter_beyond_the_length_limit(db_path: str) -> None:
    def configure(conn: sqlite3.Connection) -> None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10 * 1024 * 1024)

    async with litepool.open_pool(db_path, readers=1, configure=configure) as pool:
        await make_table(pool)
        before = committed_rows(db_path)
        with pytest.raises(sqlite3.DataError, match="too big"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'fits')")
                await conn.execute("INSERT INTO t VALUES (?, ?)", (11, b"x" * (50 * 1024 * 1024)))
        assert committed_rows(db_path) == before
        await serves(pool, 20)


class FactoryFailed(Exception):
    pass


def failing_factory(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> tuple[Any, ...]:
    if row and row[-1] == "poison":
        raise FactoryFailed("row factory refused a row")
    return row


@pytest.mark.parametrize("cause", ["row_factory raises", "text not UTF-8"])
@pytest.mark.parametrize("method", ["fetchall", "fetchone"])
async def test_row_that_cannot_be_converted_leaves_the_reader_up_to_date(
    db_path: str, cause: str, method: str
) -> None:
    """A row that the row factory (or the UTF-8 decoding) refuses: the caller gets the
    error, the reader comes back, and it still sees every later commit.
    """
    async with litepool.open_pool(db_path, readers=1, row_factory=failing_factory) as pool:
        await make_table(pool)
        async with pool.connection() as conn:
            if cause == "row_factory raises":
                await conn.execute("INSERT INTO t VALUES (-1, 'poison')")
            else:
                await conn.execute("INSERT INTO t VALUES (-1, CAST(x'ff' AS TEXT))")
        error = FactoryFailed if cause == "row_factory raises" else sqlite3.OperationalError
        with pytest.raises(error):
            async with pool.read() as conn:
                await getattr(conn, method)("SELECT id, v FROM t ORDER BY id")
        assert_all_idle(pool)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES (20, 'after the error')")
        async with pool.read() as conn:  # readers=1: the very reader that failed
            assert await conn.fetchval("SELECT count(*) FROM t") == 5, (
                "the reader serves a stale snapshot: the failed query's statement is "
                "still open on it"
            )
        async with pool.read() as conn:
            assert await conn.fetchone("SELECT id, v FROM t WHERE id = 20") == (
                20,
                "after the error",
            )


async def test_executescript_failing_in_the_middle_commits_nothing(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        before = committed_rows(db_path)
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'before the script')")
                await conn.executescript(
                    """
                    INSERT INTO t VALUES (11, 'script; first');
                    UPDATE t SET v = 'changed' WHERE id = 0;
                    INSERT INTO t VALUES (1, 'duplicate key');
                    INSERT INTO t VALUES (12, 'never runs');
                    """
                )
        assert committed_rows(db_path) == before
        assert await rows_via_reader(pool) == before
        assert pool.statistics().rollbacks == 1
        assert_all_idle(pool)
        await serves(pool, 20)


async def test_commit_that_fails_rolls_back_and_reports(db_path: str) -> None:
    """A deferred foreign key makes the COMMIT itself fail."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            await conn.execute(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER "
                "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        before = committed_rows(db_path)
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'same transaction')")
                await conn.execute("INSERT INTO child VALUES (1, 99)")
        assert committed_rows(db_path) == before
        assert pool.statistics().rollbacks == 1
        async with pool.connection() as conn:
            assert await conn.run_sync(lambda raw: raw.in_transaction) is False
            assert await conn.fetchval("SELECT count(*) FROM child") == 0
        await serves(pool, 20)


# -- KeyboardInterrupt / SystemExit in the task holding a connection -------------------------


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("kind", ["read", "bound read", "write", "connection"])
async def test_interrupt_in_the_block_returns_the_connection(
    db_path: str, error: type[BaseException], kind: str
) -> None:
    async with litepool.open_pool(db_path, readers=2) as pool:
        await make_table(pool)
        checkout = {"write": pool.write, "connection": pool.connection}.get(kind, pool.read)
        with pytest.raises(error):
            async with checkout() as conn:
                if kind == "bound read":
                    await conn.execute("BEGIN")
                    await conn.fetchall("SELECT * FROM t")
                elif kind == "write":
                    await conn.execute("INSERT INTO t VALUES (10, 'rolled back')")
                elif kind == "connection":
                    await conn.execute("BEGIN")
                    await conn.execute("INSERT INTO t VALUES (10, 'rolled back')")
                else:
                    await conn.fetchall("SELECT * FROM t")
                raise error()
        assert_all_idle(pool)
        assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2]
        await serves(pool, 20)


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_interrupt_out_of_the_pool_block_closes_it_cleanly(
    db_path: str, error: type[BaseException]
) -> None:
    with pytest.raises(error):
        async with litepool.open_pool(db_path, readers=3) as pool:
            await make_table(pool)
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (10, 'in flight')")
                async with pool.read() as reader:
                    await reader.fetchall("SELECT * FROM t")
                    raise error()
    assert pool.closed
    assert litepool_threads() == []
    assert [row[0] for row in committed_rows(db_path)] == [0, 1, 2]


INTERRUPTED_CHILD = textwrap.dedent(
    """
    import sys, threading, time
    import anyio, litepool

    path, backend, error = sys.argv[1], sys.argv[2], sys.argv[3]
    busy = threading.Event()

    def slow_call(raw):
        # Python code on the reader's thread: a cancellation cannot stop it, so the pool
        # has to wait for it when it closes.
        busy.set()
        time.sleep(0.5)

    async def main():
        async with litepool.open_pool(path, readers=2) as pool:
            async with pool.connection() as conn:
                await conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES (1, 'committed')")

            async def reader():
                async with pool.read() as conn:
                    await conn.run_sync(slow_call)

            async def writer():
                assert await anyio.to_thread.run_sync(busy.wait, 10)
                async with pool.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (2, 'in flight')")
                    raise {"KeyboardInterrupt": KeyboardInterrupt,
                           "SystemExit": SystemExit}[error]()

            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(writer)

    try:
        anyio.run(main, backend=backend)
    except BaseException as exc:
        print("raised", type(exc).__name__, flush=True)
    left = [t.name for t in threading.enumerate() if t.name.startswith("litepool[")]
    print("litepool threads left", left, flush=True)
    """
)


@pytest.mark.parametrize("error", ["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_interrupt_in_a_child_task_holding_connections(
    tmp_path: Path, backend: str, error: str
) -> None:
    """A task of a task group raises ``KeyboardInterrupt`` / ``SystemExit`` while it holds
    the writer, and another task holds a reader busy with a slow call. On asyncio that
    stops the event loop itself (``asyncio.run`` then cancels every task natively), so it
    runs in a child process: the process must end promptly with the exception, the pool's
    block must not end before every worker thread has returned, the committed row is kept
    and the one in flight is not committed.
    """
    path = str(tmp_path / "interrupted.db")
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_CHILD, path, backend, error],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    assert lines[0] in (f"raised {error}", "raised BaseExceptionGroup"), lines[0]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT id, v FROM t").fetchall() == [(1, "committed")]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    assert lines[1] == "litepool threads left []", (
        "the pool's block ended before its worker threads had returned"
    )
