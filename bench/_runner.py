"""Running the measurements: one workload against one contender on a fresh copy of the
database, and the whole benchmark as rounds of such runs, contenders interleaved."""

from __future__ import annotations

import gc
import math
import os
import platform
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

import anyio

from . import _db, _wakeup
from ._contenders import AsyncOps, Contender, Settings
from ._workloads import Picker, Workload, async_step, sync_step

#: A run that has not finished this long after its deadline is stopped and reported.
GRACE_SECONDS: Final = 60.0


class Progress(Protocol):
    """Where the runner reports what it is doing."""

    def start(self, total: int, title: str) -> None: ...

    def running(self, description: str) -> None: ...

    def advance(self) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, title: str) -> None:
        pass

    def running(self, description: str) -> None:
        pass

    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(slots=True)
class Measurement:
    """One workload run against one contender."""

    workload: str
    contender: str
    round: int
    tasks: int
    readers: int | None = None
    #: ``ok``, ``not installed`` or ``failed`` (the run itself broke; see ``detail``).
    status: str = "ok"
    detail: str = ""
    ops: int = 0
    seconds: float = 0.0
    mean_ms: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    #: Failed operations by kind (exception type and message, or a wrong result).
    errors: dict[str, int] = field(default_factory=dict)
    total_before: int | None = None
    total_after: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.ok and self.seconds > 0 else math.nan

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def total_kept(self) -> bool | None:
        if self.total_before is None or self.total_after is None:
            return None
        return self.total_before == self.total_after

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ops_per_second"] = self.ops_per_second
        data["total_kept"] = self.total_kept
        return data


