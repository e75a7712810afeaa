"""RETURNING through execute() and executemany(), and writes sent to a reader."""

from __future__ import annotations

import sqlite3

import anyio
import pytest

import litepool

from .conftest import LONG_QUERY, StartSignal

pytestmark = pytest.mark.anyio

SCHEMA = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER)"


async def test_pool_execute_returns_the_rows_of_returning(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute(SCHEMA)
        inserted = await pool.execute(
            "INSERT INTO items (name, n) VALUES (?, ?) RETURNING id, name", ("a", 1)
        )
        assert inserted == litepool.ExecuteResult(rowcount=1, lastrowid=1, rows=[(1, "a")])
        await pool.executemany(
            "INSERT INTO items (name, n) VALUES (?, ?)", [(f"x{i}", i) for i in range(9)]
        )
        updated = await pool.execute("UPDATE items SET n = n + 100 RETURNING id, n")
        assert updated.rowcount == 10
        assert sorted(updated.rows) == [(1, 101)] + [(i + 2, i + 100) for i in range(9)]
        deleted = await pool.execute("DELETE FROM items WHERE n > ? RETURNING name", (105,))
        assert deleted.rowcount == len(deleted.rows) == 3
        none = await pool.execute("DELETE FROM items WHERE id < 0 RETURNING id")
        assert (none.rowcount, none.rows) == (0, [])
        plain = await pool.execute("INSERT INTO items (name) VALUES ('plain')")
        assert (plain.rowcount, plain.rows) == (1, [])
        # Committed: a reader sees what RETURNING reported.
        assert await pool.fetchval("SELECT count(*) FROM items") == 8


async def test_executemany_returns_the_rows_of_every_parameter_set(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute(SCHEMA)
        result = await pool.executemany(
            "INSERT INTO items (name) VALUES (?) Returning id, name", [("a",), ("b",), ("c",)]
        )
        assert result.rowcount == 3
        assert result.rows == [(1, "a"), (2, "b"), (3, "c")]
        assert result.lastrowid == 3
        async with pool.write() as conn:
            result = await conn.executemany(
                "UPDATE items SET n = ? WHERE name = ? RETURNING id", [(7, "a"), (8, "zz")]
            )
            assert (result.rowcount, result.rows) == (1, [(1,)])
        assert await pool.fetchall("SELECT n FROM items ORDER BY id") == [(7,), (None,), (None,)]
        # A parameter set that fails rolls back the rows of the sets before it.
        with pytest.raises(sqlite3.IntegrityError):
            await pool.executemany(
                "INSERT INTO items (id, name) VALUES (?, ?) RETURNING id",
                [(10, "d"), (11, "e"), (1, "duplicate")],
            )
        assert await pool.fetchval("SELECT count(*) FROM items") == 3


async def test_connection_execute_returns_rows_inside_a_transaction(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, row_factory=dict) as pool:
        await pool.execute(SCHEMA)
        async with pool.write() as conn:
            new = await conn.execute("INSERT INTO items (name) VALUES ('a') RETURNING id")
            assert new.rows == [{"id": 1}]
            # fetchone() on the writer runs a RETURNING statement too (its first row).
            assert await conn.fetchone("INSERT INTO items (name) VALUES ('b') RETURNING *") == {
                "id": 2,
                "name": "b",
                "n": None,
            }
            query = await conn.execute("SELECT name FROM items ORDER BY id")
            assert (query.rowcount, query.rows) == (-1, [{"name": "a"}, {"name": "b"}])
        assert await pool.fetchval("SELECT count(*) FROM items") == 2


@pytest.mark.parametrize(
    "call",
    ["pool.fetchone", "pool.fetchall", "pool.fetchval", "read.execute", "read.fetchone",
     "read.executemany", "read.executescript", "read.iterate"],
)  # fmt: skip
async def test_a_write_on_a_reader_says_what_to_use(db_path: str, call: str) -> None:
    sql = "INSERT INTO items (name) VALUES ('a') RETURNING id"
    async with litepool.open_pool(db_path, readers=1) as pool:
        await pool.execute(SCHEMA)
        with pytest.raises(sqlite3.OperationalError) as caught:
            if call.startswith("pool."):
                await getattr(pool, call[5:])(sql)
            else:
                async with pool.read() as conn:
                    if call == "read.executemany":
                        await conn.executemany(sql, [()])
                    elif call == "read.executescript":
                        await conn.executescript(sql)
                    elif call == "read.iterate":
                        async for _ in conn.iterate(sql):
                            pass
                    else:
                        await getattr(conn, call[5:])(sql)
        error = caught.value
        # Still sqlite3's error, code and all, with SQLite's own message first.
        assert str(error).startswith("attempt to write a readonly database (readers are")
        assert "pool.execute()" in str(error)
        assert "RETURNING" in str(error)
        assert "pool.write()" in str(error)
        assert error.sqlite_errorcode == sqlite3.SQLITE_READONLY
        assert error.sqlite_errorname == "SQLITE_READONLY"
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        assert str(error.__cause__) == "attempt to write a readonly database"
        # The reader is fine afterwards, and nothing was written.
        assert await pool.fetchval("SELECT count(*) FROM items") == 0
        # Other errors of readers are left as they are.
        with pytest.raises(sqlite3.OperationalError) as caught:
            await pool.fetchall("SELECT * FROM missing")
        assert str(caught.value) == "no such table: missing"
        assert caught.value.__cause__ is None


async def test_a_cancelled_returning_statement_commits_nothing(
    db_path: str, start_signal: StartSignal
) -> None:
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        await pool.execute(SCHEMA)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                pool.execute,
                f"INSERT INTO items (name, n) SELECT 'long', ({LONG_QUERY}) RETURNING id",
            )
            await start_signal.wait()
            tg.cancel_scope.cancel()
        assert await pool.fetchval("SELECT count(*) FROM items") == 0
        assert pool.statistics().interrupted == 1
        again = await pool.execute("INSERT INTO items (name) VALUES ('next') RETURNING id")
        assert again.rows == [(1,)]
