"""A tour of litepool: a concurrent workload on a temporary database, and what happened.

Run it with ``python3 examples/demo.py [--seconds S | --ops N] [--readers N]
[--backend asyncio|trio|both]``; ``--help`` explains the options. It runs the same
workload once per backend (asyncio, then trio if installed) and prints what happened:

* point reads: primary-key lookups through :meth:`Pool.read` from many concurrent tasks;
* money transfers: read-modify-write transactions through :meth:`Pool.write` from many
  concurrent tasks, after which the total of all balances must be unchanged;
* a query that would run for minutes, cancelled by ``anyio.move_on_after``: the caller
  must get control back promptly after the deadline, and the pool must keep working;
* highlights of :meth:`Pool.statistics`.

It needs nothing but litepool and its dependencies (trio is optional). The exit code is 0
when every invariant held, 1 when one did not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import anyio

import litepool
from litepool import Pool, PoolStatistics, open_pool

BACKENDS: Final = ("asyncio", "trio")
#: Reader connections in the pool unless ``--readers`` says otherwise.
DEFAULT_READERS: Final = 4

READ_TASKS: Final = 50
TRANSFER_TASKS: Final = 20
ITEMS: Final = 10_000
ACCOUNTS: Final = 100
OPENING_BALANCE: Final = 1_000
MAX_AMOUNT: Final = 50

DEFAULT_SECONDS: Final = 1.5
CANCEL_AFTER: Final = 0.25
#: The cancelled query must give way within this many seconds of its deadline.
CANCEL_LIMIT: Final = 0.050

#: Counts to a billion one row at a time: minutes of work, which the deadline cuts short.
LONG_QUERY: Final = (
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000000) "
    "SELECT count(*) FROM r"
)

Output = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """How big a run is: ``seconds`` per timed workload, or ``ops`` per workload."""

    seconds: float | None = DEFAULT_SECONDS
    ops: int | None = None
    readers: int = DEFAULT_READERS

    def describe(self) -> str:
        if self.ops is not None:
            return f"{self.ops:,} operations per workload"
        return f"{self.seconds:g} s per workload"


@dataclass(slots=True)
class BackendReport:
    """What one backend's run measured, and whether its invariants held."""

    backend: str
    reads: int = 0
    wrong_rows: int = 0
    read_seconds: float = 0.0
    transfers: int = 0
    declined: int = 0
    transfer_seconds: float = 0.0
    total_before: int = 0
    total_after: int = -1
    negative_accounts: int = -1
    cancel_caught: bool = False
    cancel_lag: float = float("inf")
    next_query_ok: bool = False
    next_query_seconds: float = 0.0
    statistics: PoolStatistics | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def total_kept(self) -> bool:
        return self.total_before == self.total_after

    @property
    def cancel_ok(self) -> bool:
        return self.cancel_caught and self.cancel_lag <= CANCEL_LIMIT

    def check(self) -> None:
        """Record every invariant that does not hold in ``failures``."""
        if self.wrong_rows:
            self.failures.append(f"{self.wrong_rows} point reads returned the wrong row")
        if not self.total_kept:
            self.failures.append(
                f"total of balances changed: {self.total_before:,} -> {self.total_after:,}"
            )
        if self.negative_accounts:
            self.failures.append(f"{self.negative_accounts} accounts have a negative balance")
        if not self.cancel_caught:
            self.failures.append("the long query was not cancelled by its deadline")
        elif self.cancel_lag > CANCEL_LIMIT:
            self.failures.append(
                f"the cancelled query gave way {_ms(self.cancel_lag)} after its deadline "
                f"(limit {_ms(CANCEL_LIMIT)})"
            )
        if not self.next_query_ok:
            self.failures.append("the query after the cancellation did not return the right value")

    @property
    def ok(self) -> bool:
        return not self.failures


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def _split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible."""
    share, extra = divmod(total, parts)
    return [share + (1 if index < extra else 0) for index in range(parts)]


def trio_available() -> bool:
    return importlib.util.find_spec("trio") is not None


# -- the workload ----------------------------------------------------------------------


async def _setup(pool: Pool) -> None:
    async with pool.connection() as conn:
        await conn.executescript(
            """
            CREATE TABLE items (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
            """
        )
    async with pool.write() as conn:
        await conn.executemany(
            "INSERT INTO items (id, value) VALUES (?, ?)",
            ((key, f"item {key}") for key in range(1, ITEMS + 1)),
        )
        await conn.executemany(
            "INSERT INTO accounts (id, balance) VALUES (?, ?)",
            ((key, OPENING_BALANCE) for key in range(1, ACCOUNTS + 1)),
        )


async def _point_reads(pool: Pool, config: DemoConfig, report: BackendReport) -> None:
    counts = [0] * READ_TASKS
    deadline = (
        anyio.current_time() + config.seconds
        if config.ops is None and config.seconds is not None
        else None
    )
    quotas = _split(config.ops, READ_TASKS) if config.ops is not None else [0] * READ_TASKS

    async def reader(index: int) -> None:
        rng = random.Random(index)
        done = 0
        wrong = 0
        while (done < quotas[index]) if deadline is None else (anyio.current_time() < deadline):
            key = rng.randint(1, ITEMS)
            async with pool.read() as conn:
                row = await conn.fetchone("SELECT id, value FROM items WHERE id = ?", (key,))
            if row is None or row[0] != key:
                wrong += 1
            done += 1
        counts[index] = done
        report.wrong_rows += wrong

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(READ_TASKS):
            tg.start_soon(reader, index)
    report.read_seconds = time.perf_counter() - started
    report.reads = sum(counts)


async def _total(pool: Pool) -> int:
    async with pool.read() as conn:
        total = await conn.fetchval("SELECT sum(balance) FROM accounts")
    return int(total)


async def _transfers(pool: Pool, config: DemoConfig, report: BackendReport) -> None:
    report.total_before = await _total(pool)
    done = [0] * TRANSFER_TASKS
    declined = [0] * TRANSFER_TASKS
    deadline = (
        anyio.current_time() + config.seconds
        if config.ops is None and config.seconds is not None
        else None
    )
    quotas = _split(config.ops, TRANSFER_TASKS) if config.ops is not None else [0] * TRANSFER_TASKS

    async def teller(index: int) -> None:
        rng = random.Random(1000 + index)
        attempts = 0
        while (attempts < quotas[index]) if deadline is None else (anyio.current_time() < deadline):
            source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
            amount = rng.randint(1, MAX_AMOUNT)
            async with pool.write() as conn:
                # Read-modify-write: pool.write() holds the write lock (BEGIN IMMEDIATE)
                # from the first statement to the COMMIT, so no update can be lost.
                have = await conn.fetchval("SELECT balance FROM accounts WHERE id = ?", (source,))
                other = await conn.fetchval("SELECT balance FROM accounts WHERE id = ?", (target,))
                if have >= amount:
                    await conn.execute(
                        "UPDATE accounts SET balance = ? WHERE id = ?", (have - amount, source)
                    )
                    await conn.execute(
                        "UPDATE accounts SET balance = ? WHERE id = ?", (other + amount, target)
                    )
                    done[index] += 1
                else:
                    declined[index] += 1
            attempts += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(TRANSFER_TASKS):
            tg.start_soon(teller, index)
    report.transfer_seconds = time.perf_counter() - started
    report.transfers = sum(done)
    report.declined = sum(declined)
    report.total_after = await _total(pool)
    async with pool.read() as conn:
        report.negative_accounts = int(
            await conn.fetchval("SELECT count(*) FROM accounts WHERE balance < 0")
        )


async def _cancellation(pool: Pool, report: BackendReport) -> None:
    with anyio.move_on_after(CANCEL_AFTER) as scope:
        async with pool.read() as conn:
            await conn.fetchval(LONG_QUERY)
    report.cancel_lag = max(0.0, anyio.current_time() - scope.deadline)
    report.cancel_caught = scope.cancelled_caught
    # The pool goes on: this query queues behind the interrupted one on the same kind of
    # connection and must see the table as before.
    started = time.perf_counter()
    async with pool.read() as conn:
        count = await conn.fetchval("SELECT count(*) FROM items")
    report.next_query_seconds = time.perf_counter() - started
    report.next_query_ok = count == ITEMS


async def run_backend(backend: str, path: str, config: DemoConfig, out: Output) -> BackendReport:
    """The whole workload on a fresh database file at ``path``, under the running loop."""
    report = BackendReport(backend)
    label = " " * 13
    async with open_pool(path, readers=config.readers) as pool:
        started = time.perf_counter()
        await _setup(pool)
        out(
            f"  setup      {ITEMS:,} items, {ACCOUNTS} accounts of {OPENING_BALANCE:,} "
            f"in {_ms(time.perf_counter() - started)}"
        )

        await _point_reads(pool, config, report)
        out(
            f"  reads      {READ_TASKS} tasks: {report.reads:,} primary-key fetchone() in "
            f"{report.read_seconds:.2f} s = {_rate(report.reads, report.read_seconds)} reads/s"
            + (f", {report.wrong_rows} WRONG ROWS" if report.wrong_rows else "")
        )

        await _transfers(pool, config, report)
        out(
            f"  transfers  {TRANSFER_TASKS} tasks: {report.transfers:,} transfers "
            f"({report.declined:,} declined for lack of funds) in "
            f"{report.transfer_seconds:.2f} s = "
            f"{_rate(report.transfers + report.declined, report.transfer_seconds)} transactions/s"
        )
        kept = "kept" if report.total_kept else "NOT KEPT"
        out(
            f"{label}total before {report.total_before:,}, after {report.total_after:,}: "
            f"{kept}; accounts below zero: {report.negative_accounts}"
        )

        await _cancellation(pool, report)
        if report.cancel_caught:
            verdict = "ok" if report.cancel_ok else "TOO SLOW"
            out(
                f"  cancel     long query cancelled by move_on_after({CANCEL_AFTER:g}): gave "
                f"way {_ms(report.cancel_lag)} after the deadline "
                f"(limit {_ms(CANCEL_LIMIT)}): {verdict}"
            )
        else:
            out(f"  cancel     long query was NOT cancelled by move_on_after({CANCEL_AFTER:g})")
        next_verdict = "ok" if report.next_query_ok else "WRONG RESULT"
        out(
            f"{label}next query on the pool answered in "
            f"{_ms(report.next_query_seconds)}: {next_verdict}"
        )

        stats = report.statistics = pool.statistics()
        out(
            f"  statistics read checkouts {stats.read.checkouts:,}, write checkouts "
            f"{stats.write.checkouts:,}, interrupted {stats.interrupted}, "
            f"rollbacks {stats.rollbacks}, timeouts "
            f"{stats.read.timeouts + stats.write.timeouts}"
        )
    report.check()
    return report


# -- running it ------------------------------------------------------------------------


def _versions(backends: Sequence[str]) -> str:
    parts = [
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
        f"anyio {_version_of('anyio')}",
    ]
    if "trio" in backends:
        parts.append(f"trio {_version_of('trio')}")
    return ", ".join(parts)


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _summary(reports: Sequence[BackendReport], out: Output) -> None:
    header = ("backend", "reads/s", "transactions/s", "total", "cancel lag", "result")
    rows = [header]
    for report in reports:
        rows.append(
            (
                report.backend,
                _rate(report.reads, report.read_seconds),
                _rate(report.transfers + report.declined, report.transfer_seconds),
                "kept" if report.total_kept else "NOT KEPT",
                _ms(report.cancel_lag) if report.cancel_caught else "not cancelled",
                "ok" if report.ok else "FAILED",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out(("  " + "  ".join(cells)).rstrip())


def run_demo(config: DemoConfig, backends: Sequence[str], out: Output = print) -> int:
    """Run the demo under each of ``backends``; 0 if every invariant held, else 1."""
    out(f"litepool {litepool.__version__} demo ({_versions(backends)})")
    out(
        f"{config.readers} readers + 1 writer; {config.describe()}; "
        "database in a temporary directory, removed at the end"
    )
    reports: list[BackendReport] = []
    with tempfile.TemporaryDirectory(prefix="litepool-demo-") as directory:
        for backend in backends:
            out("")
            out(f"[{backend}]")
            path = os.path.join(directory, f"demo-{backend}.db")
            try:
                report = anyio.run(run_backend, backend, path, config, out, backend=backend)
            except Exception as exc:
                report = BackendReport(backend)
                report.failures.append(f"{type(exc).__name__}: {exc}")
                out(f"  ERROR      {type(exc).__name__}: {exc}")
            reports.append(report)
    out("")
    out("summary")
    _summary(reports, out)
    failures = [(report.backend, failure) for report in reports for failure in report.failures]
    out("")
    if failures:
        for backend, failure in failures:
            out(f"FAILED [{backend}]: {failure}")
        return 1
    out(
        "all invariants held: every read found its row, the total of balances was kept, and "
        f"the cancelled query gave way within {_ms(CANCEL_LIMIT)} of its deadline"
    )
    return 0


def choose_backends(requested: str, out: Output) -> list[str]:
    """The backends to run for ``--backend`` (``trio`` only if trio is installed)."""
    if requested == "asyncio":
        return ["asyncio"]
    if trio_available():
        return ["trio"] if requested == "trio" else list(BACKENDS)
    out("trio is not installed: running under asyncio only (pip install 'litepool[trio]')")
    return ["asyncio"]


def parse_args(argv: Sequence[str] | None = None) -> tuple[DemoConfig, str]:
    """The run's size and the ``--backend`` asked for; exits with 2 on a usage error."""
    parser = argparse.ArgumentParser(
        description=(
            "Run a concurrent workload on a temporary database (removed at the end), once "
            "per backend: point reads from 50 tasks, read-modify-write money transfers from "
            "20 tasks (the total must be kept), and a long query cancelled by a timeout (it "
            "must give way within 50 ms of the deadline). Exits with 0 if every invariant "
            "held, 1 otherwise."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="S",
        help=f"run the reads and the transfers for S seconds each (default {DEFAULT_SECONDS:g})",
    )
    size.add_argument(
        "--ops",
        type=int,
        default=None,
        metavar="N",
        help="run N point reads and N transfer transactions instead of a fixed time",
    )
    parser.add_argument(
        "--readers",
        type=int,
        default=DEFAULT_READERS,
        metavar="N",
        help=f"reader connections in the pool (default {DEFAULT_READERS})",
    )
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="both",
        help="event loop to run under (default both; trio is skipped if not installed)",
    )
    args = parser.parse_args(argv)
    seconds: float | None = args.seconds
    ops: int | None = args.ops
    readers: int = args.readers
    backend: str = args.backend
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        parser.error(f"argument --seconds: must be a positive number of seconds, got {seconds}")
    if ops is not None and ops < 1:
        parser.error(f"argument --ops: must be >= 1, got {ops}")
    if readers < 1:
        parser.error(f"argument --readers: must be >= 1, got {readers}")
    if backend == "trio" and not trio_available():
        parser.error("argument --backend: trio is not installed (pip install 'litepool[trio]')")
    config = DemoConfig(
        seconds=DEFAULT_SECONDS if seconds is None and ops is None else seconds,
        ops=ops,
        readers=readers,
    )
    return config, backend


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    config, backend = parse_args(argv)
    return run_demo(config, choose_backends(backend, print))


if __name__ == "__main__":
    sys.exit(main())
