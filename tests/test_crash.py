"""Kill the process in the middle of write transactions, again and again.

A child process runs a writer loop: each ``pool.write()`` block inserts the two rows of
one id (with payloads of random size, so that a transaction spans many WAL frames), and
once the block has returned the child prints the id. The test kills the child with
SIGKILL at a random point, then opens the database again and checks:

- every id the child reported committed is there;
- no id is there partly (one row of the two): a transaction is all or nothing;
- at most the one id after the last reported one is there unreported (it committed
  but was killed before it could print).

With ``journal_mode=wal`` and the default ``synchronous=normal``, a committed transaction
survives the death of the process (not necessarily a power loss), which is what this
checks. The normal suite runs a few rounds per backend; ``pytest --long`` runs many.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest

import litepool

WRITER = textwrap.dedent(
    """
    import sys
    import anyio, litepool

    path, backend, first = sys.argv[1], sys.argv[2], int(sys.argv[3])

    async def main():
        async with litepool.open_pool(path, readers=2) as pool:
            async with pool.connection() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS pairs ("
                    "id INTEGER NOT NULL, part INTEGER NOT NULL, payload BLOB, "
                    "PRIMARY KEY (id, part))"
                )
            print("ready", flush=True)
            for id_ in range(first, first + 1_000_000):
                async with pool.write() as conn:
                    for part in (1, 2):
                        await conn.execute(
                            "INSERT INTO pairs VALUES (?, ?, randomblob(abs(random()) % 40000))",
                            (id_, part),
                        )
                print(id_, flush=True)

    anyio.run(main, backend=backend)
    """
)


def crash_once(path: str, backend: str, first: int, kill_after: int) -> list[int]:
    """Start the writer, kill it once it has reported ``kill_after`` ids; return them all."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, path, backend, str(first)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A guard against a child that stops talking: the test then fails instead of waiting.
    guard = threading.Timer(60, child.kill)
    guard.start()
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n", child.stderr.read() if child.stderr else ""
        reported = []
        for _ in range(kill_after):
            line = child.stdout.readline()
            assert line, "the writer stopped before it was killed"
            reported.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        # What it printed before dying is still in the pipe.
        reported += [int(line) for line in child.stdout.read().split()]
        assert child.wait() == -signal.SIGKILL
    finally:
        guard.cancel()
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    return reported


def committed_ids(path: str) -> dict[int, set[int]]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        parts: dict[int, set[int]] = {}
        for id_, part in conn.execute("SELECT id, part FROM pairs"):
            parts.setdefault(id_, set()).add(part)
        return parts
    finally:
        conn.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_killed_writer_loses_no_reported_transaction(
    tmp_path: Path, backend: str, long_run: bool
) -> None:
    rounds = 40 if long_run else 4
    rng = random.Random(f"crash/{backend}")
    path = str(tmp_path / "crash.db")
    reported: set[int] = set()
    first = 1
    unreported_survivors = 0
    started = time.monotonic()
    for round_ in range(rounds):
        printed = crash_once(path, backend, first, kill_after=rng.randint(1, 40))
        assert printed == list(range(first, first + len(printed)))
        reported.update(printed)
        parts = committed_ids(path)
        partial = {id_: got for id_, got in parts.items() if got != {1, 2}}
        assert not partial, f"round {round_}: transactions partly there: {partial}"
        missing = reported - set(parts)
        assert not missing, f"round {round_}: reported committed but lost: {sorted(missing)}"
        extra = set(parts) - reported
        # Only the transaction in flight at the kill may have committed without a report.
        assert extra <= {max(printed) + 1}, f"round {round_}: {sorted(extra)}"
        unreported_survivors += len(extra)
        reported |= extra
        first = max(parts) + 1

    # The pool opens the crashed database and serves it.
    async def reopen() -> int:
        async with litepool.open_pool(path, readers=2) as pool:
            async with pool.write() as conn:
                await conn.execute("INSERT INTO pairs VALUES (?, 1, NULL)", (first,))
                await conn.execute("INSERT INTO pairs VALUES (?, 2, NULL)", (first,))
            async with pool.read() as conn:
                count: int = await conn.fetchval("SELECT count(DISTINCT id) FROM pairs")
                return count

    assert anyio.run(reopen, backend=backend) == len(reported) + 1
    print(
        f"\ncrash {backend}: {rounds} kills in {time.monotonic() - started:.1f} s, "
        f"{len(reported)} transactions committed and found whole, "
        f"{unreported_survivors} committed just before the kill without a report, lost: 0"
    )
