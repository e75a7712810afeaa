"""Validation of :func:`litepool.open_pool`'s arguments, and how connections are opened.

Everything here is checked when ``open_pool`` is called, before any thread or file is
touched, so that a bad argument fails with a message naming it and nothing to clean up.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ._rows import Row, dict_row, make_row

#: Production defaults, applied to every connection unless ``pragmas`` overrides them.
#: ``journal_mode`` is set by the writer only (readers are read-only).
DEFAULT_PRAGMAS: Final[Mapping[str, int | str]] = {
    "busy_timeout": 5000,  # ms; lets other processes' locks clear instead of failing
    "journal_mode": "wal",  # readers never block the writer, nor the writer readers
    "synchronous": "normal",  # durable at checkpoints; safe from corruption in WAL mode
    "foreign_keys": "on",
    "temp_store": "memory",
    "cache_size": -16000,  # KiB: a bounded 16 MiB page cache per connection
    "journal_size_limit": 64 * 1024 * 1024,  # bytes kept of the WAL after a checkpoint
}

DEFAULT_READERS: Final = 4
DEFAULT_ACQUIRE_TIMEOUT: Final = 30.0
DEFAULT_CHUNK_SIZE: Final = 256
#: Seconds a reader serves before it is replaced (less up to 10%, per connection).
DEFAULT_MAX_LIFETIME: Final = 3600.0
#: The smallest ``wal_max_bytes`` accepted: a few pages.
MIN_WAL_MAX_BYTES: Final = 64 * 1024

if TYPE_CHECKING:
    from ._file import DatabaseFile

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PRAGMA_WORD = re.compile(r"[A-Za-z0-9_.+-]+")

RowFactory = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any]
Configure = Callable[[sqlite3.Connection], object]

#: What ``detect_types`` may combine: sqlite3's two ways of choosing a converter.
_DETECT_TYPES: Final = sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """Every argument of :func:`litepool.open_pool`, checked and resolved."""

    name: str
    database: str  # what sqlite3.connect() receives
    uri: bool
    in_memory: bool
    readers: int
    acquire_timeout: float | None
    pragmas: tuple[tuple[str, str], ...]
    configure: Configure | None
    row_factory: RowFactory | None
    chunk_size: int
    cached_statements: int
    detect_types: int = 0
    wal_max_bytes: int | None = None
    leak_timeout: float | None = None
    wal_reset_timeout: float | None = 2.0
    max_lifetime: float | None = None
    max_idle: float | None = None
    check: bool = False
    optimize_interval: float | None = None


def check_timeout(value: object, what: str) -> float | None:
    """Validate a timeout in seconds: a non-negative real number, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, not {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what} must be >= 0 seconds or None, got {value!r}")
    return None if math.isinf(value) else float(value)


def check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return value


def _check_positive(value: object, what: str) -> float | None:
    """A duration that must be above zero, or None for never."""
    seconds = check_timeout(value, what)
    if seconds == 0:
        raise ValueError(f"{what} must be > 0 seconds or None, got {value!r}")
    return seconds


def _render_pragma(name: object, value: object) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"pragma names must be identifiers, got {name!r}")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str) and _PRAGMA_WORD.fullmatch(value):
        return value
    raise ValueError(
        f"pragma {name!r} needs a number, a bool or a single word as its value, got {value!r}"
    )


def _merge_pragmas(pragmas: object) -> tuple[tuple[str, str], ...]:
    if pragmas is None:
        pragmas = {}
    if not isinstance(pragmas, Mapping):
        raise TypeError(f"pragmas must be a mapping of name to value, not {pragmas!r}")
    merged: dict[str, object] = {**DEFAULT_PRAGMAS}
    for name, value in pragmas.items():
        key = name.lower() if isinstance(name, str) else name
        if value is None:  # None removes a default
            merged.pop(key, None)
        else:
            merged[key] = value
    if "query_only" in merged:
        raise ValueError(
            "pragma 'query_only' is managed by the pool (readers are read-only, "
            "the writer is not); remove it from pragmas"
        )
    return tuple((name, _render_pragma(name, value)) for name, value in merged.items())


