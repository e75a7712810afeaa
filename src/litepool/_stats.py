"""Frozen snapshots of a pool's state, returned by :meth:`Pool.statistics`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LaneStatistics:
    """One lane: the writer (``write``) or the readers (``read``)."""

    size: int
    """Connections in the lane."""
    idle: int
    """Connections waiting in the pool for a borrower."""
    in_use: int
    """Connections checked out right now."""
    waiting: int
    """Tasks waiting to check out a connection of this lane."""
    checkouts: int
    """Successful checkouts since the pool opened."""
    statements: int
    """Single statements queued through the pool's own methods (``pool.fetchone()``,
    ``pool.execute()``, ...) since the pool opened."""
    timeouts: int
    """Checkouts that failed with :class:`~litepool.PoolTimeout`."""


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A consistent snapshot of the whole pool, taken without awaiting."""

    name: str
    """The pool's name (``open_pool(name=...)``, by default the database file's name)."""
    closed: bool
    """Whether the pool has been closed."""
    read: LaneStatistics
    """The reader connections (``pool.read()``)."""
    write: LaneStatistics
    """The writer connection (``pool.write()`` and ``pool.connection()``)."""
    interrupted: int
    """Statements that were running when their caller was cancelled, and which SQLite
    was therefore told to interrupt."""
    rollbacks: int
    """Transactions rolled back because their connection came back with one open, or
    because their COMMIT failed. Counted on the worker thread when the ROLLBACK has run,
    which is queued ahead of the connection's next statement but not awaited."""

    @property
    def readers(self) -> int:
        """The number of reader connections."""
        return self.read.size
