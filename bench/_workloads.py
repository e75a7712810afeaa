"""The workloads: which operations, from how many concurrent tasks.

Each workload runs for a fixed duration (``--seconds``, the same for every contender):
``tasks`` tasks each loop "pick an operation, run it, record its latency" until the
deadline; operations in flight at the deadline finish and count. The synchronous floor
(``sqlite3``) runs the same operation mix one after another, for the same duration.

Each task draws its operations from its own seeded random generator, so every contender
is asked for the same sequence of keys.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from ._contenders import AsyncOps, CommentRow, SyncOps
from ._db import COMMENT_BODY, EPOCH, MAX_AMOUNT, Sizes

#: What one operation reports besides its latency: None, or why its result was wrong.
Verdict = str | None


@dataclass(frozen=True, slots=True)
class Workload:
    """An operation mix: shares of point reads, heavy reads, single-row write
    transactions and transfers (the rest), run from ``tasks`` concurrent tasks."""

    name: str
    title: str
    tasks: int
    point: float = 0.0
    heavy: float = 0.0
    insert: float = 0.0

    @property
    def transfer(self) -> float:
        return max(0.0, 1.0 - self.point - self.heavy - self.insert)

    @property
    def checks_total(self) -> bool:
        return self.transfer > 0

    def with_tasks(self, tasks: int) -> Workload:
        return replace(self, tasks=tasks)

    def describe(self) -> str:
        parts = [
            f"{share:.0%} {what}"
            for share, what in (
                (self.point, "point reads"),
                (self.heavy, "JOIN reads"),
                (self.insert, "single-row writes"),
                (self.transfer, "transfers"),
            )
            if share > 0
        ]
        return f"{', '.join(parts)} from {self.tasks} tasks"


WORKLOADS: Final[tuple[Workload, ...]] = (
    Workload("point-reads", "point reads", 5, point=1.0),
    Workload("heavy-reads", "heavy reads (4-table JOIN)", 100, heavy=1.0),
    Workload("small-writes", "small write transactions", 20, insert=1.0),
    Workload("transfers", "transfers (read 2, write 2)", 20),
    Workload("mixed", "mixed (90% reads, 10% writes)", 100, point=0.9, insert=0.1),
)

BY_NAME: Final = {workload.name: workload for workload in WORKLOADS}


class Picker:
    """Draws one task's operations: which one, and its arguments."""

    __slots__ = ("_cut_heavy", "_cut_insert", "_cut_point", "_rng", "_serial", "_sizes")

    def __init__(self, workload: Workload, sizes: Sizes, seed: int) -> None:
        self._rng = random.Random(seed)
        self._sizes = sizes
        self._cut_point = workload.point
        self._cut_heavy = workload.point + workload.heavy
        self._cut_insert = workload.point + workload.heavy + workload.insert
        self._serial = 0

    def pick(self) -> tuple[int, int, int, int]:
        """(kind, a, b, c): 0 point read of user a; 1 heavy read of user a; 2 comment on
        post a by user b; 3 transfer of c from account a to account b."""
        rng = self._rng
        sizes = self._sizes
        draw = rng.random()
        if draw < self._cut_point:
            return 0, rng.randint(1, sizes.users), 0, 0
        if draw < self._cut_heavy:
            return 1, rng.randint(1, sizes.users), 0, 0
        if draw < self._cut_insert:
            return 2, rng.randint(1, sizes.posts), rng.randint(1, sizes.users), 0
        source, target = rng.sample(range(1, sizes.accounts + 1), 2)
        return 3, source, target, rng.randint(1, MAX_AMOUNT)

    def comment(self, post: int, user: int) -> CommentRow:
        self._serial += 1
        return (post, user, COMMENT_BODY, EPOCH + self._serial)


def _check_point(row: Any, key: int) -> Verdict:
    if row is None or row[0] != key:
        return "wrong row"
    return None


def _check_heavy(rows: list[object]) -> Verdict:
    return None if rows else "no rows"


def async_step(ops: AsyncOps, picker: Picker) -> Callable[[], Awaitable[Verdict]]:
    """One operation of the workload, as a coroutine function."""

    async def step() -> Verdict:
        kind, a, b, c = picker.pick()
        if kind == 0:
            return _check_point(await ops.point_read(a), a)
        if kind == 1:
            return _check_heavy(await ops.heavy_read(a))
        if kind == 2:
            await ops.insert_comment(picker.comment(a, b))
            return None
        await ops.transfer(a, b, c)
        return None

    return step


def sync_step(ops: SyncOps, picker: Picker) -> Callable[[], Verdict]:
    """One operation of the workload, as a plain function."""

    def step() -> Verdict:
        kind, a, b, c = picker.pick()
        if kind == 0:
            return _check_point(ops.point_read(a), a)
        if kind == 1:
            return _check_heavy(ops.heavy_read(a))
        if kind == 2:
            ops.insert_comment(picker.comment(a, b))
            return None
        ops.transfer(a, b, c)
        return None

    return step
