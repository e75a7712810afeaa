"""Ctrl-C at every line of the code that waits for jobs and closes the pool.

trio delivers ``KeyboardInterrupt`` at any bytecode of code that is not protected from it.
Landing between "remember the task to wake" and "park", it left a task that a later
answer rescheduled although it no longer waited there, and trio's scheduler crashed
(``TrioInternalError``); landing in the pool's closing, it left worker threads running
after ``trio.run`` returned. On asyncio, Ctrl-C cancels the main task natively.

Each test here raises a real SIGINT at one chosen line (a trace function sends it when
that line is about to run), for every line of the chosen functions that the workload
reaches, one run per line: the run must end with ``KeyboardInterrupt`` (or complete),
never with anything else, and no worker thread may outlive it.
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import litepool
from litepool import _bridge, _checkout, _connection, _handoff, _lane, _pool, _supervisor

from .conftest import litepool_threads

#: (label, function) pairs whose every reached line gets a SIGINT, per backend.
COMMON: list[tuple[str, Callable[..., Any]]] = [
    ("HandOff.wait", _handoff.HandOff.wait),
    ("HandOff.give", _handoff.HandOff.give),
    ("Lane.acquire", _lane.Lane.acquire),
    ("Lane.release", _lane.Lane.release),
    ("Lane._grant", _lane.Lane._grant),
    ("Lane.run", _lane.Lane.run),
    ("Connection._call", _connection.Connection._call),
    ("Checkout.__aenter__", _checkout.Checkout.__aenter__),
    ("Checkout.__aexit__", _checkout.Checkout.__aexit__),
    ("Checkout._commit", _checkout.Checkout._commit),
    ("Pool._statement", _pool.Pool._statement),
    ("Pool.__aexit__", _pool.Pool.__aexit__),
    ("Pool._stop", _pool.Pool._stop),
    ("Supervisor.stop", _supervisor.Supervisor.stop),
    ("Supervisor._thread_exited", _supervisor.Supervisor._thread_exited),
]
TARGETS: dict[str, list[tuple[str, Callable[..., Any]]]] = {
    "trio": [
        ("TrioBridge.wait", _bridge._TrioBridge.wait),
        ("TrioBridge.wait_shielded", _bridge._TrioBridge.wait_shielded),
        ("TrioBridge.park", _bridge._TrioBridge.park),
        ("TrioBridge.resume", _bridge._TrioBridge.resume),
        *COMMON,
    ],
    "asyncio": [
        ("AsyncioBridge.wait", _bridge._AsyncioBridge.wait),
        ("AsyncioBridge.park", _bridge._AsyncioBridge.park),
        *COMMON,
    ],
}


async def workload(path: str) -> None:
    """Writers that queue for the writer (so waiters park and are handed connections),
    single statements, and the pool's closing."""
    async with litepool.open_pool(path, readers=1, acquire_timeout=None) as pool:
        await pool.execute("CREATE TABLE IF NOT EXISTS t (v)")

        async def writer(i: int) -> None:
            for _ in range(2):
                async with pool.write() as conn:
                    await conn.execute("INSERT INTO t VALUES (?)", (i,))
                async with pool.read() as conn:
                    await conn.fetchval("SELECT count(*) FROM t")
                await pool.fetchval("SELECT count(*) FROM t")

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(writer, i)


class LineTracer:
    """Records the lines of ``code`` that run, or sends SIGINT once when ``line`` is
    about to run."""

    def __init__(self, code: types.CodeType, line: int | None = None) -> None:
        self.code = code
        self.line = line
        self.seen: set[int] = set()
        self.fired = False

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code is self.code and not self.fired:
            return self._local
        return None

    def _local(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "line":
            if self.line is None:
                self.seen.add(frame.f_lineno)
            elif frame.f_lineno == self.line and not self.fired:
                self.fired = True
                signal.raise_signal(signal.SIGINT)
        return self._local


def run_traced(path: str, backend: str, tracer: LineTracer) -> BaseException | None:
    sys.settrace(tracer)
    try:
        anyio.run(workload, path, backend=backend)
    except BaseException as exc:
        return exc
    finally:
        sys.settrace(None)
    return None


def only_keyboard_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(only_keyboard_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigint_at_every_line_of_waiting_and_closing(
    tmp_path: Path, backend: str, long_run: bool
) -> None:
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    failures: list[str] = []
    runs = fired = 0
    for label, fn in TARGETS[backend]:
        code = fn.__code__
        path = str(tmp_path / f"{label}.db")
        dry = LineTracer(code)
        assert run_traced(path, backend, dry) is None
        assert dry.seen, f"the workload never ran {label}"
        for line in sorted(dry.seen):
            tracer = LineTracer(code, line)
            outcome = run_traced(path, backend, tracer)
            runs += 1
            where = f"{label} line {line - code.co_firstlineno} ({line})"
            if not tracer.fired:
                continue  # that line did not run this time (timing): nothing was sent
            fired += 1
            if outcome is not None and not only_keyboard_interrupts(outcome):
                failures.append(f"{where}: {type(outcome).__name__}: {outcome!r}")
            if litepool_threads():
                failures.append(f"{where}: threads left {litepool_threads()}")
                for thread in threading.enumerate():
                    if thread.name.startswith("litepool["):
                        thread.join(10)
    print(backend, "runs", runs, "fired", fired)
    assert runs > 50
    assert not failures, "\n".join(failures)
