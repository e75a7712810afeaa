"""aiosqlitepool's API, with litepool's guarantees, for the connections of any async driver.

Migrating from aiosqlitepool 1.0 is a change of module in the import lines::

    from aiosqlitepool import SQLiteConnectionPool, PoolClosedError         # before
    from litepool.aiosqlitepool import SQLiteConnectionPool, PoolClosedError  # after

:class:`SQLiteConnectionPool` pools the connections of aiosqlite, sqlite-anyio or any
async driver through a connection factory, and is called the way aiosqlitepool's pool of
the same name is::

    pool = SQLiteConnectionPool(lambda: aiosqlite.connect("app.db"), pool_size=10)
    async with pool.connection() as conn:
        await conn.execute("...")
    await pool.close()

Its exceptions keep aiosqlitepool's names, so that ``except`` clauses written for it go
on matching: :class:`PoolConnectionAcquireTimeoutError` is a :class:`litepool.PoolTimeout`
and :class:`PoolClosedError` is a :class:`litepool.PoolClosed`.

How it works:

- **Slots.** ``pool_size`` slots decide *who* may hold a connection. A checkout takes a
  free slot without awaiting anything when nobody waits; otherwise it queues in a
  :class:`~litepool._handoff.HandOff`, the first-come, first-served queue of the core's
  lanes. A slot given back goes to the first waiter that can still take it, in the same
  synchronous step; a waiter cancelled in that step (a cancel scope, or a native
  ``asyncio.Task.cancel()``) passes it on to the next one, and a waiter's timeout is
  the hand-off's own timer, not a cancel scope. Slots are counted per checkout, so one
  task may hold several checkouts. Every path out of a checkout, normal or not, gives
  its slot back.
- **Event loops.** The queue parks tasks through the bridge of the event loop that first
  needs it (an asyncio future, or trio's ``wait_task_rescheduled``); it is made again
  for another loop once no task of the former one waits, so a pool may serve one event
  loop after another (``asyncio.run`` twice, asyncio then trio). Tasks of two event
  loops waiting at once is a misuse, refused with :class:`RuntimeError`.
- **Connections.** A token holder takes the most recently returned idle connection, with
  no await between getting the token and taking the connection. When there is none, it
  waits for a connection that is still being made for a checkout that gave up, and only
  when there is none of those either does it call the factory. So the connections open
  and being made never outnumber ``pool_size``.
- **Making a connection.** The factory is called by the checkout, and what it returns is
  awaited in a task of its own (an asyncio task, or a trio system task), which the
  checkout waits for. A checkout that is cancelled, or whose ``operation_timeout``
  runs out, stops waiting without cancelling the factory: a driver such as aiosqlite
  opens its connection on a thread of its own, and cancelling its connect leaves that
  connection open with nobody holding it. The connection that arrives goes to the next
  checkout that needs one, or is closed if the pool has been closed meanwhile.
- **No background task.** Idle connections past ``idle_timeout`` are closed by the next
  checkout, as in aiosqlitepool. Nothing of the pool is tied to the task that entered
  ``async with pool:``, which may be left in another task (as pytest-asyncio fixtures
  and ``unittest.IsolatedAsyncioTestCase`` do).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel

from ._bridge import Bridge, current_bridge
from ._errors import PoolClosed, PoolTimeout
from ._handoff import HandOff
from ._interrupt import protected
from ._options import check_timeout

__all__ = [
    "AsyncConnection",
    "PoolClosedError",
    "PoolConnectionAcquireTimeoutError",
    "SQLiteConnectionPool",
]

_logger = logging.getLogger("litepool")

_DEFAULT_POOL_SIZE: Final = 5
_DEFAULT_ACQUISITION_TIMEOUT: Final = 30.0
_DEFAULT_IDLE_TIMEOUT: Final = 86400.0
_DEFAULT_OPERATION_TIMEOUT: Final = 10.0


class PoolConnectionAcquireTimeoutError(PoolTimeout):
    """No connection could be checked out in time (aiosqlitepool's name).

    Raised by :meth:`SQLiteConnectionPool.connection` when no slot became free within
    the acquisition timeout, or when making a new connection took longer than
    ``operation_timeout``. It is a :class:`litepool.PoolTimeout`, and so also a
    :class:`TimeoutError`; the message names the pool and its counts.
    """

    def __init__(
        self, message: str = "no connection could be checked out within the timeout"
    ) -> None:
        super().__init__(message)
        #: The error's text, as aiosqlitepool's exceptions have it.
        self.message: str = message


class PoolClosedError(PoolClosed):
    """The pool is closed (aiosqlitepool's name); a :class:`litepool.PoolClosed`.

    Raised by checkouts of a closed pool, by checkouts that were waiting when the pool
    was closed, and by ``async with pool:`` on a closed pool.
    """

    def __init__(self, message: str = "the connection pool is closed") -> None:
        super().__init__(message)
        #: The error's text, as aiosqlitepool's exceptions have it.
        self.message: str = message


class AsyncConnection(Protocol):
    """What the pool needs from a driver's connection: aiosqlitepool's protocol.

    The pool itself never calls ``execute``: there is no health check. It reads an
    ``in_transaction`` attribute if the connection has one (see
    :class:`SQLiteConnectionPool`).
    """

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run a statement: for the pool's users; the pool never calls it."""
        ...

    def rollback(self) -> Awaitable[object]:
        """Roll back any open transaction; awaited when a connection is returned."""
        ...

    def close(self) -> Awaitable[object]:
        """Close the connection; awaited when the pool closes it."""
        ...


ConnT = TypeVar("ConnT", bound=AsyncConnection)


class _Unset(enum.Enum):
    """The default of ``timeout=``: use the pool's ``acquisition_timeout``."""

    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


def _check_pool_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"pool_size must be an int >= 1, not {value!r}")
    if value < 1:
        raise ValueError(f"pool_size must be >= 1, got {value!r}")
    return value


def _check_duration(value: object, what: str) -> float | None:
    """A duration in seconds, or None for no limit, checked before anything runs."""
    try:
        return check_timeout(value, what)
    except OverflowError:
        # An int beyond a float's range: more seconds than math.inf stands for, or fewer
        # than none.
        assert isinstance(value, int)
        if value > 0:
            return None
        raise ValueError(f"{what} must be >= 0 seconds or None, got {value!r}") from None


def _no_loop() -> object:
    raise RuntimeError("no event loop yet")


def _may_hold_an_interrupt(error: BaseException | None) -> bool:
    """Whether a block that ended with ``error`` may leave an interrupt pending on its
    connection: it was cancelled, or its cancellation was turned into a timeout error.

    A driver may interrupt its connection when its caller is cancelled (sqlite-anyio
    does), and SQLite keeps that interrupt pending for as long as any statement of the
    connection is unfinished, such as the one whose cursor the cancelled call never
    handed over: every later statement fails with "interrupted". Neither a rollback nor
    the end of the driver's call clears it; closing the connection does.
    """
    if error is None:
        return False
    if not isinstance(error, Exception) or isinstance(error, TimeoutError):
        return True  # a cancellation (or KeyboardInterrupt...); anyio's and asyncio's timeouts
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.TooSlowError)