def make_options(
    database: object,
    *,
    readers: object,
    acquire_timeout: object,
    pragmas: object,
    configure: object,
    row_factory: object,
    uri: object,
    name: object,
    chunk_size: object,
    cached_statements: object,
    detect_types: object = 0,
    wal_max_bytes: object = None,
    leak_timeout: object = None,
    wal_reset_timeout: object = 2.0,
    max_lifetime: object = None,
    max_idle: object = None,
    check: object = False,
    optimize_interval: object = None,
) -> PoolOptions:
    if isinstance(database, os.PathLike):
        database = os.fspath(database)
    if not isinstance(database, str):
        raise TypeError(f"database must be a path (str or os.PathLike), not {database!r}")
    if database == "":
        raise ValueError(
            "database must name a file or be ':memory:'; '' would give every connection "
            "its own private temporary database"
        )
    if not isinstance(uri, bool):
        raise TypeError(f"uri must be a bool, not {uri!r}")
    in_memory = database == ":memory:"
    if in_memory:
        # ':memory:' is private to one connection. The memdb VFS shares one in-memory
        # database between every connection that opens the same name, with ordinary
        # locking (unlike shared-cache mode, which fails with SQLITE_LOCKED at once).
        database, uri = f"file:/litepool-{uuid.uuid4().hex}?vfs=memdb", True
    if name is None:
        name = ":memory:" if in_memory else os.path.basename(database) or database
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    if configure is not None and not callable(configure):
        raise TypeError(
            f"configure must be callable (it receives each connection), not {configure!r}"
        )
    if not isinstance(check, bool):
        raise TypeError(f"check must be a bool, not {check!r}")
    if row_factory is dict:
        row_factory = dict_row
    elif row_factory is Row:
        row_factory = make_row
    elif row_factory is not None and not callable(row_factory):
        raise TypeError(
            f"row_factory must be None, dict, sqlite3.Row or a callable, not {row_factory!r}"
        )
    detect_types = check_int(detect_types, "detect_types", 0)
    if detect_types & ~_DETECT_TYPES:
        raise ValueError(
            "detect_types must combine sqlite3.PARSE_DECLTYPES and sqlite3.PARSE_COLNAMES "
            f"(or be 0), got {detect_types!r}"
        )
    return PoolOptions(
        name=name,
        database=database,
        uri=uri,
        in_memory=in_memory,
        readers=check_int(readers, "readers", 1),
        acquire_timeout=check_timeout(acquire_timeout, "acquire_timeout"),
        pragmas=_merge_pragmas(pragmas),
        configure=configure,
        row_factory=row_factory,
        chunk_size=check_int(chunk_size, "chunk_size", 1),
        cached_statements=check_int(cached_statements, "cached_statements", 0),
        detect_types=detect_types,
        wal_max_bytes=None
        if wal_max_bytes is None
        else check_int(wal_max_bytes, "wal_max_bytes", MIN_WAL_MAX_BYTES),
        leak_timeout=_check_positive(leak_timeout, "leak_timeout"),
        wal_reset_timeout=_check_positive(wal_reset_timeout, "wal_reset_timeout"),
        max_lifetime=_check_positive(max_lifetime, "max_lifetime"),
        max_idle=_check_positive(max_idle, "max_idle"),
        check=check,
        optimize_interval=_check_positive(optimize_interval, "optimize_interval"),
    )


def open_connection(
    options: PoolOptions, *, writer: bool, database_file: DatabaseFile
) -> sqlite3.Connection:
    """Open and set up one connection. Runs on the thread that will own it.

    The pool's first connection may create the database; every later one opens the file
    that the first one opened, and fails if it is gone (see :mod:`._file`).
    """
    first = not database_file.resolved
    conn = sqlite3.connect(
        database_file.reopen,
        uri=database_file.reopen_uri,
        # litepool issues BEGIN itself: Python's implicit transactions start only before
        # DML, which is what lets read-modify-write lose updates.
        isolation_level=None,
        cached_statements=options.cached_statements,
        detect_types=options.detect_types,
    )
    try:
        if first:
            database_file.resolve(conn, options.database, options.uri)
        else:
            database_file.check()
        for pragma, value in options.pragmas:
            if pragma == "journal_mode" and not writer:
                continue
            conn.execute(f"PRAGMA {pragma}={value}").fetchall()
        if not writer:
            conn.execute("PRAGMA query_only=1")
        if options.configure is not None:
            options.configure(conn)
        if options.row_factory is not None:
            conn.row_factory = options.row_factory
    except BaseException:
        conn.close()
        raise
    return conn
