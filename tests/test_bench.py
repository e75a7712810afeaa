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
from bench._report import (
    key_ratios,
    not_kept_note,
    print_results,
    ratio,
    results_chart,
    results_markdown,
    summarize,
)
from bench._runner import Measurement
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
    "litepool-checkouts-asyncio": (),
    "litepool-checkouts-trio": ("trio",),
    "aiosqlite-shared": ("aiosqlite",),
    "aiosqlite-per-op": ("aiosqlite",),
    "aiosqlitepool": ("aiosqlite", "aiosqlitepool"),
    "sqlite-anyio-asyncio": ("sqlite_anyio",),
    "sqlite-anyio-trio": ("sqlite_anyio", "trio"),
}
LITEPOOL = (
    "litepool-asyncio",
    "litepool-trio",
    "litepool-checkouts-asyncio",
    "litepool-checkouts-trio",
)
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

    # litepool's invariants, used either way, on both backends: no error of any kind,
    # and the transfers kept the total of the balances.
    for contender in LITEPOOL:
        for workload in WORKLOADS:
            run = runs[(workload, contender)]
            assert run["errors"] == {}, run
        transfers = runs[("transfers", contender)]
        assert transfers["total_kept"] is True, transfers
        assert transfers["total_before"] == transfers["total_after"], transfers

    summary = {(item["workload"], item["contender"]) for item in data["summary"]}
    assert summary == set(runs)
    assert {item["subject"] for item in data["ratios"]} >= set(LITEPOOL)
    summary_rates = {
        (item["workload"], item["contender"]): item["ops_per_second"] for item in data["summary"]
    }
    for item in data["ratios"]:
        # The ratio table is read off the results table: it cannot contradict it.
        subject = summary_rates[(item["workload"], item["subject"])]
        baseline = summary_rates[(item["workload"], item["baseline"])]
        assert item["ratio"] == pytest.approx(subject / baseline), item

    assert (out / "bench.png").read_bytes().startswith(PNG_MAGIC)

    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nbefore\n")
    assert text.endswith("\nafter\n")
    assert "old" not in text
    assert "| point-reads | sqlite3 |" in text
    assert "round trip:" in text
    assert "litepool-asyncio / aiosqlite-shared" in text or not _installed("aiosqlite-shared")

    for contender in LITEPOOL:
        assert contender in result.stdout
    # The bare round trip goes with every run, on the terminal as in the Markdown.
    assert "bare event loop → thread → event loop round trip:" in result.stdout
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
    assert "bare event loop → thread → event loop round trip:" in result.stdout
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


# -- the report, from measurements made up for the purpose ----------------------------------


def _made_up(
    workload: str, contender: str, round_index: int, ops_per_second: float, **fields: Any
) -> Measurement:
    return Measurement(
        workload=workload,
        contender=contender,
        round=round_index,
        tasks=5,
        ops=round(ops_per_second * 10),
        seconds=10.0,
        p50_ms=1.0,
        p99_ms=2.0,
        **fields,
    )


def test_a_ratio_is_the_ratio_of_the_medians_with_the_rounds_spread_beside_it() -> None:
    # Per round 1.0, 0.5 and 2.0: the median of the ratios would be 1.00x; the medians
    # are 20 and 15, and the ratio of those, 1.33x, is what the results table shows.
    measurements = [
        _made_up("point-reads", contender, index, rate)
        for index, (subject, baseline) in enumerate([(10, 10), (20, 40), (30, 15)])
        for contender, rate in (("litepool-asyncio", subject), ("aiosqlite-shared", baseline))
    ]
    item = ratio(measurements, "litepool-asyncio", "aiosqlite-shared", "point-reads")
    assert item.value == pytest.approx(20 / 15)
    assert [item.low, item.high, item.rounds] == pytest.approx([0.5, 2.0, 3])
    assert item.text() == "1.33x (0.50-2.00)"
    assert item.to_json() == {
        "subject": "litepool-asyncio",
        "baseline": "aiosqlite-shared",
        "workload": "point-reads",
        "ratio": pytest.approx(20 / 15),
        "ratio_min": pytest.approx(0.5),
        "ratio_max": pytest.approx(2.0),
        "rounds": 3,
        "as_percent": False,
    }
    medians = {summary.contender: summary.ops_per_second for summary in summarize(measurements)}
    assert item.value == pytest.approx(medians["litepool-asyncio"] / medians["aiosqlite-shared"])


def test_a_percentage_has_its_spread_too() -> None:
    measurements = [
        _made_up("point-reads", contender, index, rate)
        for index, (subject, floor) in enumerate([(36, 100), (40.1, 100), (38.2, 100)])
        for contender, rate in (("litepool-asyncio", subject), ("sqlite3", floor))
    ]
    item = ratio(measurements, "litepool-asyncio", "sqlite3", "point-reads", as_percent=True)
    assert item.text() == "38.2% (36.0-40.1%)"


def test_a_failed_round_counts_for_neither_median_nor_spread() -> None:
    measurements = [
        _made_up("transfers", "litepool-asyncio", 0, 300),
        _made_up("transfers", "aiosqlite-shared", 0, 100),
        _made_up("transfers", "litepool-asyncio", 1, 1000, status="failed", detail="boom"),
        _made_up("transfers", "aiosqlite-shared", 1, 200),
        _made_up("transfers", "litepool-asyncio", 2, 500),
        _made_up("transfers", "aiosqlite-shared", 2, 300),
    ]
    item = ratio(measurements, "litepool-asyncio", "aiosqlite-shared", "transfers")
    # Medians 400 (300, 500) and 200 (100, 200, 300); per round 3.0 and 1.67.
    assert item.value == pytest.approx(2.0)
    assert [item.low, item.high, item.rounds] == pytest.approx([5 / 3, 3.0, 2])
    assert item.text() == "2.00x (1.67-3.00)"