def _transaction_state(conn: object) -> bool | None:
    """The driver's ``in_transaction``, or None when the driver does not say."""
    try:
        value = getattr(conn, "in_transaction", None)
    except Exception:  # no such attribute, or a closed connection refusing to answer
        return None
    return value if isinstance(value, bool) else None


#: Running asyncio tasks that make connections: the event loop keeps only weak
#: references to its tasks.
_factory_tasks: set[asyncio.Task[None]] = set()


def _slot(_borrower: object) -> bool:
    """What the hand-off gives a waiter: the right to hold a connection."""
    return True


def _current_loop() -> tuple[object, Callable[[], object]]:
    """The running event loop (an asyncio loop or a trio token), and a cheap function
    that returns the running one later (raising ``RuntimeError`` outside any)."""
    native = anyio.lowlevel.current_token().native_token
    if isinstance(native, asyncio.AbstractEventLoop):
        return native, asyncio.get_running_loop
    import trio

    return native, trio.lowlevel.current_trio_token


class _Idle(Generic[ConnT]):
    """An idle connection, and since when (``time.monotonic()``: not the event loop's
    clock, which differs between loops, trio's starting at a random offset)."""

    __slots__ = ("conn", "since")

    def __init__(self, conn: ConnT, since: float) -> None:
        self.conn = conn
        self.since = since


