"""A hypothesis state machine driving a real pool against a model of what it must hold.

Each example opens a pool on a fresh SQLite file inside an event loop of its own (an anyio
blocking portal, on asyncio or trio) and runs a random sequence of steps: transactions
that commit, raise, catch an SQL error or are cancelled before or while a statement runs
(natively too); manual transactions on ``pool.connection()``; reads; tasks that hold or
queue for a connection, release it, time out or are cancelled. After every step the
pool's counts (idle, in use, waiting, checkouts, timeouts per lane) must equal the
model's, and the committed data, read by a connection of our own, must be exactly the
model's. At the end, every connection can be held at once (none lost, none duplicated)
and every worker thread has returned.

``pytest --long`` runs many more and longer examples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import tempfile
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import litepool

from .conftest import (
    LONG_QUERY,
    CancellableTask,
    LoopWatchdog,
    StartSignal,
    bound_read,
    litepool_threads,
)

T = TypeVar("T")

READERS = 2
SENTINEL_KEY = -1  # a row no step changes: inserting it again is an IntegrityError
STEP_TIMEOUT = 20.0

Op = tuple[str, int, int]
ops_strategy = st.lists(
    st.tuples(st.sampled_from(["set", "del"]), st.integers(0, 7), st.integers(-50, 50)),
    max_size=4,
)
lanes = st.sampled_from(["read", "write"])
cancel_hows = st.sampled_from(["scope", "native"])
UPSERT = "INSERT INTO kv VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def apply_to_model(model: dict[int, int], ops: list[Op]) -> None:
    for kind, key, value in ops:
        if kind == "set":
            model[key] = value
        else:
            model.pop(key, None)


async def apply_to_db(conn: litepool.Connection, ops: list[Op]) -> None:
    for kind, key, value in ops:
        if kind == "set":
            await conn.execute(UPSERT, (key, value))
        else:
            await conn.execute("DELETE FROM kv WHERE k = ?", (key,))


async def wait_settled(holder: Holder) -> None:
    """Return once ``holder`` has its connection or gave up (its binding call may still
    be on the reader's thread when every task counts as blocked)."""
    with anyio.fail_after(STEP_TIMEOUT):
        await holder.settled.wait()


async def settle() -> None:
    """Return once every other task of the loop is blocked.

    ``anyio.wait_all_tasks_blocked`` polls every 0.1 s on asyncio, far too slow for a
    step; this polls at every loop iteration instead.
    """
    try:
        this = asyncio.current_task()
    except RuntimeError:  # no asyncio loop running: trio
        await trio.testing.wait_all_tasks_blocked()
        return
    for _ in range(100_000):
        await asyncio.sleep(0)
        if all(
            task is this
            or ((waiter := getattr(task, "_fut_waiter", None)) is not None and not waiter.done())
            for task in asyncio.all_tasks()
        ):
            return
    raise AssertionError("the event loop's tasks never settled")


class Boom(Exception):
    pass


@dataclass
class Holder:
    """A task that checks out a connection and holds it until released or cancelled."""

    lane: str
    task: CancellableTask
    release: anyio.Event
    #: Set once the holder has its connection, or has given up waiting for one.
    settled: anyio.Event
    acquired: bool = False
    future: concurrent.futures.Future[Any] | None = None


@dataclass
class LaneModel:
    size: int
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Holder] = field(default_factory=list)
    checkouts: int = 0
    timeouts: int = 0

    @property
    def free(self) -> int:
        return self.size - len(self.holders)


@dataclass
class Bounds:
    """A count that some steps move by an amount known only to lie in a range."""

    low: int = 0
    high: int = 0

    def add(self, low: int, high: int | None = None) -> None:
        self.low += low
        self.high += low if high is None else high


