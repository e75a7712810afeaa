"""A cancellation storm: hundreds of tasks doing reads, writes and money transfers,
cancelled at random points by deadlines, by cancelling their task group, and natively.

The choices (which operation, which deadline, whom to cancel when) come from a seeded
``random.Random``; the interleaving with the worker threads does not, which is the point.
At the end nothing may be lost: every connection is idle, the statistics balance with what
the tasks saw, the transfers kept the total and match their log exactly, no transaction
is partly there, no worker thread is left, and the pool still serves.

``pytest --long`` runs a bigger storm over several seeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

import litepool

from .conftest import LONG_QUERY, LoopWatchdog, StartSignal, litepool_threads

pytestmark = pytest.mark.anyio

ACCOUNTS = 16
START_BALANCE = 1_000
TOTAL = ACCOUNTS * START_BALANCE
READERS = 4

#: Deadlines for ``move_on_after`` / ``fail_after``: from "already expired" to a few ms.
DEADLINES = (0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.03)
#: Checkout timeouts: mostly the pool's, sometimes tiny ones that do time out.
CHECKOUT_TIMEOUTS: tuple[float | None, ...] = (None,) * 12 + (0.0, 0.001, 0.005)
OPERATIONS = (
    "point read",
    "sum",
    "iterate",
    "transfer",
    "event",
    "batch",
    "long query",
    "run_write transfer",
    "run_read snapshot",
)
READS = frozenset(("point read", "sum", "iterate", "long query", "run_read snapshot"))
#: Operations that are one call of the pool, not a checkout block.
CALLS = frozenset(("run_write transfer", "run_read snapshot"))
WEIGHTS = (25, 15, 5, 30, 10, 10, 5, 15, 5)


@dataclass
class StormSize:
    tasks: int
    ops_per_task: int
    groups: int
    group_cancels: int
    native_cancels: int


QUICK = StormSize(tasks=300, ops_per_task=8, groups=10, group_cancels=2, native_cancels=50)
LONG = StormSize(tasks=1200, ops_per_task=25, groups=24, group_cancels=6, native_cancels=400)


@dataclass
class Tally:
    """What the tasks saw. Compared at the end with the pool and the database."""

    entered: Counter[str] = field(default_factory=Counter)  # checkouts by lane
    timeouts: Counter[str] = field(default_factory=Counter)  # PoolTimeout by lane
    outcomes: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    # Writes by id: started; sent (an autocommit statement was sent: it may have run); body
    # finished; reported (the body finished and the block returned: it is committed).
    started: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)
    body_done: set[int] = field(default_factory=set)
    reported: set[int] = field(default_factory=set)


class Storm:
    def __init__(self, pool: litepool.Pool, backend: str, seed: int, size: StormSize) -> None:
        self.pool = pool
        self.backend = backend
        self.seed = seed
        self.size = size
        self.tally = Tally()
        self.next_id = 0
        self.ops_done = 0
        # Native cancellation of the live tasks: Task.cancel on asyncio, a trio scope on trio.
        self.cancellers: dict[int, Callable[[], object]] = {}
        self.natively_cancelled: set[int] = set()
        self.group_scopes: list[anyio.CancelScope] = []
        self.finished = anyio.Event()

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # -- operations ----------------------------------------------------------------------

    def checkout(self, lane: str, timeout: float | None) -> litepool.Checkout:
        if lane == "read":
            return self.pool.read(timeout=timeout) if timeout is not None else self.pool.read()
        if lane == "write":
            return self.pool.write(timeout=timeout) if timeout is not None else self.pool.write()
        if timeout is not None:
            return self.pool.connection(timeout=timeout)
        return self.pool.connection()

    async def read_body(self, op: str, conn: litepool.Connection, rng: random.Random) -> None:
        if op == "point read":
            account = rng.randrange(ACCOUNTS)
            balance = await conn.fetchval("SELECT balance FROM accounts WHERE id = ?", (account,))
            assert isinstance(balance, int)
        elif op == "sum":
            # One statement, one snapshot: the total is always whole.
            assert await conn.fetchone("SELECT sum(balance), count(*) FROM accounts") == (
                TOTAL,
                ACCOUNTS,
            )
        elif op == "iterate":
            total = 0
            async for row in conn.iterate(
                "SELECT id, balance FROM accounts", chunk_size=rng.choice((1, 3, 100))
            ):
                total += row[1]
            assert total == TOTAL
        else:
            await conn.fetchval(LONG_QUERY)
            raise AssertionError("the long query was meant to be cancelled")

    async def write_body(
        self, op: str, wid: int, conn: litepool.Connection, rng: random.Random
    ) -> None:
        if op == "transfer":
            source, target = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            # Read both, then write both back: the classic lost-update pattern.
            source_balance = await conn.fetchval(
                "SELECT balance FROM accounts WHERE id = ?", (source,)
            )
            target_balance = await conn.fetchval(
                "SELECT balance FROM accounts WHERE id = ?", (target,)
            )
            await anyio.lowlevel.checkpoint()
            await conn.execute(
                "UPDATE accounts SET balance = ? WHERE id = ?", (source_balance - amount, source)
            )
            await conn.execute(
                "UPDATE accounts SET balance = ? WHERE id = ?", (target_balance + amount, target)
            )
            await conn.execute(
                "INSERT INTO transfers VALUES (?, ?, ?, ?)", (wid, source, target, amount)
            )
        elif op == "event":
            # Autocommit: one statement, committed on its own; once sent, it may have run.
            self.tally.sent.add(wid)
            await conn.execute("INSERT INTO events VALUES (?, 0)", (wid,))
        else:  # batch: three rows in one pool.write() transaction, all or nothing
            await conn.executemany("INSERT INTO events VALUES (?, ?)", [(wid, 1), (wid, 2)])
            await conn.execute("INSERT INTO events VALUES (?, 3)", (wid,))
        self.tally.body_done.add(wid)

    def _transfer_in_one_job(
        self, db: sqlite3.Connection, wid: int, source: int, target: int, amount: int
    ) -> None:
        """``pool.run_write()``: the transfer of :meth:`write_body`, on the writer's thread."""
        (source_balance,) = db.execute(
            "SELECT balance FROM accounts WHERE id = ?", (source,)
        ).fetchone()
        (target_balance,) = db.execute(
            "SELECT balance FROM accounts WHERE id = ?", (target,)
        ).fetchone()
        db.execute(
            "UPDATE accounts SET balance = ? WHERE id = ?", (source_balance - amount, source)
        )
        db.execute(
            "UPDATE accounts SET balance = ? WHERE id = ?", (target_balance + amount, target)
        )
        db.execute("INSERT INTO transfers VALUES (?, ?, ?, ?)", (wid, source, target, amount))
        self.tally.body_done.add(wid)  # a set's add is atomic under the GIL

    async def run_call(
        self, op: str, rng: random.Random, timeout: float | None, inner: float | None
    ) -> bool:
        """One operation that is a single call of the pool; ``inner`` is a deadline that
        starts with the call. True if it completed."""
        tally = self.tally
        kwargs = {} if timeout is None else {"timeout": timeout}
        with anyio.move_on_after(math.inf if inner is None else inner) as scope:
            if op == "run_read snapshot":
                total, count = await self.pool.run_read(
                    lambda db: db.execute("SELECT sum(balance), count(*) FROM accounts").fetchone(),
                    **kwargs,
                )
                assert (total, count) == (TOTAL, ACCOUNTS)
            else:
                wid = self.new_id()
                tally.started.add(wid)
                source, target = rng.sample(range(ACCOUNTS), 2)
                amount = rng.randint(1, 50)
                await self.pool.run_write(
                    self._transfer_in_one_job, wid, source, target, amount, **kwargs
                )
                tally.reported.add(wid)
        if scope.cancelled_caught:
            tally.injected["deadline inside the call"] += 1
            return False
        self.ops_done += 1
        return True

    async def run_op(
        self, op: str, rng: random.Random, timeout: float | None, inner: float | None
    ) -> bool:
        """One operation; ``inner`` is a deadline that starts inside the checkout's block,
        so that it lands in the middle of the block's statements. True if it completed."""
        tally = self.tally
        if op in CALLS:
            return await self.run_call(op, rng, timeout, inner)
        if op in READS:
            async with self.checkout("read", timeout) as conn:
                tally.entered["read"] += 1
                with anyio.move_on_after(math.inf if inner is None else inner) as scope:
                    await self.read_body(op, conn, rng)
            if scope.cancelled_caught:
                tally.injected["deadline inside the block"] += 1
                return False
        else:
            wid = self.new_id()
            tally.started.add(wid)
            async with self.checkout("connection" if op == "event" else "write", timeout) as conn:
                tally.entered["write"] += 1
                with anyio.move_on_after(math.inf if inner is None else inner) as scope:
                    await self.write_body(op, wid, conn, rng)
            if scope.cancelled_caught:
                tally.injected["deadline inside the block"] += 1
            if wid in tally.body_done:
                tally.reported.add(wid)
            if scope.cancelled_caught:
                return False
        self.ops_done += 1
        return True

    async def one_op(self, rng: random.Random) -> None:
        """One operation under a randomly chosen deadline and checkout timeout."""
        tally = self.tally
        (op,) = rng.choices(OPERATIONS, WEIGHTS)
        timeout = rng.choice(CHECKOUT_TIMEOUTS)
        lane = "read" if op in READS else "write"
        (how,) = rng.choices(("none", "move_on", "fail", "inner"), (40, 20, 15, 25))
        deadline = rng.choice(DEADLINES)
        if op == "long query" and how == "none":
            how = "inner"  # never without a deadline
        inner = deadline if how == "inner" else None
        completed = False
        try:
            if how == "fail":
                try:
                    with anyio.fail_after(deadline):
                        completed = await self.run_op(op, rng, timeout, inner)
                except litepool.PoolTimeout:
                    raise
                except TimeoutError:
                    tally.injected["fail_after"] += 1
                    return
            elif how == "move_on":
                with anyio.move_on_after(deadline) as scope:
                    completed = await self.run_op(op, rng, timeout, inner)
                if scope.cancelled_caught:
                    tally.injected["move_on_after"] += 1
                    return
            else:
                completed = await self.run_op(op, rng, timeout, inner)
        except litepool.PoolTimeout:
            tally.timeouts[lane] += 1
            tally.outcomes["checkout timed out"] += 1
            return
        except litepool.TransactionAborted:
            # A deadline inside the block cancelled one of its statements.
            tally.outcomes["transaction aborted"] += 1
            return
        tally.outcomes[f"{op} done" if completed else "cancelled inside the block"] += 1

    async def task(self, index: int) -> None:
        rng = random.Random(f"{self.seed}/{index}")
        for _ in range(self.size.ops_per_task):
            await self.one_op(rng)

    async def cancellable_task(self, index: int) -> None:
        """A task that the chaos monkey may cancel natively at any await."""
        if self.backend == "asyncio":
            current = asyncio.current_task()
            assert current is not None
            self.cancellers[index] = current.cancel
            try:
                await self.task(index)
            except asyncio.CancelledError:
                if index not in self.natively_cancelled:
                    raise  # a cancel scope's: it handles it
                current.uncancel()
                self.tally.outcomes["task ended by Task.cancel()"] += 1
            finally:
                self.cancellers.pop(index, None)
        else:
            with trio.CancelScope() as scope:
                self.cancellers[index] = scope.cancel
                try:
                    await self.task(index)
                finally:
                    self.cancellers.pop(index, None)
            if scope.cancelled_caught:
                self.tally.outcomes["task ended by trio.CancelScope"] += 1

    async def group(self, number: int, tasks: list[int]) -> None:
        async with anyio.create_task_group() as tg:
            self.group_scopes.append(tg.cancel_scope)
            for index in tasks:
                tg.start_soon(self.cancellable_task, index)
        if tg.cancel_scope.cancelled_caught:
            self.tally.outcomes["group cancelled"] += 1

    async def chaos(self) -> None:
        """Cancels task groups and single tasks at seeded points of the storm."""
        rng = random.Random(f"{self.seed}/chaos")
        size = self.size
        total_ops = size.tasks * size.ops_per_task
        group_marks = sorted(rng.randrange(total_ops // 10, total_ops // 2) for _ in range(9))
        group_marks = group_marks[: size.group_cancels]
        natives_left = size.native_cancels
        while not self.finished.is_set():
            await anyio.sleep(rng.choice((0.0, 0.0005, 0.001)))
            if group_marks and self.ops_done >= group_marks[0]:
                group_marks.pop(0)
                live = [scope for scope in self.group_scopes if not scope.cancel_called]
                if live:
                    rng.choice(live).cancel()
                    self.tally.injected["task group cancelled"] += 1
            if natives_left and self.cancellers and rng.random() < 0.3:
                index = rng.choice(sorted(self.cancellers))
                cancel = self.cancellers.pop(index)
                self.natively_cancelled.add(index)
                cancel()
                natives_left -= 1
                self.tally.injected["native cancel"] += 1

    async def run(self) -> None:
        size = self.size
        order = list(range(size.tasks))
        random.Random(f"{self.seed}/groups").shuffle(order)
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.chaos)
            async with anyio.create_task_group() as groups:
                for number in range(size.groups):
                    groups.start_soon(self.group, number, order[number :: size.groups])
            self.finished.set()


async def setup_schema(pool: litepool.Pool) -> None:
    async with pool.connection() as conn:
        await conn.executescript(
            """
            CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
            CREATE TABLE transfers (
                id INTEGER PRIMARY KEY, source INTEGER, target INTEGER, amount INTEGER
            );
            CREATE TABLE events (id INTEGER NOT NULL, part INTEGER NOT NULL,
                                 PRIMARY KEY (id, part));
            """
        )
        await conn.executemany(
            "INSERT INTO accounts VALUES (?, ?)",
            [(account, START_BALANCE) for account in range(ACCOUNTS)],
        )


async def check_nothing_lost(pool: litepool.Pool, tally: Tally) -> dict[str, int]:
    stats = pool.statistics()
    for lane in ("read", "write"):
        lane_stats = getattr(stats, lane)
        assert lane_stats.in_use == 0, stats
        assert lane_stats.waiting == 0, stats
        assert lane_stats.idle == lane_stats.size, stats
        assert lane_stats.checkouts == tally.entered[lane], (lane, stats, tally.entered)
        assert lane_stats.timeouts == tally.timeouts[lane], (lane, stats, tally.timeouts)

    async with pool.connection() as conn:
        assert await conn.fetchval("PRAGMA integrity_check") == "ok"
        balances = dict(await conn.fetchall("SELECT id, balance FROM accounts"))
        transfers = await conn.fetchall("SELECT id, source, target, amount FROM transfers")
        events = await conn.fetchall("SELECT id, part FROM events")

    # The transfers kept the total, and the balances are exactly what the log says.
    assert sum(balances.values()) == TOTAL
    expected = dict.fromkeys(range(ACCOUNTS), START_BALANCE)
    for _, source, target, amount in transfers:
        expected[source] -= amount
        expected[target] += amount
    assert balances == expected

    # Every write reported committed is there; none whose body did not finish is there.
    transfer_ids = {row[0] for row in transfers}
    parts: dict[int, set[int]] = {}
    for eid, part in events:
        parts.setdefault(eid, set()).add(part)
    present = transfer_ids | set(parts)
    assert not transfer_ids & set(parts)
    assert tally.reported <= present, sorted(tally.reported - present)[:10]
    # A batch is all or nothing; an event is one row.
    for eid, got in parts.items():
        assert got in ({0}, {1, 2, 3}), (eid, got)
    # A transaction commits only if its body finished; an event only if it was sent.
    transactional = transfer_ids | {eid for eid, got in parts.items() if got == {1, 2, 3}}
    assert transactional <= tally.body_done, sorted(transactional - tally.body_done)[:10]
    events_present = present - transactional
    assert events_present <= tally.sent, sorted(events_present - tally.sent)[:10]
    return {
        "writes started": len(tally.started),
        "writes reported": len(tally.reported),
        "writes committed": len(present),
        "committed, outcome not reported": len(present - tally.reported),
        "transfers committed": len(transfer_ids),
    }


async def check_still_serves(pool: litepool.Pool) -> None:
    """Every connection is there, once: all of them can be held at the same time."""
    size = pool.statistics().readers
    idents: set[int] = set()
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(size):
            conn = await stack.enter_async_context(pool.read(timeout=0))
            idents.add(await conn.run_sync(lambda raw: threading.get_ident()))
        writer = await stack.enter_async_context(pool.write(timeout=0))
        idents.add(await writer.run_sync(lambda raw: threading.get_ident()))
        await writer.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 0")
        await writer.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    assert len(idents) == size + 1
    async with pool.read(timeout=0) as conn:
        assert await conn.fetchval("SELECT sum(balance) FROM accounts") == TOTAL


async def churn(pool: litepool.Pool, done: anyio.Event) -> int:
    """Resize the readers back and forth until ``done``, then back to READERS."""
    resizes = 0
    sizes = (READERS + 2, 1, READERS - 1, READERS + 1)
    while not done.is_set():
        await pool.resize(sizes[resizes % len(sizes)])
        resizes += 1
        with anyio.move_on_after(0.02):
            await done.wait()
    await pool.resize(READERS)
    return resizes


async def run_storm(
    db_path: str, backend: str, seed: int, size: StormSize, *, churning: bool = False
) -> None:
    """The storm; with ``churning``, readers are also replaced every ~50 ms
    (``max_lifetime``) and the pool is resized back and forth meanwhile."""
    signal = StartSignal()
    watchdog = LoopWatchdog()
    started = time.monotonic()
    async with (
        watchdog,
        litepool.open_pool(
            db_path,
            readers=READERS,
            acquire_timeout=20,
            configure=watchdog.chain(signal.configure),
            max_lifetime=0.05 if churning else None,
            name="storm",
        ) as pool,
    ):
        await setup_schema(pool)
        storm = Storm(pool, backend, seed, size)
        storm.tally.entered["write"] += 1  # setup_schema's checkout
        resizes = 0
        with anyio.fail_after(300):
            if churning:
                done = anyio.Event()

                async def resizing() -> None:
                    nonlocal resizes
                    resizes = await churn(pool, done)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(resizing)
                    await storm.run()
                    done.set()
            else:
                await storm.run()
        figures = await check_nothing_lost(pool, storm.tally)
        await check_still_serves(pool)
        stats = pool.statistics()
    assert litepool_threads() == []
    tally = storm.tally
    cancellations = sum(tally.injected.values())
    assert cancellations > 0
    assert stats.interrupted <= cancellations
    print(
        f"\nstorm {backend} seed={seed}: {size.tasks} tasks, {storm.ops_done} operations "
        f"completed in {time.monotonic() - started:.2f} s"
    )
    print(f"  cancellations injected: {dict(tally.injected)} (total {cancellations})")
    print(f"  outcomes: {dict(sorted(tally.outcomes.items()))}")
    print(
        f"  checkouts read/write: {stats.read.checkouts}/{stats.write.checkouts}, "
        f"timeouts read/write: {stats.read.timeouts}/{stats.write.timeouts}, "
        f"interrupted: {stats.interrupted}, rollbacks: {stats.rollbacks}"
    )
    print(f"  writes: {figures}; lost: 0")
    if churning:
        assert resizes > 0
        assert stats.connections_replaced > 0
        assert stats.connections_lost == stats.connections_failed == 0
        print(f"  resizes: {resizes}, connections replaced: {stats.connections_replaced}")


async def test_cancellation_storm(db_path: str, anyio_backend: str, long_run: bool) -> None:
    if long_run:
        for seed in range(1, 6):
            await run_storm(f"{db_path}.{seed}", anyio_backend, seed, LONG)
    else:
        await run_storm(db_path, anyio_backend, 1, QUICK)


async def test_cancellation_storm_while_connections_churn(
    db_path: str, anyio_backend: str, long_run: bool
) -> None:
    if long_run:
        for seed in range(11, 14):
            await run_storm(f"{db_path}.{seed}", anyio_backend, seed, LONG, churning=True)
    else:
        await run_storm(db_path, anyio_backend, 2, QUICK, churning=True)


async def run_with_native_cancel(
    backend: str, fn: Callable[[], Awaitable[Any]], cancel_after: Callable[[], Awaitable[None]]
) -> str:
    """Run ``fn`` in a task and cancel it natively once ``cancel_after`` returns."""
    outcome = "completed"
    cancel: Callable[[], object] | None = None

    async def runner(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal outcome, cancel
        if backend == "asyncio":
            current = asyncio.current_task()
            assert current is not None
            cancel = current.cancel
            task_status.started()
            try:
                await fn()
            except asyncio.CancelledError:
                current.uncancel()
                outcome = "cancelled"
        else:
            with trio.CancelScope() as scope:
                cancel = scope.cancel
                task_status.started()
                await fn()
            if scope.cancelled_caught:
                outcome = "cancelled"

    async with anyio.create_task_group() as tg:
        await tg.start(runner)
        await cancel_after()
        assert cancel is not None
        cancel()
    return outcome


async def test_storm_of_cancelled_long_queries_on_every_reader(
    db_path: str, anyio_backend: str
) -> None:
    """Every reader is busy with a long query that is cancelled while it runs, over and
    over, half natively: each cancellation stops its statement, and none is lost."""
    signal = StartSignal()
    watchdog = LoopWatchdog()
    rounds = 12
    async with (
        watchdog,
        litepool.open_pool(db_path, readers=3, configure=watchdog.chain(signal.configure)) as pool,
    ):

        async def long_read() -> None:
            async with pool.read() as conn:
                await conn.fetchval(LONG_QUERY)

        outcomes: Counter[str] = Counter()
        for round_ in range(rounds):
            if round_ % 2:
                outcomes[await run_with_native_cancel(anyio_backend, long_read, signal.wait)] += 1
            else:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(long_read)
                        await signal.wait()
                        scope.cancel()
                outcomes["cancelled" if scope.cancelled_caught else "completed"] += 1
        assert outcomes == {"cancelled": rounds}
        # Every interruption has been counted once its statement stopped, which the next
        # statement on each reader waits for (its reset runs first).
        async with (
            pool.read(timeout=0) as a,
            pool.read(timeout=0) as b,
            pool.read(timeout=0) as c,
        ):
            for conn in (a, b, c):
                assert await conn.fetchval("SELECT 1") == 1
        stats = pool.statistics()
        assert stats.interrupted == rounds
        assert (stats.read.idle, stats.read.in_use, stats.read.checkouts) == (3, 0, rounds + 3)
