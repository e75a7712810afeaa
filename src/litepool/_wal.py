"""The write-ahead log's figures: checkpoint modes and results, and what the pool knows
of the WAL file (where it is, how large it has been, how its checkpoints went)."""

from __future__ import annotations

import os
from typing import Final, NamedTuple

#: The checkpoint modes of ``PRAGMA wal_checkpoint``, mildest first.
CHECKPOINT_MODES: Final = ("PASSIVE", "FULL", "RESTART", "TRUNCATE")


class CheckpointResult(NamedTuple):
    """What ``PRAGMA wal_checkpoint`` reports; returned by :meth:`Pool.checkpoint`."""

    busy: bool
    """True if the checkpoint could not finish: a reader or writer held it back."""
    log: int
    """Frames in the WAL after the checkpoint (``-1`` if the database is not in WAL
    mode)."""
    checkpointed: int
    """Frames of the WAL copied into the database (``-1`` if not in WAL mode)."""


def check_mode(mode: object) -> str:
    """``mode`` as ``PRAGMA wal_checkpoint`` takes it, or ValueError naming it."""
    if not isinstance(mode, str) or mode.upper() not in CHECKPOINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
    return mode.upper()


class WalState:
    """Checkpoint figures: the counts are written on the writer's thread (by the
    checkpoints themselves), ``reset_timeouts`` on the loop (by the housekeeper)."""

    __slots__ = (
        "busy",
        "checkpoints",
        "mode",
        "peak",
        "reset_timeouts",
        "wal_bytes",
        "wal_path",
    )

    checkpoints: int
    busy: int
    mode: str | None
    wal_bytes: int | None
    peak: int | None
    reset_timeouts: int
    wal_path: str | None

    def __init__(self) -> None:
        self.checkpoints = 0
        self.busy = 0
        self.mode = None
        self.wal_bytes = None
        self.peak = None
        #: WAL resets given up because a read transaction outlasted them.
        self.reset_timeouts = 0
        #: Set when the writer has opened: None if the database is not in WAL mode.
        self.wal_path = None

    def resolve(self, database_path: str | None, wal: bool) -> None:
        """The writer has opened ``database_path`` (None: in memory), in WAL mode or not."""
        self.wal_path = None if database_path is None or not wal else database_path + "-wal"

    def size(self) -> int | None:
        """The WAL file's size now; None if the database is not in WAL mode."""
        if self.wal_path is None:
            return None
        try:
            return os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return 0

    def note_size(self) -> None:
        """Before a checkpoint: remember the largest size seen."""
        size = self.size()
        if size is not None and (self.peak is None or size > self.peak):
            self.peak = size

    def checkpointed(self, mode: str, result: CheckpointResult) -> None:
        """After a checkpoint in ``mode``."""
        self.wal_bytes = self.size()
        self.busy += result.busy
        self.checkpoints += 1
        self.mode = mode  # last: the loop may read these while the job runs
