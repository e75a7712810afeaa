"""``python3 -m bench --sweep``: when does a pool beat one shared connection?

Each sweep workload runs from 1 to 200 concurrent tasks against one shared aiosqlite
connection and against litepool (asyncio) with 1, 2, 4 and 8 readers, contenders
interleaved within each round. Then the peak resident memory of a process using
litepool with 1, 4 and 16 readers, each measured in a fresh subprocess.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from . import _db, _report
from ._contenders import BY_NAME as CONTENDERS
from ._contenders import Settings
from ._runner import Measurement, Progress, measure
from ._workloads import Workload

#: The directory that holds this package.
_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SWEEP_WORKLOADS: Final[tuple[Workload, ...]] = (
    Workload("read-heavy-point", "read-heavy, point reads", 1, point=0.9, insert=0.1),
    Workload("read-heavy-join", "read-heavy, JOIN reads", 1, heavy=0.9, insert=0.1),
    Workload("write-heavy", "write-heavy", 1, point=0.2, insert=0.8),
)
TASKS: Final = (1, 2, 5, 10, 20, 50, 100, 200)
READERS: Final = (1, 2, 4, 8)
RSS_READERS: Final = (1, 4, 16)
SHARED: Final = "aiosqlite-shared"
POOL: Final = "litepool-asyncio"


@dataclass(frozen=True, slots=True)
class SweepConfig:
    scale: float
    rounds: int
    seconds: float
    tasks: tuple[int, ...] = TASKS
    readers: tuple[int, ...] = READERS
    rss_readers: tuple[int, ...] = RSS_READERS
    rss_seconds: float = 2.0
    workloads: tuple[Workload, ...] = SWEEP_WORKLOADS
    seed: int = 1
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "tasks": list(self.tasks),
            "readers": list(self.readers),
            "rss_readers": list(self.rss_readers),
            "rss_seconds": self.rss_seconds,
            "workloads": {
                workload.name: replace(workload, tasks=0).describe().removesuffix(" from 0 tasks")
                for workload in self.workloads
            },
            "shared": SHARED,
            "pool": POOL,
            "pragmas": dict(_db.PRAGMAS),
            "seed": self.seed,
            "quick": self.quick,
        }


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _label(contender: str, readers: int | None) -> str:
    return "shared connection" if contender == SHARED else f"pool, {plural(readers or 0, 'reader')}"


def run_sweep(
    config: SweepConfig, template: str, workdir: str, progress: Progress
) -> list[Measurement]:
    sizes = _db.Sizes.for_scale(config.scale)
    setups: list[tuple[str, int | None]] = [(SHARED, None)]
    setups.extend((POOL, readers) for readers in config.readers)
    results: list[Measurement] = []
    for round_index in range(config.rounds):
        for workload in config.workloads:
            for position, tasks in enumerate(config.tasks):
                shift = (round_index + position) % len(setups)
                for name, readers in setups[shift:] + setups[:shift]:
                    progress.running(
                        f"round {round_index + 1}/{config.rounds}  {workload.name}  "
                        f"{plural(tasks, 'task')}  {_label(name, readers)}"
                    )
                    result = measure(
                        CONTENDERS[name],
                        workload.with_tasks(tasks),
                        template=template,
                        workdir=workdir,
                        seconds=config.seconds,
                        sizes=sizes,
                        settings=Settings(readers=readers or 1),
                        round_index=round_index,
                        seed=config.seed + round_index,
                    )
                    results.append(result)
                    progress.advance()
    return results


def steps(config: SweepConfig) -> int:
    return config.rounds * len(config.workloads) * len(config.tasks) * (1 + len(config.readers))


# -- reading the results --------------------------------------------------------------------


def _key(run: Measurement) -> tuple[str, int, str]:
    return run.workload, run.tasks, _label(run.contender, run.readers)


def medians(measurements: Sequence[Measurement]) -> dict[tuple[str, int, str], float]:
    """Median operations per second per (workload, tasks, setup)."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for run in measurements:
        if run.ok:
            groups.setdefault(_key(run), []).append(run.ops_per_second)
    return {key: statistics.median(values) for key, values in groups.items()}


def ratios(measurements: Sequence[Measurement]) -> dict[tuple[str, int, int], float]:
    """Median over the rounds of pool(N readers) / shared connection, per (workload,
    tasks, N)."""
    rates: dict[tuple[str, int, int], dict[str, float]] = {}
    for run in measurements:
        if run.ok:
            rates.setdefault((run.workload, run.tasks, run.round), {})[
                _label(run.contender, run.readers)
            ] = run.ops_per_second
    collected: dict[tuple[str, int, int], list[float]] = {}
    for (workload, tasks, _round), by_setup in rates.items():
        shared = by_setup.get(_label(SHARED, None))
        if not shared:
            continue
        for setup, value in by_setup.items():
            if setup.startswith("pool, "):
                readers = int(setup.split()[1])
                collected.setdefault((workload, tasks, readers), []).append(value / shared)
    return {key: statistics.median(values) for key, values in collected.items()}


