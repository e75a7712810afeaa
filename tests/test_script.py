"""``Connection.executescript``: split as SQLite splits, in linear time, and cancellable."""

from __future__ import annotations

import sqlite3
import time

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import litepool
from litepool._script import split_script

from .conftest import CancellableTask, StartSignal


def reference_split(script: str) -> list[str]:
    """What SQLite says, one ``sqlite3.complete_statement`` call per ``;``: right, but
    quadratic in the length of a statement."""
    statements: list[str] = []
    start = 0
    position = script.find(";")
    while position != -1:
        candidate = script[start : position + 1]
        if sqlite3.complete_statement(candidate):
            if candidate.strip(" \t\r\n;"):
                statements.append(candidate)
            start = position + 1
        position = script.find(";", position + 1)
    tail = script[start:]
    if tail.strip():
        statements.append(tail)
    return statements


# Pieces that move sqlite3_complete()'s state machine, unfinished quotes and comments too.
PIECES = [
    ";", " ", "\n", "\t", "\f", "\v", "x", "SELECT 1", "CREATE", "create", "TEMP",
    "TEMPORARY", "TRIGGER", "trigger", "BEGIN", "END", "end", "EXPLAIN", "ENDx", "xEND",
    "temp_t", "'a;b'", "'it''s;'", '"q;"', "[b;]", "`c;`", "/* ; */", "-- ; \n", "'",
    '"', "`", "[", "]", "/*", "*/", "--", "-", "/", "$", "é", "e;", "ünd", "(", ")",
]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_split_agrees_with_sqlite(pieces: list[str]) -> None:
    script = "".join(pieces)
    assert split_script(script) == reference_split(script)


def test_split_of_triggers_and_literals() -> None:
    script = (
        "CREATE TABLE t (v);\n"
        "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO t VALUES ('inside; the body');\n"
        "  SELECT 1;\n"
        "END;\n"
        "INSERT INTO t VALUES ('a;b'); -- a comment; with a semicolon\n"
        "/* ; */ SELECT [odd;name] FROM t;;\n"
        "SELECT 'unfinished"
    )
    assert split_script(script) == [
        "CREATE TABLE t (v);",
        "\nCREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN\n"
        "  INSERT INTO t VALUES ('inside; the body');\n  SELECT 1;\nEND;",
        "\nINSERT INTO t VALUES ('a;b');",
        " -- a comment; with a semicolon\n/* ; */ SELECT [odd;name] FROM t;",
        "\nSELECT 'unfinished",
    ]


def test_split_is_linear_in_the_length_of_a_statement() -> None:
    """One statement with a million ';' inside a literal: asking sqlite3_complete() at
    each one would read ~5e11 characters (hours); the state machine reads it once."""
    script = "INSERT INTO t VALUES ('" + ";" * 1_000_000 + "');\nSELECT 1;"
    started = time.monotonic()
    assert [len(s) for s in split_script(script)] == [1_000_026, 10]
    assert time.monotonic() - started < 10


@pytest.mark.anyio
async def test_cancelled_script_frees_the_writer_between_statements(
    db_path: str, anyio_backend: str, cancel_how: str, start_signal: StartSignal
) -> None:
    """A script of many quick statements is stopped between two of them: interrupt() has
    no statement to stop there, so the worker checks for the cancellation itself."""
    script = "SELECT signal_started();\n" + "INSERT INTO t VALUES (zeroblob(10000));\n" * 20_000
    async with litepool.open_pool(db_path, readers=1, configure=start_signal.configure) as pool:
        await pool.execute("CREATE TABLE t (v)")

        async def run_script() -> None:
            async with pool.write() as conn:
                await conn.executescript(script)

        task = CancellableTask(run_script, cancel_how, anyio_backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await start_signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"
        cancelled_at = time.monotonic()
        # The writer serves the next caller as soon as the script has stopped.
        await pool.execute("INSERT INTO t VALUES ('next')")
        freed_after = time.monotonic() - cancelled_at
        assert freed_after < 0.1, freed_after
        # All or nothing: the block was cancelled, so none of the script is committed.
        assert await pool.fetchval("SELECT count(*) FROM t") == 1
        assert pool.statistics().rollbacks >= 1
