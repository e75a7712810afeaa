"""Leak detection: checkouts held past ``leak_timeout`` are logged with their stack."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import litepool

from .conftest import bound_read

pytestmark = pytest.mark.anyio


class LogEvents(logging.Handler):
    """Collects the ``litepool`` logger's records and wakes a test waiting for one."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self._event = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._event.set()

    async def wait_for(self, text: str) -> str:
        with anyio.fail_after(5):
            while True:
                for message in self.messages:
                    if text in message:
                        return message
                await self._event.wait()
                self._event = anyio.Event()


@pytest.fixture
def log_events() -> Iterator[LogEvents]:
    handler = LogEvents()
    logger = logging.getLogger("litepool")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def test_a_checkout_held_too_long_is_reported_with_its_stack(
    db_path: str, log_events: LogEvents
) -> None:
    async with litepool.open_pool(db_path, readers=1, leak_timeout=0.05, name="leaky") as pool:
        release = anyio.Event()

        async def hold_and_forget() -> None:
            async with pool.read() as conn:
                await conn.execute("BEGIN")  # takes a reader of its own
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_and_forget, name="forgetful-task")
            report = await log_events.wait_for("has been checked out")
            assert "pool 'leaky': a read connection has been checked out for" in report
            assert "(leak_timeout: 0.05 s) by task 'forgetful-task'" in report
            assert "in hold_and_forget" in report  # the stack where it was checked out
            assert "async with pool.read() as conn:" in report
            assert not any("was returned" in message for message in log_events.messages)
            release.set()
        returned = await log_events.wait_for("was returned after")
        assert "checked out by task 'forgetful-task'" in returned
        # Reported once, not on every wake-up of the tracker.
        assert sum("has been checked out" in message for message in log_events.messages) == 1


async def test_short_checkouts_are_not_reported(db_path: str, log_events: LogEvents) -> None:
    async with litepool.open_pool(db_path, readers=2, leak_timeout=0.05) as pool:
        for _ in range(20):
            async with pool.read() as conn:
                await conn.fetchval("SELECT 1")
            async with pool.write() as conn:
                await conn.execute("PRAGMA user_version")
        async with bound_read(pool):
            await log_events.wait_for("has been checked out")  # the one held long
    assert sum("has been checked out" in message for message in log_events.messages) == 1


async def test_timeout_names_the_holders(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1, leak_timeout=60, name="busy") as pool:
        release = anyio.Event()

        async def hold(checkout: litepool.Checkout) -> None:
            async with checkout as conn:
                if conn.kind == "read":
                    await conn.execute("BEGIN")  # takes a reader of its own
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, pool.read(), name="reading-task")
            tg.start_soon(hold, pool.connection(), name="migrating-task")
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(litepool.PoolTimeout) as excinfo:
                async with bound_read(pool, timeout=0):
                    pass  # pragma: no cover
            assert str(excinfo.value).startswith(
                "pool 'busy': no read connection became free within 0 s (in use: 1, idle: 0, "
                "waiting: 0; held by 'reading-task' for "
            )
            with pytest.raises(litepool.PoolTimeout, match="held by 'migrating-task' for"):
                await pool.execute("SELECT 1", timeout=0)
            release.set()
        release = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, pool.write(), name="writing-task")
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(litepool.PoolTimeout) as excinfo:
                async with pool.write(timeout=0):
                    pass  # pragma: no cover
            release.set()
        assert "held by 'writing-task' for " in str(excinfo.value)


async def test_without_leak_timeout_nothing_is_recorded(db_path: str) -> None:
    async with litepool.open_pool(db_path, readers=1) as pool:
        assert pool._leaks is None
        held, release = anyio.Event(), anyio.Event()

        async def hold() -> None:
            async with bound_read(pool):
                held.set()
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await held.wait()
            with pytest.raises(litepool.PoolTimeout) as excinfo:
                async with bound_read(pool, timeout=0):
                    pass  # pragma: no cover
            release.set()
        assert "held by" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "leak_timeout must be > 0 seconds or None, got 0"),
        (-1, ValueError, "leak_timeout must be >= 0 seconds or None, got -1"),
        ("5", TypeError, "leak_timeout must be a number of seconds or None, not '5'"),
    ],
)
def test_leak_timeout_is_checked(
    tmp_path: Path, value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        litepool.open_pool(tmp_path / "x.db", leak_timeout=value)  # type: ignore[arg-type]
