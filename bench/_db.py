"""The benchmark's database: its schema, how it is built, and the statements every
contender runs, word for word.

Sizes scale with ``--scale``; at 1.0 the database holds 2,000 users, 20,000 posts,
100,000 comments, 200,000 likes and 1,000 accounts (about 19 MB). It is built once per
run of the benchmark, then copied afresh for every measurement.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from litepool import DEFAULT_PRAGMAS

#: Every contender's connections get these pragmas: litepool's defaults, minus
#: ``journal_mode``, which is persistent: the database is switched to WAL when it is
#: built, so every copy is already in WAL mode.
PRAGMAS: Final[Mapping[str, int | str]] = {
    name: value for name, value in DEFAULT_PRAGMAS.items() if name != "journal_mode"
}

#: The same pragmas as one script, for drivers that can run a script in one call.
PRAGMA_SCRIPT: Final = "".join(f"PRAGMA {name}={value};" for name, value in PRAGMAS.items())

OPENING_BALANCE: Final = 1_000
MAX_AMOUNT: Final = 50
EPOCH: Final = 1_700_000_000

# -- the statements -----------------------------------------------------------------------

#: Point read: one user by primary key.
POINT_READ: Final = "SELECT id, name, email, created FROM users WHERE id = ?"

#: Heavy read: one user's posts with their comment and like counts (four tables, two
#: COUNT(DISTINCT) aggregations over the joined rows, GROUP BY, ORDER BY).
HEAVY_READ: Final = """\
SELECT p.id, p.title, u.name,
       COUNT(DISTINCT c.id) AS comment_count,
       COUNT(DISTINCT l.id) AS like_count
FROM posts AS p
JOIN users AS u ON u.id = p.user_id
LEFT JOIN comments AS c ON c.post_id = p.id
LEFT JOIN likes AS l ON l.post_id = p.id
WHERE p.user_id = ?
GROUP BY p.id, p.title, u.name
ORDER BY like_count DESC, p.id
LIMIT 10"""

#: Small write: one comment.
INSERT_COMMENT: Final = "INSERT INTO comments (post_id, user_id, body, created) VALUES (?, ?, ?, ?)"

#: Transfers: read a balance, write a balance.
READ_BALANCE: Final = "SELECT balance FROM accounts WHERE id = ?"
WRITE_BALANCE: Final = "UPDATE accounts SET balance = ? WHERE id = ?"
TOTAL: Final = "SELECT sum(balance) FROM accounts"

COMMENT_BODY: Final = "a comment written by the benchmark, " * 3

SCHEMA: Final = """\
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE posts (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY,
    post_id INTEGER NOT NULL REFERENCES posts (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    body TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE likes (
    id INTEGER PRIMARY KEY,
    post_id INTEGER NOT NULL REFERENCES posts (id),
    user_id INTEGER NOT NULL REFERENCES users (id),
    created INTEGER NOT NULL
);
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    balance INTEGER NOT NULL
);
CREATE INDEX posts_by_user ON posts (user_id);
CREATE INDEX comments_by_post ON comments (post_id);
CREATE INDEX likes_by_post ON likes (post_id);
"""


@dataclass(frozen=True, slots=True)
class Sizes:
    """Row counts of the benchmark database."""

    users: int
    posts: int
    comments: int
    likes: int
    accounts: int

    @classmethod
    def for_scale(cls, scale: float) -> Sizes:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        users = max(20, round(2_000 * scale))
        posts = users * 10
        return cls(
            users=users,
            posts=posts,
            comments=posts * 5,
            likes=posts * 10,
            accounts=max(50, min(1_000, round(1_000 * scale))),
        )

    @property
    def opening_total(self) -> int:
        return self.accounts * OPENING_BALANCE

    def describe(self) -> str:
        return (
            f"{self.users:,} users, {self.posts:,} posts, {self.comments:,} comments, "
            f"{self.likes:,} likes, {self.accounts:,} accounts"
        )


def build(path: str, sizes: Sizes, seed: int = 20_240_601) -> None:
    """Create the database at ``path`` (which must not exist), in WAL mode."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=wal").fetchall()
        conn.execute("PRAGMA synchronous=off")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (id, name, email, created) VALUES (?, ?, ?, ?)",
            (
                (key, f"user {key}", f"user{key}@example.com", EPOCH + key)
                for key in range(1, sizes.users + 1)
            ),
        )
        # Post ``key`` belongs to user ``(key - 1) % users + 1``: every user has the same
        # number of posts, so every heavy read does the same amount of work on average.
        conn.executemany(
            "INSERT INTO posts (id, user_id, title, body, created) VALUES (?, ?, ?, ?, ?)",
            (
                (key, (key - 1) % sizes.users + 1, f"post {key}", "lorem ipsum " * 8, EPOCH + key)
                for key in range(1, sizes.posts + 1)
            ),
        )
        conn.executemany(
            INSERT_COMMENT,
            (
                (
                    rng.randint(1, sizes.posts),
                    rng.randint(1, sizes.users),
                    COMMENT_BODY,
                    EPOCH + key,
                )
                for key in range(sizes.comments)
            ),
        )
        conn.executemany(
            "INSERT INTO likes (post_id, user_id, created) VALUES (?, ?, ?)",
            (
                (rng.randint(1, sizes.posts), rng.randint(1, sizes.users), EPOCH + key)
                for key in range(sizes.likes)
            ),
        )
        conn.executemany(
            "INSERT INTO accounts (id, balance) VALUES (?, ?)",
            ((key, OPENING_BALANCE) for key in range(1, sizes.accounts + 1)),
        )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def copy(template: str, path: str) -> None:
    """A fresh copy of the database at ``template`` (closed, so fully checkpointed)."""
    remove(path)
    shutil.copyfile(template, path)


def remove(path: str) -> None:
    """Remove a database file and its WAL and shared-memory files, if present."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def apply_pragmas(conn: sqlite3.Connection) -> None:
    """Set :data:`PRAGMAS` on a plain :mod:`sqlite3` connection."""
    conn.executescript(PRAGMA_SCRIPT)


def total_balance(path: str) -> int:
    """The sum of all balances, read with a plain connection of its own."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (total,) = conn.execute(TOTAL).fetchone()
    finally:
        conn.close()
    return int(total)
