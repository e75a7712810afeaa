"""What one hand-off between the event loop and a thread costs on this machine.

Every async SQLite library pays for each call with at least one trip from the event loop
to a thread and back, and on small virtual machines that trip can cost more than the
SQL: waking a thread that sleeps on another CPU is dear where an idle virtual CPU halts.
The benchmark measures the bare trip once, before the workloads, and reports it with the
machine, so that a table of ratios can be read against the cost that shapes it.
"""

from __future__ import annotations

import asyncio
import queue
import statistics
import threading
import time
from typing import Final

#: Round trips timed; the first :data:`WARMUP` are not counted.
SAMPLES: Final = 1000
WARMUP: Final = 50


def thread_round_trip_us(samples: int = SAMPLES) -> float:
    """Median microseconds of one bare round trip: the event loop queues a request for a
    thread that waits on a :class:`queue.SimpleQueue`, and the thread answers with
    ``loop.call_soon_threadsafe`` (the hand-off aiosqlite and litepool both use)."""
    return asyncio.run(_measure(samples))


async def _measure(samples: int) -> float:
    loop = asyncio.get_running_loop()
    requests: queue.SimpleQueue[asyncio.Future[None] | None] = queue.SimpleQueue()

    def answer() -> None:
        while (future := requests.get()) is not None:
            loop.call_soon_threadsafe(future.set_result, None)

    thread = threading.Thread(target=answer, name="litepool-bench-wakeup", daemon=True)
    thread.start()
    timings: list[float] = []
    try:
        for _ in range(WARMUP + samples):
            future = loop.create_future()
            started = time.perf_counter()
            requests.put(future)
            await future
            timings.append(time.perf_counter() - started)
    finally:
        requests.put(None)
        thread.join()
    return statistics.median(timings[WARMUP:]) * 1e6
