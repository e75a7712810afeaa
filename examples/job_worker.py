"""A background job worker on asyncio (through anyio) that writes events in batches.

Producers put events on a bounded memory stream (a full stream makes them wait: back
pressure). One writer task takes events off the stream and writes them in batches: a
batch is written when it holds ``--batch-size`` events or ``--flush-interval`` seconds
after its first event, whichever comes first, as one ``pool.write()`` transaction. One
transaction per batch instead of one per event is what makes SQLite writes fast: each
COMMIT is a sync of the WAL.

On SIGINT / SIGTERM the producers stop, the writer writes what it still holds, and the
pool closes. Exits with 0 when every event taken off the stream is in the database.

Run it::

    pip install litepool
    python examples/job_worker.py --events 5000 --batch-size 200 --database jobs.db
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import litepool

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    size INTEGER NOT NULL,
    written_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    producer INTEGER NOT NULL,
    payload TEXT NOT NULL,
    batch_id INTEGER NOT NULL REFERENCES batches (id)
);
"""

Event = tuple[int, int, str]  # (id, producer, payload)


@dataclass
class Report:
    produced: int = 0
    batch_sizes: list[int] = field(default_factory=list)


async def producer(
    number: int,
    ids: range,
    events: MemoryObjectSendStream[Event],
    report: Report,
) -> None:
    async with events:
        for event_id in ids:
            payload = json.dumps({"producer": number, "seq": event_id})
            await events.send((event_id, number, payload))  # waits while the stream is full
            report.produced += 1


async def write_batch(pool: litepool.Pool, batch: list[Event]) -> None:
    async with pool.write() as conn:
        result = await conn.execute(
            "INSERT INTO batches (size, written_at) VALUES (?, ?)", (len(batch), time.time())
        )
        await conn.executemany(
            "INSERT INTO events (id, producer, payload, batch_id) VALUES (?, ?, ?, ?)",
            [(*event, result.lastrowid) for event in batch],
        )
    # The block committed when it ended: the batch is durable from here on.


async def batch_writer(
    pool: litepool.Pool,
    events: MemoryObjectReceiveStream[Event],
    batch_size: int,
    flush_interval: float,
    report: Report,
) -> None:
    async with events:
        finished = False
        while not finished:
            try:
                batch = [await events.receive()]  # wait as long as it takes for the first
            except anyio.EndOfStream:
                break
            # Then gather more for at most flush_interval. A memory stream's receive()
            # cancelled by an anyio scope never loses the item being handed over.
            with anyio.move_on_after(flush_interval):
                while len(batch) < batch_size:
                    try:
                        batch.append(await events.receive())
                    except anyio.EndOfStream:
                        finished = True
                        break
            # Not cancellable by a shutdown: a batch taken off the stream is written.
            with anyio.CancelScope(shield=True):
                await write_batch(pool, batch)
            report.batch_sizes.append(len(batch))


async def stop_on_signal(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            print(f"received {signal.Signals(signum).name}: stopping the producers", flush=True)
            scope.cancel()
            return


async def main(database: str, events: int, producers: int, batch_size: int, flush: float) -> int:
    report = Report()
    started = time.perf_counter()
    async with litepool.open_pool(database, readers=1) as pool:
        async with pool.connection() as conn:
            await conn.executescript(SCHEMA)
        send, receive = anyio.create_memory_object_stream[Event](max_buffer_size=batch_size * 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(batch_writer, pool, receive, batch_size, flush, report)
            async with anyio.create_task_group() as watching:
                await watching.start(stop_on_signal, watching.cancel_scope)
                async with anyio.create_task_group() as producing:
                    per_producer = -(-events // producers)
                    for number in range(producers):
                        first = 1 + number * per_producer
                        ids = range(first, min(first + per_producer, events + 1))
                        producing.start_soon(producer, number, ids, send.clone(), report)
                    send.close()  # the writer sees the end once every producer's clone closes
                watching.cancel_scope.cancel()  # every producer is done: stop watching
        # The writer has written everything it took off the stream.
        async with pool.read() as conn:
            stored = await conn.fetchval("SELECT count(*) FROM events")
            batches = await conn.fetchval("SELECT count(*) FROM batches")
    elapsed = time.perf_counter() - started
    sizes = report.batch_sizes
    print(
        f"produced {report.produced} events; wrote {stored} in {batches} batches "
        f"(largest {max(sizes, default=0)}, smallest {min(sizes, default=0)}) "
        f"in {elapsed:.2f} s",
        flush=True,
    )
    # Every event taken off the stream was written, in the batches counted.
    return 0 if stored == sum(sizes) and batches == len(sizes) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default=None, help="default: a temporary file")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--flush-interval", type=float, default=0.05, help="seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = args.database or os.path.join(directory, "jobs.db")
        code = anyio.run(
            main,
            path,
            args.events,
            args.producers,
            args.batch_size,
            args.flush_interval,
            backend="asyncio",
        )
    raise SystemExit(code)
