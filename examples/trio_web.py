"""A key-value service with hit counters on trio: Starlette served by hypercorn's trio worker.

The server runs in a nursery nested inside the pool's ``async with`` block, so the pool
outlives every request: on SIGINT / SIGTERM the server stops taking requests, its
in-flight requests finish, the nursery ends, and then the pool closes (every connection
closed, every worker thread joined) before the program exits.

Run it::

    pip install "litepool[trio]" starlette hypercorn
    python examples/trio_web.py --database kv.db --port 8001

    curl -X PUT localhost:8001/items/greeting -d '"hello"'
    curl -X POST localhost:8001/items/greeting/hit
    curl localhost:8001/items/greeting
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import litepool

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
"""


def build_app(pool: litepool.Pool) -> Starlette:
    def not_found(key: str) -> JSONResponse:
        return JSONResponse({"detail": f"item {key!r} not found"}, status_code=404)

    async def health(request: Request) -> JSONResponse:
        async with pool.read(timeout=5) as conn:
            await conn.fetchval("SELECT 1")
        return JSONResponse({"status": "ok"})

    async def get_item(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        async with pool.read(timeout=5) as conn:
            row = await conn.fetchone("SELECT key, value, hits FROM items WHERE key = ?", (key,))
        if row is None:
            return not_found(key)
        return JSONResponse({"key": row[0], "value": json.loads(row[1]), "hits": row[2]})

    async def put_item(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        try:
            value: Any = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"detail": "the body must be JSON"}, status_code=422)
        async with pool.write(timeout=5) as conn:
            await conn.execute(
                "INSERT INTO items (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
        return JSONResponse({"key": key, "value": value})

    async def hit_item(request: Request) -> JSONResponse:
        key = request.path_params["key"]
        # Read-modify-write in one pool.write() transaction (BEGIN IMMEDIATE): two
        # concurrent hits can never both read the same count.
        async with pool.write(timeout=5) as conn:
            hits = await conn.fetchval("SELECT hits FROM items WHERE key = ?", (key,))
            if hits is None:
                return not_found(key)
            await conn.execute("UPDATE items SET hits = ? WHERE key = ?", (hits + 1, key))
        return JSONResponse({"key": key, "hits": hits + 1})

    async def delete_item(request: Request) -> Response:
        key = request.path_params["key"]
        async with pool.write(timeout=5) as conn:
            result = await conn.execute("DELETE FROM items WHERE key = ?", (key,))
        if result.rowcount == 0:
            return not_found(key)
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/items/{key}", get_item, methods=["GET"]),
            Route("/items/{key}", put_item, methods=["PUT"]),
            Route("/items/{key}", delete_item, methods=["DELETE"]),
            Route("/items/{key}/hit", hit_item, methods=["POST"]),
        ]
    )


async def wait_for_signal() -> None:
    """hypercorn's shutdown trigger: return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            print(f"received {signal.Signals(signum).name}, shutting down", flush=True)
            return


async def main(database: str, host: str, port: int) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = 5
    async with litepool.open_pool(database, readers=4) as pool:
        async with pool.connection() as conn:
            await conn.executescript(SCHEMA)
        app = build_app(pool)
        async with trio.open_nursery() as nursery:
            # serve() reports the addresses it is bound to once it accepts connections.
            bound = await nursery.start(
                # Starlette and hypercorn spell the ASGI types differently; same protocol.
                functools.partial(serve, app, config, shutdown_trigger=wait_for_signal)  # type: ignore[arg-type]
            )
            print(f"listening on {', '.join(bound)}", flush=True)
        # The nursery ends once the server has returned: its shutdown trigger fired and
        # its in-flight requests finished. Only then does the pool's block end.
    print("pool closed", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="kv.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    trio.run(main, args.database, args.host, args.port)
