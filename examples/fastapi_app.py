"""A notes API: FastAPI on asyncio, served by uvicorn, backed by a litepool pool.

The pool is opened in the application's lifespan and closed when the server shuts down.
Reads go through a dependency that checks out a reader (``pool.read()``), writes through
one that checks out the writer in a transaction (``pool.write()``). Both dependencies
are declared with ``scope="function"``, so FastAPI leaves them when the endpoint
returns, before the response is sent: the transaction has committed by the time the
client gets its answer, and reads it right away. (With FastAPI's default scope a
dependency is left after the response has been sent, so a client could read its own
write before it was committed, and get a 2xx for a write whose COMMIT then failed.)

Run it::

    pip install litepool "fastapi>=0.121" uvicorn
    python examples/fastapi_app.py --database notes.db --port 8000

    curl -X POST localhost:8000/notes -H 'content-type: application/json' \\
         -d '{"title": "first", "body": "hello"}'
    curl localhost:8000/notes/1
"""

from __future__ import annotations

import argparse
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
    """Dependency: a reader checked out for the endpoint, returned when it returns.

    If the client goes away and the request is cancelled, a running statement is
    interrupted and the reader goes back to the pool.
    """
    async with pool.read(timeout=5) as conn:
        yield conn


async def write_connection(pool: PoolDep) -> AsyncIterator[litepool.Connection]:
    """Dependency: the writer, in a transaction that commits when the endpoint returns
    normally and rolls back when it raises (an ``HTTPException`` too)."""
    async with pool.write(timeout=5) as conn:
        yield conn


# scope="function": leave the dependency (return the reader; COMMIT) before the response
# is sent, not after it.
ReaderDep = Annotated[litepool.Connection, Depends(read_connection, scope="function")]
WriterDep = Annotated[litepool.Connection, Depends(write_connection, scope="function")]


def create_app(database: str, readers: int = 4, *, durable: bool = False) -> FastAPI:
    # durable: fsync the WAL at every COMMIT, so that no acknowledged write is lost if
    # the machine loses power (the default, synchronous=NORMAL, is safe from corruption
    # but may lose the last transactions then).
    pragmas = {"synchronous": "full"} if durable else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # litepool.Row: rows read by column name, and unpack into the models with **.
        async with litepool.open_pool(
            database, readers=readers, row_factory=litepool.Row, pragmas=pragmas
        ) as pool:
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
    async def create_note(note: NoteIn, conn: WriterDep) -> Note:
        # RETURNING gives back the new row, key and defaults included. (A single statement
        # could also be its own transaction: 'await pool.execute(...)'.)
        result = await conn.execute(
            "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING *", (note.title, note.body)
        )
        return Note(**result.rows[0])

    @app.post("/notes/{note_id}/view")
    async def view_note(note_id: int, conn: WriterDep) -> Note:
        # Read-modify-write: pool.write() holds the write lock from its first statement
        # to its COMMIT, so concurrent views are never lost.
        row = await conn.fetchone("SELECT * FROM notes WHERE id = ?", (note_id,))
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"note {note_id} not found")
        await conn.execute("UPDATE notes SET views = ? WHERE id = ?", (row.views + 1, note_id))
        return Note(**{**row, "views": row.views + 1})

    @app.delete("/notes/{note_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_note(note_id: int, conn: WriterDep) -> Response:
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
    parser.add_argument(
        "--durable", action="store_true", help="fsync at every commit (synchronous=FULL)"
    )
    args = parser.parse_args()
    # uvicorn runs the app on asyncio and shuts it down gracefully on SIGINT / SIGTERM:
    # in-flight requests finish, then the lifespan closes the pool.
    app = create_app(args.database, args.readers, durable=args.durable)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
