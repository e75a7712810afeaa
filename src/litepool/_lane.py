"""Checkout state of one lane (the writer, or the readers), without I/O.

A lane hands out the connections of its workers. Who may take one is decided by an
``anyio.CapacityLimiter`` with one token per connection: its waiters queue first come,
first served, and its hand-off is safe under cancellation on both backends. A waiter
that is cancelled (anyio scope or native ``asyncio.Task.cancel()``) in the same step as
a token is handed to it gives the token back to the next waiter.

Which connection a token holder takes is decided right after it gets the token, with no
await in between, among the connections no checkout holds: so a token never waits on a
connection and a connection never waits without a token. A memory object stream is not
used for this hand-off: a ``receive()`` cancelled natively in the same step as the send
loses the item.
"""

from __future__ import annotations

import math
import time
from typing import Final

import anyio

from ._errors import PoolClosed, PoolTimeout
from ._stats import LaneStatistics
from ._worker import Job, Worker

#: A connection with this many single statements queued is passed over for the next one
#: in favour of a less busy connection. Below it, statements gather on as few threads as
#: possible, which then stay awake and answer many statements per wake-up.
SPILL_DEPTH: Final = 8
#: ... and so is a connection that has not answered anything for this many seconds.
SPILL_AFTER: Final = 0.002


class Lane:
    __slots__ = (
        "_waiting_scopes",
        "checkouts",
        "closed",
        "idle",
        "kind",
        "limiter",
        "pool_name",
        "statements",
        "timeouts",
        "workers",
    )

    def __init__(self, kind: str, pool_name: str, workers: list[Worker]) -> None:
        self.kind = kind
        self.pool_name = pool_name
        self.workers = workers
        self.idle = len(workers)  # workers not held by a checkout
        self.limiter = anyio.CapacityLimiter(len(workers))
        self._waiting_scopes: set[anyio.CancelScope] = set()
        self.checkouts = 0
        self.statements = 0
        self.timeouts = 0
        self.closed = False

    async def acquire(self, borrower: object, timeout: float | None) -> Worker:
        """Take a connection for ``borrower`` alone, waiting at most ``timeout`` seconds.

        Cancellation: if the caller is cancelled while waiting, it holds nothing and has
        taken nothing; a token handed to it at that moment goes to the next waiter.
        """
        await self._token(borrower, timeout)
        worker = self._least_busy()
        worker.held = True
        self.idle -= 1
        self.checkouts += 1
        return worker

    def release(self, borrower: object, worker: Worker) -> None:
        """Give ``worker`` back: synchronous, so it cannot be interrupted half-way."""
        worker.held = False
        self.idle += 1
        self.limiter.release_on_behalf_of(borrower)

    def try_dispatch(self, job: Job) -> Worker | None:
        """Queue a self-contained ``job`` now if that needs no waiting, else return None.

        With a free connection and nobody queued before us, taking a token and giving it
        back in the same step would change nothing, so the limiter is skipped.
        """
        if self.idle and not self._waiting_scopes and not self.closed:
            worker = self._gathering()
            worker.submit(job)
            self.statements += 1
            return worker
        return None

    async def dispatch(self, job: Job, timeout: float | None) -> Worker:
        """Queue a self-contained ``job`` on a connection that no checkout holds.

        The job needs the connection only while it runs, so it takes a token just long
        enough to choose a connection and queue the job, with no await in between: it
        waits its turn behind earlier checkouts, and never runs inside a checkout's
        transaction. Cancellation while waiting behaves as in :meth:`acquire`.
        """
        await self._token(job, timeout)
        worker = self._gathering()
        worker.submit(job)
        self.statements += 1
        self.limiter.release_on_behalf_of(job)
        return worker

    async def _token(self, borrower: object, timeout: float | None) -> None:
        if self.closed:
            raise PoolClosed(f"pool {self.pool_name!r} is closed")
        try:
            self.limiter.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            await self._wait(borrower, timeout)
            if self.closed:
                self.limiter.release_on_behalf_of(borrower)
                raise PoolClosed(f"pool {self.pool_name!r} is closed") from None

    def _least_busy(self) -> Worker:
        best: Worker | None = None
        for worker in self.workers:
            if not worker.held and (best is None or worker.queued < best.queued):
                best = worker
                if not worker.queued:
                    break
        assert best is not None, "a token holder always finds a free connection"
        return best

    def _gathering(self) -> Worker:
        now = 0.0
        for worker in self.workers:
            if worker.held:
                continue
            queued = worker.queued
            if not queued:
                return worker
            if queued < SPILL_DEPTH:
                # Gather on a busy connection only while it keeps answering: one that has
                # been on the same work for a while is running something long.
                now = now or time.monotonic()
                if now - worker.progress < SPILL_AFTER:
                    return worker
        return self._least_busy()

    async def _wait(self, borrower: object, timeout: float | None) -> None:
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        scope = anyio.CancelScope(deadline=deadline)
        self._waiting_scopes.add(scope)
        try:
            with scope:
                await self.limiter.acquire_on_behalf_of(borrower)
        finally:
            self._waiting_scopes.discard(scope)
        if scope.cancelled_caught:
            # Our own scope ended the wait (deadline or close): the limiter has already
            # passed on any token that reached us.
            if self.closed:
                raise PoolClosed(f"pool {self.pool_name!r} was closed while waiting")
            self.timeouts += 1
            stats = self.statistics()
            raise PoolTimeout(
                f"pool {self.pool_name!r}: no {self.kind} connection became free within "
                f"{timeout:g} s (in use: {stats.in_use}, idle: {stats.idle}, "
                f"waiting: {stats.waiting})"
            )

    def close(self) -> None:
        self.closed = True
        for scope in self._waiting_scopes:
            scope.cancel()

    def statistics(self) -> LaneStatistics:
        size = len(self.workers)
        return LaneStatistics(
            size=size,
            idle=self.idle,
            in_use=size - self.idle,
            waiting=self.limiter.statistics().tasks_waiting,
            checkouts=self.checkouts,
            statements=self.statements,
            timeouts=self.timeouts,
        )
