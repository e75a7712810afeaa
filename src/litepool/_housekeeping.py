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
import os
import sqlite3
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio

from ._errors import PoolClosed
from ._worker import Job, Worker

if TYPE_CHECKING:
    from ._bridge import Bridge
    from ._lane import Lane

logger = logging.getLogger("litepool")

#: The checkpoint modes of ``PRAGMA wal_checkpoint``, mildest first.
CHECKPOINT_MODES: Final = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")

#: ``open_pool(wal_max_bytes=...)``'s default.
DEFAULT_WAL_MAX_BYTES: Final = 64 * 1024 * 1024

#: Seconds between two looks at the writer's counters while writes keep coming; the
#: interval doubles, up to :data:`IDLE_INTERVAL`, while nothing is written.
BUSY_INTERVAL: Final = 0.02
IDLE_INTERVAL: Final = 1.0

#: ``open_pool(wal_reset_timeout=...)``'s default: the longest a WAL reset keeps the
#: writer while it waits for read transactions that began before it.
DEFAULT_WAL_RESET_TIMEOUT: Final = 2.0

#: After a reset gave up on readers the pool cannot see (another process's), the next one
#: waits this long (doubling up to :data:`IDLE_INTERVAL` while it keeps failing).
RESET_BACKOFF: Final = 0.05


class CheckpointResult(NamedTuple):
    """What ``PRAGMA wal_checkpoint`` reports; returned by :meth:`Pool.checkpoint`."""

    busy: bool
    """True if the checkpoint could not finish: a reader or writer held it back."""
    log: int
    """Frames in the WAL after the checkpoint (``-1`` if the database is not in WAL
    mode)."""
    checkpointed: int
    """Frames of the WAL copied into the database (``-1`` if not in WAL mode)."""


class WalState:
    """Checkpoint figures; written on the writer's thread only, read on the loop."""

    __slots__ = (
        "busy",
        "checkpoints",
        "mode",
        "peak",
        "reset_timeouts",
        "wal_bytes",
        "wal_path",
    )

    def __init__(self) -> None:
        self.checkpoints = 0
        self.busy = 0
        self.mode: str | None = None
        self.wal_bytes: int | None = None
        self.peak: int | None = None
        #: Loop side: WAL resets given up because a read transaction outlasted them.
        self.reset_timeouts = 0
        #: Set when the writer has opened: None if the database is not in WAL mode.
        self.wal_path: str | None = None

    def resolve(self, database_path: str | None, wal: bool) -> None:
        """The writer has opened ``database_path`` (None: in memory), in WAL mode or not."""
        self.wal_path = None if database_path is None or not wal else database_path + "-wal"


def check_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode.upper() not in CHECKPOINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
    return mode.upper()


# -- job functions: run on the writer's thread ------------------------------------------


def _wal_size(state: WalState) -> int | None:
    if state.wal_path is None:
        return None
    try:
        return os.stat(state.wal_path).st_size
    except FileNotFoundError:
        return 0


def _run_checkpoint(worker: Worker, mode: str, state: WalState, limit: float) -> CheckpointResult:
    """One checkpoint in ``mode``, waiting for readers for up to ``limit`` seconds (and
    no longer once its caller is cancelled)."""
    transactions = worker.transactions
    assert transactions is not None
    busy, log, done = transactions.checkpoint(mode, limit, worker.current_cancelled)
    result = CheckpointResult(bool(busy), log, done)
    state.wal_bytes = _wal_size(state)
    state.busy += result.busy
    state.checkpoints += 1
    state.mode = mode  # last: the loop may read these while the job runs
    return result


def checkpoint_job(worker: Worker, mode: str, state: WalState) -> CheckpointResult:
    """Job: one checkpoint in ``mode``, as :meth:`Pool.checkpoint` asks for it."""
    _note_size(state)
    transactions = worker.transactions
    assert transactions is not None
    return _run_checkpoint(worker, mode, state, transactions.busy_ms / 1000)


#: ``PRAGMA analysis_limit`` for the ``PRAGMA optimize`` run when the pool closes: it
#: bounds the work each ANALYZE does, so that closing stays fast on a large database.
OPTIMIZE_ANALYSIS_LIMIT: Final = 400


