"""Keeping ``KeyboardInterrupt`` out of the pool's bookkeeping under trio.

trio raises ``KeyboardInterrupt`` at whatever bytecode is running when SIGINT arrives,
unless that code is protected, in which case it delivers the interrupt at the next
checkpoint instead, where the task's wait is cancelled cleanly. Landing half-way
through the pool's bookkeeping, it does harm: between "remember the task to wake" and
"park" it leaves a task that the worker's answer later reschedules although it no
longer waits there (trio then crashes with ``TrioInternalError``); in a lane's hand-off
it strands a connection; in the pool's closing it leaves worker threads running after
``trio.run`` has returned.

Functions that keep such state consistent are marked with :func:`protected`. The marks
are handed to trio (:func:`trio.lowlevel.enable_ki_protection`, which records the
functions' code objects) when the first pool opens under trio, so that asyncio users
never import trio. Protection costs nothing until a SIGINT arrives. On asyncio, Ctrl-C
cancels the main task natively, which the pool already handles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_marked: list[Callable[..., Any]] = []
_handed_to_trio = False


def protected(fn: F) -> F:
    """Mark ``fn`` (a function or coroutine function) as one that ``KeyboardInterrupt``
    must not interrupt half-way under trio."""
    _marked.append(fn)
    if _handed_to_trio:  # defined after trio already runs a pool
        _enable(fn)
    return fn


def _enable(fn: Callable[..., Any]) -> None:
    import trio.lowlevel

    trio.lowlevel.enable_ki_protection(fn)


def protect_under_trio() -> None:
    """Hand every mark to trio; called when a pool opens under trio (idempotent)."""
    global _handed_to_trio
    if _handed_to_trio:
        return
    for fn in _marked:
        _enable(fn)
    _handed_to_trio = True
