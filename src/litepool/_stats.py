"""Frozen snapshots of a pool's state, returned by :meth:`Pool.statistics`."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Final, final

#: Upper bounds, in seconds, of the buckets of every :class:`Histogram`. A value lands in
#: the first bucket whose bound is greater than or equal to it; one last bucket, with no
#: bound, counts everything above 10 s.
HISTOGRAM_BOUNDS: Final[tuple[float, ...]] = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)


class Recorder:
    """A histogram being filled, on the event loop only (no locking, no allocation)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(HISTOGRAM_BOUNDS) + 1)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect_left(HISTOGRAM_BOUNDS, seconds)] += 1
        self.total += seconds

    def add_zero(self) -> None:
        self.counts[0] += 1

    def snapshot(self) -> Histogram:
        return Histogram(HISTOGRAM_BOUNDS, tuple(self.counts), self.total)


@final
@dataclass(frozen=True, slots=True)
class Histogram:
    """Durations counted per bucket.

    ``counts[i]`` counts the durations ``d`` with ``bounds[i - 1] < d <= bounds[i]``
    (``counts[0]`` those up to ``bounds[0]``, zero included); the last count, one more
    than there are bounds, those above ``bounds[-1]``. The bounds are fixed:
    :data:`litepool.HISTOGRAM_BOUNDS`, 100 µs, 1 ms, 10 ms, 100 ms, 1 s and 10 s.
    """

    bounds: tuple[float, ...]
    """Upper bound of each bucket but the last, in seconds."""
    counts: tuple[int, ...]
    """How many durations fell in each bucket; ``len(bounds) + 1`` entries."""
    total: float
    """The sum of every duration counted, in seconds (for a mean: ``total / count``)."""

    @property
    def count(self) -> int:
        """How many durations were counted."""
        return sum(self.counts)


@final
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
    """Checkouts and single statements that failed with :class:`~litepool.PoolTimeout`
    because no connection of the lane became free in time."""
    acquire_wait: Histogram
    """How long each successful checkout (``pool.read()``, ``pool.write()``,
    ``pool.connection()``) waited for its connection; one that found a connection free
    counts as zero. Single statements are not counted."""
    usage: Histogram
    """How long each checkout held its connection, from getting it to the end of its
    ``async with`` block's body (the COMMIT of ``pool.write()``, which follows, is not
    included)."""


@final
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
    connections_opened: int
    """SQLite connections opened since the pool opened (the writer and the readers)."""
    connections_closed: int
    """SQLite connections closed: when the pool closes, or when one is replaced."""
    connections_replaced: int
    """Connections retired while the pool was open and replaced by a new one: past
    ``max_lifetime``, idle past ``max_idle``, or lost."""
    connections_lost: int
    """Connections found broken (a disk I/O error, the database file replaced under
    them, a failed ``check``, a worker thread that died) and therefore replaced."""
    connections_failed: int
    """Attempts to open a connection while the pool was open (a replacement, or a new
    reader of :meth:`Pool.resize`) that failed; replacements are retried."""
    checkpoints: int
    """WAL checkpoints run by the housekeeper and by :meth:`Pool.checkpoint`."""
    checkpoints_busy: int
    """Those of them that could not finish (SQLite reported them busy: a reader still
    used the part of the WAL they needed); the housekeeper tries again later."""
    wal_reset_timeouts: int
    """WAL resets given up because a read transaction outlasted ``wal_reset_timeout``
    (see the operations guide); each is also logged, naming who held it."""
    checkpoint_mode: str | None
    """The mode of the last checkpoint (``"PASSIVE"``, ``"FULL"``, ``"RESTART"`` or
    ``"TRUNCATE"``), or None if none has run."""
    wal_bytes: int | None
    """Size in bytes of the WAL file as the last checkpoint left it, or None if no
    checkpoint has run (or the database is not in WAL mode)."""
    wal_bytes_peak: int | None
    """The largest WAL file size, in bytes, that a checkpoint found before it ran."""

    @property
    def readers(self) -> int:
        """The number of reader connections."""
        return self.read.size
