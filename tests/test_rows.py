"""litepool.Row, and what Row and dict rows do with two columns of one name."""

from __future__ import annotations

import copy
import pickle
import sqlite3
from typing import Any, cast

import pytest

import litepool

pytestmark = pytest.mark.anyio

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, count INTEGER, keys TEXT);
CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER, title TEXT);
INSERT INTO users VALUES (1, 'ada', 3, 'k1'), (2, 'grace', 5, 'k2');
INSERT INTO posts VALUES (10, 1, 'notes'), (11, 2, 'compilers');
"""


async def make_schema(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.executescript(SCHEMA)


async def test_row_reads_by_name_key_position_and_unpacking(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, row_factory=litepool.Row) as pool:
        await make_schema(pool)
        row: litepool.Row = await pool.fetchone("SELECT id, name, count FROM users WHERE id = 1")
        assert type(row) is not litepool.Row  # a subclass per query shape
        assert isinstance(row, litepool.Row)
        assert isinstance(row, tuple)
        assert (row.id, row.name, row["name"], row[0], row[-1]) == (1, "ada", "ada", 1, 3)
        assert row[1:] == ("ada", 3)
        user_id, name, count = row
        assert (user_id, name, count) == (1, "ada", 3)
        assert len(row) == 3
        assert list(row) == [1, "ada", 3]
        # A column named like a tuple method is the column (type checkers see the method).
        assert cast(Any, row).count == 3
        assert row.keys() == ["id", "name", "count"]
        assert dict(row) == {"id": 1, "name": "ada", "count": 3}
        assert row._asdict() == {"id": 1, "name": "ada", "count": 3}
        assert row._fields == ("id", "name", "count")
        assert repr(row) == "litepool.Row(id=1, name='ada', count=3)"
        for again in (pickle.loads(pickle.dumps(row)), copy.deepcopy(row)):
            assert again == row
            assert again.name == "ada"

        with pytest.raises(AttributeError, match="no attribute 'missing'"):
            _ = row.missing
        with pytest.raises(KeyError, match="no column 'missing'; its columns are"):
            row["missing"]
        # (cast: after len(row) == 3, type checkers know the index is out of range)
        with pytest.raises(IndexError):
            cast(Any, row)[3]
        # A row is the tuple of its values.
        assert row == (1, "ada", 3)
        assert hash(row) == hash((1, "ada", 3))
        assert row != cast(Any, (1, "ada"))


async def test_row_through_every_way_of_reading(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, row_factory=litepool.Row) as pool:
        await make_schema(pool)
        rows = await pool.fetchall("SELECT id, name FROM users ORDER BY id")
        assert [row.name for row in rows] == ["ada", "grace"]
        assert rows == [(1, "ada"), (2, "grace")]
        assert await pool.fetchval("SELECT name FROM users WHERE id = 2") == "grace"
        async with pool.read() as conn:
            names = [row.name async for row in conn.iterate("SELECT name FROM users", chunk_size=1)]
            assert names == ["ada", "grace"]
        async with pool.write() as conn:
            row = await conn.fetchone("SELECT count(*), max(id) AS top FROM users")
            assert (row["count(*)"], row.top) == (2, 2)
            # Names the row's API uses are read by key.
            row = await conn.fetchone("SELECT keys FROM users WHERE id = 1")
            assert (row["keys"], row.keys()) == ("k1", ["keys"])
        result = await pool.execute("UPDATE users SET count = count + 1 RETURNING id, count")
        assert sorted((row.id, row.count) for row in result.rows) == [(1, 4), (2, 6)]


async def test_row_keeps_both_columns_of_one_name_and_will_not_guess(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, row_factory=litepool.Row) as pool:
        await make_schema(pool)
        row = await pool.fetchone(
            "SELECT u.id, p.id, p.title FROM users u JOIN posts p ON p.user_id = u.id "
            "WHERE u.id = 1"
        )
        assert row == (1, 10, "notes")  # nothing lost
        assert row.title == "notes"
        for read in (lambda: row.id, lambda: row["id"], lambda: dict(row), row._asdict):
            with pytest.raises(litepool.AmbiguousColumn) as caught:
                read()
            message = str(caught.value)
            assert "2 columns named 'id' (at positions 0 and 1 of: id, id, title)" in message
            assert "AS" in message
        assert isinstance(caught.value, LookupError)
        assert isinstance(caught.value, litepool.PoolError)


async def test_dict_rows_refuse_two_columns_of_one_name(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, row_factory=dict) as pool:
        await make_schema(pool)
        with pytest.raises(litepool.AmbiguousColumn) as caught:
            await pool.fetchall("SELECT u.id, p.id FROM users u JOIN posts p ON p.user_id = u.id")
        assert "2 columns named 'id'" in str(caught.value)
        assert "a dict would keep only one of them" in str(caught.value)
        # Named apart, the same join is fine, and the reader was not harmed.
        rows = await pool.fetchall(
            "SELECT u.id AS user_id, p.id AS post_id FROM users u "
            "JOIN posts p ON p.user_id = u.id ORDER BY u.id"
        )
        assert rows == [{"user_id": 1, "post_id": 10}, {"user_id": 2, "post_id": 11}]


def test_dict_row_refuses_two_columns_of_one_name_on_plain_sqlite3() -> None:
    conn = sqlite3.connect(":memory:")
    try:
        conn.row_factory = litepool.dict_row
        assert conn.execute("SELECT 1 AS a, 2 AS b").fetchall() == [{"a": 1, "b": 2}]
        with pytest.raises(litepool.AmbiguousColumn):
            conn.execute("SELECT 1 AS a, 2 AS a").fetchall()
    finally:
        conn.close()
