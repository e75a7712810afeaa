"""The skeleton of the pool's background tasks (the supervisor's upkeep, the WAL
housekeeper, leak detection).

Each runs in the pool's task group until the pool closes it with :meth:`stop`. None may
end the pool's block by failing: an unexpected error is logged and the task ends, the
pool serves on without it. Each holds what it works on (lanes, statistics), never the
pool itself.
"""

from __future__ import annotations

import logging

import anyio

from ._errors import PoolClosed

logger = logging.getLogger("litepool")


class BackgroundTask:
    """A task of the pool's task group; subclasses write :meth:`_loop`."""

    #: What the task is called in logs and task names.
    what: str = "background task"

    def __init__(self, pool_name: str) -> None:
        self._pool_name = pool_name
        self._scope = anyio.CancelScope()

    @property
    def name(self) -> str:
        """The task's name in the pool's task group."""
        return f"litepool[{self._pool_name}] {self.what}"

    def stop(self) -> None:
        """End the task (the pool calls it as it closes)."""
        self._scope.cancel()

    async def run(self) -> None:
        """The task's body: :meth:`_loop` until stopped, and never an error out of it."""
        with self._scope:
            try:
                await self._loop()
            except PoolClosed:
                pass
            except Exception:
                logger.exception("pool %r: %s stopped", self._pool_name, self.what)

    async def _loop(self) -> None:
        raise NotImplementedError
