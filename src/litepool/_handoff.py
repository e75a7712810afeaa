"""A first-come, first-served queue of waiting tasks, with a hand-off they can refuse.

Whoever gives something (a connection, a slot) hands it to the first waiter that can
still take it, and wakes that waiter, in one synchronous step. If the waiter is
cancelled at that moment (an anyio or trio cancel scope, or a native
``asyncio.Task.cancel()`` arriving after the wake-up but before the task runs), it finds
the item when its cancellation unwinds and passes it on (``pass_on``), which hands it to
the next waiter. A waiter that times out or is cancelled before any hand-off simply
leaves the queue. So nothing given is ever stranded with a task that is gone.

This replaced an ``anyio.CapacityLimiter`` plus a cancel scope per waiter, which gave
the same guarantees but cost tens of microseconds of event-loop time per contended
hand-off. The lanes of a pool use it for connections, the aiosqlitepool-shaped pool for
slots.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from ._bridge import Bridge, Waiter
from ._interrupt import protected

T = TypeVar("T")

_WAITING: Final = 0
_GIVEN: Final = 1
_GONE: Final = 2


class HandOff(Generic[T]):
    """Tasks waiting for an item, first come, first served."""

    __slots__ = ("_bridge", "_pass_on", "_waiters")

    def __init__(self, bridge: Bridge, pass_on: Callable[[T], object]) -> None:
        self._bridge = bridge
        # Takes back an item given to a waiter that left without it (cancelled at the
        # hand-off), so that it can go to the next one.
        self._pass_on = pass_on
        self._waiters: deque[Waiter] = deque()

    @property
    def waiting(self) -> int:
        """Tasks in the queue."""
        return len(self._waiters)

    def borrowers(self) -> list[object]:
        """The borrowers of the waiting tasks, first first."""
        return [waiter.borrower for waiter in self._waiters]

    @protected
    async def wait(self, timeout: float | None, borrower: object = None) -> T | None:
        """Wait at the end of the queue for up to ``timeout`` seconds (None: no limit).

        :returns: the item given to this task, or None if the wait ended without one
            (the timeout passed, or :meth:`close` was called).

        Cancellation: the task holds nothing afterwards; an item given to it in the same
        step is passed on.
        """
        waiter = Waiter(borrower)
        self._waiters.append(waiter)
        try:
            await self._bridge.park(waiter, timeout)
        except BaseException:
            self._leave(waiter)
            raise
        if waiter.state != _GIVEN:
            self._leave(waiter)
            return None
        item: T = waiter.item
        return item

    @protected
    def give(self, make: Callable[[object], T]) -> bool:
        """Wake the first waiter that can still take an item, and give it
        ``make(borrower)``; False if no waiter could (nothing is made then)."""
        waiters = self._waiters
        resume = self._bridge.resume
        while waiters:
            waiter = waiters.popleft()
            if not resume(waiter):  # already cancelled or timed out: it cannot take it
                waiter.state = _GONE
                continue
            waiter.state = _GIVEN
            waiter.item = make(waiter.borrower)
            return True
        return False

    @protected
    def close(self) -> None:
        """Wake every waiter empty-handed."""
        waiters = self._waiters
        while waiters:
            self._bridge.resume(waiters.popleft())

    @protected
    def _leave(self, waiter: Waiter) -> None:
        """A waiter leaves without using an item: pass on whatever reached it."""
        state, waiter.state = waiter.state, _GONE
        if state == _GIVEN:
            item, waiter.item = waiter.item, None
            self._pass_on(item)
        elif state == _WAITING:
            # close() or a hand-off may have taken it out of the queue already.
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
