"""Peak RSS of a process using litepool: ``python3 -m bench._rss DB READERS SECONDS
SCALE`` prints ``{"readers": ..., "maxrss_kib": ...}`` as JSON.

With READERS > 0 it opens a pool with that many readers on the database DB (a copy of
the benchmark database) and runs point and JOIN reads from 100 tasks for SECONDS on
asyncio, so that every connection has worked; with READERS = 0 it only imports the same
modules and runs an empty event loop: the baseline.
"""

from __future__ import annotations

import json
import resource
import sys

import anyio
import anyio.lowlevel

from . import _db
from ._contenders import BY_NAME, Settings
from ._runner import Measurement, _run_async
from ._workloads import Workload

TASKS = 100
WORKLOAD = Workload("rss", "point and JOIN reads", TASKS, point=0.5, heavy=0.5)


def peak_rss_kib() -> int:
    """This process's peak resident set size, in KiB.

    On Linux, ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` would also count the
    parent's memory at the moment it forked this process, which the kernel carries over
    the exec. Elsewhere, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS


async def _idle() -> None:
    await anyio.lowlevel.checkpoint()


def main(argv: list[str]) -> int:
    path, readers_text, seconds_text, scale_text = argv
    readers, seconds, scale = int(readers_text), float(seconds_text), float(scale_text)
    result: dict[str, object] = {"readers": readers}
    if readers == 0:
        anyio.run(_idle, backend="asyncio")
    else:
        measurement = Measurement("rss", "litepool-asyncio", 0, TASKS, readers)
        anyio.run(
            _run_async,
            BY_NAME["litepool-asyncio"],
            WORKLOAD,
            path,
            seconds,
            _db.Sizes.for_scale(scale),
            Settings(readers=readers),
            1,
            measurement,
            backend="asyncio",
        )
        result["ops"] = measurement.ops
        result["errors"] = measurement.error_count
    result["maxrss_kib"] = peak_rss_kib()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
