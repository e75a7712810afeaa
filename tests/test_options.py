"""open_pool() checks its arguments when called, naming the bad value."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import litepool


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"readers": 0}, ValueError, "readers must be >= 1, got 0"),
        ({"readers": -3}, ValueError, "readers must be >= 1, got -3"),
        ({"readers": 2.5}, TypeError, "readers must be an int, not 2.5"),
        ({"readers": True}, TypeError, "readers must be an int, not True"),
        ({"readers": "4"}, TypeError, "readers must be an int, not '4'"),
        (
            {"acquire_timeout": -1},
            ValueError,
            "acquire_timeout must be >= 0 seconds or None, got -1",
        ),
        (
            {"acquire_timeout": math.nan},
            ValueError,
            "acquire_timeout must be >= 0 seconds or None, got nan",
        ),
        (
            {"acquire_timeout": "30"},
            TypeError,
            "acquire_timeout must be a number of seconds or None, not '30'",
        ),
        (
            {"wal_reset_timeout": 0},
            ValueError,
            "wal_reset_timeout must be > 0 seconds or None, got 0",
        ),
        (
            {"wal_reset_timeout": "2"},
            TypeError,
            "wal_reset_timeout must be a number of seconds or None, not '2'",
        ),
        ({"pragmas": [("a", 1)]}, TypeError, "pragmas must be a mapping"),
        (
            {"pragmas": {"cache size": 1}},
            ValueError,
            "pragma names must be identifiers, got 'cache size'",
        ),
        (
            {"pragmas": {"synchronous": "off; DROP TABLE x"}},
            ValueError,
            "pragma 'synchronous' needs",
        ),
        ({"pragmas": {"query_only": 1}}, ValueError, "'query_only' is managed by the pool"),
        ({"configure": "yes"}, TypeError, "configure must be callable"),
        (
            {"row_factory": 3},
            TypeError,
            "row_factory must be None, dict, sqlite3.Row or a callable, not 3",
        ),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1, got 0"),
        ({"name": ""}, TypeError, "name must be a non-empty str"),
        ({"uri": "yes"}, TypeError, "uri must be a bool, not 'yes'"),
    ],
)
def test_bad_arguments_raise_at_call_time(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as excinfo:
        litepool.open_pool(tmp_path / "x.db", **kwargs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("database", "error", "message"),
    [
        (None, TypeError, "database must be a path (str or os.PathLike), not None"),
        (42, TypeError, "not 42"),
        ("", ValueError, "database must name a file or be ':memory:'"),
    ],
)
def test_bad_database_argument(database: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as excinfo:
        litepool.open_pool(database)
    assert message in str(excinfo.value)


def test_good_arguments_describe_a_closed_pool(tmp_path: Path) -> None:
    pool = litepool.open_pool(tmp_path / "app.db", readers=2, acquire_timeout=None)
    assert pool.name == "app.db"
    assert pool.closed
    assert "app.db" in repr(pool)
    assert litepool.open_pool(":memory:").name == ":memory:"
    assert litepool.open_pool(":memory:", acquire_timeout=math.inf).closed


def test_checkout_timeout_is_checked(tmp_path: Path) -> None:
    pool = litepool.open_pool(tmp_path / "app.db")
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds or None, got -2"):
        pool.read(timeout=-2)


def test_default_pragmas_are_production_defaults() -> None:
    assert litepool.DEFAULT_PRAGMAS["journal_mode"] == "wal"
    assert litepool.DEFAULT_PRAGMAS["synchronous"] == "normal"
    assert litepool.DEFAULT_PRAGMAS["foreign_keys"] == "on"
    assert int(litepool.DEFAULT_PRAGMAS["busy_timeout"]) > 0


BAD_TIMEOUTS = [
    (-1, ValueError, "timeout must be >= 0 seconds or None, got -1"),
    (math.nan, ValueError, "timeout must be >= 0 seconds or None, got nan"),
    ("1", TypeError, "timeout must be a number of seconds or None, not '1'"),
    (True, TypeError, "timeout must be a number of seconds or None, not True"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("timeout", "error", "message"), BAD_TIMEOUTS)
async def test_bad_timeout_is_refused_on_every_path_before_anything_runs(
    tmp_path: Path, timeout: Any, error: type[Exception], message: str
) -> None:
    """Checked even when a connection is free, so that no call runs with it."""
    async with litepool.open_pool(tmp_path / "t.db", readers=1) as pool:
        await pool.execute("CREATE TABLE t (v)")
        calls: dict[str, Any] = {
            "read": lambda: pool.read(timeout=timeout),
            "write": lambda: pool.write(timeout=timeout),
            "connection": lambda: pool.connection(timeout=timeout),
            "fetchone": lambda: pool.fetchone("SELECT 1", timeout=timeout),
            "fetchall": lambda: pool.fetchall("SELECT 1", timeout=timeout),
            "fetchval": lambda: pool.fetchval("SELECT 1", timeout=timeout),
            "execute": lambda: pool.execute("INSERT INTO t VALUES (1)", timeout=timeout),
            "executemany": lambda: pool.executemany(
                "INSERT INTO t VALUES (?)", [(1,)], timeout=timeout
            ),
            "checkpoint": lambda: pool.checkpoint(timeout=timeout),
            "backup": lambda: pool.backup(str(tmp_path / "copy.db"), timeout=timeout),
        }
        for name, call in calls.items():
            with pytest.raises(error) as caught:
                result = call()
                if hasattr(result, "__aenter__"):
                    async with result:
                        pass
                else:
                    await result
            assert message in str(caught.value), name
        stats = pool.statistics()
        assert stats.read.statements == stats.write.statements - 1 == 0
        assert await pool.fetchval("SELECT count(*) FROM t") == 0
        assert not (tmp_path / "copy.db").exists()
