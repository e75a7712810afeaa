"""Checkout state of one lane (the writer, or the readers), without I/O.

A lane hands out the connections of its workers. Who may take one is decided by an
``anyio.CapacityLimiter`` with one token per connection: its waiters queue first come,
first served, and its hand-off is safe under cancellation on both backends. A waiter
that is cancelled (anyio scope or native ``asyncio.Task.cancel()``) in the same step as
a token is handed to it gives the token back to the next waiter.

Which connection a token holder takes is decided by the idle list, taken from with no
await between getting the token and taking the connection, so a token never waits on a
connection and a connection never waits without a token. A memory object stream is not
used for this hand-off: a ``receive()`` cancelled natively in the same step as the send
loses the item.
"""

from __future__ import annotations

import math

import anyio

from ._errors import PoolClosed, PoolTimeout
from ._stats import LaneStatistics
from ._worker import Worker


class Lane:
    __slots__ = (
        "_waiting_scopes",
        "checkouts",
        "closed",
        "idle",
        "in_use",
        "kind",
        "limiter",
        "pool_name",
        "timeouts",
        "workers",
    )

    def __init__(self, kind: str, pool_name: str, workers: list[Worker]) -> None:
        self.kind = kind
        self.pool_name = pool_name
        self.workers = workers
        # Most recently returned last: the next borrower gets the warmest connection.
        self.idle: list[Worker] = list(workers)
        self.limiter = anyio.CapacityLimiter(len(workers))
        self._waiting_scopes: set[anyio.CancelScope] = set()
        self.in_use = 0
        self.checkouts = 0
        self.timeouts = 0
        self.closed = False

    async def acquire(self, borrower: object, timeout: float | None) -> Worker:
        """Take a connection for ``borrower``, waiting at most ``timeout`` seconds.

        Cancellation: if the caller is cancelled while waiting, it holds nothing and has
        taken nothing; a token handed to it at that moment goes to the next waiter.
        """
        if self.closed:
            raise PoolClosed(f"pool {self.pool_name!r} is closed")
        try:
            self.limiter.acquire_on_behalf_of_nowait(borrower)
        except anyio.WouldBlock:
            await self._wait(borrower, timeout)
        return self._take(borrower)

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

    def _take(self, borrower: object) -> Worker:
        if self.closed:
            self.limiter.release_on_behalf_of(borrower)
            raise PoolClosed(f"pool {self.pool_name!r} is closed")
        worker = self.idle.pop()
        self.in_use += 1
        self.checkouts += 1
        return worker

    def release(self, borrower: object, worker: Worker) -> None:
        """Give ``worker`` back: synchronous, so it cannot be interrupted half-way."""
        self.in_use -= 1
        if not self.closed:
            self.idle.append(worker)
        self.limiter.release_on_behalf_of(borrower)

    def close(self) -> None:
        self.closed = True
        self.idle.clear()
        for scope in self._waiting_scopes:
            scope.cancel()

    def statistics(self) -> LaneStatistics:
        return LaneStatistics(
            size=len(self.workers),
            idle=len(self.idle),
            in_use=self.in_use,
            waiting=self.limiter.statistics().tasks_waiting,
            checkouts=self.checkouts,
            timeouts=self.timeouts,
        )
