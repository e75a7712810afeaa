"""Dates, times, decimals and JSON as Python values: open_pool(detect_types=...)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

import litepool

pytestmark = pytest.mark.anyio


@pytest.fixture
def registered_types() -> Iterator[None]:
    """The adapters and converters the documentation recommends, registered for the
    test only (sqlite3 keeps them in registries of the whole process)."""
    adapters, converters = dict(sqlite3.adapters), dict(sqlite3.converters)
    sqlite3.register_adapter(dt.datetime, dt.datetime.isoformat)
    sqlite3.register_adapter(dt.date, dt.date.isoformat)
    sqlite3.register_adapter(decimal.Decimal, str)
    sqlite3.register_converter("timestamp", lambda b: dt.datetime.fromisoformat(b.decode()))
    sqlite3.register_converter("date", lambda b: dt.date.fromisoformat(b.decode()))
    sqlite3.register_converter("decimal", lambda b: decimal.Decimal(b.decode()))
    sqlite3.register_converter("json", json.loads)
    try:
        yield
    finally:
        sqlite3.adapters.clear()
        sqlite3.adapters.update(adapters)
        sqlite3.converters.clear()
        sqlite3.converters.update(converters)


SCHEMA = """
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    placed TIMESTAMP NOT NULL,
    due DATE,
    total DECIMAL TEXT,  -- TEXT affinity: SQLite keeps '1.10' as written
    details JSON
)
"""
PLACED = dt.datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
DUE = dt.date(2026, 3, 31)
TOTAL = decimal.Decimal("1234.10")
DETAILS = {"items": [1, 2], "gift": True}
EXPECTED = (1, PLACED, DUE, TOTAL, DETAILS)
INSERT = "INSERT INTO orders (placed, due, total, details) VALUES (?, ?, ?, ?)"
PARAMS = (PLACED, DUE, TOTAL, json.dumps(DETAILS))

DETECT = sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES


@pytest.mark.usefixtures("registered_types")
async def test_values_come_back_as_python_types_everywhere(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, detect_types=DETECT) as pool:
        await pool.execute(SCHEMA)
        returned = await pool.execute(INSERT + " RETURNING *", PARAMS)
        assert returned.rows == [EXPECTED]
        assert await pool.fetchone("SELECT * FROM orders") == EXPECTED
        assert await pool.fetchall("SELECT * FROM orders") == [EXPECTED]
        assert await pool.fetchval("SELECT total FROM orders") == TOTAL
        async with pool.read() as conn:
            assert await conn.fetchone("SELECT * FROM orders") == EXPECTED
            assert [row async for row in conn.iterate("SELECT * FROM orders")] == [EXPECTED]
            # PARSE_COLNAMES: a type named in the column's alias.
            assert await conn.fetchval("SELECT '2026-01-02' AS \"d [date]\"") == dt.date(2026, 1, 2)
        async with pool.write() as conn:
            await conn.executemany(INSERT, [PARAMS])
            rows = await conn.fetchall("SELECT placed, total FROM orders ORDER BY id")
            assert rows == [(PLACED, TOTAL)] * 2
        # The same values, stored as text that other tools can read.
        async with pool.connection() as conn:
            raw = await conn.run_sync(
                lambda c: c.execute(
                    "SELECT CAST(placed AS TEXT), typeof(total) FROM orders"
                ).fetchone()
            )
        assert raw == ("2026-03-01T12:30:15.250000+00:00", "text")
    # Without detect_types (the default), values come back as they are stored.
    async with litepool.open_pool(db_path, readers=1) as pool:
        assert await pool.fetchone("SELECT placed, due, total FROM orders LIMIT 1") == (
            "2026-03-01T12:30:15.250000+00:00",
            "2026-03-31",
            "1234.10",
        )


@pytest.mark.usefixtures("registered_types")
async def test_detect_types_with_row_and_dict(db_path: str) -> None:
    async with litepool.open_pool(
        db_path, readers=1, detect_types=sqlite3.PARSE_DECLTYPES, row_factory=litepool.Row
    ) as pool:
        await pool.execute(SCHEMA)
        await pool.execute(INSERT, PARAMS)
        row = await pool.fetchone("SELECT * FROM orders")
        assert (row.placed, row.due, row.total, row.details) == EXPECTED[1:]
    async with litepool.open_pool(
        db_path, readers=1, detect_types=sqlite3.PARSE_DECLTYPES, row_factory=dict
    ) as pool:
        assert (await pool.fetchone("SELECT total FROM orders")) == {"total": TOTAL}


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (4, ValueError, "detect_types must combine sqlite3.PARSE_DECLTYPES and "
         "sqlite3.PARSE_COLNAMES (or be 0), got 4"),
        (-1, ValueError, "detect_types must be >= 0, got -1"),
        ("yes", TypeError, "detect_types must be an int, not 'yes'"),
        (True, TypeError, "detect_types must be an int, not True"),
    ],
)  # fmt: skip
def test_detect_types_is_checked(
    db_path: str, value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        litepool.open_pool(db_path, detect_types=value)
    assert str(caught.value) == message
