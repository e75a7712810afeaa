"""The complete programs of the documentation run, and run again on the same file.

A reader copies the home page's or the quickstart's program, runs it, then runs it once
more: the second run must work and print what the first printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def program(page: str) -> str:
    """The first Python block of ``page`` that runs itself with ``anyio.run(main)``."""
    for block in _BLOCK.findall((DOCS / page).read_text(encoding="utf-8")):
        if "\nanyio.run(main)" in block:
            return str(block)
    raise AssertionError(f"{page} has no program that calls anyio.run(main)")


def run(source: str, directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", source],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("page", "expected"),
    [
        pytest.param("index.md", "('Ada',)\n", id="index"),
        pytest.param(
            "quickstart.md",
            "apple 2\npear 5\n1 [litepool.Row(item='plum', count=3)]\ncancelled: True\n",
            id="quickstart",
        ),
    ],
)
def test_program_runs_twice_with_the_same_output(
    page: str, expected: str, backend: str, tmp_path: Path
) -> None:
    source = program(page).replace(
        "\nanyio.run(main)", f"\nanyio.run(main, backend={backend!r})", 1
    )
    assert run(source, tmp_path) == expected
    assert run(source, tmp_path) == expected
