"""Fork safety: a child process never uses, nor closes, the connections it inherited.

After :func:`os.fork`, the child has a copy of every open pool and of its SQLite
connections, but none of the threads that own them; using or even closing such a
connection in the child can corrupt the database (SQLite's locks belong to the parent).
An ``os.register_at_fork`` hook therefore marks every pool open at the moment of the
fork as forked, in the child only, at no cost to the pool's normal paths: the pool then
refuses every use with :class:`~litepool.PoolForked`, and the inherited
:class:`sqlite3.Connection` objects are kept alive for the rest of the child's life,
so that their finalizers never close them.
"""

from __future__ import annotations

import ctypes
import os
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._worker import Worker


class _Forkable(Protocol):
    def _after_fork(self) -> None: ...


_open_pools: weakref.WeakSet[_Forkable] = weakref.WeakSet()
_inherited: list[object] = []  # what a child keeps alive, so that it is never finalized
_inherited_workers: set[int] = set()


def register(pool: _Forkable) -> None:
    """Called when a pool opens: a fork from now on marks it in the child."""
    _open_pools.add(pool)


def unregister(pool: _Forkable) -> None:
    _open_pools.discard(pool)


def abandon(workers: Iterable[Worker]) -> None:
    """In the child: never finalize the workers' connections (the pool refuses their
    use already)."""
    for worker in workers:
        _inherited.append(worker)
        _inherited_workers.add(id(worker))
        for thing in (worker.conn, *worker.cursors.values()):
            if thing is not None:
                # A reference that is never given back: the object outlives the
                # interpreter's own clean-up, whose sqlite3_close() would touch the file.
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(thing))
                _inherited.append(thing)


def inherited(worker: Worker) -> bool:
    """Whether ``worker`` belongs to a pool inherited through a fork."""
    return id(worker) in _inherited_workers


def _after_fork_in_child() -> None:
    for pool in list(_open_pools):
        pool._after_fork()
    _open_pools.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
