"""``python3 -m bench``: litepool against plain sqlite3 and the other async SQLite
libraries, on the same workloads, in one process run.

The benchmark builds a temporary database, then runs every workload against every
contender on a fresh copy of it, ``--rounds`` times with the contenders interleaved, and
reports medians: operations per second, p50 and p99 latency, errors by kind, and for the
transfers whether the total of the balances was kept. ``--sweep`` instead answers when a
pool starts to beat one shared connection, and measures litepool's peak memory.

It lives in the repository, not in the library: run it from the repository's root after
``python3 -m pip install ".[bench]"``, which installs litepool with ``rich`` (progress and
tables), ``matplotlib`` (charts) and the comparison libraries. Those libraries (aiosqlite,
aiosqlitepool, sqlite-anyio) are optional; a contender whose library is missing is
reported as not installed.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Final

from . import _report
from ._contenders import BY_NAME as CONTENDER_NAMES
from ._contenders import CONTENDERS, Settings
from ._runner import BenchConfig, Measurement, Progress, build_template, machine, run_bench
from ._workloads import BY_NAME as WORKLOAD_NAMES
from ._workloads import WORKLOADS

__all__ = ["DEFAULTS", "QUICK", "BenchOptions", "run"]


@dataclass(frozen=True, slots=True)
class Sizing:
    scale: float
    rounds: int
    seconds: float
    sweep_seconds: float
    rss_seconds: float


#: The default run: about 5 minutes for the benchmark, 4 for the sweep, on 2 cores.
DEFAULTS: Final = Sizing(scale=1.0, rounds=3, seconds=2.0, sweep_seconds=0.5, rss_seconds=2.0)
#: ``--quick``: seconds, for the test suite; its figures mean nothing.
QUICK: Final = Sizing(scale=0.05, rounds=1, seconds=0.25, sweep_seconds=0.15, rss_seconds=0.2)
QUICK_TASKS: Final = (1, 10)
QUICK_READERS: Final = (1, 2)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """``python3 -m bench``'s options, once parsed."""

    command: str
    quick: bool = False
    sweep: bool = False
    scale: float | None = None
    rounds: int | None = None
    seconds: float | None = None
    readers: int = 4
    workloads: tuple[str, ...] | None = None
    contenders: tuple[str, ...] | None = None
    out: str | None = None
    markdown: str | None = None
    progress: bool = True


def _progress(options: BenchOptions) -> Progress:
    if options.progress and importlib.util.find_spec("rich") is not None:
        return _report.RichProgress()
    return _report.PlainProgress(quiet=not options.progress)


def _started() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _write_outputs(
    options: BenchOptions,
    data: dict[str, Any],
    name: str,
    chart: Any,
    fragment: str,
    section: str,
) -> None:
    if options.out is not None:
        _report.ensure_dir(options.out)
        json_path = os.path.join(options.out, f"{name}.json")
        _report.write_json(json_path, data)
        print(f"raw figures: {json_path}")
        if importlib.util.find_spec("matplotlib") is None:
            print(
                "no chart: matplotlib is not installed (python3 -m pip install '.[bench]')",
                file=sys.stderr,
            )
        else:
            png_path = os.path.join(options.out, f"{name}.png")
            with warnings.catch_warnings():
                # Older matplotlib releases call pyparsing APIs that newer pyparsing
                # releases deprecate: not ours to fix, and no reason to fail a chart.
                warnings.simplefilter("ignore", DeprecationWarning)
                chart(png_path, data)
            print(f"chart: {png_path}")
    if options.markdown is not None:
        _report.write_markdown(options.markdown, fragment, section)
        print(f"markdown: {options.markdown}")


def _litepool_failures(measurements: list[Measurement]) -> list[str]:
    """What went wrong for litepool: the invariants the benchmark insists on."""
    failures = []
    for run in measurements:
        if not run.contender.startswith("litepool") or run.status == "not installed":
            continue
        where = f"{run.contender} {run.workload} round {run.round + 1}"
        if not run.ok:
            failures.append(f"{where}: {run.detail}")
        if run.errors:
            failures.append(f"{where}: {run.error_count} errors: {run.errors}")
        if run.total_kept is False:
            failures.append(f"{where}: total {run.total_before:,} -> {run.total_after:,}")
    return failures


