"""litepool.prometheus: pool.statistics() exported through prometheus_client."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing
from itertools import accumulate
from pathlib import Path

import anyio
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

import litepool
from litepool.prometheus import PoolCollector

from .conftest import bound_read, held_by_another_task

pytestmark = pytest.mark.anyio

#: Keys that hold the current state: gauges. Every other numeric key only grows: a counter.
GAUGES = {"size", "idle", "in_use", "waiting", "closed", "wal_bytes", "wal_bytes_peak"}
#: Keys that are not numbers: the pool's name is the ``pool`` label, and the checkpoint
#: mode has a test of its own.
NOT_NUMERIC = {"name", "checkpoint_mode"}


class Scrape:
    """One scrape of a registry in the text format, parsed back."""

    def __init__(self, registry: CollectorRegistry) -> None:
        text = prometheus_client.generate_latest(registry).decode()
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def type_of(self, family: str) -> str:
        assert family in self.families, f"no metric family {family!r} was exported"
        return self.families[family].type

    def samples(self, family: str, name: str, labels: dict[str, str]) -> list[Sample]:
        """The samples called ``name`` of ``family`` with (at least) these labels."""
        assert family in self.families, f"no metric family {family!r} was exported"
        return [
            sample
            for sample in self.families[family].samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def value(self, family: str, name: str, labels: dict[str, str]) -> float:
        found = [sample for sample in self.samples(family, name, labels) if sample.labels == labels]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0].value


def registry_of(*pools: litepool.Pool, namespace: str = "litepool") -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PoolCollector(*pools, namespace=namespace))
    return registry


async def do_some_work(pool: litepool.Pool) -> None:
    """Checkouts, single statements, a timeout and a checkpoint: every count moves."""
    await pool.execute("CREATE TABLE t (x)")
    await pool.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    assert await pool.fetchval("SELECT count(*) FROM t") == 3
    async with pool.write() as conn:
        await conn.execute("INSERT INTO t VALUES (4)")
    async with pool.read() as conn:
        assert await conn.fetchone("SELECT max(x) FROM t") == (4,)
    async with held_by_another_task(pool.read(), pool.read()):  # every reader held
        with pytest.raises(litepool.PoolTimeout):
            async with bound_read(pool, timeout=0.01):
                pass
    await pool.checkpoint("TRUNCATE")


def check_exported(scrape: Scrape, obj: object, labels: dict[str, str]) -> list[str]:
    """Check that every numeric field of ``obj`` (a PoolStatistics or LaneStatistics) is
    exported with its value; return the names of the fields checked."""
    assert dataclasses.is_dataclass(obj)
    hints = typing.get_type_hints(type(obj))
    checked: list[str] = []
    for field in dataclasses.fields(obj):
        key, hint, value = field.name, hints[field.name], getattr(obj, field.name)
        if key in NOT_NUMERIC:
            continue
        if hint is litepool.LaneStatistics:
            lane = getattr(obj, key)
            checked += [
                f"{key}.{name}" for name in check_exported(scrape, lane, {**labels, "lane": key})
            ]
            continue
        family = f"litepool_{key}"
        if hint is litepool.Histogram:
            family += "_seconds"
            assert scrape.type_of(family) == "histogram"
            assert scrape.value(family, f"{family}_count", labels) == value.count
            assert scrape.value(family, f"{family}_sum", labels) == value.total
        elif hint in (int, bool, int | None):
            assert value is not None, f"{key} is None: the work done should have set it"
            kind = "gauge" if key in GAUGES else "counter"
            assert scrape.type_of(family) == kind, key
            name = family if kind == "gauge" else f"{family}_total"
            assert scrape.value(family, name, labels) == int(value), key
        else:
            pytest.fail(f"field {key}: {hint} has no export; add one to litepool.prometheus")
        checked.append(key)
    return checked


async def test_every_numeric_field_is_exported_with_its_value(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, name="app", wal_max_bytes=None) as pool:
        registry = registry_of(pool)
        await do_some_work(pool)
        stats = pool.statistics()
        scrape = Scrape(registry)  # no await in between: the same figures
        checked = check_exported(scrape, stats, {"pool": "app"})
    # The work done moved the figures away from zero, so that equal means exported.
    assert stats.read.timeouts == 1
    assert stats.read.checkouts == 4  # the block whose reader timed out began
    assert stats.write.statements >= 3
    assert stats.checkpoints == 1
    assert stats.wal_bytes == 0
    assert stats.wal_bytes_peak is not None
    assert stats.wal_bytes_peak > 0
    assert {"read.acquire_wait", "write.usage", "closed", "connections_opened"} <= set(checked)
    lane_fields = len(dataclasses.fields(litepool.LaneStatistics))
    assert len(checked) == len(dataclasses.fields(litepool.PoolStatistics)) - 4 + 2 * lane_fields


async def test_gauges_show_the_checkouts_in_progress(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=2, name="app", wal_max_bytes=None) as pool:
        registry = registry_of(pool)
        read = {"pool": "app", "lane": "read"}
        write = {"pool": "app", "lane": "write"}
        got_it = anyio.Event()

        async def waiter() -> None:
            async with bound_read(pool):
                got_it.set()

        async with anyio.create_task_group() as tg:
            async with bound_read(pool), bound_read(pool):
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert registry.get_sample_value("litepool_in_use", read) == 2
                assert registry.get_sample_value("litepool_idle", read) == 0
                assert registry.get_sample_value("litepool_waiting", read) == 1
                assert registry.get_sample_value("litepool_size", read) == 2
                assert registry.get_sample_value("litepool_in_use", write) == 0
                assert registry.get_sample_value("litepool_idle", write) == 1
                assert registry.get_sample_value("litepool_size", write) == 1
            await got_it.wait()
        assert registry.get_sample_value("litepool_waiting", read) == 0
        assert registry.get_sample_value("litepool_in_use", read) == 0
        assert registry.get_sample_value("litepool_checkouts_total", read) == 3
        assert registry.get_sample_value("litepool_closed", {"pool": "app"}) == 0


async def test_histogram_buckets_are_cumulative(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, name="app", wal_max_bytes=None) as pool:
        registry = registry_of(pool)
        for _ in range(5):
            async with pool.read():
                pass
        async with bound_read(pool):
            await anyio.sleep(0.002)  # a duration to measure, beyond the first bucket
        await pool.execute("CREATE TABLE t (x)")
        stats = pool.statistics()
        scrape = Scrape(registry)

    bounds = [repr(bound) for bound in litepool.HISTOGRAM_BOUNDS]
    for lane_name, lane in (("read", stats.read), ("write", stats.write)):
        labels = {"pool": "app", "lane": lane_name}
        for key, histogram in (("acquire_wait", lane.acquire_wait), ("usage", lane.usage)):
            family = f"litepool_{key}_seconds"
            buckets = scrape.samples(family, f"{family}_bucket", labels)
            assert [bucket.labels["le"] for bucket in buckets] == [*bounds, "+Inf"]
            values = [bucket.value for bucket in buckets]
            assert values == list(accumulate(histogram.counts))
            assert values == sorted(values)
            assert values[-1] == histogram.count
            assert scrape.value(family, f"{family}_count", labels) == histogram.count
            assert scrape.value(family, f"{family}_sum", labels) == histogram.total
    # Six read checkouts, one of which held its connection for 2 ms: the cumulative
    # counts are not all the same.
    assert stats.read.usage.count == 6
    assert stats.read.usage.counts[0] < 6
    assert stats.read.usage.total >= 0.0015
    assert stats.write.usage.count == 0  # a single statement is not a checkout


async def test_two_pools_are_told_apart_by_their_label(tmp_path: Path) -> None:
    first = litepool.open_pool(tmp_path / "first.db", readers=2, name="first")
    second = litepool.open_pool(tmp_path / "second.db", readers=3, name="second")
    registry = registry_of(first, second)
    async with first, second:
        for _ in range(4):
            async with first.read():
                pass
        await second.fetchval("SELECT 1")
        scrape = Scrape(registry)
    for pool, size, checkouts, statements in (("first", 2, 4, 0), ("second", 3, 0, 1)):
        read = {"pool": pool, "lane": "read"}
        assert scrape.value("litepool_size", "litepool_size", read) == size
        assert scrape.value("litepool_checkouts", "litepool_checkouts_total", read) == checkouts
        assert scrape.value("litepool_statements", "litepool_statements_total", read) == statements
        opened = scrape.value(
            "litepool_connections_opened", "litepool_connections_opened_total", {"pool": pool}
        )
        assert opened == size + 1
    # Nothing but the two pools, each with both lanes.
    pools = {sample.labels["pool"] for sample in scrape.families["litepool_size"].samples}
    assert pools == {"first", "second"}
    assert len(scrape.families["litepool_size"].samples) == 4


async def test_a_pool_not_yet_opened_exports_nothing(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=2, name="later")
    with pytest.raises(litepool.PoolClosed):
        pool.statistics()
    collector = PoolCollector(pool)
    # A registry that would call collect() at registration if describe() were missing.
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    families = list(collector.collect())
    assert families
    assert all(family.samples == [] for family in families)
    assert registry.get_sample_value("litepool_size", {"pool": "later", "lane": "read"}) is None
    assert "pool=" not in prometheus_client.generate_latest(registry).decode()
    # The same collector reports the pool once it is open.
    async with pool:
        read = {"pool": "later", "lane": "read"}
        assert registry.get_sample_value("litepool_size", read) == 2


async def test_a_closed_pool_goes_on_reporting(db_path: str) -> None:
    pool = litepool.open_pool(db_path, readers=2, name="app", wal_max_bytes=None)
    registry = registry_of(pool)
    async with pool:
        await pool.fetchval("SELECT 1")
        assert registry.get_sample_value("litepool_closed", {"pool": "app"}) == 0
    stats = pool.statistics()
    assert stats.closed
    scrape = Scrape(registry)
    assert scrape.value("litepool_closed", "litepool_closed", {"pool": "app"}) == 1
    closed = scrape.value(
        "litepool_connections_closed", "litepool_connections_closed_total", {"pool": "app"}
    )
    assert closed == stats.connections_closed == stats.connections_opened == 3
    statements = {"pool": "app", "lane": "read"}
    assert registry.get_sample_value("litepool_statements_total", statements) == 1


async def test_checkpoint_mode_and_wal_size(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, name="app", wal_max_bytes=None) as pool:
        registry = registry_of(pool)
        await pool.execute("CREATE TABLE t (x)")
        scrape = Scrape(registry)
        modes = scrape.families["litepool_checkpoint_mode"].samples
        assert {sample.labels["mode"] for sample in modes} == {
            "PASSIVE",
            "FULL",
            "RESTART",
            "TRUNCATE",
        }
        assert all(sample.value == 0 for sample in modes)  # no checkpoint yet
        assert scrape.families["litepool_wal_bytes"].samples == []
        assert scrape.families["litepool_wal_bytes_peak"].samples == []

        for mode in ("PASSIVE", "TRUNCATE"):
            await pool.checkpoint(mode)
            scrape = Scrape(registry)
            assert pool.statistics().checkpoint_mode == mode
            current = {
                sample.labels["mode"]
                for sample in scrape.families["litepool_checkpoint_mode"].samples
                if sample.value == 1
            }
            assert current == {mode}
        stats = pool.statistics()
        labels = {"pool": "app"}
        assert registry.get_sample_value("litepool_wal_bytes", labels) == stats.wal_bytes == 0
        peak = registry.get_sample_value("litepool_wal_bytes_peak", labels)
        assert peak == stats.wal_bytes_peak
        assert peak is not None
        assert peak > 0
        assert registry.get_sample_value("litepool_checkpoints_total", labels) == 2


async def test_describe_names_what_collect_returns(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, name="app", wal_max_bytes=None) as pool:
        collector = PoolCollector(pool)
        described = list(collector.describe())
        collected = list(collector.collect())
        assert [(f.name, f.type) for f in described] == [(f.name, f.type) for f in collected]
        assert all(family.samples == [] for family in described)
        # Every family has samples, but the WAL sizes: no checkpoint has run.
        empty = {family.name for family in collected if not family.samples}
        assert empty == {"litepool_wal_bytes", "litepool_wal_bytes_peak"}
        assert all(family.documentation for family in described)
        assert len({family.documentation for family in described}) == len(described)

        # Two collectors of one namespace clash in a registry, even before any scrape.
        registry = CollectorRegistry()
        registry.register(collector)
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(PoolCollector(pool))
        # Another namespace does not.
        registry.register(PoolCollector(pool, namespace="other"))
        assert registry.get_sample_value("other_size", {"pool": "app", "lane": "write"}) == 1


def test_arguments_are_checked(db_path: str) -> None:
    first = litepool.open_pool(db_path, name="same")
    second = litepool.open_pool(db_path, name="same")
    with pytest.raises(ValueError, match="distinct names"):
        PoolCollector(first, second)
    with pytest.raises(ValueError, match="distinct names"):
        PoolCollector(first, first)
    with pytest.raises(TypeError, match="str"):
        PoolCollector(first, typing.cast(typing.Any, "app.db"))
    with pytest.raises(ValueError, match="namespace"):
        PoolCollector(first, namespace="my-app")
    with pytest.raises(ValueError, match="namespace"):
        PoolCollector(first, namespace="")
    with pytest.raises(TypeError, match="namespace"):
        PoolCollector(first, namespace=typing.cast(typing.Any, None))
    assert "'same'" in repr(PoolCollector(first))


def test_a_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if it were not installed: every module of prometheus_client is hidden, since an
    # import of a submodule already in sys.modules would not look at its package.
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "litepool.prometheus")
    with pytest.raises(ImportError, match=r'pip install "litepool\[prometheus\]"') as caught:
        importlib.import_module("litepool.prometheus")
    assert isinstance(caught.value.__cause__, ImportError)
    assert "prometheus_client" in str(caught.value)
    assert "litepool.prometheus" not in sys.modules
    monkeypatch.undo()
    # Restored: the module that the other tests use is back.
    assert sys.modules["litepool.prometheus"].PoolCollector is PoolCollector
    assert vars(litepool)["prometheus"] is sys.modules["litepool.prometheus"]
