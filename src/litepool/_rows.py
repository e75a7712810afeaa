"""Row types: :class:`Row` (a tuple whose columns also answer by name) and ``dict_row``.

Both look a query's column names up once per query, not once per row: a cursor's
``description`` is one object for all the rows of one execution, so the factories keep
the last one they saw and what they made of it. Every reader has its own thread, so the
cache is a single ``(description, answer)`` tuple read and replaced whole: a thread that
finds another thread's entry only pays for one more look-up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Final, SupportsIndex, overload

from ._errors import PoolError


class AmbiguousColumn(PoolError, LookupError):
    """A query returns several columns of the same name, and a row was asked for one by
    that name (``row.id``, ``row["id"]``), or as a ``dict`` (which keeps one value per
    name).

    The message names the column and its positions. Name the columns apart with ``AS``
    (``SELECT a.id AS a_id, b.id AS b_id ...``), or read them by position.
    """


def _duplicates(names: Sequence[str]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        positions.setdefault(name, []).append(index)
    return {name: where for name, where in positions.items() if len(where) > 1}


def _ambiguous(name: str, positions: Sequence[int], names: Sequence[str], how: str) -> str:
    where = " and ".join(str(index) for index in positions)
    return (
        f"the query returns {len(positions)} columns named {name!r} (at positions {where} "
        f"of: {', '.join(names)}), so {how}; name them apart with AS "
        f"(SELECT a.{name} AS a_{name}, b.{name} AS b_{name} ...) or read them by position"
    )


# -- Row ---------------------------------------------------------------------------

#: Names of the row's own API: a column with one of these names is reachable only as
#: ``row["name"]``. Column names win over the tuple methods ``count`` and ``index``.
_RESERVED: Final = frozenset({"keys", "_fields", "_asdict", "_index", "_positions", "_missing"})

_tuple_getitem = tuple.__getitem__


class Row(tuple[Any, ...]):
    """A row as a tuple whose columns can also be read by name.

    ``row.name``, ``row["name"]``, ``row[0]``, ``row[1:]``, ``id, name = row``,
    ``len(row)``, ``for value in row``, ``dict(row)`` and ``Model(**row)`` all work. A
    row is a tuple: it compares equal to the tuple of its values (``row == (1, "ada")``)
    and hashes like it; column names take no part in comparisons.

    Select it with ``open_pool(row_factory=litepool.Row)``. Column names that are not
    identifiers (``count(*)``) or that clash with the row's own ``keys`` and
    underscore-prefixed members are read as ``row["count(*)"]``; a column named
    ``count`` or ``index`` is read as ``row.count`` (the tuple methods of those names
    are then hidden on that row).

    When a query returns several columns of one name (``SELECT a.id, b.id ...``), the
    row keeps every value, by position, and reading that name raises
    :class:`AmbiguousColumn`.
    """

    __slots__ = ()

    #: The column names, in order.
    _fields: ClassVar[tuple[str, ...]] = ()
    #: Column name to position, for names that occur once.
    _index: ClassVar[dict[str, int]] = {}
    #: Positions of the names that occur more than once.
    _positions: ClassVar[dict[str, list[int]]] = {}

    def keys(self) -> list[str]:
        """The column names, in order (what ``dict(row)`` and ``**row`` use)."""
        return list(self._fields)

    def _asdict(self) -> dict[str, Any]:
        """The row as a ``dict`` of column name to value."""
        if self._positions:
            name, positions = next(iter(self._positions.items()))
            raise AmbiguousColumn(
                _ambiguous(name, positions, self._fields, "a dict would keep only one of them")
            )
        return dict(zip(self._fields, self, strict=True))

    @overload
    def __getitem__(self, key: SupportsIndex | str) -> Any: ...
    @overload
    def __getitem__(self, key: slice) -> tuple[Any, ...]: ...
    def __getitem__(self, key: SupportsIndex | str | slice) -> Any:
        if type(key) is str:
            index = self._index.get(key)
            if index is None:
                raise self._missing(key, KeyError)
            return _tuple_getitem(self, index)
        return _tuple_getitem(self, key)  # type: ignore[arg-type]

    if TYPE_CHECKING:
        # Columns are attributes of each query's own subclass; for type checkers, any
        # name may be one. Not defined at run time: a __getattr__ would slow down every
        # attribute read of the row (CPython then looks attributes up through a hook).
        def __getattr__(self, name: str) -> Any: ...

    def _missing(self, name: str, error: type[LookupError] | type[AttributeError]) -> Exception:
        positions = self._positions.get(name)
        if positions is not None:
            return AmbiguousColumn(
                _ambiguous(name, positions, self._fields, "reading it by name would be a guess")
            )
        return error(f"the row has no column {name!r}; its columns are {list(self._fields)}")

    def __repr__(self) -> str:
        if len(self._fields) != len(self):
            return f"litepool.Row{tuple.__repr__(self)}"
        inner = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields, self, strict=True)
        )
        return f"litepool.Row({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self._fields, tuple(self))


try:
    # What namedtuple's fields are made of: a C descriptor, twice as fast to read as a
    # property around an itemgetter.
    from _collections import _tuplegetter as _column  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Python implementations

    def _column(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


def _getitem(index: dict[str, int]) -> Any:
    # Each query shape's own __getitem__, with its names bound in: the lookups of
    # Row.__getitem__ cost as much again as the call itself.
    def __getitem__(row: Row, key: Any, _index: dict[str, int] = index) -> Any:
        if type(key) is str:
            position = _index.get(key)
            if position is None:
                raise row._missing(key, KeyError)
            return _tuple_getitem(row, position)
        return _tuple_getitem(row, key)

    return __getitem__


def _ambiguous_property(name: str) -> property:
    def read(row: Row) -> Any:
        raise row._missing(name, AttributeError)

    return property(read)


#: Row classes by column names: a few hundred query shapes at most in an application.
_classes: dict[tuple[str, ...], type[Row]] = {}
_MAX_CLASSES: Final = 1024


def row_class(names: tuple[str, ...]) -> type[Row]:
    """The :class:`Row` subclass for rows with these column names (made once)."""
    cls = _classes.get(names)
    if cls is not None:
        return cls
    positions = _duplicates(names)
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": __name__,
        "__qualname__": "Row",
        "_fields": names,
        "_index": {name: i for i, name in enumerate(names) if name not in positions},
        "_positions": positions,
    }
    for index, name in enumerate(names):
        if name in _RESERVED or name.startswith("__") or name in namespace:
            continue
        namespace[name] = (
            _ambiguous_property(name)
            if name in positions
            else _column(index, f"column {index}, {name!r}")
        )
    namespace["__getitem__"] = _getitem(namespace["_index"])
    cls = type("Row", (Row,), namespace)
    if len(_classes) >= _MAX_CLASSES:
        _classes.clear()
    _classes[names] = cls
    return cls


def _rebuild(names: tuple[str, ...], values: tuple[Any, ...]) -> Row:
    return row_class(names)(values)


_last_row: tuple[object, type[Row]] = (None, Row)


def make_row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    """Row factory that returns each row as a :class:`Row`."""
    global _last_row
    description = cursor.description
    last = _last_row
    if last[0] is description:
        return last[1](values)
    cls = row_class(tuple(column[0] for column in description))
    _last_row = (description, cls)
    return cls(values)


# -- dict --------------------------------------------------------------------------

_last_names: tuple[object, tuple[str, ...]] = (None, ())


def dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    """Row factory that returns each row as a ``dict`` of column name to value.

    A query that returns several columns of one name (``SELECT a.id, b.id ...``) raises
    :class:`AmbiguousColumn` naming it, rather than keeping only the last value.
    """
    global _last_names
    description = cursor.description
    last = _last_names
    if last[0] is description:
        return dict(zip(last[1], row, strict=True))
    names = tuple(column[0] for column in description)
    duplicates = _duplicates(names)
    if duplicates:
        name, positions = next(iter(duplicates.items()))
        raise AmbiguousColumn(
            _ambiguous(name, positions, names, "a dict would keep only one of them")
        )
    _last_names = (description, names)
    return dict(zip(names, row, strict=True))
