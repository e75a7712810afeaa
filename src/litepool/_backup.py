"""Online backups: what :meth:`Pool.backup` accepts.

The copy runs on a reader, checked out for its duration, with :mod:`sqlite3`'s backup
API, ``pages`` pages per step (:func:`litepool._statements.backup_job`): one consistent
snapshot in WAL mode, never blocking writers.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final

#: ``pool.backup(pages=...)``'s default: pages copied per step (4 MiB with 4 KiB pages).
DEFAULT_BACKUP_PAGES: Final = 1024

Target = str | os.PathLike[str] | sqlite3.Connection


def check_backup_args(target: object, pages: object, progress: object) -> str | sqlite3.Connection:
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str | sqlite3.Connection):
        raise TypeError(
            f"target must be a path (str or os.PathLike) or an sqlite3.Connection, not {target!r}"
        )
    if target == "":
        raise ValueError("target must name a file")
    if isinstance(pages, bool) or not isinstance(pages, int):
        raise TypeError(f"pages must be an int, not {pages!r}")
    if pages == 0 or pages < -1:
        raise ValueError(f"pages must be >= 1, or -1 for everything in one step, got {pages!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, not {progress!r}")
    return target
