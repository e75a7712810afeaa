"""Transaction statements inside the transactions the pool manages are refused before
they run, so a ``pool.write()`` block stays all or nothing whatever its body sends."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

import litepool

pytestmark = pytest.mark.anyio

ENDINGS = ["COMMIT", "END", "end transaction", "ROLLBACK", "rollback transaction", "COMMIT;"]
BEGINNINGS = ["BEGIN", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE", "begin deferred transaction"]


async def make_table(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE t (v)")


def committed(path: str) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT v FROM t ORDER BY rowid")]
    finally:
        conn.close()


class Boom(Exception):
    pass


@pytest.mark.parametrize("sql", ENDINGS + BEGINNINGS)
async def test_transaction_statement_in_a_write_block_is_refused_and_the_block_stays_whole(
    db_path: str, sql: str
) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        with pytest.raises(Boom):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES ('before')")
                with pytest.raises(litepool.StatementRefused) as refused:
                    await conn.execute(sql)
                word = sql.split()[0].upper().rstrip(";")
                assert (word if word != "END" else "COMMIT") in str(refused.value)
                assert isinstance(refused.value, sqlite3.ProgrammingError)
                # The transaction is still open: the block goes on ...
                await conn.execute("INSERT INTO t VALUES ('after')")
                assert await conn.run_sync(lambda raw: raw.in_transaction) is True
                raise Boom
        # ... and its exception rolls back all of it.
        assert committed(db_path) == []
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES ('x')")
            with pytest.raises(litepool.StatementRefused):
                await conn.execute(sql)
            await conn.execute("INSERT INTO t VALUES ('y')")
        assert committed(db_path) == ["x", "y"]


@pytest.mark.parametrize("ending", ["COMMIT", "END", "ROLLBACK"])
async def test_transaction_statement_inside_a_script_is_refused(db_path: str, ending: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        with pytest.raises(Boom):
            async with pool.write() as conn:
                with pytest.raises(litepool.StatementRefused):
                    await conn.executescript(
                        f"INSERT INTO t VALUES ('a'); {ending}; INSERT INTO t VALUES ('b');"
                    )
                raise Boom
        assert committed(db_path) == []


async def test_statements_prepared_where_they_were_allowed_are_still_refused(
    db_path: str,
) -> None:
    """sqlite3 caches prepared statements by their text, and the authorizer only sees a
    statement being prepared: a COMMIT prepared in a pool.connection() block must not
    run from the cache inside a pool.write() block."""
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.connection() as conn:
            for sql in ("BEGIN", "INSERT INTO t VALUES ('own')", "COMMIT"):
                await conn.execute(sql)
            await conn.execute("BEGIN")
            await conn.execute("ROLLBACK")
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("END")
        with pytest.raises(Boom):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES ('in the block')")
                for sql in ("COMMIT", "ROLLBACK", "END", "BEGIN IMMEDIATE"):
                    with pytest.raises(litepool.StatementRefused):
                        await conn.execute(sql)
                raise Boom
        assert committed(db_path) == ["own"]


async def test_run_sync_cannot_commit_a_write_block(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        with pytest.raises(Boom):
            async with pool.write() as conn:
                await conn.execute("INSERT INTO t VALUES ('a')")
                with pytest.raises(litepool.StatementRefused):
                    await conn.run_sync(lambda raw: raw.commit())
                with pytest.raises(litepool.StatementRefused):
                    await conn.run_sync(lambda raw: raw.execute("COMMIT"))
                raise Boom
        assert committed(db_path) == []


@pytest.mark.parametrize("sql", ["COMMIT", "ROLLBACK", "BEGIN"])
async def test_single_statement_cannot_end_its_own_transaction(db_path: str, sql: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        with pytest.raises(litepool.StatementRefused):
            await pool.execute(sql)
        with pytest.raises(litepool.StatementRefused):
            await pool.executemany(sql, [()])
        await pool.execute("INSERT INTO t VALUES ('next')")
        assert committed(db_path) == ["next"]


async def test_savepoints_work_inside_a_write_block(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.write() as conn:
            await conn.execute("INSERT INTO t VALUES ('kept')")
            await conn.execute("SAVEPOINT partial")
            await conn.execute("INSERT INTO t VALUES ('undone')")
            await conn.execute("ROLLBACK TO partial")
            await conn.execute("RELEASE partial")
            await conn.executescript("SAVEPOINT s; INSERT INTO t VALUES ('scripted'); RELEASE s;")
        assert committed(db_path) == ["kept", "scripted"]


async def test_connection_checkouts_still_manage_their_own_transactions(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await make_table(pool)
        async with pool.write() as conn:  # the guard has been on the writer
            await conn.execute("INSERT INTO t VALUES ('w')")
        async with pool.connection() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("INSERT INTO t VALUES ('c1')")
            await conn.execute("COMMIT")
            await conn.executescript("BEGIN; INSERT INTO t VALUES ('c2'); END;")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES ('undone')")
            await conn.rollback()
        assert committed(db_path) == ["w", "c1", "c2"]
