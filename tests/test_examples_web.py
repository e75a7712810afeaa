"""The application examples, started for real.

The web services run as subprocesses on a free port of 127.0.0.1 and are driven with real
HTTP requests (the standard library's ``urllib``); each test waits for readiness by
polling ``/health`` with a bounded loop, and always shuts its server down, gracefully with
SIGINT first. The worker programs run to completion and their output and database are
checked. Each example picks its own event loop (FastAPI on asyncio, the trio ones on
trio), so these tests are plain functions rather than tests run on both backends.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
READY_WITHIN = 30.0  # seconds a server may take to answer /health
STOP_WITHIN = 30.0  # seconds a server may take to shut down after SIGINT


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """One request; returns the status and the decoded JSON body (None if empty)."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status: int = response.status
            payload = response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    return status, json.loads(payload) if payload else None


class Server:
    """An example server running in a subprocess, its output going to a log file."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, base: str, log: Path) -> None:
        self.process = process
        self.port = port
        self.base = base
        self.log = log
        self.returncode: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if http("GET", self.base + "/health")[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.05)
        pytest.fail(f"server not ready within {READY_WITHIN} s:\n{self.output()}")

    def stop(self) -> str:
        """Shut down gracefully (SIGINT); return the server's whole output."""
        self.process.send_signal(signal.SIGINT)
        self.returncode = self.process.wait(timeout=STOP_WITHIN)
        return self.output()


@contextmanager
def serving(example: str, tmp_path: Path, *args: str) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"{example}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / example), "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, f"http://127.0.0.1:{port}", log)
    try:
        server.wait_ready()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_WITHIN)


def test_fastapi_app(tmp_path: Path) -> None:
    database = tmp_path / "notes.db"
    with serving("fastapi_app.py", tmp_path, "--database", str(database)) as server:
        base = server.base
        status, health = http("GET", base + "/health")
        assert (status, health["status"]) == (200, "ok")

        status, note = http("POST", base + "/notes", {"title": "first", "body": "hello"})
        assert status == 201
        assert note == {"id": 1, "title": "first", "body": "hello", "views": 0}
        assert http("GET", base + "/notes/1") == (200, note)
        assert http("GET", base + "/notes/999") == (404, {"detail": "note 999 not found"})
        assert http("POST", base + "/notes", {"title": ""})[0] == 422

        # Concurrent requests: creates get distinct ids, and read-modify-write views
        # through pool.write() lose no update.
        with ThreadPoolExecutor(max_workers=8) as executor:
            created = list(
                executor.map(
                    lambda i: http("POST", base + "/notes", {"title": f"note {i}"}), range(20)
                )
            )
            views = list(executor.map(lambda _: http("POST", base + "/notes/1/view")[0], range(30)))
        assert {status for status, _ in created} == {201}
        assert len({body["id"] for _, body in created}) == 20
        assert set(views) == {200}
        assert http("GET", base + "/notes/1")[1]["views"] == 30
        status, listed = http("GET", base + "/notes?limit=1000")
        assert (status, len(listed)) == (200, 21)

        assert http("DELETE", base + "/notes/2") == (204, None)
        assert http("GET", base + "/notes/2")[0] == 404
        assert http("DELETE", base + "/notes/2") == (404, {"detail": "note 2 not found"})
        status, stats = http("GET", base + "/stats")
        assert (stats["in_use"], stats["waiting"]) == (0, 0)
        assert stats["write_checkouts"] >= 50

        output = server.stop()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
    # The lifespan closed the pool after uvicorn had finished serving.
    assert output.index("pool open") < output.index("Shutting down") < output.index("pool closed")
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*), sum(views) FROM notes").fetchone() == (20, 30)


#: Write-then-read rounds of the read-after-write test: clients x rounds each.
CLIENTS, ROUNDS = 4, 75


def test_fastapi_app_reads_its_own_writes(tmp_path: Path) -> None:
    """A client that reads right after a 2xx sees its write: the example's write
    dependency commits before the response is sent, not after it (FastAPI's default).

    With an fsync at every COMMIT (--durable) a commit takes long enough to be seen
    late: with the dependencies in FastAPI's default scope, 26 to 65 of these 308 reads
    saw the data from before the write (3 runs).
    """
    database = tmp_path / "notes.db"
    with serving("fastapi_app.py", tmp_path, "--database", str(database), "--durable") as server:

        def client(number: int) -> list[str]:
            # One kept-alive HTTP connection per client, as a browser or an HTTP client
            # library uses: its next request follows the last response at once.
            stale = []
            with closing(HTTPConnection("127.0.0.1", server.port, timeout=10)) as c:

                def request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                    data = None if body is None else json.dumps(body)
                    c.request(method, path, data, {"content-type": "application/json"})
                    response = c.getresponse()
                    payload = response.read()
                    return response.status, json.loads(payload) if payload else None

                status, note = request("POST", "/notes", {"title": f"client {number}"})
                assert status == 201
                path = f"/notes/{note['id']}"
                if request("GET", path) != (200, note):
                    stale.append(f"note {note['id']} not found right after its creation")
                for _ in range(ROUNDS):
                    status, viewed = request("POST", path + "/view")
                    assert status == 200
                    status, read = request("GET", path)
                    assert status == 200
                    if read["views"] != viewed["views"]:
                        stale.append(f"views {read['views']} read after {viewed['views']} written")
                assert request("DELETE", path) == (204, None)
                if request("GET", path)[0] != 404:
                    stale.append(f"note {note['id']} still found right after its deletion")
            return stale

        with ThreadPoolExecutor(max_workers=CLIENTS) as executor:
            stale = [line for lines in executor.map(client, range(CLIENTS)) for line in lines]
        assert not stale, (
            f"{len(stale)} of {CLIENTS * (ROUNDS + 2)} reads right after a write did not "
            f"see it: {stale[:5]}"
        )
        output = server.stop()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output


