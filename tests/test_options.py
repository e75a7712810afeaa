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
