"""Export :meth:`Pool.statistics` to Prometheus, through ``prometheus_client``.

An optional module: it needs the ``prometheus`` extra (``pip install
"litepool[prometheus]"``), and ``import litepool`` does not import it. Register a
:class:`PoolCollector` once its pools exist; every scrape then takes one
:meth:`Pool.statistics` snapshot of each pool::

    import prometheus_client
    import litepool
    from litepool.prometheus import PoolCollector

    async with litepool.open_pool("app.db", name="app") as pool:
        prometheus_client.REGISTRY.register(PoolCollector(pool))
        ...

Every sample carries a ``pool`` label (the pool's name) and, for the values of one lane,
a ``lane`` label (``"read"`` or ``"write"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Final, TypeAlias

from ._errors import PoolClosed
from ._pool import Pool
from ._stats import Histogram, LaneStatistics, PoolStatistics
from ._wal import CHECKPOINT_MODES

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as _missing:
    raise ImportError(
        "litepool.prometheus needs prometheus_client, which is not installed; install "
        'the extra that brings it: pip install "litepool[prometheus]"'
    ) from _missing

__all__ = ["PoolCollector"]

_LaneValue: TypeAlias = tuple[str, str, Callable[[LaneStatistics], int]]
_LaneHistogram: TypeAlias = tuple[str, str, Callable[[LaneStatistics], Histogram]]
_PoolValue: TypeAlias = tuple[str, str, Callable[[PoolStatistics], int | None]]

# (key, help, value). A metric is named ``<namespace>_<key>``; CounterMetricFamily adds
# ``_total`` to the samples of counters. The help texts follow the docstrings of _stats.

_LANE_GAUGES: Final[tuple[_LaneValue, ...]] = (
    ("size", "Connections in the lane.", lambda lane: lane.size),
    ("idle", "Connections of the lane waiting in the pool for a borrower.", lambda s: s.idle),
    ("in_use", "Connections of the lane checked out right now.", lambda lane: lane.in_use),
    ("waiting", "Tasks waiting to check out a connection of the lane.", lambda s: s.waiting),
)

_LANE_COUNTERS: Final[tuple[_LaneValue, ...]] = (
    ("checkouts", "Successful checkouts since the pool opened.", lambda s: s.checkouts),
    (
        "statements",
        "Single statements queued through the pool's own methods (pool.fetchone(), "
        "pool.execute(), ...) since the pool opened.",
        lambda lane: lane.statements,
    ),
    (
        "timeouts",
        "Checkouts and single statements that failed with litepool.PoolTimeout.",
        lambda s: s.timeouts,
    ),
)

_LANE_HISTOGRAMS: Final[tuple[_LaneHistogram, ...]] = (
    (
        "acquire_wait",
        "How long each successful checkout waited for its connection, in seconds; one "
        "that found a connection free counts as zero. Single statements are not counted.",
        lambda lane: lane.acquire_wait,
    ),
    (
        "usage",
        "How long each checkout held its connection, in seconds, from getting it to the "
        "end of its async with block's body (the COMMIT of pool.write() is not included).",
        lambda lane: lane.usage,
    ),
)

_POOL_COUNTERS: Final[tuple[_PoolValue, ...]] = (
    (
        "interrupted",
        "Statements that were running when their caller was cancelled, and which SQLite "
        "was therefore told to interrupt.",
        lambda stats: stats.interrupted,
    ),
    (
        "rollbacks",
        "Transactions rolled back because their connection came back with one open, or "
        "because their COMMIT failed.",
        lambda stats: stats.rollbacks,
    ),
    (
        "connections_opened",
        "SQLite connections opened since the pool opened (the writer and the readers).",
        lambda stats: stats.connections_opened,
    ),
    (
        "connections_closed",
        "SQLite connections closed: when the pool closes, or when one is replaced.",
        lambda stats: stats.connections_closed,
    ),
    (
        "connections_replaced",
        "Connections retired while the pool was open and replaced by a new one: past "
        "max_lifetime, idle past max_idle, or lost.",
        lambda stats: stats.connections_replaced,
    ),
    (
        "connections_lost",
        "Connections found broken (a disk I/O error, the database file replaced under "
        "them, a failed check, a worker thread that died) and therefore replaced.",
        lambda stats: stats.connections_lost,
    ),
    (
        "connections_failed",
        "Attempts to open a connection while the pool was open (a replacement, or a new "
        "reader of Pool.resize()) that failed.",
        lambda stats: stats.connections_failed,
    ),
    (
        "checkpoints",
        "WAL checkpoints run by the housekeeper and by Pool.checkpoint().",
        lambda stats: stats.checkpoints,
    ),
    (
        "checkpoints_busy",
        "WAL checkpoints that could not finish: SQLite reported them busy, because a "
        "reader still used the part of the WAL they needed.",
        lambda stats: stats.checkpoints_busy,
    ),
    (
        "wal_reset_timeouts",
        "WAL resets given up because a read transaction outlasted wal_reset_timeout.",
        lambda stats: stats.wal_reset_timeouts,
    ),
)

# Gauges of the whole pool; a value of None (no checkpoint yet) exports no sample.
_POOL_GAUGES: Final[tuple[_PoolValue, ...]] = (
    (
        "closed",
        "Whether the pool has been closed: 1 once it has, 0 while it is open.",
        lambda stats: int(stats.closed),
    ),
    (
        "wal_bytes",
        "Size in bytes of the WAL file as the last checkpoint left it; no sample until a "
        "checkpoint has run (or if the database is not in WAL mode).",
        lambda stats: stats.wal_bytes,
    ),
    (
        "wal_bytes_peak",
        "The largest WAL file size, in bytes, that a checkpoint found before it ran; no "
        "sample until a checkpoint has run.",
        lambda stats: stats.wal_bytes_peak,
    ),
)

_CHECKPOINT_MODE_HELP: Final = (
    "The mode of the last WAL checkpoint, one sample per mode: 1 for the mode of the last "
    "checkpoint, 0 for the others (all 0 until a checkpoint has run)."
)

_LANE_LABELS: Final = ("pool", "lane")

#: What a metric name must look like (Prometheus' classic naming rule).
_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _bucket_bound(bound: float) -> str:
    """The ``le`` label of a bucket, formatted as prometheus_client formats its own."""
    return repr(float(bound))


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    """Cumulative buckets, ``+Inf`` last, from litepool's per-bucket counts."""
    cumulative = list(accumulate(histogram.counts))
    buckets: list[tuple[str, float]] = [
        (_bucket_bound(bound), count)
        for bound, count in zip(histogram.bounds, cumulative[:-1], strict=True)
    ]
    buckets.append(("+Inf", cumulative[-1]))
    return buckets


