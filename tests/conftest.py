from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
import pytest

# Every async test runs on both backends. trio is a test dependency: if it is missing,
# the trio half must fail loudly rather than disappear.
import trio  # a test dependency: fail fast when the test environment lacks it

import litepool


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "test.db")


#: A recursive CTE that would count for many seconds: the standard long query.
LONG_QUERY = (
    "WITH RECURSIVE r(i) AS (SELECT signal_started() UNION ALL SELECT i + 1 FROM r) "
    "SELECT count(*) FROM r"
)


class StartSignal:
    """An SQL function ``signal_started()`` that tells the test a statement is running.

    Installed through ``open_pool(configure=...)``, it lets a test cancel a statement
    exactly while it runs on its worker thread, instead of hoping a sleep lands there.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def configure(self, conn: sqlite3.Connection) -> None:
        conn.create_function("signal_started", 0, self._called)

    def _called(self) -> int:
        self.event.set()
        return 1

    async def wait(self) -> None:
        import anyio.to_thread

        assert await anyio.to_thread.run_sync(self.event.wait, 10.0), "statement never started"
        self.event.clear()


@pytest.fixture
def start_signal() -> StartSignal:
    return StartSignal()


def _nothing(conn: sqlite3.Connection) -> None:
    pass


@contextlib.asynccontextmanager
async def bound_read(
    pool: litepool.Pool, *, timeout: float | Literal["default"] | None = "default"
) -> AsyncIterator[litepool.Connection]:
    """A ``pool.read()`` block that holds a reader of its own from its start.

    Read checkouts bind late: they take a reader at their first call that needs one
    (``run_sync`` here). Tests that need a reader held, waited for or handed off use this.
    """
    checkout = pool.read() if timeout == "default" else pool.read(timeout=timeout)
    async with checkout as conn:
        await conn.run_sync(_nothing)
        yield conn


@contextlib.asynccontextmanager
async def held_by_another_task(
    *checkouts: AbstractAsyncContextManager[object],
) -> AsyncIterator[None]:
    """Hold ``checkouts`` in a task of their own while the block runs.

    A task asking for a connection that only it could give back gets ``WouldDeadlock``;
    to make a call wait for (or time out on) a busy pool, another task holds it.
    """
    held, release = anyio.Event(), anyio.Event()

    async def hold() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for checkout in checkouts:
                conn = await stack.enter_async_context(checkout)
                if isinstance(conn, litepool.Connection) and conn.kind == "read":
                    await conn.run_sync(_nothing)  # hold the reader, not only the handle
            held.set()
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await held.wait()
        try:
            yield
        finally:
            release.set()


async def cancel_while_waiting(
    pool: litepool.Pool,
    lane: str,
    task: CancellableTask,
    *held: AbstractAsyncContextManager[object],
) -> None:
    """Run ``task`` while another task holds ``held``; once it waits for a connection of
    ``lane`` (``"read"`` or ``"write"``), cancel it, and check that it ended cancelled."""
    async with held_by_another_task(*held), anyio.create_task_group() as tg:
        await tg.start(task.run)
        await anyio.wait_all_tasks_blocked()
        assert getattr(pool.statistics(), lane).waiting == 1
        task.cancel()
    assert task.outcome == "cancelled"


def litepool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("litepool[")]


Setup = Callable[[sqlite3.Connection], None]


class CancellableTask:
    """Runs ``fn()`` in its own task, to be cancelled in one of two ways.

    ``how="scope"`` cancels through an anyio ``CancelScope``. ``how="native"`` cancels the
    way the backend's own code does: ``asyncio.Task.cancel()`` on asyncio (what
    ``asyncio.wait_for``, ``asyncio.TaskGroup`` and frameworks use), a ``trio.CancelScope``
    on trio. ``cancel()`` is synchronous, so a test can call it in the same step as another
    event (a hand-off, a release) without yielding in between.
    """

    def __init__(self, fn: Callable[[], Awaitable[object]], how: str, backend: str) -> None:
        self._fn = fn
        self._how = how
        self._backend = backend
        self._cancel: Callable[[], object] | None = None
        self.outcome: str | None = None
        self.started = False

    def cancel(self) -> None:
        assert self._cancel is not None, "task has not started"
        self._cancel()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if self._how == "scope":
            with anyio.CancelScope() as scope:
                self._cancel = scope.cancel
                task_status.started()
                await self._fn()
                self.outcome = "completed"
            if scope.cancelled_caught:
                self.outcome = "cancelled"
        elif self._backend == "asyncio":
            import asyncio

            task = asyncio.current_task()
            assert task is not None
            self._cancel = task.cancel
            task_status.started()
            try:
                await self._fn()
                self.outcome = "completed"
            except asyncio.CancelledError:
                task.uncancel()
                self.outcome = "cancelled"
        else:
            with trio.CancelScope() as trio_scope:
                self._cancel = trio_scope.cancel
                task_status.started()
                await self._fn()
                self.outcome = "completed"
            if trio_scope.cancelled_caught:
                self.outcome = "cancelled"


@pytest.fixture(params=["scope", "native"])
def cancel_how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="run the long versions of the stress tests (state machine, storm, soak, crash)",
    )


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under ``pytest --long``: the stress tests scale up from seconds to minutes."""
    return bool(request.config.getoption("--long"))


class LoopWatchdog:
    """Turns an event loop that stops turning into a test failure instead of a hang.

    While ``async with watchdog:`` runs, a task of the loop beats every 50 ms and a thread
    watches the beat. When the loop has been silent for ``limit`` seconds, the thread
    records it and interrupts every SQLite statement running on the watched connections
    (handed to it through ``open_pool(configure=watchdog.chain(...))``): a loop thread
    blocked on the lock of one of those connections can then go on, and the block fails
    saying that the loop froze.
    """

    def __init__(self, limit: float = 10.0) -> None:
        import time

        self.limit = limit
        self.connections: list[sqlite3.Connection] = []
        self.froze_for: float | None = None
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def configure(self, conn: sqlite3.Connection) -> None:
        self.connections.append(conn)

    def chain(self, *others: Setup) -> Setup:
        """A ``configure`` callback that registers the connection, then calls ``others``."""

        def configure(conn: sqlite3.Connection) -> None:
            self.configure(conn)
            for other in others:
                other(conn)

        return configure

    def _watch(self) -> None:
        import contextlib
        import time

        while not self._stop.wait(0.05):
            silent = time.monotonic() - self._beat
            if silent > self.limit:
                self.froze_for = max(self.froze_for or 0.0, silent)
                for conn in list(self.connections):
                    with contextlib.suppress(sqlite3.Error):  # already closed
                        conn.interrupt()
                self._beat = time.monotonic()

    async def _heartbeat(self) -> None:
        import time

        while True:
            self._beat = time.monotonic()
            await anyio.sleep(0.05)

    def check(self) -> None:
        assert self.froze_for is None, (
            f"the event loop stopped turning for {self.froze_for:.1f} s (then the watchdog "
            "interrupted the pool's statements to let it go on)"
        )

    async def __aenter__(self) -> LoopWatchdog:
        import time

        self._beat = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="loop watchdog", daemon=True)
        self._thread.start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._heartbeat)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task_group is not None
        assert self._thread is not None
        self._task_group.cancel_scope.cancel()
        try:
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._stop.set()
            self._thread.join()
            self.connections.clear()
        self.check()
