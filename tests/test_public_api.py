"""The public surface: __all__ lists exactly the public names, all of them real."""

from __future__ import annotations

import inspect
import traceback
import types
import typing

import litepool

#: Public submodules, imported on their own because they need an optional extra.
PUBLIC_SUBMODULES = {"aiosqlitepool", "prometheus"}


def test_all_matches_public_names() -> None:
    public = {name for name in vars(litepool) if not name.startswith("_")}
    # Submodules become attributes of the package once imported: the private ones start
    # with an underscore, the public ones are listed above; no other module may appear.
    modules = {name for name in public if isinstance(getattr(litepool, name), types.ModuleType)}
    assert modules <= PUBLIC_SUBMODULES
    public -= modules
    assert set(litepool.__all__) == public | {"__version__"}
    assert len(litepool.__all__) == len(set(litepool.__all__))
    for name in litepool.__all__:
        assert hasattr(litepool, name)


def test_error_hierarchy() -> None:
    for error in (
        litepool.PoolTimeout,
        litepool.PoolClosed,
        litepool.ConnectionReleased,
        litepool.ConnectionLost,
        litepool.TransactionAborted,
    ):
        assert issubclass(error, litepool.PoolError)
    assert issubclass(litepool.PoolTimeout, TimeoutError)


def test_public_names_report_the_package() -> None:
    """Tracebacks and reprs name litepool.PoolTimeout, not a private module."""
    for name in litepool.__all__:
        obj = getattr(litepool, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            expected = "litepool.aiosqlitepool" if name == "SQLiteConnectionPool" else "litepool"
            assert obj.__module__ == expected, name
    shown = traceback.format_exception_only(litepool.PoolTimeout("no connection"))
    assert shown == ["litepool.PoolTimeout: no connection\n"]
    assert repr(litepool.CheckpointResult(False, 0, 0)).startswith("CheckpointResult(")


def test_classes_not_meant_for_subclassing_are_final() -> None:
    for cls in (
        litepool.Pool,
        litepool.Checkout,
        litepool.Connection,
        litepool.Rows,
        litepool.ExecuteResult,
        litepool.Histogram,
        litepool.LaneStatistics,
        litepool.PoolStatistics,
    ):
        assert getattr(cls, "__final__", False) is True, cls
    assert typing.get_type_hints(litepool.open_pool)["return"] is litepool.Pool