class _Making(Generic[ConnT]):
    """One call of the connection factory, awaited in a task of its own.

    While a checkout waits for it, ``claimed`` is true and that checkout takes what it
    makes; otherwise the task puts what it makes in the idle list, or closes it if the
    pool is closed.
    """

    __slots__ = ("claimed", "conn", "done", "error", "scope", "settled")

    def __init__(self) -> None:
        #: Cancelled only by close(), once its grace period is over.
        self.scope = anyio.CancelScope()
        #: Set when the factory's awaitable has finished, one way or another.
        self.done = anyio.Event()
        #: Set when what it made is idle, checked out or closed: close() waits for it.
        self.settled = anyio.Event()
        self.claimed = False
        self.conn: ConnT | None = None
        self.error: Exception | None = None


class SQLiteConnectionPool(Generic[ConnT]):
    """A pool of connections made by ``connection_factory``, with aiosqlitepool's API.

    Replace ``from aiosqlitepool import ...`` with ``from litepool.aiosqlitepool import
    ...``; the arguments, ``pool.connection()``, ``await pool.close()`` and ``async with
    pool:`` are used the same way, and the errors keep their names
    (:class:`PoolConnectionAcquireTimeoutError`, :class:`PoolClosedError`).

    :param connection_factory: an async callable returning a new connection whose
        ``rollback()`` and ``close()`` are awaitable (aiosqlite, sqlite-anyio, ...).
        Connections are made on demand, when a checkout finds none idle.
    :param pool_size: the most connections open (or being made) at once, and so the
        most checkouts at once; an int >= 1.
    :param acquisition_timeout: seconds a checkout may wait for a free slot before it
        raises :class:`PoolConnectionAcquireTimeoutError`. Fractions are honoured; ``0``
        only takes a free slot; ``None`` waits as long as it takes.
    :param idle_timeout: seconds a returned connection may stay idle; the next checkout
        after that closes it. ``None`` keeps idle connections open.
    :param operation_timeout: seconds a checkout waits for a new connection from
        ``connection_factory`` (then it raises
        :class:`PoolConnectionAcquireTimeoutError`, and the connection, when it comes,
        goes to a later checkout), and seconds given to each ``rollback()`` and
        ``close()`` (a connection whose rollback fails or overruns is closed instead of
        reused) and to factory calls still running when the pool closes. ``None`` waits
        as long as it takes.
    :param name: the pool's name in errors and logs; by default the factory's name.
    :raises TypeError: for an argument of the wrong type, naming it.
    :raises ValueError: for an argument out of range, naming it.

    **Checkouts.** ``async with pool.connection() as conn`` yields the driver's own
    connection. Waiting checkouts are served first come, first served. A checkout that
    finds a free slot and an idle connection does not await at all (and so is not a
    cancellation point); there is no health-check round trip.

    **Returning a connection.** When the block ends normally and the driver's
    ``in_transaction`` attribute says no transaction is open (aiosqlite has one), the
    connection goes back to the pool without any round trip. Otherwise (a transaction is
    open, the driver does not say, or the block ended with an exception or a
    cancellation, after which the connection's state is unknown) it is rolled back first,
    shielded from cancellation; if that fails it is closed and a later checkout makes a
    new one. The pool never commits.

    **Idle connections** are reused most recently returned first, so that connections
    beyond what the load needs stay idle and expire. The pool has no task of its own:
    expired connections are closed by the next checkout (or by :meth:`close`).

    **Making connections.** The factory's awaitable runs in a task of its own (with a
    copy of the checkout's context variables) and is never cancelled because a checkout
    gave up: a connection that arrives after its checkout was cancelled or timed out is
    kept for the next checkout, or closed if the pool is closed by then. It still counts
    against ``pool_size`` while it is being made.

    **Cancellation** (anyio and trio cancel scopes, and native ``asyncio.Task.cancel()``)
    never loses a slot or a connection:

    - cancelled while waiting for a slot, or in the same step as a slot is handed to
      it: the task holds nothing; a slot handed to it goes to the next waiter;
    - cancelled while its connection is being made: the slot is given back at once, and
      the connection goes to the pool when it arrives;
    - cancelled inside the block, or while the connection is being returned: the
      rollback and any close run shielded from cancel scopes, and the slot is given back
      whatever happens. A native ``Task.cancel()`` can still interrupt the rollback; the
      connection is then closed rather than reused.

    The pool holds no connection and starts no task until the first checkout. Close it
    with ``await pool.close()`` or by leaving ``async with pool:``; the block may be
    entered in one task and left in another.
    """

    def __init__(
        self,
        connection_factory: Callable[[], Awaitable[ConnT]],
        pool_size: int = _DEFAULT_POOL_SIZE,
        acquisition_timeout: float | None = _DEFAULT_ACQUISITION_TIMEOUT,
        idle_timeout: float | None = _DEFAULT_IDLE_TIMEOUT,
        operation_timeout: float | None = _DEFAULT_OPERATION_TIMEOUT,
        *,
        name: str | None = None,
    ) -> None:
        if not callable(connection_factory):
            raise TypeError(
                "connection_factory must be an async callable that returns a new "
                f"connection, not {connection_factory!r}"
            )
        if name is None:
            name = getattr(connection_factory, "__name__", None) or "SQLiteConnectionPool"
        elif not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, not {name!r}")
        self._factory = connection_factory
        self._name: str = name
        self._pool_size = _check_pool_size(pool_size)
        self._acquisition_timeout = _check_duration(acquisition_timeout, "acquisition_timeout")
        self._idle_timeout = _check_duration(idle_timeout, "idle_timeout")
        self._operation_timeout = _check_duration(operation_timeout, "operation_timeout")
        # Slots no checkout holds; the others are held, or given to a waiter that has
        # not run yet.
        self._free = self._pool_size
        # Made when a checkout first has to wait, for the event loop it runs in.
        self._queue: HandOff[bool] | None = None
        self._bridge: Bridge | None = None
        self._loop: object = None
        self._running_loop: Callable[[], object] = _no_loop
        # Most recently returned last: checkouts take from the right, expiry from the left.
        self._idle: deque[_Idle[ConnT]] = deque()
        # Factory calls not settled yet; and, oldest first, those no checkout waits for.
        self._making: set[_Making[ConnT]] = set()
        self._unclaimed: deque[_Making[ConnT]] = deque()
        # The operation_timeout scopes of checkouts waiting for a new connection.
        self._scopes: set[anyio.CancelScope] = set()
        self._open = 0
        self._in_use = 0
        self._closed = False
        self._close_finished: anyio.Event | None = None
        self._entered = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<litepool.aiosqlitepool.SQLiteConnectionPool {self._name!r} {state} "
            f"pool_size={self._pool_size} connections={self._open} in_use={self._in_use}>"
        )

    # -- introspection ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name, used in errors and logs."""
        return self._name

    @property
    def pool_size(self) -> int:
        """The most connections the pool opens at once."""
        return self._pool_size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called (or ``async with pool:`` has ended)."""
        return self._closed

    @property
    def connections(self) -> int:
        """Connections open right now: idle ones plus checked-out ones."""
        return self._open

    @property
    def idle(self) -> int:
        """Open connections waiting in the pool for a borrower."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Checkouts holding a connection right now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Checkouts waiting for a free slot."""
        queue = self._queue
        return 0 if queue is None else queue.waiting

    # -- checkout --------------------------------------------------------------------

    def connection(
        self, *, timeout: float | _Unset | None = _UNSET
    ) -> AbstractAsyncContextManager[ConnT]:
        """Check out a connection for an ``async with`` block.

        :param timeout: overrides ``acquisition_timeout`` for this checkout; checked
            here, before anything runs.
        :raises TypeError: for a ``timeout`` that is not a number of seconds or None.
        :raises ValueError: for a negative or NaN ``timeout``.
        :raises PoolConnectionAcquireTimeoutError: (when the block is entered) no slot
            became free within the timeout (the message names the pool and its counts),
            or making a new connection took longer than ``operation_timeout``.
        :raises PoolClosedError: (when the block is entered) the pool is closed, or was
            closed while the checkout waited.

        Cancellation: see the class's documentation; in short, a cancelled checkout
        holds nothing, a connection being made for it goes to the pool when it arrives,
        and a connection whose block was cancelled is rolled back (shielded) or closed
        before its slot is given back.
        """
        if timeout is _UNSET:
            resolved = self._acquisition_timeout
        else:
            resolved = _check_duration(timeout, "timeout")
        return _Checkout(self, resolved)

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosedError(f"pool {self._name!r} is closed")

    @protected
    async def _acquire(self, timeout: float | None) -> ConnT:
        self._check_open()
        queue = self._queue
        if self._free and (queue is None or not queue.waiting):
            self._free -= 1
            idle = self._idle
            if idle and not self._expired(idle[0]):
                # The common case: no await, so no cancellation point and no round trip.
                self._in_use += 1
                return idle.pop().conn
            holding = True
        else:
            holding = False
        try:
            if not holding:
                await self._wait(timeout)
                holding = True
            conn = await self._obtain()
        except BaseException:
            # Cancelled, timed out, closed, or the factory failed: nothing may be kept.
            if holding:
                self._give_slot()
            raise
        self._in_use += 1
        return conn

    @protected
    async def _wait(self, timeout: float | None) -> None:
        """Wait for a slot; on any exception the slot is not held."""
        queue = self._queue_here()
        try:
            got = await queue.wait(timeout)
        finally:
            # A waiter that left (timed out, cancelled) may leave a free slot behind a
            # queue that a newcomer joined meanwhile.
            if self._free and queue.waiting and queue is self._queue:
                self._grant()
        if got is None:  # the timeout passed, or close() woke every waiter
            self._check_open()
            raise PoolConnectionAcquireTimeoutError(
                f"pool {self._name!r}: no connection became free within {timeout:g} s "
                f"(pool_size: {self._pool_size}, in use: {self._in_use}, "
                f"idle: {len(self._idle)}, waiting: {self.waiting})"
            )

    def _queue_here(self) -> HandOff[bool]:
        """The queue of waiting checkouts, for the running event loop."""
        queue = self._queue
        if queue is not None:
            if self._in_own_loop():
                return queue
            if queue.waiting and self._owner_alive():
                raise RuntimeError(self._two_loops())
        # The first wait, or the former event loop has no waiter left: park through this
        # one from now on.
        self._loop, self._running_loop = _current_loop()
        self._bridge = bridge = current_bridge()
        self._queue = queue = HandOff(bridge, self._give_slot)
        return queue

    def _in_own_loop(self) -> bool:
        try:
            return self._running_loop() is self._loop
        except RuntimeError:  # no event loop of that kind runs here
            return False

    def _owner_alive(self) -> bool:
        bridge = self._bridge
        return bridge is not None and bridge.alive()

    def _two_loops(self) -> str:
        return (
            f"pool {self._name!r} is used from two event loops at once: checkouts of "
            "another event loop wait for its slots. A pool, like its connections, "
            "belongs to one event loop at a time; make one pool per event loop"
        )

    @protected
    def _give_slot(self, _item: object = None) -> None:
        """A slot comes back (also one given to a waiter that left without it): it goes
        to the first waiter that can still take it, or becomes free."""
        self._free += 1
        queue = self._queue
        if queue is not None and queue.waiting and self._with_waiters(self._grant):
            raise RuntimeError(self._two_loops())

    @protected
    def _grant(self) -> None:
        queue = self._queue
        if queue is None or not self._in_own_loop():
            return  # run late, from another event loop's thread: the queue moved on
        while self._free and queue.give(_slot):
            self._free -= 1

    def _with_waiters(self, wake: Callable[[], object]) -> bool:
        """Call ``wake`` (which wakes waiting checkouts) in their event loop: now if that
        is the running one, else soon, from that loop's own thread. True in that case:
        tasks of two event loops use the pool at once."""
        if self._in_own_loop():
            wake()
            return False
        bridge = self._bridge
        assert bridge is not None
        if bridge.alive() and bridge.call_soon(wake):
            return True
        self._queue = None  # that loop has ended, and its waiters with it
        return False

    async def _obtain(self) -> ConnT:
        """With a slot held: close expired idle connections, then reuse, wait or make."""
        expired = self._take_expired()
        if expired:
            await self._close_all(expired)
        self._check_open()
        if self._idle:
            return self._idle.pop().conn
        # A connection still being made for a checkout that gave up is this slot's.
        making = self._unclaimed.popleft() if self._unclaimed else self._make()
        return await self._await(making)

    # -- making connections ----------------------------------------------------------

    def _make(self) -> _Making[ConnT]:
        """Call the factory and await what it returns in a task of its own."""
        try:
            result = self._factory()
        except Exception as exc:
            exc.add_note(f"while pool {self._name!r} was creating a connection")
            raise
        if not inspect.isawaitable(result):
            raise TypeError(
                f"connection_factory of pool {self._name!r} must be async (return an "
                f"awaitable), but it returned {result!r}"
            )
        making: _Making[ConnT] = _Making()
        self._making.add(making)
        name = f"litepool.aiosqlitepool[{self._name}] connect"
        native = anyio.lowlevel.current_token().native_token
        if isinstance(native, asyncio.AbstractEventLoop):
            task = native.create_task(self._run_factory(making, result), name=name)
            _factory_tasks.add(task)
            task.add_done_callback(_factory_tasks.discard)
        else:
            import trio

            trio.lowlevel.spawn_system_task(
                self._run_factory, making, result, name=name, context=contextvars.copy_context()
            )
        return making

    async def _run_factory(self, making: _Making[ConnT], result: Awaitable[ConnT]) -> None:
        """The task of one factory call. It raises nothing but its own cancellation."""
        made: list[ConnT] = []
        try:
            with making.scope:
                made.append(await result)
        except Exception as exc:
            exc.add_note(f"while pool {self._name!r} was creating a connection")
            making.error = exc
        except BaseException as exc:
            # The task itself is cancelled (its event loop is shutting down), or
            # interrupted: a waiting checkout gets an error, and nothing is made.
            making.error = RuntimeError(
                f"pool {self._name!r}: making a connection was interrupted by {exc!r}"
            )
            self._made(making)
            if not making.claimed:
                self._settle(making)
            raise
        if made:
            conn = made[0]
            if all(callable(getattr(conn, method, None)) for method in ("rollback", "close")):
                self._open += 1
                making.conn = conn
            else:
                making.error = TypeError(
                    f"connection_factory of pool {self._name!r} returned {conn!r}, which "
                    "has no rollback() and close() methods"
                )
        self._made(making)
        if not making.claimed:
            await self._keep(making)

    def _made(self, making: _Making[ConnT]) -> None:
        making.done.set()
        if not making.claimed:
            self._unclaimed.remove(making)

    async def _await(self, making: _Making[ConnT]) -> ConnT:
        """Wait, for up to ``operation_timeout``, for the connection ``making`` makes."""
        making.claimed = True
        limit = self._operation_timeout
        scope = anyio.CancelScope(
            deadline=math.inf if limit is None else anyio.current_time() + limit
        )
        self._scopes.add(scope)
        try:
            with scope:
                await making.done.wait()
        except BaseException:
            await self._give_up(making)
            raise
        finally:
            self._scopes.discard(scope)
        if not making.done.is_set():  # our own scope: operation_timeout, or close()
            await self._give_up(making)
            self._check_open()
            raise PoolConnectionAcquireTimeoutError(
                f"pool {self._name!r}: making a connection took longer than "
                f"operation_timeout ({limit:g} s); it goes to the pool when it arrives"
            )
        conn = making.conn
        try:
            if conn is None:
                self._check_open()  # cancelled by close()
                assert making.error is not None
                raise making.error
            if self._closed:  # closed in the same step as the connection arrived
                await self._discard(conn)
                self._check_open()
        finally:
            self._settle(making)
        return conn

    async def _give_up(self, making: _Making[ConnT]) -> None:
        """The waiting checkout leaves: what ``making`` makes must not be lost."""
        if not making.done.is_set():
            making.claimed = False
            self._unclaimed.append(making)  # its task keeps or closes the connection
        else:
            await self._keep(making)

    async def _keep(self, making: _Making[ConnT]) -> None:
        """Nobody takes what ``making`` made: make it idle, or close it if closed."""
        try:
            conn = making.conn
            if conn is not None:
                if self._closed:
                    await self._discard(conn)
                else:
                    self._idle.append(_Idle(conn, time.monotonic()))
            elif making.error is not None:
                _logger.warning(
                    "pool %r: making a connection failed after its checkout had left",
                    self._name,
                    exc_info=making.error,
                )
        finally:
            self._settle(making)

    def _settle(self, making: _Making[ConnT]) -> None:
        making.settled.set()
        self._making.discard(making)

    # -- returning connections -------------------------------------------------------

    @protected
    async def _release(self, conn: ConnT, error: BaseException | None) -> None:
        """Give ``conn`` back after a block that ended with ``error`` (None: normally);
        the slot is released on every path, last."""
        reusable = False
        try:
            if self._closed or _may_hold_an_interrupt(error):
                pass
            elif error is None and _transaction_state(conn) is False:
                reusable = True  # nothing to undo: no round trip
            else:
                reusable = await self._rollback(conn)
        finally:
            try:
                if reusable and not self._closed:
                    self._idle.append(_Idle(conn, time.monotonic()))
                else:
                    await self._discard(conn)
            finally:
                self._in_use -= 1
                self._give_slot()

    async def _rollback(self, conn: ConnT) -> bool:
        """Roll back, shielded and bounded; False if the connection cannot be trusted."""
        with anyio.move_on_after(self._operation_timeout, shield=True) as scope:
            try:
                await conn.rollback()
            except Exception:
                _logger.warning(
                    "pool %r: rollback of a returned connection failed; closing it",
                    self._name,
                    exc_info=True,
                )
                return False
        if scope.cancelled_caught:
            _logger.warning(
                "pool %r: rollback of a returned connection took longer than "
                "operation_timeout (%g s); closing it",
                self._name,
                self._operation_timeout,
            )
            return False
        return True

    async def _discard(self, conn: ConnT) -> None:
        """Close ``conn`` (shielded, bounded) and forget it, whatever happens."""
        self._open -= 1
        with anyio.move_on_after(self._operation_timeout, shield=True) as scope:
            try:
                await conn.close()
            except Exception:
                _logger.warning("pool %r: closing a connection failed", self._name, exc_info=True)
        if scope.cancelled_caught:
            _logger.warning(
                "pool %r: closing a connection took longer than operation_timeout (%g s)",
                self._name,
                self._operation_timeout,
            )

    async def _close_all(self, conns: list[ConnT]) -> None:
        if len(conns) == 1:
            await self._discard(conns[0])
            return
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(self._discard, conn)

    # -- idle expiry -----------------------------------------------------------------

    def _expired(self, entry: _Idle[ConnT]) -> bool:
        limit = self._idle_timeout
        return limit is not None and time.monotonic() - entry.since >= limit

    def _take_expired(self) -> list[ConnT]:
        idle = self._idle
        expired: list[ConnT] = []
        while idle and self._expired(idle[0]):
            expired.append(idle.popleft().conn)
        return expired

    # -- life cycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pool: checkouts raise :class:`PoolClosedError` from now on.

        Checkouts waiting for a slot or for a new connection raise
        :class:`PoolClosedError`; idle connections are closed now (shielded, each
        bounded by ``operation_timeout``); connection factory calls still running are
        given ``operation_timeout`` to finish, and what they return is closed; one still
        running after that is cancelled, with a warning on the ``litepool`` logger (a
        driver that goes on connecting after its connect was cancelled may leave that
        connection open). Connections still checked out are closed when their blocks
        end. So when it returns, every connection of the pool is closed or checked out.
        Every call waits for all of this, also when another call is closing already.

        Cancellation: the pool is closed all the same, and its idle connections too
        (shielded); connections still being made are closed by their own tasks when
        they arrive, and a later ``close()`` waits for them again.
        """
        finished = self._close_finished
        if finished is None:
            self._closed = True
            finished = self._close_finished = anyio.Event()
            try:
                self._wake_waiters()
                for scope in list(self._scopes):
                    scope.cancel()
                idle = [entry.conn for entry in self._idle]
                self._idle.clear()
                if idle:
                    await self._close_all(idle)
            finally:
                finished.set()
        else:
            await finished.wait()
        await self._finish_making()

    @protected
    def _wake_waiters(self) -> None:
        """Wake every checkout waiting for a slot: each raises PoolClosedError."""
        queue = self._queue
        if queue is not None and queue.waiting:
            self._with_waiters(queue.close)

    async def _finish_making(self) -> None:
        """Wait for the factory calls still running, cancelling those that overrun."""
        pending = list(self._making)
        if not pending:
            return
        with anyio.move_on_after(self._operation_timeout):
            for making in pending:
                await making.settled.wait()
        late = [making for making in pending if not making.done.is_set()]
        if late:
            _logger.warning(
                "pool %r: %d connection factory call(s) still running operation_timeout "
                "(%g s) after close(); cancelling them",
                self._name,
                len(late),
                self._operation_timeout,
            )
            for making in late:
                making.scope.cancel()
        for making in pending:
            await making.settled.wait()

    async def __aenter__(self) -> SQLiteConnectionPool[ConnT]:
        """Use the pool for an ``async with`` block; leaving it calls :meth:`close`.

        The block may be left in another task than the one that entered it. Entering
        does not await anything.

        :raises PoolClosedError: the pool is closed.
        :raises RuntimeError: the pool was entered before.
        """
        if self._entered:
            raise RuntimeError(f"pool {self._name!r} was already entered; enter it once")
        self._check_open()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class _Checkout(AbstractAsyncContextManager[ConnT]):
    """The ``async with`` target of :meth:`SQLiteConnectionPool.connection`: one slot
    per checkout, so one task may hold several checkouts at once."""

    __slots__ = ("_conn", "_entered", "_pool", "_timeout")

    def __init__(self, pool: SQLiteConnectionPool[ConnT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: ConnT | None = None
        self._entered = False

    async def __aenter__(self) -> ConnT:
        if self._entered:
            raise RuntimeError("a checkout can be entered once; call pool.connection() again")
        self._entered = True
        conn = self._conn = await self._pool._acquire(self._timeout)
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None
        self._conn = None
        await self._pool._release(conn, exc)
