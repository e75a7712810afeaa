"""litepool: a structured-concurrency SQLite connection pool for anyio (asyncio and trio).

One writer connection and N read-only reader connections, each on its own worker thread,
owned by a task group that the pool's ``async with`` block opens::

    async with litepool.open_pool("app.db", readers=4) as pool:
        async with pool.read() as conn:
            row = await conn.fetchone("SELECT name FROM users WHERE id = ?", (1,))
        async with pool.write() as conn:
            await conn.execute("UPDATE users SET name = ? WHERE id = ?", ("Ada", 1))
"""

from types import FunctionType as _FunctionType

from ._checkout import Checkout
from ._connection import Connection, Rows
from ._errors import (
    ConnectionLost,
    ConnectionReleased,
    DatabaseLost,
    PoolClosed,
    PoolError,
    PoolForked,
    PoolTimeout,
    StatementRefused,
    TransactionAborted,
    WouldDeadlock,
)
from ._options import DEFAULT_PRAGMAS
from ._pool import Pool, open_pool
from ._rows import AmbiguousColumn, Row, dict_row
from ._statements import ExecuteResult
from ._stats import HISTOGRAM_BOUNDS, Histogram, LaneStatistics, PoolStatistics
from ._wal import CheckpointResult
from .aiosqlitepool import SQLiteConnectionPool

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_PRAGMAS",
    "HISTOGRAM_BOUNDS",
    "AmbiguousColumn",
    "Checkout",
    "CheckpointResult",
    "Connection",
    "ConnectionLost",
    "ConnectionReleased",
    "DatabaseLost",
    "ExecuteResult",
    "Histogram",
    "LaneStatistics",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolForked",
    "PoolStatistics",
    "PoolTimeout",
    "Row",
    "Rows",
    "SQLiteConnectionPool",
    "StatementRefused",
    "TransactionAborted",
    "WouldDeadlock",
    "__version__",
    "dict_row",
    "open_pool",
]


def _report_as_litepool() -> None:
    # Names defined in private modules report the package they are used from, in
    # tracebacks and reprs: litepool.PoolTimeout, not litepool._errors.PoolTimeout.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type | _FunctionType) and obj.__module__.startswith("litepool._"):
            obj.__module__ = __name__


_report_as_litepool()
del _report_as_litepool
