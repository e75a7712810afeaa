"""A pool shared by concurrent tasks: reads, a read-modify-write, and a timeout.

Run it under asyncio (default) or trio: ``python examples/quickstart.py [asyncio|trio] [DB]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import litepool


async def main(path: str) -> None:
    async with litepool.open_pool(path, readers=2, row_factory=dict) as pool:
        async with pool.connection() as conn:
            await conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
                INSERT OR IGNORE INTO counters VALUES ('hits', 0);
                """
            )

        async def hit() -> None:
            # Read-modify-write: safe because pool.write() holds the write lock throughout.
            async with pool.write() as conn:
                value = await conn.fetchval("SELECT value FROM counters WHERE name = 'hits'")
                await conn.execute(
                    "UPDATE counters SET value = ? WHERE name = 'hits'", (value + 1,)
                )

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(hit)

        async with pool.read() as conn:
            print(await conn.fetchone("SELECT * FROM counters"))

        with anyio.move_on_after(0.1) as scope:
            async with pool.read() as conn:
                await conn.fetchval(
                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                    "SELECT count(*) FROM r"
                )
        print("long query cancelled:", scope.cancelled_caught)
        print(pool.statistics())


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    with tempfile.TemporaryDirectory() as directory:
        database = sys.argv[2] if len(sys.argv) > 2 else str(Path(directory) / "quickstart.db")
        anyio.run(main, database, backend=backend)
