"""The housekeeper: WAL checkpoints that keep the write-ahead log under its bound.

SQLite's own automatic checkpoint (PASSIVE, after a commit that leaves 1000 pages or more
in the WAL) copies what no reader needs into the database, but the WAL file starts again
from its beginning only after a checkpoint has copied all of it and no reader still uses
it. Under overlapping reads and a writer that never pauses that never happens, and the
file grows without bound.

A TRUNCATE checkpoint waits (in SQLite's busy handler) for the readers that still use
the log, copies it all and cuts the file to zero bytes. Only read transactions that
began before the last write hold it up: one that begins while the checkpoint waits, with
no write in between, reads the newest snapshot, and once the log has been copied reads
the database file alone. So the checkpoint must keep the writer while it waits (which,
running on the writer's thread, it does), and wait for as long as the longest of those
older read transactions lasts, not a fixed fraction of a second. Readers are never held
back.

The housekeeper is a task in the pool's task group. Every :data:`BUSY_INTERVAL` seconds
while writes come in (backing off to :data:`IDLE_INTERVAL` while none do) it compares
the write lane's counters with what it saw last time, which costs the hot paths
nothing, and looks at the size of the WAL file (one ``stat``). Then:

- **while the file is under three quarters of** ``wal_max_bytes``, it leaves it to SQLite's
  automatic checkpoints, and **when the writes pause** it queues a PASSIVE checkpoint on
  the writer if it is free (one that never waits for anybody), so that the log left by
  a burst of writes is copied while readers are quiet;
- **past three quarters of** ``wal_max_bytes`` it **resets the WAL**: it queues for the writer,
  first come, first served like any writer (so a writer that never pauses cannot keep it
  out), and runs a TRUNCATE checkpoint that waits up to ``wal_reset_timeout`` for the
  older read transactions, in slices, giving way at once if the pool closes. Writers
  queue behind it meanwhile;
- a read transaction that **outlasts** ``wal_reset_timeout`` makes the reset give up: a
  warning names who holds it (the reader, and the checkout and where it was taken),
  ``statistics().wal_reset_timeouts`` counts it, no reader is stopped, and the next
  reset waits until that transaction has ended. The WAL grows meanwhile. Readers of
  other processes, which the pool cannot see, make it give up in the same way and try
  again after a back-off.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from typing import TYPE_CHECKING, Final

import anyio

from ._background import BackgroundTask
from ._statements import passive_job, wal_reset_job
from ._wal import WalState
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge
    from ._lane import Lane

logger = logging.getLogger("litepool")

#: ``open_pool(wal_max_bytes=...)``'s default.
DEFAULT_WAL_MAX_BYTES: Final = 64 * 1024 * 1024

#: Seconds between two looks at the writer's counters while writes keep coming; the
#: interval doubles, up to :data:`IDLE_INTERVAL`, while nothing is written.
BUSY_INTERVAL: Final = 0.02
IDLE_INTERVAL: Final = 1.0
#: ... and this often once the WAL file has passed half of ``wal_max_bytes``.
CLOSE_INTERVAL: Final = 0.005

#: ``open_pool(wal_reset_timeout=...)``'s default: the longest a WAL reset keeps the
#: writer while it waits for read transactions that began before it.
DEFAULT_WAL_RESET_TIMEOUT: Final = 2.0

#: While a reset waits, the housekeeper looks at the readers this often (seconds).
WATCH_INTERVAL: Final = 0.05

#: After a reset gave up on readers the pool cannot see (another process's), the next one
#: waits this long (doubling up to :data:`IDLE_INTERVAL` while it keeps failing).
RESET_BACKOFF: Final = 0.05


# -- the task ------------------------------------------------------------------------------


class Housekeeper(BackgroundTask):
    """The pool's housekeeping task; :meth:`stop` ends it (the pool does, when closing).

    Cancellation: stopping it while a reset waits for readers stops that wait within a
    slice (the reset's job is interruptible) and gives the writer back.
    """

    what = "housekeeping"

    def __init__(
        self,
        pool_name: str,
        write_lane: Lane,
        read_lane: Lane,
        bridge: Bridge,
        state: WalState,
        max_bytes: int,
        reset_timeout: float | None,
    ) -> None:
        super().__init__(pool_name)
        self._lane = write_lane
        self._readers = read_lane
        self._bridge = bridge
        self._state = state
        self._max_bytes = max_bytes
        self._reset_timeout = math.inf if reset_timeout is None else reset_timeout
        # Readers whose read transaction outlasted the last reset, and which one it was
        # (Worker.reads): the next reset waits until each of them has ended it.
        self._outlasted: dict[Worker, int] = {}
        self._retry_at = 0.0
        self._backoff = 0.0

    async def _loop(self) -> None:
        lane = self._lane
        state = self._state
        # Past this the WAL is reset; it may grow by what is written before the next look.
        threshold = self._max_bytes * 3 // 4
        seen = lane.checkouts + lane.statements
        pending = False  # writes since the last checkpoint
        interval = BUSY_INTERVAL
        while True:
            await anyio.sleep(interval)
            writes = lane.checkouts + lane.statements
            paused = writes == seen
            if not paused:
                seen = writes
                pending = True
                interval = BUSY_INTERVAL
            elif not pending:
                interval = min(interval * 2, IDLE_INTERVAL)
                continue
            size = state.size()
            if size is None:
                return  # not in WAL mode: nothing to keep
            if size > self._max_bytes // 2:
                interval = CLOSE_INTERVAL  # nearing the threshold: look more often
            if size > threshold and self._may_reset():
                if await self._reset():
                    pending = False
                continue
            if paused and await self._passive():
                pending = False

    def _may_reset(self) -> bool:
        if anyio.current_time() < self._retry_at:
            return False
        outlasted = self._outlasted
        for worker, reads in list(outlasted.items()):
            if worker.reading and worker.reads == reads and worker in self._readers.workers:
                return False  # still the same read transaction: it would hold us up again
            del outlasted[worker]
        return True

    async def _passive(self) -> bool:
        """A PASSIVE checkpoint if the writer is free right now; True if it ran."""
        # Queued on the free writer without holding it: a writer that comes now queues
        # its statements behind it. Not interruptible: closing the pool lets it finish
        # (it never waits).
        job = Job(passive_job, (self._state,), interruptible=False)
        worker = self._lane.try_dispatch(job, statement=False)
        if worker is None:
            return False
        return await self._answer(worker, job) is not None

    async def _reset(self) -> bool:
        """Reset the WAL (see the module's docstring); True if it was."""
        # Queued first come, first served like any writer; the next writer may queue
        # behind it right away: the checkpoint keeps the writer's thread, which is what
        # stops new writes while it waits.
        job = Job(wal_reset_job, (self._state, math.inf))
        worker = self._lane.try_dispatch(job, statement=False)
        if worker is None:
            worker = await self._lane.dispatch(job, None, statement=False)
        started = anyio.current_time()
        give_up, holders = False, list[Worker]()
        try:
            while not job.done:
                await anyio.sleep(WATCH_INTERVAL)
                give_up, holders = self._outlasted_by(anyio.current_time() - started)
                if give_up and not job.done:
                    worker.cancel(job)  # its wait ends within a slice
                    break
        except BaseException:
            worker.cancel(job)  # the pool is closing: do not keep the writer
            raise
        done = await self._answer(worker, job)
        if done is True:
            self._backoff = 0.0
            return True
        if give_up and holders:
            self._give_up(holders)
        else:
            # Busy at once, failed, or held by readers the pool cannot see (another
            # process's): try again after a back-off.
            self._backoff = min(max(self._backoff * 2, RESET_BACKOFF), IDLE_INTERVAL)
            self._retry_at = anyio.current_time() + self._backoff
        return False

    def _outlasted_by(self, waited: float) -> tuple[bool, list[Worker]]:
        """Whether the reset should give up after waiting ``waited`` seconds, and the
        readers it would give up on: those whose read transaction has been open for
        longer than ``wal_reset_timeout``. With none of this pool's readers reading, a
        reset still waiting after that long waits for another process's."""
        limit = self._reset_timeout
        now = time.monotonic()
        readers = self._readers.workers
        holders = [r for r in readers if r.reading and now - r.read_since > limit]
        if holders:
            return True, holders
        return waited > limit and not any(r.reading for r in readers), []

    def _give_up(self, holders: list[Worker]) -> None:
        self._outlasted = {worker: worker.reads for worker in holders}
        self._state.reset_timeouts += 1
        size = self._state.size() or 0
        readers = self._readers
        logger.warning(
            "pool %r: a read transaction kept the WAL from being reset for more than %g s "
            "(wal_reset_timeout), held by %s; the WAL (%.1f MiB) grows until it ends. No "
            "reader is stopped",
            self._pool_name,
            self._reset_timeout,
            "; ".join(readers.describe_holder(worker) for worker in holders)
            or "a reader of another process",
            size / (1024 * 1024),
        )

    async def _answer(self, worker: Worker, job: Job) -> object:
        """The job's result (True for a job returning None); None (logged) if it failed
        with an SQLite error."""
        try:
            result = await self._bridge.run(worker, job)
        except sqlite3.Error as error:
            logger.warning("pool %r: housekeeping checkpoint failed: %s", self._pool_name, error)
            return None
        return True if result is None else result
