"""Leak detection: checkouts held longer than ``open_pool(leak_timeout=...)``.

Only when ``leak_timeout`` is set does a checkout record its task's name and the stack
where it was checked out; without it, the pool records nothing and starts no task.
A task in the pool's task group wakes up when the oldest checkout it has not yet
reported passes the timeout, and logs a warning on the ``litepool`` logger naming the
task and showing that stack; when the connection comes back, it logs that too.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Final

import anyio

from ._background import BackgroundTask

logger = logging.getLogger("litepool")

#: Frames of the checkout's stack kept for the report (innermost last).
STACK_LIMIT: Final = 32
_PACKAGE: Final = os.path.dirname(os.path.abspath(__file__))


#: The task and the stack of a checkout's ``async with``.
Where = tuple[str, traceback.StackSummary]


def where() -> Where:
    """The current task's name and its stack, up to the pool's own frames."""
    stack = traceback.extract_stack(limit=STACK_LIMIT + 8)
    # Up to the caller's own code: the pool's frames (a checkout's __aenter__, or the
    # call that made a pool.read() block take its reader) say nothing.
    while stack and os.path.dirname(stack[-1].filename) == _PACKAGE:
        stack.pop()
    del stack[:-STACK_LIMIT]
    return str(anyio.get_current_task().name), stack


class _Record:
    __slots__ = ("kind", "stack", "start", "task")

    def __init__(self, kind: str, task: str, start: float, stack: traceback.StackSummary) -> None:
        self.kind = kind
        self.task = task
        self.start = start
        self.stack = stack


class LeakTracker(BackgroundTask):
    """Who holds which checkout since when; runs the reporting task."""

    what = "leak detection"

    def __init__(self, pool_name: str, timeout: float) -> None:
        super().__init__(pool_name)
        self._timeout = timeout
        # Insertion order is checkout order, hence also deadline order.
        self._active: dict[object, _Record] = {}
        self._reported: dict[object, _Record] = {}
        self.reported = 0

    def add(self, checkout: object, kind: str, start: float, entered: Where | None = None) -> None:
        """Record a checkout holding a connection since ``start`` (``time.monotonic()``),
        entered by the current task here, or by the task and at the place in ``entered``
        (see :func:`where`)."""
        task, stack = entered if entered is not None else where()
        self._active[checkout] = _Record(kind, task, start, stack)

    def remove(self, checkout: object, now: float) -> None:
        if self._active.pop(checkout, None) is not None:
            return
        record = self._reported.pop(checkout, None)
        if record is not None:
            logger.warning(
                "pool %r: the %s connection reported as possibly leaked, checked out by "
                "task %r, was returned after %.3f s",
                self._pool_name,
                record.kind,
                record.task,
                now - record.start,
            )

    def holders(self, kind: str) -> str:
        """``; held by 'task' for 1.2 s, ...`` for the ``kind`` lane's checkouts."""
        now = time.monotonic()
        held = [
            f"{record.task!r} for {now - record.start:.3g} s"
            for records in (self._reported, self._active)
            for record in records.values()
            if record.kind == kind or (kind == "write" and record.kind == "connection")
        ]
        return f"; held by {', '.join(held)}" if held else ""

    async def _loop(self) -> None:
        timeout = self._timeout
        while True:
            now = time.monotonic()
            wake = now + max(timeout / 2, 0.001)
            for checkout, record in list(self._active.items()):
                due = record.start + timeout
                if due > now:
                    wake = min(wake, due)
                    break
                del self._active[checkout]
                self._reported[checkout] = record
                self._report(record, now)
            await anyio.sleep(wake - now)

    def _report(self, record: _Record, now: float) -> None:
        self.reported += 1
        logger.warning(
            "pool %r: a %s connection has been checked out for %.3f s (leak_timeout: %g s) "
            "by task %r; it was checked out at:\n%s",
            self._pool_name,
            record.kind,
            now - record.start,
            self._timeout,
            record.task,
            "".join(record.stack.format()).rstrip("\n"),
        )
