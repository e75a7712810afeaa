"""The housekeeper: WAL checkpoints that keep the write-ahead log from running away.

SQLite's own automatic checkpoint (PASSIVE, after a commit that leaves 1000 pages or more
in the WAL) cannot finish while a reader still uses an older part of the log, and the
WAL only starts again from its beginning after a checkpoint has finished. Under a
steady stream of overlapping reads it therefore grows without bound.

The housekeeper is a task in the pool's task group. Every :data:`BUSY_INTERVAL` seconds
while writes come in (backing off to :data:`IDLE_INTERVAL` while none do) it compares
the write lane's counters with what it saw last time, which costs the pool's hot paths
nothing. Then:

- **while writes keep coming**, it looks at the size of the WAL file (one ``stat``) and
  does nothing more while the file is under a quarter of ``wal_max_bytes``: SQLite's
  automatic checkpoints are doing their job;
- **when the writes pause**, it queues a PASSIVE checkpoint, which never waits for
  anybody, so that the WAL left by a burst of writes is copied into the database while
  readers are quiet;
- **when the WAL file passes a quarter of** ``wal_max_bytes`` (at most every so often
  while readers keep it busy), **or half of it** (every time), it queues a TRUNCATE
  checkpoint instead: it waits for readers to leave the WAL, copies it all, and cuts the
  file to zero bytes. It waits for at most :data:`ESCALATION_WAIT` seconds: readers are
  never blocked by a checkpoint, and writers queue behind it for that long at most. If
  readers outlast the wait, the checkpoint reports busy and the housekeeper tries again
  after a back-off (at once if the file has passed half the bound).

Every checkpoint is a job on the writer's thread, queued while no checkout holds the
writer and nobody waits for it, so it shows in none of the lane's counts; a writer that
comes meanwhile queues behind it. When the writer is busy, the housekeeper tries again
at its next look, except past half of ``wal_max_bytes``: then it queues for the writer,
first come, first served, like a single statement (but not counted as one).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import TYPE_CHECKING, Any, Final, NamedTuple

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

#: Longest time a TRUNCATE checkpoint of the housekeeper waits for readers to
#: leave the WAL (its busy timeout). The writer is busy meanwhile; readers are not held.
ESCALATION_WAIT: Final = 0.2

#: After an escalated checkpoint found the WAL busy, the next escalation waits this long
#: (doubling up to :data:`IDLE_INTERVAL` while it keeps failing), unless the WAL file has
#: passed ``wal_max_bytes`` itself.
ESCALATION_BACKOFF: Final = 0.05


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
        "resolved",
        "wal_bytes",
        "wal_path",
    )

    def __init__(self) -> None:
        self.checkpoints = 0
        self.busy = 0
        self.mode: str | None = None
        self.wal_bytes: int | None = None
        self.peak: int | None = None
        self.resolved = False
        self.wal_path: str | None = None  # None: no WAL file to watch


def check_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode.upper() not in CHECKPOINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
    return mode.upper()


# -- job functions: run on the writer's thread ------------------------------------------


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    """Plain tuples, whatever the pool's row factory, with the cursor closed here."""
    cursor = conn.cursor()
    try:
        cursor.row_factory = None
        return cursor.execute(sql).fetchall()
    finally:
        cursor.close()


def _resolve(conn: sqlite3.Connection, state: WalState) -> None:
    journal = _rows(conn, "PRAGMA journal_mode")[0][0]
    if str(journal).lower() == "wal":
        for _, name, filename in _rows(conn, "PRAGMA database_list"):
            if name == "main" and filename:
                state.wal_path = filename + "-wal"
    state.resolved = True  # last: the loop reads wal_path once this is set


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
    conn = worker.conn
    assert conn is not None
    if not state.resolved:
        _resolve(conn, state)
    size = _wal_size(state)
    if size is not None and (state.peak is None or size > state.peak):
        state.peak = size
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


#: What :func:`housekeeping_job` reports to the loop.
_NOT_WAL: Final = "not wal"
_DONE: Final = "done"
_BUSY: Final = "busy"
_SKIPPED: Final = "skipped"


def housekeeping_job(worker: Worker, state: WalState, max_bytes: int, escalate: bool) -> str:
    """Job: PASSIVE, or TRUNCATE past the thresholds of the module's docstring."""
    conn = worker.conn
    assert conn is not None
    if not state.resolved:
        _resolve(conn, state)
    size = _wal_size(state)
    if size is None:
        return _NOT_WAL
    if state.peak is None or size > state.peak:
        state.peak = size
    if not size:
        return _DONE
    if size > max_bytes // 2 or (escalate and size > max_bytes // 4):
        result = _run_checkpoint(worker, "TRUNCATE", state, ESCALATION_WAIT)
    else:
        result = _run_checkpoint(worker, "PASSIVE", state, 0)
    return _BUSY if result.busy else _DONE


# -- the task ------------------------------------------------------------------------------


class Housekeeper:
    """The pool's housekeeping task; :meth:`stop` ends it (the pool does, when closing)."""

    def __init__(
        self, pool_name: str, lane: Lane, bridge: Bridge, state: WalState, max_bytes: int
    ) -> None:
        self._pool_name = pool_name
        self._lane = lane
        self._bridge = bridge
        self._state = state
        self._max_bytes = max_bytes
        self._scope = anyio.CancelScope()

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
        quarter, half = self._max_bytes // 4, self._max_bytes // 2
        seen = lane.checkouts + lane.statements
        pending = False  # writes since the last checkpoint
        interval = BUSY_INTERVAL
        backoff = 0.0
        next_escalation = 0.0
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
            now = anyio.current_time()
            escalate = now >= next_escalation
            urgent = False
            if state.resolved:  # the first job finds the WAL file
                size = _wal_size(state)
                if size is None:
                    return
                urgent = size > half
                if not (paused or urgent or (escalate and size > quarter)):
                    continue
            outcome = await self._run(escalate=escalate, urgent=urgent)
            if outcome == _SKIPPED:
                continue  # the writer was busy: next time
            pending = False
            if outcome == _NOT_WAL:
                return
            if outcome == _BUSY:
                backoff = min(max(backoff * 2, ESCALATION_BACKOFF), IDLE_INTERVAL)
                next_escalation = anyio.current_time() + backoff
            elif outcome == _DONE:
                backoff = 0.0

    async def _run(self, *, escalate: bool, urgent: bool) -> str | None:
        lane = self._lane
        # Not interruptible: closing the pool lets a running checkpoint finish (its wait is
        # bounded) rather than count it as an interrupted statement.
        job = Job(housekeeping_job, (self._state, self._max_bytes, escalate), interruptible=False)
        if lane.idle and not lane.waiting and not lane.closed:
            # Queued on the free writer without holding it: nobody sees it in the lane's
            # counts, and a writer that comes now queues its statements behind it.
            worker = lane.free()
            assert worker is not None
            worker.submit(job)
        elif urgent:
            # Past half the bound: wait for the writer like a single statement (but
            # without being counted as one), first come, first served.
            worker = await lane.acquire(None)
            worker.submit(job)
            lane.release(worker)
        else:
            return _SKIPPED
        await self._bridge.wait(worker, job)
        error = job.error
        if error is not None:
            job.error = None
            if not isinstance(error, sqlite3.Error):
                raise error
            logger.warning("pool %r: housekeeping checkpoint failed: %s", self._pool_name, error)
            return None
        outcome: str = job.result
        return outcome
