"""Several processes on one database, as ``uvicorn --workers 4`` runs: each has its own
pool, and they take turns at SQLite's single write lock.

No "database is locked" may reach a caller before its own deadline, money moved between
accounts must add up, and no process may starve: SQLite's busy handler polls with
growing sleeps, so a process that has just committed used to win the lock again and
again while another waited for seconds.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ACCOUNTS = 50
START_BALANCE = 1_000

CHILD = textwrap.dedent(
    """
    import json, random, sys, time
    import anyio
    import litepool

    path, backend, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    accounts = int(sys.argv[4])

    async def main():
        writes = 0
        errors = []
        latencies = []
        async with litepool.open_pool(path, readers=2) as pool:
            print("ready", flush=True)
            sys.stdin.readline()
            stop = time.monotonic() + seconds
            rng = random.Random()

            async def transfer():
                nonlocal writes
                while time.monotonic() < stop:
                    a, b = rng.sample(range(accounts), 2)
                    started = time.monotonic()
                    try:
                        async with pool.write() as conn:
                            balance = await conn.fetchval(
                                "SELECT balance FROM accounts WHERE id = ?", (a,)
                            )
                            await conn.execute(
                                "UPDATE accounts SET balance = ? WHERE id = ?", (balance - 1, a)
                            )
                            await conn.execute(
                                "UPDATE accounts SET balance = balance + 1 WHERE id = ?", (b,)
                            )
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    latencies.append(time.monotonic() - started)
                    writes += 1

            async def insert():
                nonlocal writes
                while time.monotonic() < stop:
                    started = time.monotonic()
                    try:
                        await pool.execute("INSERT INTO log (v) VALUES (?)", (rng.random(),))
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    latencies.append(time.monotonic() - started)
                    writes += 1

            async def audit():
                # Every statement reads one snapshot: the total never looks wrong, while
                # three other processes move money between the same accounts.
                while time.monotonic() < stop:
                    total = await pool.fetchval("SELECT sum(balance) FROM accounts")
                    if total != accounts * 1000:
                        errors.append(f"a reader saw a total of {total}")

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(transfer)
                for _ in range(4):
                    tg.start_soon(insert)
                tg.start_soon(audit)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else None
        print(json.dumps({"writes": writes, "errors": errors[:20], "error_count": len(errors),
                          "p99": p99}), flush=True)

    anyio.run(main, backend=backend)
    """
)


def run_processes(
    path: str, backend: str, processes: int, seconds: float, kill_one_after: float | None = None
) -> list[dict[str, object]]:
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, path, backend, str(seconds), str(ACCOUNTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # all at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        if kill_one_after is not None:
            time.sleep(kill_one_after)
            victim = children.pop(0)
            victim.send_signal(signal.SIGKILL)
            victim.communicate()
        results = []
        for child in children:
            out, _ = child.communicate(timeout=seconds + 60)
            assert child.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_four_processes_share_the_writer_fairly_and_lose_nothing(
    tmp_path: Path, backend: str, long_run: bool
) -> None:
    path = make_database(tmp_path)

    seconds = 15.0 if long_run else 4.0
    started = time.monotonic()
    results = run_processes(path, backend, 4, seconds)
    elapsed = time.monotonic() - started
    writes = [int(r["writes"]) for r in results]  # type: ignore[call-overload]
    errors = [e for r in results for e in r["errors"]]  # type: ignore[attr-defined]
    p99s = [r["p99"] for r in results]
    print(f"\n{backend}: writes per process {writes}, p99 {p99s}, errors {errors}, {elapsed:.1f} s")

    assert errors == [], errors
    assert min(writes) >= statistics.mean(writes) / 3, writes
    check_database(path)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_process_killed_mid_write_stalls_nobody(tmp_path: Path, backend: str) -> None:
    """One of four processes is killed with SIGKILL in the middle of its writes (maybe
    holding the write lock, maybe half-way through a transaction): the other three see
    no error, and every total is kept."""
    path = make_database(tmp_path)
    results = run_processes(path, backend, 4, 4.0, kill_one_after=1.5)
    writes = [int(r["writes"]) for r in results]  # type: ignore[call-overload]
    errors = [e for r in results for e in r["errors"]]  # type: ignore[attr-defined]
    assert errors == [], errors
    assert min(writes) > 0
    check_database(path)


def make_database(tmp_path: Path) -> str:
    path = str(tmp_path / "shared.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, v REAL)")
    conn.executemany(
        "INSERT INTO accounts VALUES (?, ?)", [(i, START_BALANCE) for i in range(ACCOUNTS)]
    )
    conn.commit()
    conn.close()
    return path


def check_database(path: str) -> None:
    conn = sqlite3.connect(path)
    try:
        total = conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
        assert total == ACCOUNTS * START_BALANCE
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