def test_trio_web(tmp_path: Path) -> None:
    database = tmp_path / "kv.db"
    with serving("trio_web.py", tmp_path, "--database", str(database)) as server:
        base = server.base
        assert http("GET", base + "/health") == (200, {"status": "ok"})
        assert http("PUT", base + "/items/greeting", "hello") == (
            200,
            {"key": "greeting", "value": "hello"},
        )
        assert http("GET", base + "/items/greeting") == (
            200,
            {"key": "greeting", "value": "hello", "hits": 0},
        )
        assert http("GET", base + "/items/missing") == (
            404,
            {"detail": "item 'missing' not found"},
        )
        assert http("POST", base + "/items/missing/hit")[0] == 404
        assert http("PUT", base + "/items/bad", raw=b"{not json")[0] == 422

        with ThreadPoolExecutor(max_workers=8) as executor:
            hits = list(
                executor.map(lambda _: http("POST", base + "/items/greeting/hit")[0], range(40))
            )
        assert set(hits) == {200}
        assert http("GET", base + "/items/greeting")[1]["hits"] == 40

        assert http("DELETE", base + "/items/greeting") == (204, None)
        assert http("DELETE", base + "/items/greeting")[0] == 404

        output = server.stop()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
    assert re.search(r"listening on http://127\.0\.0\.1:\d+", output), output
    # The pool closed only after the server's nursery had ended.
    assert output.index("received SIGINT") < output.index("pool closed")
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def run_example(example: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / example), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_trio_workers(tmp_path: Path) -> None:
    database = str(tmp_path / "reports.db")
    result = run_example(
        "trio_workers.py", "--workers", "3", "--deadline", "0.2", "--database", database
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    cancelled = re.findall(
        r"'(slow: [^']+)' cancelled at its 0\.2 s deadline \(gave way after ([\d.]+) s\)", out
    )
    assert sorted(name for name, _ in cancelled) == ["slow: cross join", "slow: runaway recursion"]
    for _, after in cancelled:
        assert 0.19 <= float(after) < 1.0  # interrupted at the deadline, not run to the end
    assert "'orders' = 2000" in out
    assert "done: 6 ok, 2 cancelled, 2 interrupted in SQLite; readers idle 3/3" in out
    assert "orders still readable: 2000" in out


def test_job_worker_writes_every_event_in_batches(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    result = run_example(
        "job_worker.py",
        "--events", "3000",
        "--producers", "3",
        "--batch-size", "100",
        "--database", str(database),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"produced 3000 events; wrote 3000 in \d+ batches", result.stdout)
    with closing(sqlite3.connect(database)) as conn:
        count, distinct, low, high = conn.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events"
        ).fetchone()
        assert (count, distinct, low, high) == (3000, 3000, 1, 3000)
        batches, total, largest = conn.execute(
            "SELECT count(*), sum(size), max(size) FROM batches"
        ).fetchone()
        assert total == 3000
        assert largest <= 100
        assert 30 <= batches < 3000  # written in batches, not one transaction per event
        orphans = conn.execute(
            "SELECT count(*) FROM events WHERE batch_id NOT IN (SELECT id FROM batches)"
        ).fetchone()
        assert orphans == (0,)
        sizes = conn.execute(
            "SELECT b.size, count(e.id) FROM batches b JOIN events e ON e.batch_id = b.id "
            "GROUP BY b.id"
        ).fetchall()
        assert all(size == rows for size, rows in sizes)


def test_job_worker_flushes_what_it_holds_on_sigint(tmp_path: Path) -> None:
    database = tmp_path / "jobs.db"
    log = tmp_path / "jobs.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "job_worker.py"), "--events", "100000000",
             "--database", str(database)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Ready once a first batch has been committed.
        deadline = time.monotonic() + READY_WITHIN
        while not _batches_written(database):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no batch written in time"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_WITHIN) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_WITHIN)
    output = log.read_text()
    assert "received SIGINT: stopping the producers" in output
    match = re.search(r"produced (\d+) events; wrote (\d+) in (\d+) batches", output)
    assert match, output
    with closing(sqlite3.connect(database)) as conn:
        stored, batched = conn.execute(
            "SELECT count(*), (SELECT sum(size) FROM batches) FROM events"
        ).fetchone()
    assert stored == batched == int(match[2]) > 0


def _batches_written(database: Path) -> bool:
    if not database.exists():
        return False
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
            return bool(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return False
