"""``python3 -m bench --quick``, the repository's benchmark: it runs, every installed
contender reports, and litepool's invariants hold. Never its speed: these are correctness
checks only."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bench._contenders import CONTENDERS
from bench._wakeup import thread_round_trip_us
from bench._workloads import WORKLOADS as BENCH_WORKLOADS

#: Where ``python3 -m bench`` is run from, as the README says.
ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT = 120  # seconds; the quick runs below take about 20 and 10


WORKLOADS = ("point-reads", "heavy-reads", "small-writes", "transfers", "mixed")
CONTENDER_MODULES = {
    "sqlite3": (),
    "litepool-asyncio": (),
    "litepool-trio": ("trio",),
    "aiosqlite-shared": ("aiosqlite",),
    "aiosqlite-per-op": ("aiosqlite",),
    "aiosqlitepool": ("aiosqlite", "aiosqlitepool"),
    "sqlite-anyio-asyncio": ("sqlite_anyio",),
    "sqlite-anyio-trio": ("sqlite_anyio", "trio"),
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _installed(contender: str) -> bool:
    return all(importlib.util.find_spec(module) for module in CONTENDER_MODULES[contender])


def test_the_test_environment_has_every_contender_and_the_bench_extra() -> None:
    # The bench extra is part of the test extra: without it the comparisons below would
    # shrink to "not installed" and prove nothing.
    missing = [name for name in CONTENDER_MODULES if not _installed(name)]
    missing += [name for name in ("rich", "matplotlib") if not importlib.util.find_spec(name)]
    assert missing == [], f"install the test extra: pip install -e '.[test]' ({missing})"


def test_the_round_trip_probe_measures_and_leaves_no_thread() -> None:
    before = threading.enumerate()
    assert 0 < thread_round_trip_us(samples=20) < 1_000_000
    assert threading.enumerate() == before


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
        env=env,
        check=False,
    )


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_quick_bench_reports_every_contender_and_keeps_invariants(tmp_path: Path) -> None:
    out = tmp_path / "out"
    page = tmp_path / "page.md"
    page.write_text(
        "# Results\n\nbefore\n\n<!-- litepool-bench:results -->\nold\n"
        "<!-- /litepool-bench:results -->\n\nafter\n",
        encoding="utf-8",
    )
    result = _run("--quick", "--out", str(out), "--markdown", str(page))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr

    data = _load(out / "bench.json")
    assert data["kind"] == "litepool-bench"
    assert data["config"]["quick"] is True
    assert data["machine"]["cpus"] >= 1
    assert 1 <= data["machine"]["usable_cpus"] <= data["machine"]["cpus"]
    assert data["machine"]["thread_round_trip_us"] > 0
    runs = {(run["workload"], run["contender"]): run for run in data["measurements"]}
    assert len(runs) == len(data["measurements"])  # --quick is one round
    for contender in CONTENDER_MODULES:
        for workload in WORKLOADS:
            run = runs[(workload, contender)]
            if not _installed(contender):
                assert run["status"] == "not installed", run
                continue
            assert run["status"] == "ok", run
            assert run["ops"] > 0, run
            assert run["seconds"] > 0, run
            assert run["p50_ms"] <= run["p99_ms"], run
            if workload == "transfers":
                assert run["total_before"] is not None, run
                assert run["total_after"] is not None, run
            else:
                assert run["total_kept"] is None, run

    # litepool's invariants, on both backends: no error of any kind, and the transfers
    # kept the total of the balances.
    for contender in ("litepool-asyncio", "litepool-trio"):
        for workload in WORKLOADS:
            run = runs[(workload, contender)]
            assert run["errors"] == {}, run
        transfers = runs[("transfers", contender)]
        assert transfers["total_kept"] is True, transfers
        assert transfers["total_before"] == transfers["total_after"], transfers

    summary = {(item["workload"], item["contender"]) for item in data["summary"]}
    assert summary == set(runs)
    assert {item["subject"] for item in data["ratios"]} >= {"litepool-asyncio", "litepool-trio"}

    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)

    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nbefore\n")
    assert text.endswith("\nafter\n")
    assert "old" not in text
    assert "| point-reads | sqlite3 |" in text
    assert "round trip:" in text
    assert "litepool-asyncio / aiosqlite-shared" in text or not _installed("aiosqlite-shared")

    assert "litepool-asyncio" in result.stdout
    assert "FAILED" not in result.stdout


def test_quick_sweep_writes_its_answer_and_memory(tmp_path: Path) -> None:
    result = _run("--quick", "--sweep", "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    data = _load(tmp_path / "sweep.json")
    assert data["kind"] == "litepool-bench-sweep"
    config = data["config"]
    assert set(data["answer"]) == set(config["workloads"])
    for per_readers in data["answer"].values():
        assert set(per_readers) == {str(readers) for readers in config["readers"]}
    expected = (
        len(config["workloads"]) * len(config["tasks"]) * (1 + len(config["readers"]))
    ) * config["rounds"]
    assert len(data["measurements"]) == expected
    for run in data["measurements"]:
        if run["contender"] == "litepool-asyncio" or _installed(run["contender"]):
            assert run["status"] == "ok", run
        if run["contender"] == "litepool-asyncio":
            assert run["errors"] == {}, run
    assert [item["readers"] for item in data["rss"]] == [0, 1, 4, 16]
    for item in data["rss"]:
        assert "error" not in item, item
        assert item["maxrss_kib"] > 0, item
        if item["readers"]:
            assert item["ops"] > 0, item
            assert item["errors"] == 0, item
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert (result.stdout + result.stderr).count(data["database"]) == 1


def test_the_database_is_reported_once(tmp_path: Path) -> None:
    # Progress says what is running; the database that was built is told once, with the
    # results, not again by the progress lines.
    result = _run(
        "--quick",
        "--workloads",
        "point-reads",
        "--contenders",
        "sqlite3",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    database = _load(tmp_path / "bench.json")["database"]
    assert (result.stdout + result.stderr).count(database) == 1, result.stdout + result.stderr
    assert f"database: {database} (built in " in result.stdout


def test_bench_help() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--quick",
        "--sweep",
        "--scale",
        "--rounds",
        "--seconds",
        "--workloads",
        "--contenders",
        "--out",
        "--markdown",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("--workloads", "nope"),
        ("--contenders", "sqlite3,nope"),
        ("--rounds", "0"),
        ("--seconds", "-1"),
        ("--scale", "0"),
    ],
)
def test_bad_arguments_are_usage_errors(args: tuple[str, ...]) -> None:
    result = _run(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_this_file_names_every_contender_and_workload() -> None:
    # The checks above go through these names: one the benchmark gained would go unchecked.
    assert tuple(CONTENDER_MODULES) == tuple(contender.name for contender in CONTENDERS)
    assert tuple(workload.name for workload in BENCH_WORKLOADS) == WORKLOADS
