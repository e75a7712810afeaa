"""Calls in flight while the pool closes: each ends promptly, with its result or with
``PoolClosed``, and nothing is queued behind a worker's stop.

A web server's graceful shutdown looks like this: requests still running, or just handed
a connection, when the pool's block ends.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import litepool

from .conftest import bound_read, litepool_threads

pytestmark = pytest.mark.anyio

Call = Callable[[litepool.Pool], Awaitable[Any]]


async def _fetchval(pool: litepool.Pool) -> Any:
    return await pool.fetchval("SELECT 1")


async def _execute(pool: litepool.Pool) -> Any:
    return await pool.execute("INSERT INTO t (v) VALUES ('in flight')")


async def _checkpoint(pool: litepool.Pool) -> Any:
    return await pool.checkpoint()


async def _read_checkout(pool: litepool.Pool) -> Any:
    async with pool.read() as conn:
        return await conn.fetchval("SELECT 1")


async def _bound_read_checkout(pool: litepool.Pool) -> Any:
    async with bound_read(pool) as conn:
        return await conn.fetchval("SELECT 1")


async def _write_checkout(pool: litepool.Pool) -> Any:
    async with pool.write() as conn:
        return await conn.execute("INSERT INTO t (v) VALUES ('in flight')")


CALLS: dict[str, tuple[str, Call]] = {
    "fetchval": ("read", _fetchval),
    "execute": ("write", _execute),
    "checkpoint": ("write", _checkpoint),
    "read checkout": ("read", _read_checkout),
    "bound read checkout": ("read", _bound_read_checkout),
    "write checkout": ("write", _write_checkout),
}


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("call", list(CALLS))
async def test_call_handed_a_connection_as_the_pool_closes_ends_promptly(
    db_path: str, call: str, check: bool
) -> None:
    """The lane hands its connection to a queued call, and the pool's block ends in the
    same step, before that call runs: it must not wait forever behind the worker's stop."""
    lane, fn = CALLS[call]
    outcome: list[object] = []

    async def in_flight(pool: litepool.Pool) -> None:
        try:
            outcome.append(await fn(pool))
        except litepool.PoolClosed as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            pool = litepool.open_pool(db_path, readers=1, check=check)
            await pool.__aenter__()
            try:
                async with pool.connection() as conn:
                    await conn.execute("CREATE TABLE t (v)")
                holder = bound_read(pool) if lane == "read" else pool.connection()
                await holder.__aenter__()
                tg.start_soon(in_flight, pool)
                await anyio.wait_all_tasks_blocked()
                assert getattr(pool.statistics(), lane).waiting == 1
                # Hands the connection to the queued call, which has not run yet ...
                await holder.__aexit__(None, None, None)
            finally:
                # ... and the pool closes in the same step.
                await pool.__aexit__(None, None, None)
    assert len(outcome) == 1
    assert isinstance(outcome[0], litepool.PoolClosed), outcome
    assert "closed" in str(outcome[0])
    assert litepool_threads() == []


async def test_graceful_shutdown_with_many_calls_in_flight(db_path: str, long_run: bool) -> None:
    """Many tasks keep calling while the pool's block ends, again and again: every call
    ends, with its result or PoolClosed, and no thread is left."""
    rounds = 40 if long_run else 8
    rng = random.Random(7)
    for round_ in range(rounds):
        finished = 0
        closed = 0

        async def caller(pool: litepool.Pool, fn: Call) -> None:
            nonlocal finished, closed
            while True:
                try:
                    await fn(pool)
                except litepool.PoolClosed:
                    closed += 1
                    return
                finished += 1

        with anyio.fail_after(20):
            async with (
                anyio.create_task_group() as tg,
                litepool.open_pool(db_path, readers=3) as pool,
            ):
                if round_ == 0:
                    async with pool.connection() as conn:
                        await conn.execute("CREATE TABLE t (v)")
                tasks = 120
                for _ in range(tasks):
                    tg.start_soon(caller, pool, rng.choice([c for _, c in CALLS.values()]))
                for _ in range(rng.randrange(1, 40)):
                    await anyio.lowlevel.checkpoint()
        assert closed == tasks, (round_, closed, finished)
        assert litepool_threads() == []
