"""Keeping a running pool's connections healthy, in the background.

One task in the pool's task group replaces connections that broke (a disk I/O error, a
failed ``check``, a worker thread that died), readers older than ``max_lifetime`` or left
idle longer than ``max_idle``, and runs ``PRAGMA optimize`` every ``optimize_interval``
if asked to. A replacement is opened before the connection it replaces leaves (for a
broken one, right after): callers never wait for a connection to open, and the lane
stays at its size.

Which connections are due is decided by :func:`due`, a pure function of the lane's
state and the clock; :class:`Upkeep` does the I/O.
"""

from __future__ import annotations

import logging
import math
import random
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import anyio

from ._file import CHECK_INTERVAL
from ._statements import optimize_job
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._lane import Lane
    from ._pool import Pool

logger = logging.getLogger("litepool")

#: A reader's lifetime is ``max_lifetime`` shortened by up to this fraction, drawn per
#: connection, so that readers opened together do not all expire together.
LIFETIME_JITTER: Final = 0.1
#: Waits between attempts to open a replacement that failed: doubling from the first to
#: the last.
RETRY_FIRST: Final = 0.05
RETRY_LAST: Final = 10.0


def lifetime_deadline(opened_at: float, max_lifetime: float | None) -> float:
    """When a connection opened at ``opened_at`` is due for replacement."""
    if max_lifetime is None:
        return math.inf
    return opened_at + max_lifetime * (1.0 - LIFETIME_JITTER * random.random())


def due(
    workers: Sequence[Worker], now: float, max_idle: float | None
) -> tuple[Worker | None, float]:
    """The first connection due for replacement (or None), and when the next one is due.

    A connection is due past its lifetime deadline, or when it has served something and
    then sat unused (no borrower, nothing queued) for ``max_idle`` seconds. A connection
    that has served nothing since it opened is not idle in that sense: replacing it would
    free nothing.
    """
    next_due = math.inf
    for worker in workers:
        if worker.retiring:
            continue
        deadline = worker.expires
        if max_idle is not None and worker.used and not worker.held and not worker.queued:
            deadline = min(deadline, worker.progress + max_idle)
        if deadline <= now:
            return worker, now
        next_due = min(next_due, deadline)
    return None, next_due


class Upkeep:
    """The background task; see the module's docstring."""

    def __init__(self, pool: Pool, read_lane: Lane, write_lane: Lane) -> None:
        self._pool = pool
        self._read_lane = read_lane
        self._write_lane = write_lane
        options = pool._options
        self._max_idle = options.max_idle
        self._optimize_interval = options.optimize_interval
        self._next_optimize = (
            math.inf
            if options.optimize_interval is None
            else time.monotonic() + options.optimize_interval
        )
        self._retry = RETRY_FIRST
        self._wake = anyio.Event()
        self._scope = anyio.CancelScope()

    def wake(self) -> None:
        """Look at the connections again now (one was lost, the target changed)."""
        self._wake.set()

    def stop(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        with self._scope:
            while True:
                wake = self._wake = anyio.Event()
                delay = await self._step()
                if delay <= 0:
                    continue
                with anyio.move_on_after(None if math.isinf(delay) else delay):
                    await wake.wait()

    async def _step(self) -> float:
        """Do what is due; return how long to wait before the next step."""
        pool = self._pool
        if pool.check_file():
            return math.inf  # nothing more to keep up: the pool refuses every call
        # Lost connections first: a lane short of one serves fewer callers meanwhile.
        for lane in (self._write_lane, self._read_lane):
            if self._deficit(lane) > 0:
                replacement = await self._open(lane)
                if replacement is None:
                    return self._backoff()
                if self._deficit(lane) > 0:
                    lane.add(replacement)
                    pool._replaced += 1
                else:
                    replacement.stop()  # a resize made it unnecessary meanwhile
                return 0
        now = time.monotonic()
        worker, next_due = due(self._read_lane.workers, now, self._max_idle)
        if worker is not None:
            replacement = await self._open(self._read_lane)
            if replacement is None:
                return self._backoff()
            if worker.retiring or worker not in self._read_lane.workers:
                replacement.stop()  # gone meanwhile (lost, or a resize)
                return 0
            self._read_lane.add(replacement)
            self._read_lane.retire(worker)
            pool._replaced += 1
            return 0
        if now >= self._next_optimize:
            await self._optimize()
            assert self._optimize_interval is not None
            self._next_optimize = time.monotonic() + self._optimize_interval
        wait = min(next_due, self._next_optimize) - time.monotonic()
        if self._max_idle is not None:
            # A connection in use now may be idle later without anyone telling us.
            wait = min(wait, self._max_idle)
        if pool.watches_file:
            wait = min(wait, CHECK_INTERVAL)
        return wait

    def _deficit(self, lane: Lane) -> int:
        target = 1 if lane is self._write_lane else self._pool._readers_target
        return target - len(lane.active())

    async def _open(self, lane: Lane) -> Worker | None:
        """Open a connection for ``lane``; None (logged, counted) if that failed."""
        pool = self._pool
        try:
            worker = await pool._open_worker(writer=lane is self._write_lane)
        except Exception as exc:
            logger.warning(
                "pool %r: opening a replacement %s connection failed (retrying in %.2g s): %s",
                pool.name,
                lane.kind,
                self._retry,
                exc,
            )
            return None
        self._retry = RETRY_FIRST
        return worker

    def _backoff(self) -> float:
        delay = self._retry
        self._retry = min(self._retry * 2, RETRY_LAST)
        return delay

    async def _optimize(self) -> None:
        lane = self._write_lane
        job = Job(optimize_job, interruptible=False)
        worker = lane.free() if not lane.waiting else None
        if worker is not None:
            worker.submit(job)
        else:
            worker = await lane.acquire(None)
            worker.submit(job)
            lane.release(worker)
        bridge = self._pool._bridge
        assert bridge is not None
        await bridge.wait(worker, job)
        if job.error is not None and not isinstance(job.error, sqlite3.Error):
            raise job.error
