"""``python3 examples/demo.py``: the demo, run as a user would, from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"
DEMO_TIMEOUT = 120  # seconds; the runs below take about one
#: The first line of each import statement.
IMPORT = re.compile(r"^\s*(?:from|import)\s.*$", re.MULTILINE)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env=env,
        check=False,
    )


def test_demo_runs_and_keeps_its_invariants(tmp_path: Path) -> None:
    result = _run("--ops", "200", "--readers", "2", cwd=tmp_path)
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
    # The database lived in a temporary directory, not where the demo was started.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_single_backend(backend: str, tmp_path: Path) -> None:
    result = _run("--ops", "50", "--backend", backend, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    other = "trio" if backend == "asyncio" else "asyncio"
    assert f"[{backend}]" in result.stdout
    assert f"[{other}]" not in result.stdout


def test_demo_help(tmp_path: Path) -> None:
    result = _run("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage: demo.py" in result.stdout
    for option in ("--seconds", "--ops", "--readers", "--backend"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ops", "0"), "argument --ops: must be >= 1, got 0"),
        (("--readers", "0"), "argument --readers: must be >= 1, got 0"),
        (("--seconds", "-1"), "argument --seconds: must be a positive number of seconds, got -1"),
        (("--seconds", "nan"), "argument --seconds: must be a positive number of seconds, got nan"),
        (("--seconds", "inf"), "argument --seconds: must be a positive number of seconds, got inf"),
        (("--ops", "ten"), "argument --ops: invalid int value: 'ten'"),
        (("--ops", "10", "--seconds", "1"), "not allowed with argument"),
        (("--backend", "curio"), "argument --backend: invalid choice: 'curio'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "usage: demo.py" in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_the_library_package_has_no_command_line_or_demo() -> None:
    # The demo is an example and the benchmark a package of the repository: the wheel,
    # built from src/litepool, holds the library alone, with no command line of its own.
    package = ROOT / "src" / "litepool"
    assert (package / "__init__.py").is_file()
    names = {path.relative_to(package).as_posix() for path in package.rglob("*.py")}
    assert not {"__main__.py", "_demo.py"} & names
    assert not [name for name in names if name.startswith("_bench/")]
    for path in package.rglob("*.py"):
        imports = IMPORT.findall(path.read_text(encoding="utf-8"))
        assert not [line for line in imports if re.search(r"\b(_?bench|_demo)\b", line)], path
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "scripts" not in project
    assert "gui-scripts" not in project
