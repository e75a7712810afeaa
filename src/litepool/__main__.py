"""The ``litepool`` command line: ``python -m litepool demo``."""

from __future__ import annotations

import argparse
import sys

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


def build_parser() -> argparse.ArgumentParser:
    """The ``litepool`` command line: its ``demo`` subcommand."""
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
    raise AssertionError(f"unknown command {args.command!r}")  # argparse rejects it first


if __name__ == "__main__":
    sys.exit(main())