class PoolMachine(RuleBasedStateMachine):
    backend = "asyncio"
    directory = Path(".")

    def __init__(self) -> None:
        super().__init__()
        self.portal_cm = anyio.from_thread.start_blocking_portal(backend=self.backend)
        self.portal = self.portal_cm.__enter__()
        self.broken = False  # set when a step failed
        self.pool_cm: AbstractContextManager[litepool.Pool] | None = None
        self.watchdog_cm: AbstractContextManager[LoopWatchdog] | None = None
        self.checker: sqlite3.Connection | None = None
        try:
            self.path = str(Path(tempfile.mkdtemp(dir=self.directory)) / "machine.db")
            self.signal = StartSignal()
            self.watchdog = LoopWatchdog(limit=3.0)
            self.watchdog_cm = self.portal.wrap_async_context_manager(self.watchdog)
            self.watchdog_cm.__enter__()
            self.pool_cm = self.portal.wrap_async_context_manager(
                litepool.open_pool(
                    self.path,
                    readers=READERS,
                    acquire_timeout=STEP_TIMEOUT,
                    configure=self.watchdog.chain(self.signal.configure),
                    name="machine",
                )
            )
            self.pool = self.pool_cm.__enter__()
            self.run(self._create_schema)
            self.checker = sqlite3.connect(self.path, isolation_level=None)
        except BaseException:
            self._close()
            raise
        self.model: dict[int, int] = {SENTINEL_KEY: 0}
        self.lanes = {"read": LaneModel(READERS), "write": LaneModel(1, checkouts=1)}
        self.interrupted = Bounds()
        self.rollbacks = Bounds()

    async def _create_schema(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            await conn.execute("INSERT INTO kv VALUES (?, 0)", (SENTINEL_KEY,))

    # -- plumbing ----------------------------------------------------------------------

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def guarded() -> T:
            with anyio.fail_after(STEP_TIMEOUT):
                result = await fn()
                await settle()
                return result

        try:
            return self.portal.call(guarded)
        except BaseException:
            self.broken = True
            raise
        finally:
            if self.watchdog.froze_for is not None:
                self.broken = True
            self.watchdog.check()

    def committed(self) -> dict[int, int]:
        assert self.checker is not None
        return dict(self.checker.execute("SELECT k, v FROM kv").fetchall())

    async def cancel_while_running(self, fn: Callable[[], Awaitable[None]], how: str) -> None:
        """Run ``fn`` in a task and cancel it while its long query runs on a worker."""
        task = CancellableTask(fn, how, self.backend)
        async with anyio.create_task_group() as tg:
            await tg.start(task.run)
            await self.signal.wait()
            task.cancel()
        assert task.outcome == "cancelled"

    def _close(self) -> None:
        try:
            if self.checker is not None:
                self.checker.close()
            if self.pool_cm is not None:
                pool_cm, self.pool_cm = self.pool_cm, None
                pool_cm.__exit__(None, None, None)
        finally:
            try:
                if self.watchdog_cm is not None:
                    if self.broken:
                        self.watchdog.froze_for = None  # already reported by the step
                    watchdog_cm, self.watchdog_cm = self.watchdog_cm, None
                    watchdog_cm.__exit__(None, None, None)
            finally:
                self.portal_cm.__exit__(None, None, None)

    # -- transactions ------------------------------------------------------------------

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy)
    def write_commits(self, ops: list[Op]) -> None:
        async def step() -> None:
            async with self.pool.write() as conn:
                await apply_to_db(conn, ops)

        self.run(step)
        self.lanes["write"].checkouts += 1
        apply_to_model(self.model, ops)

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy)
    def write_raises(self, ops: list[Op]) -> None:
        async def step() -> None:
            with pytest.raises(Boom):
                async with self.pool.write() as conn:
                    await apply_to_db(conn, ops)
                    raise Boom

        self.run(step)
        self.lanes["write"].checkouts += 1
        self.rollbacks.add(1 if ops else 0)

    @precondition(lambda self: self.lanes["write"].free)
    @rule(before=ops_strategy, after=ops_strategy)
    def write_catches_an_sql_error_and_commits(self, before: list[Op], after: list[Op]) -> None:
        async def step() -> None:
            async with self.pool.write() as conn:
                await apply_to_db(conn, before)
                with pytest.raises(sqlite3.IntegrityError):
                    await conn.execute("INSERT INTO kv VALUES (?, 1)", (SENTINEL_KEY,))
                await apply_to_db(conn, after)

        self.run(step)
        self.lanes["write"].checkouts += 1
        apply_to_model(self.model, before + after)

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy, how=cancel_hows)
    def write_cancelled_while_a_statement_runs(self, ops: list[Op], how: str) -> None:
        async def write() -> None:
            async with self.pool.write() as conn:
                await apply_to_db(conn, ops)
                await conn.fetchval(LONG_QUERY)

        self.run(lambda: self.cancel_while_running(write, how))
        self.lanes["write"].checkouts += 1
        self.interrupted.add(1)
        self.rollbacks.add(1)  # BEGIN ran with the first statement

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy, checkout=st.sampled_from(["write", "connection"]))
    def cancelled_before_a_statement_runs(self, ops: list[Op], checkout: str) -> None:
        """The scope is cancelled before the block's last statement is sent: that statement
        is skipped if its worker has not started it, interrupted if it has (a race)."""
        last = (SENTINEL_KEY + 100, 1)

        async def step() -> None:
            with anyio.CancelScope() as scope:
                async with getattr(self.pool, checkout)() as conn:
                    await apply_to_db(conn, ops)
                    scope.cancel()
                    await conn.execute(UPSERT, last)
            assert scope.cancelled_caught
            # The writer runs jobs in order: once this one is done, so is the cancelled
            # statement, whether it was skipped, interrupted or ran.
            async with self.pool.connection() as conn:
                await conn.fetchval("SELECT 1")

        self.run(step)
        self.lanes["write"].checkouts += 2
        self.interrupted.add(0, 1)
        if checkout == "write":
            self.rollbacks.add(0, 1)
            return
        # Autocommit: the earlier statements committed; the cancelled one may have run.
        apply_to_model(self.model, ops)
        if self.committed().get(last[0]) == last[1]:
            self.model[last[0]] = last[1]

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy)
    def write_in_a_scope_cancelled_before_checkout(self, ops: list[Op]) -> None:
        """A free connection is handed over without an await, so the checkout succeeds;
        the first statement meets the cancellation."""

        async def step() -> None:
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with self.pool.write() as conn:
                    await apply_to_db(conn, [*ops, ("set", 0, 0)])
            assert scope.cancelled_caught

        self.run(step)
        self.lanes["write"].checkouts += 1
        self.interrupted.add(0, 1)
        self.rollbacks.add(0, 1)

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy, end=st.sampled_from(["commit", "rollback", "left open"]))
    def manual_transaction(self, ops: list[Op], end: str) -> None:
        async def step() -> None:
            async with self.pool.connection() as conn:
                await conn.execute("BEGIN")
                await apply_to_db(conn, ops)
                if end == "commit":
                    await conn.commit()
                elif end == "rollback":
                    await conn.rollback()

        self.run(step)
        self.lanes["write"].checkouts += 1
        if end == "commit":
            apply_to_model(self.model, ops)
        elif end == "left open":
            self.rollbacks.add(1)

    @precondition(lambda self: self.lanes["write"].free)
    @rule(ops=ops_strategy)
    def autocommit(self, ops: list[Op]) -> None:
        async def step() -> None:
            async with self.pool.connection() as conn:
                await apply_to_db(conn, ops)

        self.run(step)
        self.lanes["write"].checkouts += 1
        apply_to_model(self.model, ops)

    # -- reads -------------------------------------------------------------------------

    @precondition(lambda self: self.lanes["read"].free)
    @rule()
    def read_sees_the_model(self) -> None:
        async def step() -> dict[int, int]:
            async with self.pool.read() as conn:
                return dict(await conn.fetchall("SELECT k, v FROM kv"))

        assert self.run(step) == self.model
        self.lanes["read"].checkouts += 1

    @precondition(lambda self: self.lanes["read"].free)
    @rule(how=cancel_hows)
    def read_cancelled_while_a_statement_runs(self, how: str) -> None:
        async def read() -> None:
            async with self.pool.read() as conn:
                await conn.fetchval(LONG_QUERY)

        self.run(lambda: self.cancel_while_running(read, how))
        self.lanes["read"].checkouts += 1
        self.interrupted.add(1)

    @precondition(lambda self: self.lanes["read"].free)
    @rule(sql=st.sampled_from(["SELEKT 1", "SELECT * FROM missing", "DELETE FROM kv"]))
    def read_fails(self, sql: str) -> None:
        async def step() -> None:
            with pytest.raises(sqlite3.OperationalError):
                async with self.pool.read() as conn:
                    await conn.execute(sql)

        self.run(step)
        self.lanes["read"].checkouts += 1

    @precondition(lambda self: self.lanes["read"].free)
    @rule()
    def handle_used_after_its_block(self) -> None:
        async def step() -> None:
            async with self.pool.read() as conn:
                pass
            with pytest.raises(litepool.ConnectionReleased):
                await conn.fetchval("SELECT 1")

        self.run(step)
        self.lanes["read"].checkouts += 1

    # -- holding, queueing, releasing, timing out ------------------------------------------

    def _start_holder(self, lane: str, kind: str, how: str) -> Holder:
        async def new_event() -> anyio.Event:
            return anyio.Event()

        release = self.portal.call(new_event)
        settled = self.portal.call(new_event)
        holder: Holder

        async def hold() -> None:
            # A read block takes its reader at the first call that needs one.
            checkout = (
                bound_read(self.pool, timeout=None)
                if kind == "read"
                else getattr(self.pool, kind)(timeout=None)
            )
            try:
                async with checkout:
                    holder.acquired = True
                    settled.set()
                    await release.wait()
            finally:
                settled.set()

        holder = Holder(lane, CancellableTask(hold, how, self.backend), release, settled)
        holder.future, _ = self.portal.start_task(holder.task.run)
        self.portal.call(settle)
        return holder

    @precondition(lambda self: self.lanes["read"].free or self.lanes["write"].free)
    @rule(lane=lanes, kind=st.sampled_from(["write", "connection"]), how=cancel_hows)
    def hold(self, lane: str, kind: str, how: str) -> None:
        model = self.lanes[lane]
        if not model.free:
            return
        holder = self._start_holder(lane, "read" if lane == "read" else kind, how)
        if lane == "read":
            # Binding the reader runs a call on its thread, which counts as blocked.
            self.portal.call(wait_settled, holder)
        assert holder.acquired
        model.holders.append(holder)
        model.checkouts += 1

    @precondition(lambda self: any(not m.free and len(m.waiters) < 3 for m in self.lanes.values()))
    @rule(lane=lanes, how=cancel_hows)
    def queue(self, lane: str, how: str) -> None:
        model = self.lanes[lane]
        if model.free or len(model.waiters) >= 3:
            return
        holder = self._start_holder(lane, "read" if lane == "read" else "connection", how)
        assert not holder.acquired
        model.waiters.append(holder)
        if lane == "read":
            model.checkouts += 1  # a read block is a checkout from its start

    def _finished(self, holder: Holder) -> str | None:
        assert holder.future is not None
        holder.future.result(timeout=STEP_TIMEOUT)
        return holder.task.outcome

    def _pass_on(self, model: LaneModel) -> None:
        """A connection came back: the first waiter, if any, now holds it."""
        if model.waiters:
            waiter = model.waiters.pop(0)
            if model is self.lanes["read"]:
                # Its binding call is on the reader's thread now, or never will be.
                self.portal.call(wait_settled, waiter)
            assert waiter.acquired, "the connection did not go to the first waiter"
            model.holders.append(waiter)
            if model is not self.lanes["read"]:  # counted when its block began
                model.checkouts += 1

    @precondition(lambda self: any(m.holders for m in self.lanes.values()))
    @rule(lane=lanes, index=st.integers(0, 5), cancel=st.booleans())
    def release(self, lane: str, index: int, cancel: bool) -> None:
        model = self.lanes[lane]
        if not model.holders:
            return
        holder = model.holders.pop(index % len(model.holders))
        if cancel:
            self.portal.call(holder.task.cancel)
        else:
            self.portal.call(holder.release.set)
        assert self._finished(holder) == ("cancelled" if cancel else "completed")
        self.portal.call(settle)
        self._pass_on(model)

    @precondition(lambda self: any(m.waiters for m in self.lanes.values()))
    @rule(lane=lanes, index=st.integers(0, 5))
    def cancel_waiter(self, lane: str, index: int) -> None:
        model = self.lanes[lane]
        if not model.waiters:
            return
        waiter = model.waiters.pop(index % len(model.waiters))
        self.portal.call(waiter.task.cancel)
        assert self._finished(waiter) == "cancelled"
        assert not waiter.acquired

    @precondition(lambda self: any(not m.free for m in self.lanes.values()))
    @rule(lane=lanes, timeout=st.sampled_from([0.0, 0.001, 0.01]))
    def checkout_times_out(self, lane: str, timeout: float) -> None:
        model = self.lanes[lane]
        if model.free:
            return
        checkout = self.pool.read if lane == "read" else self.pool.write

        async def step() -> None:
            with pytest.raises(litepool.PoolTimeout, match=f"no {lane} connection"):
                if lane == "read":
                    async with bound_read(self.pool, timeout=timeout):
                        pass  # pragma: no cover
                else:
                    async with checkout(timeout=timeout):
                        pass  # pragma: no cover

        self.run(step)
        model.timeouts += 1
        if lane == "read":
            model.checkouts += 1  # the block began; binding its reader timed out

    @precondition(lambda self: not any(m.holders or m.waiters for m in self.lanes.values()))
    @rule()
    def every_connection_at_once(self) -> None:
        readers = self.lanes["read"].size
        self.run(self._hold_everything)
        self.lanes["read"].checkouts += readers
        self.lanes["write"].checkouts += 1

    async def _hold_everything(self) -> None:
        """Hold every connection at the same time: none is lost, none is handed out twice."""
        idents: set[int] = set()
        async with contextlib.AsyncExitStack() as stack:
            conns = [
                await stack.enter_async_context(self.pool.read(timeout=0))
                for _ in range(self.lanes["read"].size)
            ]
            conns.append(await stack.enter_async_context(self.pool.connection(timeout=0)))
            for conn in conns:
                idents.add(await conn.run_sync(lambda raw: threading.get_ident()))
        assert len(idents) == self.lanes["read"].size + 1

    @precondition(lambda self: not any(m.holders or m.waiters for m in self.lanes.values()))
    @rule(readers=st.integers(1, 3))
    def resize(self, readers: int) -> None:
        async def step() -> None:
            await self.pool.resize(readers)

        self.run(step)
        self.lanes["read"].size = readers

    # -- after every step --------------------------------------------------------------

    @invariant()
    def counts_balance(self) -> None:
        stats = self.portal.call(self.pool.statistics)
        for name, model in self.lanes.items():
            lane = getattr(stats, name)
            assert lane.size == model.size
            assert (lane.idle, lane.in_use, lane.waiting) == (
                model.free,
                len(model.holders),
                len(model.waiters),
            ), (name, lane)
            assert (lane.checkouts, lane.timeouts) == (model.checkouts, model.timeouts), (
                name,
                lane,
            )
        # Counted on the worker threads, possibly after the step: bounded above here,
        # checked exactly once the pool has closed.
        assert stats.interrupted <= self.interrupted.high
        assert stats.rollbacks <= self.rollbacks.high

    @invariant()
    def committed_data_is_the_model(self) -> None:
        assert self.committed() == self.model

    def teardown(self) -> None:
        try:
            for model in self.lanes.values():
                for holder in [*reversed(model.waiters), *model.holders]:
                    self.portal.call(holder.task.cancel)
                    self._finished(holder)
                model.waiters.clear()
                model.holders.clear()
            if self.broken:
                return  # a step failed: the model no longer says what the pool holds
            self.portal.call(settle)
            self.counts_balance()
            self.every_connection_at_once()
            self.counts_balance()
            assert self.pool_cm is not None
            pool_cm, self.pool_cm = self.pool_cm, None
            pool_cm.__exit__(None, None, None)
            assert litepool_threads() == []
            stats = self.pool.statistics()
            assert self.interrupted.low <= stats.interrupted <= self.interrupted.high
            assert self.rollbacks.low <= stats.rollbacks <= self.rollbacks.high
            assert self.committed() == self.model
        finally:
            self._close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_pool_state_machine(backend: str, tmp_path: Path, long_run: bool) -> None:
    class Machine(PoolMachine):
        pass

    Machine.backend = backend
    Machine.directory = tmp_path
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=300 if long_run else 10,
            stateful_step_count=80 if long_run else 25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