class PoolCollector:
    """A ``prometheus_client`` collector of the statistics of one or more pools.

    Register it with a registry (``prometheus_client.REGISTRY.register(collector)``);
    each scrape then calls :meth:`collect`, which takes one :meth:`Pool.statistics`
    snapshot of each pool. A pool that has not been opened yet exports nothing; a pool
    that has closed goes on exporting its last figures, with ``closed`` at 1.

    One collector covers several pools, told apart by their ``pool`` label: pass them
    all to it. Two collectors of the same ``namespace`` cannot be registered with the
    same registry, as their metric names would clash.

    :param pools: the pools to export, each with its own name (``open_pool(name=...)``).
    :param namespace: the prefix of every metric name, ``<namespace>_<key>``.
    :raises TypeError: if one of ``pools`` is not a :class:`~litepool.Pool`, or
        ``namespace`` is not a string.
    :raises ValueError: if two of ``pools`` have the same name, or ``namespace`` cannot
        begin a Prometheus metric name.
    """

    def __init__(self, *pools: Pool, namespace: str = "litepool") -> None:
        for pool in pools:
            if not isinstance(pool, Pool):
                raise TypeError(f"PoolCollector() takes litepool pools, got {type(pool).__name__}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
        if not _METRIC_NAME.fullmatch(namespace):
            raise ValueError(
                f"namespace must be a valid Prometheus metric name prefix "
                f"([a-zA-Z_:][a-zA-Z0-9_:]*), got {namespace!r}"
            )
        names = [pool.name for pool in pools]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"pools exported together need distinct names (open_pool(name=...)); "
                f"more than one is named {', '.join(map(repr, duplicates))}"
            )
        self._pools: tuple[Pool, ...] = pools
        self._namespace = namespace

    def __repr__(self) -> str:
        names = ", ".join(repr(pool.name) for pool in self._pools)
        return f"<litepool.prometheus.PoolCollector [{names}] namespace={self._namespace!r}>"

    def describe(self) -> Iterable[Metric]:
        """The metric families :meth:`collect` returns, without their samples.

        A registry calls this when the collector is registered, to check that its names
        do not clash with another collector's, instead of calling :meth:`collect`: the
        pools need not be open yet.

        :returns: one empty metric family per exported key.
        """
        return self._families(())

    def collect(self) -> Iterable[Metric]:
        """Take one :meth:`Pool.statistics` snapshot of each pool and turn them into
        metric families, every sample labelled with ``pool`` (and ``lane``).

        Pools that have never been opened are skipped.

        :returns: one metric family per exported key, with the samples of every pool.
        """
        snapshots: list[PoolStatistics] = []
        for pool in self._pools:
            try:
                snapshots.append(pool.statistics())
            except PoolClosed:  # never opened: nothing to report yet
                continue
        return self._families(snapshots)

    def _families(self, snapshots: Sequence[PoolStatistics]) -> list[Metric]:
        """The metric families, with one sample of each of ``snapshots`` (per lane)."""
        namespace = self._namespace
        lanes = [
            ([stats.name, lane_name], lane)
            for stats in snapshots
            for lane_name, lane in (("read", stats.read), ("write", stats.write))
        ]
        families: list[Metric] = []
        kinds: tuple[
            tuple[type[GaugeMetricFamily | CounterMetricFamily], tuple[_PoolValue, ...]], ...
        ] = (
            (GaugeMetricFamily, _POOL_GAUGES),
            (CounterMetricFamily, _POOL_COUNTERS),
        )
        for family_type, table in kinds:
            for key, help_text, value in table:
                family = family_type(f"{namespace}_{key}", help_text, labels=["pool"])
                for stats in snapshots:
                    number = value(stats)
                    if number is not None:
                        family.add_metric([stats.name], number)
                families.append(family)
        modes = GaugeMetricFamily(
            f"{namespace}_checkpoint_mode", _CHECKPOINT_MODE_HELP, labels=["pool", "mode"]
        )
        for stats in snapshots:
            known: list[str] = list(CHECKPOINT_MODES)
            if stats.checkpoint_mode is not None and stats.checkpoint_mode not in known:
                known.append(stats.checkpoint_mode)
            for mode in known:
                modes.add_metric([stats.name, mode], int(mode == stats.checkpoint_mode))
        families.append(modes)
        for key, help_text, lane_value in _LANE_GAUGES:
            gauge = GaugeMetricFamily(f"{namespace}_{key}", help_text, labels=_LANE_LABELS)
            for labels, lane in lanes:
                gauge.add_metric(labels, lane_value(lane))
            families.append(gauge)
        for key, help_text, lane_value in _LANE_COUNTERS:
            counter = CounterMetricFamily(f"{namespace}_{key}", help_text, labels=_LANE_LABELS)
            for labels, lane in lanes:
                counter.add_metric(labels, lane_value(lane))
            families.append(counter)
        for key, help_text, lane_histogram in _LANE_HISTOGRAMS:
            histogram = HistogramMetricFamily(
                f"{namespace}_{key}_seconds", help_text, labels=_LANE_LABELS
            )
            for labels, lane in lanes:
                snapshot = lane_histogram(lane)
                histogram.add_metric(labels, _buckets(snapshot), snapshot.total)
            families.append(histogram)
        return families