def optimize_job(worker: Worker) -> None:
    """Job, queued on the writer as the pool closes: ``PRAGMA optimize``, as SQLite
    recommends before a long-lived connection closes. A failure is only logged."""
    conn = worker.conn
    assert conn is not None
    try:
        conn.execute(f"PRAGMA analysis_limit={OPTIMIZE_ANALYSIS_LIMIT}").fetchall()
        conn.execute("PRAGMA optimize").fetchall()
    except sqlite3.Error as exc:
        logger.warning("%s: PRAGMA optimize failed: %s", worker.thread_name, exc)


def passive_job(worker: Worker, state: WalState) -> None:
    """Job: a PASSIVE checkpoint, which never waits for anybody."""
    _note_size(state)
    _run_checkpoint(worker, "PASSIVE", state, 0)


def reset_job(worker: Worker, state: WalState, limit: float) -> bool:
    """Job: a TRUNCATE checkpoint waiting up to ``limit`` seconds for older readers;
    True if it reset the WAL."""
    _note_size(state)
    return not _run_checkpoint(worker, "TRUNCATE", state, limit).busy


def _note_size(state: WalState) -> None:
    size = _wal_size(state)
    if size is not None and (state.peak is None or size > state.peak):
        state.peak = size


# -- the task ------------------------------------------------------------------------------


class Housekeeper:
    """The pool's housekeeping task; :meth:`stop` ends it (the pool does, when closing).

    Cancellation: stopping it while a reset waits for readers stops that wait within a
    slice (the reset's job is interruptible) and gives the writer back.
    """

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
        self._pool_name = pool_name
        self._lane = write_lane
        self._readers = read_lane
        self._bridge = bridge
        self._state = state
        self._max_bytes = max_bytes
        self._reset_timeout = math.inf if reset_timeout is None else reset_timeout
        self._scope = anyio.CancelScope()
        # Readers whose read transaction outlasted the last reset, and which one it was
        # (Worker.reads): the next reset waits until each of them has ended it.
        self._outlasted: dict[Worker, int] = {}
        self._retry_at = 0.0
        self._backoff = 0.0

    def stop(self) -> None:
        self._scope.cancel()

    async def run(self) -> None:
        with self._scope:
            try:
                await self._loop()
            except PoolClosed:
                pass
            except Exception:
                # A failure of housekeeping must not tear down the application.
                logger.exception("pool %r: housekeeping stopped", self._pool_name)

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
            size = _wal_size(state)
            if size is None:
                return  # not in WAL mode: nothing to keep
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
        lane = self._lane
        if not lane.idle or lane.waiting or lane.closed:
            return False
        worker = lane.free()
        assert worker is not None
        # Queued on the free writer without holding it: nobody sees it in the lane's
        # counts, and a writer that comes now queues its statements behind it. Not
        # interruptible: closing the pool lets it finish (it never waits).
        job = Job(passive_job, (self._state,), interruptible=False)
        worker.submit(job)
        return await self._answer(worker, job) is not None

    async def _reset(self) -> bool:
        """Reset the WAL (see the module's docstring); True if it was."""
        lane = self._lane
        worker = await lane.acquire(None)
        # The next writer may queue behind the checkpoint right away: the checkpoint
        # keeps the writer's thread, which is what stops new writes while it waits.
        job = Job(reset_job, (self._state, self._reset_timeout))
        worker.submit(job)
        lane.release(worker)
        started = anyio.current_time()
        done = await self._answer(worker, job)
        if done:
            self._backoff = 0.0
            return True
        holders = [reader for reader in self._readers.workers if reader.reading]
        if done is False and anyio.current_time() - started >= self._reset_timeout:
            self._give_up(holders)
        else:
            # Busy at once, or failed: readers the pool cannot see (another process's).
            self._backoff = min(max(self._backoff * 2, RESET_BACKOFF), IDLE_INTERVAL)
            self._retry_at = anyio.current_time() + self._backoff
        return False

    def _give_up(self, holders: list[Worker]) -> None:
        self._outlasted = {worker: worker.reads for worker in holders}
        self._state.reset_timeouts += 1
        size = _wal_size(self._state) or 0
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
        await self._bridge.wait(worker, job)
        error = job.error
        if error is not None:
            job.error = None
            if not isinstance(error, sqlite3.Error):
                raise error
            logger.warning("pool %r: housekeeping checkpoint failed: %s", self._pool_name, error)
            return None
        return True if job.result is None else job.result
