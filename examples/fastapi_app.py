"""A notes API: FastAPI on asyncio, served by uvicorn, backed by a litepool pool.

The pool is opened in the application's lifespan and closed when the server shuts down.
Reads go through a dependency that checks out a reader (``pool.read()``); writes go
through ``pool.write()`` inside the endpoint, so that the transaction has committed
before the response is sent.

Run it::

    pip install litepool fastapi uvicorn
    python examples/fastapi_app.py --database notes.db --port 8000

    curl -X POST localhost:8000/notes -H 'content-type: application/json' \\
         -d '{"title": "first", "body": "hello"}'
    curl localhost:8000/notes/1
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

import litepool

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    views INTEGER NOT NULL DEFAULT 0
);
"""


class NoteIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = ""


class Note(NoteIn):
    id: int
    views: int


def get_pool(request: Request) -> litepool.Pool:
    """Dependency: the pool that the lifespan opened."""
    pool: litepool.Pool = request.app.state.pool
    return pool


PoolDep = Annotated[litepool.Pool, Depends(get_pool)]


async def read_connection(pool: PoolDep) -> AsyncIterator[litepool.Connection]:
    """Dependency: a reader checked out for the request, returned when it is done.

    If the client goes away and the request is cancelled, a running statement is
    interrupted and the reader goes back to the pool.
    """
    async with pool.read(timeout=5) as conn:
        yield conn


ReaderDep = Annotated[litepool.Connection, Depends(read_connection)]


def create_app(database: str, readers: int = 4) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # sqlite3.Row: rows index by column name, and unpack into the models with **.
        async with litepool.open_pool(database, readers=readers, row_factory=sqlite3.Row) as pool:
            async with pool.connection() as conn:
                await conn.executescript(SCHEMA)
            app.state.pool = pool
            print(f"pool open on {database} ({readers} readers)", flush=True)
            yield
        # Leaving the block closed every connection and joined every worker thread.
        print("pool closed", flush=True)

    app = FastAPI(title="notes", lifespan=lifespan)

    @app.get("/health")
    async def health(conn: ReaderDep) -> dict[str, Any]:
        return {"status": "ok", "sqlite": await conn.fetchval("SELECT sqlite_version()")}

    @app.get("/notes")
    async def list_notes(conn: ReaderDep, limit: int = 100) -> list[Note]:
        rows = await conn.fetchall("SELECT * FROM notes ORDER BY id LIMIT ?", (limit,))
        return [Note(**row) for row in rows]

    @app.get("/notes/{note_id}")
    async def get_note(note_id: int, conn: ReaderDep) -> Note:
        row = await conn.fetchone("SELECT * FROM notes WHERE id = ?", (note_id,))
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"note {note_id} not found")
        return Note(**row)

    @app.post("/notes", status_code=status.HTTP_201_CREATED)
    async def create_note(note: NoteIn, pool: PoolDep) -> Note:
        async with pool.write() as conn:
            result = await conn.execute(
                "INSERT INTO notes (title, body) VALUES (?, ?)", (note.title, note.body)
            )
        assert result.lastrowid is not None
        return Note(id=result.lastrowid, views=0, **note.model_dump())

    @app.post("/notes/{note_id}/view")
    async def view_note(note_id: int, pool: PoolDep) -> Note:
        # Read-modify-write: pool.write() holds the write lock from its first statement
        # to its COMMIT, so concurrent views are never lost.
        async with pool.write() as conn:
            row = await conn.fetchone("SELECT * FROM notes WHERE id = ?", (note_id,))
            if row is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"note {note_id} not found")
            views = row["views"] + 1
            await conn.execute("UPDATE notes SET views = ? WHERE id = ?", (views, note_id))
        return Note(**{**row, "views": views})

    @app.delete("/notes/{note_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_note(note_id: int, pool: PoolDep) -> Response:
        async with pool.write() as conn:
            result = await conn.execute("DELETE FROM notes WHERE id = ?", (note_id,))
        if result.rowcount == 0:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"note {note_id} not found")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @app.get("/stats")
    async def stats(pool: PoolDep) -> dict[str, Any]:
        snapshot = pool.statistics()
        return {
            "read_checkouts": snapshot.read.checkouts,
            "write_checkouts": snapshot.write.checkouts,
            "in_use": snapshot.read.in_use + snapshot.write.in_use,
            "waiting": snapshot.read.waiting + snapshot.write.waiting,
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", default="notes.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--readers", type=int, default=4)
    args = parser.parse_args()
    # uvicorn runs the app on asyncio and shuts it down gracefully on SIGINT / SIGTERM:
    # in-flight requests finish, then the lifespan closes the pool.
    uvicorn.run(create_app(args.database, args.readers), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
