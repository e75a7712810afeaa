"""The ``litepool`` command line: ``python -m litepool demo`` and ``python -m litepool bench``."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._demo import BACKENDS, DEFAULT_SECONDS, DemoConfig
from ._demo import main as demo_main
from ._options import DEFAULT_READERS


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _positive_scale(text: str) -> float:
    value = _positive_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be at most 100, got {text!r}")
    return value


def _names(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = [name for name in names if name not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(choices)}"
            )
        return names

    return parse


# The benchmark's names, listed here so that ``--help`` and argument checking do not
# import the benchmark (and its optional dependencies).
BENCH_WORKLOADS = ("point-reads", "heavy-reads", "small-writes", "transfers", "mixed")
BENCH_CONTENDERS = (
    "sqlite3",
    "litepool-asyncio",
    "litepool-trio",
    "aiosqlite-shared",
    "aiosqlite-per-op",
    "aiosqlitepool",
    "sqlite-anyio-asyncio",
    "sqlite-anyio-trio",
)


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmark litepool against sqlite3, aiosqlite, aiosqlitepool and sqlite-anyio",
        description=(
            "Build a temporary database, then run each workload against each contender on "
            "a fresh copy of it, for a fixed time, in rounds with the contenders "
            "interleaved, and report medians: operations per second, p50 and p99 latency, "
            "errors by kind, and whether the transfers kept the total. With --sweep: at "
            "what concurrency a pool of N readers beats one shared connection, and "
            "litepool's peak memory by number of readers. Exits with 1 if litepool broke "
            "an invariant (an error, a wrong row, a total not kept), else 0. Needs rich "
            "and matplotlib (pip install 'litepool[bench]')."
        ),
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="a tiny database, one round, a fraction of a second per run (for tests)",
    )
    bench.add_argument(
        "--sweep",
        action="store_true",
        help="run the concurrency sweep and the memory measurement instead",
    )
    bench.add_argument(
        "--scale",
        type=_positive_scale,
        default=None,
        metavar="F",
        help="database size factor (default 1: 2,000 users, 20,000 posts, ...)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        metavar="R",
        help="rounds; medians are reported (default 3)",
    )
    bench.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds per workload and contender (default 2; 0.5 per cell with --sweep)",
    )
    bench.add_argument(
        "--readers",
        type=_positive_int,
        default=DEFAULT_READERS,
        metavar="N",
        help=(
            f"litepool's readers (default {DEFAULT_READERS}); aiosqlitepool gets N + 1 "
            "connections, as many as litepool has"
        ),
    )
    bench.add_argument(
        "--workloads",
        type=_names(BENCH_WORKLOADS, "workload"),
        default=None,
        metavar="A,B",
        help=f"only these workloads: {', '.join(BENCH_WORKLOADS)}",
    )
    bench.add_argument(
        "--contenders",
        type=_names(BENCH_CONTENDERS, "contender"),
        default=None,
        metavar="A,B",
        help=f"only these contenders: {', '.join(BENCH_CONTENDERS)}",
    )
    bench.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the raw figures (bench.json / sweep.json) and a chart (.png) there",
    )
    bench.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help=(
            "write the results as Markdown: between the litepool-bench markers if FILE "
            "has them (so a page can be regenerated in place), else appended to FILE"
        ),
    )
    bench.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``litepool`` command line: its ``demo`` and ``bench`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="litepool",
        description="litepool: a structured-concurrency SQLite connection pool for anyio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a concurrent workload on a temporary database and report what happened",
        description=(
            "Run a concurrent workload on a temporary database (removed at the end), once "
            "per backend: point reads from 50 tasks, read-modify-write money transfers from "
            "20 tasks (the total must be kept), and a long query cancelled by a timeout (it "
            "must give way within 50 ms of the deadline). Exits with 0 if every invariant "
            "held, 1 otherwise."
        ),
    )
    size = demo.add_mutually_exclusive_group()
    size.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help=f"run the reads and the transfers for S seconds each (default {DEFAULT_SECONDS:g})",
    )
    size.add_argument(
        "--ops",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run N point reads and N transfer transactions instead of a fixed time",
    )
    demo.add_argument(
        "--readers",
        type=_positive_int,
        default=DEFAULT_READERS,
        metavar="N",
        help=f"reader connections in the pool (default {DEFAULT_READERS})",
    )
    demo.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="both",
        help="event loop to run under (default both; trio is skipped if not installed)",
    )
    _add_bench(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        seconds: float | None = args.seconds
        ops: int | None = args.ops
        config = DemoConfig(
            seconds=DEFAULT_SECONDS if seconds is None and ops is None else seconds,
            ops=ops,
            readers=args.readers,
        )
        backend: str = args.backend
        return demo_main(config, backend)
    if args.command == "bench":
        from ._bench import BenchOptions
        from ._bench import main as bench_main

        options = BenchOptions(
            command=shlex.join(["python", "-m", "litepool", *argv]),
            quick=args.quick,
            sweep=args.sweep,
            scale=args.scale,
            rounds=args.rounds,
            seconds=args.seconds,
            readers=args.readers,
            workloads=args.workloads,
            contenders=args.contenders,
            out=args.out,
            markdown=args.markdown,
            progress=args.progress,
        )
        return bench_main(options)
    raise AssertionError(f"unknown command {args.command!r}")  # argparse rejects it first


if __name__ == "__main__":
    sys.exit(main())
