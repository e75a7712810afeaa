"""A lane's checkout state on its own, step by step, with no event loop and no thread.

The lane's state changes only in synchronous methods; its one await is a waiter parking
(:meth:`Bridge.park`). Here the bridge is a stand-in whose ``park`` suspends once and
whose ``resume`` records the wake-up, and each waiting ``acquire()`` is a coroutine
driven by hand: ``send(None)`` runs it until it parks or finishes, ``throw()`` delivers
a cancellation exactly where it is parked. So every interleaving below is exact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

import litepool
from litepool._bridge import Waiter
from litepool._lane import Lane
from litepool._worker import JobCost, Worker


class _Suspend:
    def __await__(self) -> Generator[None, None, None]:
        yield


class StandInBridge:
    """Parks by suspending the coroutine once; resume() marks the waiter woken."""

    def __init__(self) -> None:
        self.task: object = "task A"

    def current_task(self) -> object:
        return self.task

    async def park(self, waiter: Waiter, timeout: float | None) -> None:
        waiter.waker = "parked"
        await _Suspend()

    def resume(self, waiter: Waiter) -> bool:
        if waiter.waker != "parked":
            return False  # it already woke up (timed out, cancelled): it cannot take it
        waiter.waker = "woken"
        return True


class Cancelled(BaseException):
    """Stands for the backend's cancellation exception."""


class Holder:
    def __init__(self, task: object, where: str) -> None:
        self._task = task
        self._where = where

    def _describe(self) -> str:
        return self._where


def make_lane(size: int = 2) -> tuple[Lane, StandInBridge, list[Worker], list[Worker]]:
    bridge = StandInBridge()
    cost = JobCost()
    workers = [
        Worker(
            f"reader-{i}", f"t{i}", lambda: sqlite3.connect(":memory:"), _post, _alive, cost=cost
        )
        for i in range(1, size + 1)
    ]
    left: list[Worker] = []
    lane = Lane("read", "p", list(workers), bridge, cost, on_left=left.append)  # type: ignore[arg-type]
    return lane, bridge, workers, left


def _connect() -> sqlite3.Connection:
    raise AssertionError("no connection is opened here")


def _post(worker: Worker, batch: object) -> bool:
    return True


def _alive() -> bool:
    return True


def step(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` until it parks (returns None) or finishes (returns its result)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    return None


def finish(coro: Coroutine[Any, Any, Any]) -> Any:
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    return done.value.value


def test_free_connections_are_taken_without_parking() -> None:
    lane, _, workers, _ = make_lane()
    first = step(lane.acquire(None))
    second = step(lane.acquire(None))
    assert {first, second} == set(workers)
    assert (lane.idle, lane.waiting) == (0, 0)
    lane.release(first)
    lane.release(second)
    assert (lane.idle, lane.waiting) == (2, 0)


def test_waiters_are_served_first_come_first_served() -> None:
    lane, _, _, _ = make_lane(1)
    held = step(lane.acquire(None))
    queued = [lane.acquire(None) for _ in range(3)]
    for coro in queued:
        assert step(coro) is None  # parked
    assert lane.waiting == 3
    lane.release(held)
    assert lane.waiting == 2
    assert finish(queued[0]) is held  # the first in line
    lane.release(held)
    assert finish(queued[1]) is held
    lane.release(held)
    assert finish(queued[2]) is held
    lane.release(held)
    assert (lane.idle, lane.waiting) == (1, 0)


def test_waiter_cancelled_at_the_hand_off_passes_it_on() -> None:
    lane, _, _, _ = make_lane(1)
    held = step(lane.acquire(None))
    first, second = lane.acquire(None), lane.acquire(None)
    step(first)
    step(second)
    lane.release(held)  # handed to `first`, which is woken ...
    with pytest.raises(Cancelled):
        first.throw(Cancelled())  # ... and cancelled before it runs
    assert finish(second) is held  # the connection went on to the next waiter
    assert (lane.idle, lane.waiting) == (0, 0)
    lane.release(held)
    assert lane.idle == 1


def test_waiter_cancelled_before_any_hand_off_leaves_the_queue() -> None:
    lane, _, _, _ = make_lane(1)
    held = step(lane.acquire(None))
    waiter = lane.acquire(None)
    step(waiter)
    with pytest.raises(Cancelled):
        waiter.throw(Cancelled())
    assert lane.waiting == 0
    lane.release(held)
    assert (lane.idle, lane.waiting) == (1, 0)


def test_waiter_that_times_out_raises_and_is_counted() -> None:
    lane, _, _, _ = make_lane(1)
    held = step(lane.acquire(None))
    waiter = lane.acquire(0.5)
    step(waiter)
    with pytest.raises(litepool.PoolTimeout, match=r"within 0.5 s \(in use: 1, idle: 0"):
        waiter.send(None)  # woken by its deadline, not by a hand-off
    assert (lane.waiting, lane.timeouts) == (0, 1)
    lane.release(held)
    assert lane.idle == 1


def test_closing_wakes_every_waiter_with_pool_closed() -> None:
    lane, _, _, _ = make_lane(1)
    step(lane.acquire(None))
    waiters = [lane.acquire(None) for _ in range(2)]
    for coro in waiters:
        step(coro)
    lane.close()
    for coro in waiters:
        with pytest.raises(litepool.PoolClosed, match="closed while waiting"):
            coro.send(None)
    with pytest.raises(litepool.PoolClosed, match="is closed"):
        step(lane.acquire(None))


def test_held_connection_retired_leaves_when_it_comes_back() -> None:
    lane, _, workers, left = make_lane(2)
    held = step(lane.acquire(None))
    free = next(worker for worker in workers if worker is not held)
    lane.retire(free)
    assert left == [free]  # free: it leaves at once
    lane.retire(held)
    assert left == [free]  # held: it stays its borrower's
    assert lane.is_retiring(held)
    lane.release(held)
    assert left == [free, held]
    assert lane.workers == []


def test_task_holding_every_connection_is_told_at_once() -> None:
    lane, bridge, _, _ = make_lane(2)
    step(lane.acquire(None, Holder("task A", "pool.read() entered at app.py:1")))
    step(lane.acquire(None, Holder("task A", "pool.read() entered at app.py:2")))
    with pytest.raises(litepool.WouldDeadlock, match=r"every reader \(2\).*app.py:1.*app.py:2"):
        step(lane.acquire(None, Holder("task A", "third"), "pool.read()"))
    bridge.task = "task B"
    other = lane.acquire(None)
    assert step(other) is None  # another task simply waits
    assert lane.waiting == 1
    other.close()