def error_kind(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(message) > 80:
        message = message[:77] + "..."
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _record(
    result: Measurement,
    latencies: list[float],
    errors: Counter[str],
    seconds: float,
) -> None:
    latencies.sort()
    result.ops = len(latencies)
    result.seconds = seconds
    result.errors = dict(errors.most_common())
    if latencies:
        result.mean_ms = statistics.fmean(latencies) * 1000
        result.p50_ms = _percentile(latencies, 0.50) * 1000
        result.p90_ms = _percentile(latencies, 0.90) * 1000
        result.p99_ms = _percentile(latencies, 0.99) * 1000
        result.max_ms = latencies[-1] * 1000


async def _run_async(
    contender: Contender,
    workload: Workload,
    path: str,
    seconds: float,
    sizes: _db.Sizes,
    settings: Settings,
    seed: int,
    result: Measurement,
) -> None:
    assert contender.open_async is not None
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    perf = time.perf_counter

    async def task(ops: AsyncOps, index: int, deadline: float) -> None:
        step = async_step(ops, Picker(workload, sizes, seed * 1_000 + index))
        mine: list[float] = []
        append = mine.append
        while True:
            began = perf()
            if began >= deadline:
                break
            try:
                verdict = await step()
            except Exception as exc:
                errors[error_kind(exc)] += 1
                continue
            if verdict is None:
                append(perf() - began)
            else:
                errors[verdict] += 1
        latencies.extend(mine)

    async with contender.open_async(path, settings) as ops:
        started = perf()
        deadline = started + seconds
        with anyio.move_on_after(seconds + GRACE_SECONDS) as scope:
            async with anyio.create_task_group() as tg:
                for index in range(workload.tasks):
                    tg.start_soon(task, ops, index, deadline)
        elapsed = perf() - started
    _record(result, latencies, errors, elapsed)
    if scope.cancelled_caught:
        result.status = "failed"
        result.detail = f"did not finish within {GRACE_SECONDS:g} s of its deadline"


def _run_sync(
    contender: Contender,
    workload: Workload,
    path: str,
    seconds: float,
    sizes: _db.Sizes,
    settings: Settings,
    seed: int,
    result: Measurement,
) -> None:
    assert contender.open_sync is not None
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    perf = time.perf_counter
    append = latencies.append
    with contender.open_sync(path, settings) as ops:
        step = sync_step(ops, Picker(workload, sizes, seed * 1_000))
        started = perf()
        deadline = started + seconds
        while True:
            began = perf()
            if began >= deadline:
                break
            try:
                verdict = step()
            except Exception as exc:
                errors[error_kind(exc)] += 1
                continue
            if verdict is None:
                append(perf() - began)
            else:
                errors[verdict] += 1
        elapsed = perf() - started
    _record(result, latencies, errors, elapsed)


def measure(
    contender: Contender,
    workload: Workload,
    *,
    template: str,
    workdir: str,
    seconds: float,
    sizes: _db.Sizes,
    settings: Settings,
    round_index: int = 0,
    seed: int = 1,
) -> Measurement:
    """Run ``workload`` against ``contender`` on a fresh copy of ``template``."""
    result = Measurement(
        workload=workload.name,
        contender=contender.name,
        round=round_index,
        tasks=workload.tasks if contender.backend is not None else 1,
        readers=settings.readers if contender.name.startswith("litepool") else None,
    )
    missing = contender.missing()
    if missing:
        result.status = "not installed"
        result.detail = f"needs {', '.join(missing)}"
        return result
    path = os.path.join(workdir, "run.db")
    _db.copy(template, path)
    gc.collect()
    try:
        if contender.backend is None:
            _run_sync(contender, workload, path, seconds, sizes, settings, seed, result)
        else:
            anyio.run(
                _run_async,
                contender,
                workload,
                path,
                seconds,
                sizes,
                settings,
                seed,
                result,
                backend=contender.backend,
            )
        if workload.checks_total:
            result.total_before = sizes.opening_total
            result.total_after = _db.total_balance(path)
    except Exception as exc:
        result.status = "failed"
        result.detail = error_kind(exc)
    finally:
        _db.remove(path)
    return result


# -- the whole benchmark ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    scale: float
    rounds: int
    seconds: float
    workloads: tuple[Workload, ...]
    contenders: tuple[Contender, ...]
    settings: Settings
    seed: int = 1
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "workloads": {w.name: w.describe() for w in self.workloads},
            "contenders": {c.name: c.description for c in self.contenders},
            "readers": self.settings.readers,
            "aiosqlitepool_pool_size": self.settings.pool_size,
            "pragmas": dict(_db.PRAGMAS),
            "seed": self.seed,
            "quick": self.quick,
        }


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        # Fewer when the process is pinned (taskset): then the threads share CPUs.
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": {
            name: _version_of(name)
            for name in ("litepool", "anyio", "trio", "aiosqlite", "aiosqlitepool", "sqlite-anyio")
        },
        "thread_round_trip_us": _wakeup.thread_round_trip_us(),
    }


def build_template(workdir: str, sizes: _db.Sizes, progress: Progress) -> tuple[str, float]:
    """Build the database once; returns its path and how long that took.

    It is reported once, with the results, by the caller: progress only says what runs.
    """
    progress.running("building the database")
    template = os.path.join(workdir, "template.db")
    started = time.perf_counter()
    _db.build(template, sizes)
    return template, time.perf_counter() - started


def run_bench(
    config: BenchConfig,
    template: str,
    workdir: str,
    progress: Progress,
    on_result: Callable[[Measurement], None] | None = None,
) -> list[Measurement]:
    """Every workload against every contender, ``config.rounds`` times, each on a fresh
    copy of the database ``template`` made in ``workdir``.

    Within a round, each workload's contenders run back to back, so that they see the
    same machine conditions; the order of the contenders rotates from round to round.
    """
    sizes = _db.Sizes.for_scale(config.scale)
    results: list[Measurement] = []
    contenders = list(config.contenders)
    for round_index in range(config.rounds):
        shift = round_index % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for workload in config.workloads:
            for contender in order:
                progress.running(
                    f"round {round_index + 1}/{config.rounds}  {workload.name}  {contender.name}"
                )
                result = measure(
                    contender,
                    workload,
                    template=template,
                    workdir=workdir,
                    seconds=config.seconds,
                    sizes=sizes,
                    settings=config.settings,
                    round_index=round_index,
                    seed=config.seed + round_index,
                )
                results.append(result)
                if on_result is not None:
                    on_result(result)
                progress.advance()
    return results