def test_one_round_has_no_spread_and_a_missing_contender_no_ratio() -> None:
    measurements = [
        _made_up("mixed", "litepool-asyncio", 0, 300),
        _made_up("mixed", "aiosqlite-shared", 0, 100),
        _made_up("mixed", "aiosqlitepool", 0, 0, status="not installed"),
    ]
    assert ratio(measurements, "litepool-asyncio", "aiosqlite-shared", "mixed").text() == "3.00x"
    missing = ratio(measurements, "litepool-asyncio", "aiosqlitepool", "mixed")
    assert missing.text() == "n/a"
    assert missing.to_json()["ratio"] is None


def _everyone(workloads: tuple[str, ...]) -> list[Measurement]:
    return [
        _made_up(workload, contender.name, 0, 100 + index)
        for workload in workloads
        for index, contender in enumerate(CONTENDERS)
    ]


def test_the_key_ratios_compare_each_way_of_using_litepool() -> None:
    found = [
        (item.subject, item.baseline, item.workload, item.as_percent)
        for item in key_ratios(_everyone(WORKLOADS))
    ]
    expected = [
        (subject, "aiosqlite-shared", workload, False)
        for workload in WORKLOADS
        for subject in ("litepool-asyncio", "litepool-checkouts-asyncio")
    ]
    expected += [
        ("litepool-asyncio", "aiosqlitepool", "point-reads", False),
        ("litepool-trio", "aiosqlitepool", "point-reads", False),
    ]
    expected += [
        (f"{way}-trio", f"{way}-asyncio", workload, False)
        for workload in WORKLOADS
        for way in ("litepool", "litepool-checkouts")
    ]
    expected += [
        ("litepool-asyncio", "sqlite3", "point-reads", True),
        ("litepool-trio", "sqlite3", "point-reads", True),
        ("litepool-asyncio", "sqlite3", "transfers", True),
    ]
    assert found == expected


def test_the_key_ratios_keep_only_workloads_and_contenders_that_ran() -> None:
    measurements = [
        run
        for run in _everyone(("transfers",))
        if run.contender not in ("aiosqlite-shared", "litepool-checkouts-trio")
    ]
    found = [(item.subject, item.baseline, item.workload) for item in key_ratios(measurements)]
    assert found == [
        ("litepool-trio", "litepool-asyncio", "transfers"),
        ("litepool-asyncio", "sqlite3", "transfers"),
    ]


def _data(measurements: list[Measurement]) -> dict[str, Any]:
    return {
        "command": "python3 -m bench",
        "started": "2026-01-01 00:00 UTC",
        "machine": {"cpus": 2, "python": "CPython", "sqlite": "3", "thread_round_trip_us": 50.0},
        "database": "a database",
        "config": {"rounds": 1, "seconds": 1.0},
        "measurements": [run.to_json() for run in measurements],
    }


def _transfers(total_after: int) -> list[Measurement]:
    return [
        _made_up("transfers", contender, 0, 100, total_before=1000, total_after=after)
        for contender, after in (
            ("sqlite3", 1000),
            ("litepool-asyncio", 1000),
            ("aiosqlitepool", total_after),
        )
    ]


def _chart_texts(tmp_path: Path, measurements: list[Measurement]) -> list[str]:
    """Every text the results chart draws, whether on the figure or on a panel."""
    import matplotlib.figure
    import matplotlib.text

    texts: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def record(figure: matplotlib.figure.Figure, *args: Any, **kwargs: Any) -> None:
        texts.extend(text.get_text() for text in figure.findobj(matplotlib.text.Text))
        save(figure, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.figure.Figure, "savefig", record)
        results_chart(str(tmp_path / "bench.png"), _data(measurements))
    assert (tmp_path / "bench.png").read_bytes().startswith(PNG_MAGIC)
    return texts


def test_not_kept_is_explained_under_every_results_table_that_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    measurements = _transfers(total_after=979)
    summaries = summarize(measurements)
    markdown = results_markdown(_data(measurements))
    assert "| NOT KEPT (-21) |" in markdown
    note = not_kept_note(summaries)
    assert note is not None
    assert "sum of all balances changed" in note
    assert "not comparable" in note
    table, after_table = markdown.split("NOT KEPT: ", 1)
    assert "NOT KEPT (-21)" in table
    assert after_table.index("sum of all balances") < after_table.index("Ratios (")

    print_results("results", summaries, key_ratios(measurements))
    out = capsys.readouterr().out
    assert out.index("NOT KEPT (-21)") < out.index(note) < out.index("ratios:")

    figure_texts = _chart_texts(tmp_path, measurements)
    assert "100  total NOT KEPT (-21)" in figure_texts
    assert " ".join(figure_texts).count("sum of all balances") == 1


def test_no_not_kept_no_explanation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    measurements = _transfers(total_after=1000)
    summaries = summarize(measurements)
    assert not_kept_note(summaries) is None
    assert "NOT KEPT" not in results_markdown(_data(measurements))
    print_results("results", summaries, key_ratios(measurements))
    assert "NOT KEPT" not in capsys.readouterr().out
    assert "NOT KEPT" not in " ".join(_chart_texts(tmp_path, measurements))
