"""Database migrations at start-up: one instance migrates, the others skip, then all serve.

    REDIS_URL=redis://localhost:6379/0 python examples/migrations_at_startup.py

Each instance campaigns in an election of its own, ``recipes-migrations``, and waits a bounded
time to lead it. The one that leads applies the migrations that are missing from the SQLite
database's ``schema_version`` table, one transaction per migration, and then leaves the
election. An instance that does not get to lead in time skips them. Every instance then waits
until the schema has the version its code needs, and only then serves.

Start three at once to see one migrate and the others skip (or, if they lead after it, find
nothing left to do); run it again to see that nothing is applied twice::

    for i in 1 2 3; do python examples/migrations_at_startup.py & done; wait

Environment:
    REDIS_URL: The Redis (or Valkey) URL, in any form the library takes (a cluster node's
        ``redis://``, ``redis+sentinel://...``); default ``redis://localhost:6379/0``.
    LEADER_ELECTION_*: The election's settings (``ElectionConfig.from_env``), for example
        ``LEADER_ELECTION_LOCK_TTL``. The election's name is ``--name``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from leaderelection import ElectionConfig, LeaderElection

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
DEFAULT_DB = Path(tempfile.gettempdir()) / "leaderelection-recipes-migrations.sqlite3"

# (version, SQL): applied in order, each once. SQLite runs DDL inside transactions.
MIGRATIONS: Sequence[tuple[int, str]] = (
    (1, "CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"),
    (2, "ALTER TABLE customer ADD COLUMN email TEXT"),
    (3, "CREATE UNIQUE INDEX customer_email ON customer (email)"),
)
REQUIRED_VERSION = MIGRATIONS[-1][0]  # the schema this version of the code needs

SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version       INTEGER PRIMARY KEY,
    applied_by    TEXT NOT NULL,
    fencing_token INTEGER NOT NULL
)
"""


def current_version(conn: sqlite3.Connection) -> int:
    """The schema's version: the highest applied migration, 0 for a new database."""
    table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    if conn.execute(table).fetchone() is None:
        return 0
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def apply_migration(
    db: str | Path, version: int, sql: str, *, applied_by: str, fencing_token: int
) -> bool:
    """Apply one migration in one transaction, unless it is applied already. True if applied.

    The version check inside the transaction makes a second run harmless whoever runs it; the
    election only makes sure that one instance does the work and the others do not wait on it.
    """
    # --8<-- [start:transaction]
    conn = sqlite3.connect(db, isolation_level=None, timeout=30)  # we BEGIN ourselves
    try:
        conn.execute("BEGIN IMMEDIATE")  # the write lock: a concurrent migrator waits here
        try:
            conn.execute(SCHEMA_VERSION_TABLE)
            if current_version(conn) >= version:
                conn.execute("ROLLBACK")
                return False
            conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version (version, applied_by, fencing_token) VALUES (?, ?, ?)",
                (version, applied_by, fencing_token),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return True
    finally:
        conn.close()
        # --8<-- [end:transaction]


# --8<-- [start:migrate]
async def migrate_at_startup(
    election: LeaderElection,
    db: str | Path,
    *,
    timeout: float,
    migrations: Sequence[tuple[int, str]] = MIGRATIONS,
    slow: float = 0.0,
) -> list[int] | None:
    """Run ``election`` (not started yet) and apply the missing migrations if this instance
    leads it within ``timeout`` seconds. Returns the versions applied, or None if it skipped.

    ``slow``: seconds to wait before each migration, to play a long one.
    """
    me = election.instance_id
    async with election:
        try:
            await election.wait_until_leader(timeout=timeout)
        except TimeoutError:
            leader = election.statistics().leader_id or "another instance"
            print(f"{me}: skipping migrations, {leader} runs them", flush=True)
            return None
        token = election.fencing_token
        applied: list[int] = []
        for version, sql in migrations:
            if token is None or election.fencing_token != token:
                # The term ended (Redis unreachable for too long, say): stop here. The next
                # leader applies what is left; the version check makes that safe.
                print(f"{me}: lost the lead after {applied}; the next leader goes on", flush=True)
                break
            await asyncio.sleep(slow)
            if await asyncio.to_thread(
                apply_migration, db, version, sql, applied_by=me, fencing_token=token
            ):
                applied.append(version)
        if applied:
            print(f"{me}: applied migrations {applied} (fencing token {token})", flush=True)
        else:
            print(f"{me}: led the migrations election; nothing left to apply", flush=True)
        # Leaving the block releases the election: an instance still waiting leads it at
        # once, finds nothing left to apply, and leaves it in turn.
        return applied
    # --8<-- [end:migrate]


async def wait_for_schema(db: str | Path, version: int, *, timeout: float) -> None:
    """Wait until the schema is at ``version`` or later; raise TimeoutError after ``timeout``."""

    def read() -> int:
        conn = sqlite3.connect(db, timeout=30)
        try:
            return current_version(conn)
        finally:
            conn.close()

    async with asyncio.timeout(timeout):
        # Another process migrates: there is no event to wait on, only the database to read.
        while await asyncio.to_thread(read) < version:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def start_instance(
    url: str,
    config: ElectionConfig,
    db: str | Path,
    *,
    timeout: float,
    schema_timeout: float,
    slow: float = 0.0,
) -> list[int] | None:
    """What an instance does at start-up, before it serves."""
    started = time.monotonic()
    # --8<-- [start:startup]
    election = LeaderElection(url, config)
    applied = await migrate_at_startup(election, db, timeout=timeout, slow=slow)
    await wait_for_schema(db, REQUIRED_VERSION, timeout=schema_timeout)
    # --8<-- [end:startup]
    elapsed = time.monotonic() - started
    print(
        f"{election.instance_id}: schema at version {REQUIRED_VERSION} after {elapsed:.2f}s: "
        "serving",
        flush=True,
    )
    return applied


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="recipes-migrations", help="the election's name")
    parser.add_argument("--db", default=str(DEFAULT_DB), help=f"the database; default {DEFAULT_DB}")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait to lead before skipping"
    )
    parser.add_argument(
        "--schema-timeout", type=float, default=60.0, help="seconds to wait for the schema"
    )
    parser.add_argument(
        "--slow", type=float, default=0.0, help="seconds each migration takes, to play long ones"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(
        start_instance(
            REDIS_URL,
            ElectionConfig.from_env(name=args.name),
            args.db,
            timeout=args.timeout,
            schema_timeout=args.schema_timeout,
            slow=args.slow,
        )
    )