def answer(measurements: Sequence[Measurement], config: SweepConfig) -> dict[str, dict[str, Any]]:
    """Per workload and reader count: from how many tasks on the pool stays ahead of the
    shared connection (median ratio above 1 at that task count and every larger one)."""
    table = ratios(measurements)
    result: dict[str, dict[str, Any]] = {}
    for workload in config.workloads:
        per_readers: dict[str, Any] = {}
        for readers in config.readers:
            series = [(tasks, table.get((workload.name, tasks, readers))) for tasks in config.tasks]
            known = [(tasks, value) for tasks, value in series if value is not None]
            from_tasks: int | None = None
            for tasks, value in reversed(known):
                if value > 1.0:
                    from_tasks = tasks
                else:
                    break
            best = max(known, key=lambda item: item[1]) if known else None
            per_readers[str(readers)] = {
                "beats_from_tasks": from_tasks,
                "ahead_at": [tasks for tasks, value in known if value > 1.0],
                "task_counts": len(known),
                "ratios": {str(tasks): value for tasks, value in known},
                "best_ratio": best[1] if best else None,
                "best_at_tasks": best[0] if best else None,
            }
        result[workload.name] = per_readers
    return result


def answer_text(workload: str, per_readers: dict[str, Any], largest: int) -> str:
    parts = []
    for readers, item in per_readers.items():
        start = item["beats_from_tasks"]
        best = item["best_ratio"]
        where = item["best_at_tasks"]
        ahead = item["ahead_at"]
        counted = f"ahead at {len(ahead)} of {item['task_counts']} task counts"
        if start is None:
            verdict = f"{counted}, not at {plural(largest, 'task')}"
        elif start == min(int(tasks) for tasks in item["ratios"]):
            verdict = f"{counted}: always"
        else:
            verdict = f"{counted}, and at every count from {plural(start, 'task')} on"
        best_text = (
            f"best {best:.2f}x at {plural(where, 'task')}" if best is not None else "no data"
        )
        parts.append(f"{plural(int(readers), 'reader')}: {verdict} ({best_text})")
    return f"{workload}: " + "; ".join(parts)


# -- peak RSS -------------------------------------------------------------------------------


def measure_rss(
    template: str, workdir: str, readers: int, seconds: float, scale: float
) -> dict[str, Any]:
    """Run litepool with ``readers`` readers in a fresh interpreter; its peak RSS."""
    path = os.path.join(workdir, f"rss-{readers}.db")
    _db.copy(template, path)
    # The child finds this package where this process did, whatever its working directory.
    pythonpath = os.pathsep.join(filter(None, (_ROOT, os.environ.get("PYTHONPATH"))))
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                f"{__package__}._rss",
                path,
                str(readers),
                repr(seconds),
                repr(scale),
            ],
            capture_output=True,
            text=True,
            timeout=120 + seconds,
            env={**os.environ, "PYTHONPATH": pythonpath},
            check=False,
        )
    finally:
        _db.remove(path)
    if completed.returncode != 0:
        return {"readers": readers, "error": completed.stderr.strip()[-500:]}
    data: dict[str, Any] = json.loads(completed.stdout)
    return data


def run_rss(
    config: SweepConfig, template: str, workdir: str, progress: Progress
) -> list[dict[str, Any]]:
    results = []
    for readers in (0, *config.rss_readers):
        what = "baseline (no pool)" if readers == 0 else f"litepool, {plural(readers, 'reader')}"
        progress.running(f"peak RSS: {what}")
        results.append(measure_rss(template, workdir, readers, config.rss_seconds, config.scale))
        progress.advance()
    return results


# -- output ---------------------------------------------------------------------------------


def sweep_rows(data: dict[str, Any], workload: str) -> list[list[str]]:
    config = data["config"]
    measurements = [_report._measurement(item) for item in data["measurements"]]
    table = medians(measurements)
    rel = ratios(measurements)
    header = ["tasks", "shared connection"] + [_label(POOL, n) for n in config["readers"]]
    rows = [header]
    for tasks in config["tasks"]:
        row = [str(tasks), _fmt(table.get((workload, tasks, "shared connection")))]
        for readers in config["readers"]:
            value = table.get((workload, tasks, _label(POOL, readers)))
            factor = rel.get((workload, tasks, readers))
            cell = _fmt(value)
            if factor is not None:
                cell += f" ({factor:.2f}x)"
            row.append(cell)
        rows.append(row)
    return rows


