"""``python -m litepool``: the command line and its demo, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

DEMO_TIMEOUT = 120  # seconds; the run below takes about one


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "litepool", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env=env,
        check=False,
    )


def test_demo_runs_and_keeps_its_invariants() -> None:
    result = _run("demo", "--ops", "200", "--readers", "2")
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert result.stderr == ""
    for backend in ("[asyncio]", "[trio]"):  # trio is a test dependency
        assert backend in output
    assert output.count("total before 100,000, after 100,000: kept") == 2
    assert output.count("long query cancelled by move_on_after(0.25): gave way") == 2
    assert output.count("next query on the pool answered in") == 2
    assert "interrupted 1" in output
    assert "FAILED" not in output
    assert "all invariants held" in output


def test_demo_single_backend() -> None:
    result = _run("demo", "--ops", "50", "--backend", "asyncio")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[asyncio]" in result.stdout
    assert "[trio]" not in result.stdout


def test_help() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: litepool" in result.stdout
    assert "demo" in result.stdout


def test_demo_help() -> None:
    result = _run("demo", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--seconds", "--ops", "--readers", "--backend"):
        assert option in result.stdout


def test_bad_arguments_are_usage_errors() -> None:
    assert _run().returncode == 2
    assert _run("demo", "--ops", "0").returncode == 2
    assert _run("demo", "--ops", "10", "--seconds", "1").returncode == 2
    assert _run("demo", "--backend", "curio").returncode == 2


def test_main_is_callable_in_process() -> None:
    from litepool.__main__ import build_parser, main

    assert callable(main)
    args = build_parser().parse_args(["demo", "--seconds", "0.5", "--readers", "3"])
    assert (args.seconds, args.ops, args.readers, args.backend) == (0.5, None, 3, "both")