def _bench_mode(options: BenchOptions, sizing: Sizing) -> int:
    workloads = (
        WORKLOADS
        if options.workloads is None
        else tuple(WORKLOAD_NAMES[name] for name in options.workloads)
    )
    contenders = (
        CONTENDERS
        if options.contenders is None
        else tuple(CONTENDER_NAMES[name] for name in options.contenders)
    )
    config = BenchConfig(
        scale=sizing.scale,
        rounds=sizing.rounds,
        seconds=sizing.seconds,
        workloads=workloads,
        contenders=contenders,
        settings=Settings(readers=options.readers, pool_size=options.readers + 1),
        quick=options.quick,
    )
    from ._db import Sizes

    sizes = Sizes.for_scale(config.scale)
    started = _started()
    progress = _progress(options)
    progress.start(
        config.rounds * len(workloads) * len(contenders),
        f"{len(workloads)} workloads x {len(contenders)} contenders x {config.rounds} rounds",
    )
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="litepool-bench-") as workdir:
            template, built = build_template(workdir, sizes, progress)
            measurements = run_bench(config, template, workdir, progress)
    finally:
        progress.stop()
    data: dict[str, Any] = {
        "kind": "litepool-bench",
        "command": options.command,
        "started": started,
        "wall_seconds": time.perf_counter() - began,
        "machine": machine(),
        "database": sizes.describe(),
        "config": config.to_json(),
        "measurements": [run.to_json() for run in measurements],
    }
    summaries = _report.summarize(measurements)
    data["summary"] = [summary.to_json() for summary in summaries]
    ratios = _report.key_ratios(measurements)
    data["ratios"] = [item.to_json() for item in ratios]
    print(f"machine: {_report.machine_line(data['machine'])}")
    print(f"database: {data['database']} (built in {built:.1f} s)")
    _report.print_results(
        f"medians of {_report._plural(config.rounds, 'round')} of {config.seconds:g} s each",
        summaries,
        ratios,
    )
    _write_outputs(
        options,
        data,
        "bench",
        _report.results_chart,
        _report.results_markdown(data),
        "results",
    )
    failures = _litepool_failures(measurements)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def _sweep_mode(options: BenchOptions, sizing: Sizing) -> int:
    from . import _sweep
    from ._db import Sizes

    config = _sweep.SweepConfig(
        scale=sizing.scale,
        rounds=sizing.rounds,
        seconds=sizing.sweep_seconds if options.seconds is None else sizing.seconds,
        rss_seconds=sizing.rss_seconds,
        quick=options.quick,
    )
    if options.quick:
        config = replace(config, tasks=QUICK_TASKS, readers=QUICK_READERS)
    sizes = Sizes.for_scale(config.scale)
    started = _started()
    progress = _progress(options)
    progress.start(
        _sweep.steps(config) + 1 + len(config.rss_readers),
        f"sweep: {len(config.tasks)} task counts x {1 + len(config.readers)} setups",
    )
    began = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="litepool-bench-") as workdir:
            template, built = build_template(workdir, sizes, progress)
            measurements = _sweep.run_sweep(config, template, workdir, progress)
            rss = _sweep.run_rss(config, template, workdir, progress)
    finally:
        progress.stop()
    data: dict[str, Any] = {
        "kind": "litepool-bench-sweep",
        "command": options.command,
        "started": started,
        "wall_seconds": time.perf_counter() - began,
        "machine": machine(),
        "database": sizes.describe(),
        "config": config.to_json(),
        "measurements": [run.to_json() for run in measurements],
        "rss": rss,
    }
    data["answer"] = _sweep.answer(measurements, config)
    print(f"machine: {_report.machine_line(data['machine'])}")
    print(f"database: {data['database']} (built in {built:.1f} s)")
    for workload in config.workloads:
        _report.print_table(
            f"{workload.name}: operations per second (pool / shared connection)",
            _sweep.sweep_rows(data, workload.name),
            right=range(1, 10),
        )
    _report.print_table("peak RSS", _sweep.rss_rows(data), right=(1, 2))
    largest = max(config.tasks)
    for workload_name, per_readers in data["answer"].items():
        print(_sweep.answer_text(workload_name, per_readers, largest))
    _write_outputs(options, data, "sweep", _sweep.sweep_chart, _sweep.sweep_markdown(data), "sweep")
    failures = _litepool_failures(measurements)
    failures.extend(
        f"peak RSS with {item['readers']} readers: {item['error']}"
        for item in rss
        if "error" in item
    )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


def run(options: BenchOptions) -> int:
    """Run the benchmark or the sweep; the exit code: 1 if litepool broke an invariant."""
    base = QUICK if options.quick else DEFAULTS
    sizing = Sizing(
        scale=base.scale if options.scale is None else options.scale,
        rounds=base.rounds if options.rounds is None else options.rounds,
        seconds=base.seconds if options.seconds is None else options.seconds,
        sweep_seconds=base.sweep_seconds,
        rss_seconds=base.rss_seconds,
    )
    if options.sweep:
        return _sweep_mode(options, sizing)
    return _bench_mode(options, sizing)