def rss_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = [["process", "peak RSS (MiB)", "above baseline (MiB)"]]
    baseline = None
    for item in data["rss"]:
        readers = item["readers"]
        what = (
            "baseline: the same modules imported, no pool"
            if readers == 0
            else f"litepool, {plural(readers, 'reader')} + 1 writer"
        )
        if "error" in item:
            rows.append([what, "failed", item["error"][:60]])
            continue
        mib = item["maxrss_kib"] / 1024
        if readers == 0:
            baseline = mib
        above = "" if baseline is None or readers == 0 else f"{mib - baseline:,.1f}"
        rows.append([what, f"{mib:,.1f}", above])
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def sweep_markdown(data: dict[str, Any]) -> str:
    config = data["config"]
    largest = max(config["tasks"])
    lines = [
        f"Measured with `{data['command']}` on {data['started']}:",
        "",
        f"- machine: {_report.machine_line(data['machine'])}",
        f"- database: {data['database']}",
        f"- {plural(config['rounds'], 'round')} of {config['seconds']:g} s per cell; "
        "operations per second, medians over the rounds; in brackets the pool's median "
        "ratio to the shared connection",
        "",
        "Answer (a pool is ahead at a task count when its median ratio to the shared "
        "connection is above 1 there):",
        "",
    ]
    for workload, per_readers in data["answer"].items():
        lines.append(f"- {answer_text(workload, per_readers, largest)}")
    for workload, description in config["workloads"].items():
        lines.extend(["", f"**{workload}** ({description}):", ""])
        lines.append(_report.markdown_table(sweep_rows(data, workload), right=range(1, 10)))
    lines.extend(
        [
            "",
            f"Peak RSS of a fresh process that ran {config['rss_seconds']:g} s of point and "
            "JOIN reads from 100 tasks on litepool (asyncio) (`VmHWM` of `/proc/self/status`; "
            "`ru_maxrss` where there is no `/proc`):",
            "",
            _report.markdown_table(rss_rows(data), right=(1, 2)),
        ]
    )
    return "\n".join(lines)


def sweep_chart(path: str, data: dict[str, Any]) -> None:
    plt = _report._pyplot()
    config = data["config"]
    measurements = [_report._measurement(item) for item in data["measurements"]]
    table = medians(measurements)
    workloads = list(config["workloads"])
    panels = len(workloads) + 1
    columns = 2
    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(12, 4.2 * rows))
    flat = list(axes.flat)
    colours = plt.get_cmap("viridis")
    for axis, workload in zip(flat, workloads, strict=False):
        setups = [("shared connection", "black", "--")]
        count = len(config["readers"])
        for index, readers in enumerate(config["readers"]):
            colour = colours(0.15 + 0.7 * index / max(1, count - 1))
            setups.append((_label(POOL, readers), colour, "-"))
        for setup, colour, style in setups:
            xs = [tasks for tasks in config["tasks"] if (workload, tasks, setup) in table]
            ys = [table[(workload, tasks, setup)] for tasks in xs]
            label = (
                "aiosqlite, one shared connection"
                if setup == "shared connection"
                else (f"litepool, {setup.removeprefix('pool, ')}")
            )
            axis.plot(xs, ys, style, marker="o", markersize=3, color=colour, label=label)
        axis.set_xscale("log")
        axis.set_xticks(config["tasks"], [str(tasks) for tasks in config["tasks"]])
        axis.set_ylim(bottom=0)
        axis.set_title(f"{workload}: {config['workloads'][workload]}", fontsize=9)
        axis.set_xlabel("concurrent tasks", fontsize=8)
        axis.set_ylabel("operations per second (median)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    rss_axis = flat[len(workloads)]
    good = [item for item in data["rss"] if "error" not in item]
    names = [
        "no pool" if item["readers"] == 0 else plural(item["readers"], "reader") for item in good
    ]
    values = [item["maxrss_kib"] / 1024 for item in good]
    rss_axis.bar(names, values, color="tab:blue")
    for position, value in enumerate(values):
        rss_axis.text(position, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    rss_axis.set_title("peak RSS of a process using litepool (MiB)", fontsize=9)
    rss_axis.tick_params(labelsize=8)
    for axis in flat[panels:]:
        axis.set_visible(False)
    machine = data["machine"]
    figure.suptitle(
        f"Pool vs one shared connection: {plural(config['rounds'], 'round')} x "
        f"{config['seconds']:g} s, "
        f"{machine.get('cpus')} CPUs, {machine.get('python')}, SQLite {machine.get('sqlite')}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
