"""The benchmark's command line: ``python3 -m bench [options]`` from the repository's root."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

from litepool._options import DEFAULT_READERS

from . import BenchOptions, run
from ._contenders import BY_NAME as CONTENDERS
from ._workloads import BY_NAME as WORKLOADS


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


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(
        prog="python3 -m bench",
        description=(
            "Benchmark litepool against sqlite3, aiosqlite, aiosqlitepool and sqlite-anyio. "
            "Build a temporary database, then run each workload against each contender on "
            "a fresh copy of it, for a fixed time, in rounds with the contenders "
            "interleaved, and report medians: operations per second, p50 and p99 latency, "
            "errors by kind, and whether the transfers kept the total. With --sweep: at "
            "what concurrency a pool of N readers beats one shared connection, and "
            "litepool's peak memory by number of readers. Exits with 1 if litepool broke "
            "an invariant (an error, a wrong row, a total not kept), else 0. Needs rich "
            "and matplotlib: python3 -m pip install '.[bench]' from the repository."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny database, one round, a fraction of a second per run (for tests)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run the concurrency sweep and the memory measurement instead",
    )
    parser.add_argument(
        "--scale",
        type=_positive_scale,
        default=None,
        metavar="F",
        help="database size factor (default 1: 2,000 users, 20,000 posts, ...)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=None,
        metavar="R",
        help="rounds; medians are reported (default 3)",
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds per workload and contender (default 2; 0.5 per cell with --sweep)",
    )
    parser.add_argument(
        "--readers",
        type=_positive_int,
        default=DEFAULT_READERS,
        metavar="N",
        help=(
            f"litepool's readers (default {DEFAULT_READERS}); aiosqlitepool gets N + 1 "
            "connections, as many as litepool has"
        ),
    )
    parser.add_argument(
        "--workloads",
        type=_names(tuple(WORKLOADS), "workload"),
        default=None,
        metavar="A,B",
        help=f"only these workloads: {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--contenders",
        type=_names(tuple(CONTENDERS), "contender"),
        default=None,
        metavar="A,B",
        help=f"only these contenders: {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the raw figures (bench.json / sweep.json) and a chart (.png) there",
    )
    parser.add_argument(
        "--markdown",
        default=None,
        metavar="FILE",
        help=(
            "write the results as Markdown: between the litepool-bench markers if FILE "
            "has them (so a page can be regenerated in place), else appended to FILE"
        ),
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    options = BenchOptions(
        command=shlex.join(["python3", "-m", "bench", *argv]),
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
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
