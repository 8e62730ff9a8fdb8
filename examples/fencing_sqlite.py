"""Fencing tokens in a database: the late write of a leader that was replaced is rejected.

    REDIS_URL=redis://localhost:6379/0 python examples/fencing_sqlite.py

Two candidates, A and B, play the scenario that ``is_leader`` cannot handle, in one process:

1. A leads with fencing token t1 and writes.
2. A stalls in the middle of its work (a GC pause, SIGSTOP, a slow disk) after it has checked
   ``is_leader``. Its term ends meanwhile and B leads, with t2 > t1. Here, A's term is ended
   with ``resign()``, so that the scenario runs the same way every time.
3. B writes with t2.
4. A resumes and finishes its write with t1: the database rejects it, and B's data stays.
5. B keeps writing.

Every write is one SQLite transaction that first records the token in the ``fence`` table,
only if no higher token was recorded before, and then writes the data. ``--db PATH`` keeps the
database; by default it is a temporary file.

Environment:
    REDIS_URL: The Redis (or Valkey) URL, in any form the library takes (a cluster node's
        ``redis://``, ``redis+sentinel://...``); default ``redis://localhost:6379/0``.
    LEADER_ELECTION_*: The election's settings (``ElectionConfig.from_env``), for example
        ``LEADER_ELECTION_LOCK_TTL``. The election's name is ``--name``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from leaderelection import ElectionConfig, LeaderElection

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

# --8<-- [start:schema]
SCHEMA = """
CREATE TABLE IF NOT EXISTS fence (
    resource TEXT PRIMARY KEY,
    token    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account (
    id       TEXT PRIMARY KEY,
    balance  INTEGER NOT NULL,
    token    INTEGER NOT NULL  -- the fencing token of the write, for the record
);
"""
# --8<-- [end:schema]


class StaleLeaderError(Exception):
    """A write carried a fencing token lower than one the database has already seen."""


def create_schema(path: str | Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(path: str | Path) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed if the block succeeds, rolled back if it raises."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)  # we BEGIN ourselves
    try:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no writer can interleave
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


# --8<-- [start:fence]
def check_fence(conn: sqlite3.Connection, resource: str, token: int) -> None:
    """Inside a transaction: record ``token`` as the newest seen for ``resource``, or raise
    ``StaleLeaderError`` if a newer one was recorded. Equal tokens pass: one term writes often.
    """
    changed = conn.execute(
        """
        INSERT INTO fence (resource, token) VALUES (?, ?)
        ON CONFLICT (resource) DO UPDATE SET token = excluded.token
        WHERE excluded.token >= fence.token
        """,
        (resource, token),
    ).rowcount
    if changed == 0:
        (newest,) = conn.execute(
            "SELECT token FROM fence WHERE resource = ?", (resource,)
        ).fetchone()
        raise StaleLeaderError(
            f"fencing token {token} is stale: {resource!r} has seen {newest} from a newer leader"
        )


def set_balance(path: str | Path, token: int, account: str, balance: int) -> None:
    """The leader's write: the fence check and the data change commit together, or not at all."""
    with transaction(path) as conn:
        check_fence(conn, "accounts", token)
        conn.execute(
            """
            INSERT INTO account (id, balance, token) VALUES (?, ?, ?)
            ON CONFLICT (id) DO UPDATE SET balance = excluded.balance, token = excluded.token
            """,
            (account, balance, token),
        )
    # --8<-- [end:fence]


def read_account(path: str | Path, account: str) -> tuple[int, int] | None:
    """The account's ``(balance, token)``, or None."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT balance, token FROM account WHERE id = ?", (account,)).fetchone()
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    token_a: int
    token_b: int
    rejected: StaleLeaderError
    after_late_write: tuple[int, int] | None
    final: tuple[int, int] | None


async def scenario(url: str, config: ElectionConfig, db: str | Path) -> Outcome:
    """Play the scenario of the module docstring with two candidates of ``config``'s election."""
    create_schema(db)
    wait = config.lock_ttl.total_seconds() + 5  # covers restart protection on a new server
    async with LeaderElection(url, config) as a:
        await a.wait_until_leader(timeout=wait)
        # A's work starts: it reads the token once, for the whole piece of work.
        token_a = term_token(a)
        await asyncio.to_thread(set_balance, db, token_a, "alice", 100)
        print(f"A leads with token {token_a}; writes balance 100: accepted")

        # --8<-- [start:stall]
        async with LeaderElection(url, config) as b:
            # A stalls here, past its lease. Standing in for the stall: A's term ends, and B,
            # woken by the release, leads with a higher token.
            await a.resign()
            await b.wait_until_leader(timeout=wait)
            token_b = term_token(b)
            # --8<-- [end:stall]
            print(f"A stalls; its term ends; B leads with token {token_b}")
            await asyncio.to_thread(set_balance, db, token_b, "alice", 200)
            print(f"B writes balance 200 with token {token_b}: accepted")

            # A resumes and finishes the write it had started, with the token of its old term.
            try:
                await asyncio.to_thread(set_balance, db, token_a, "alice", 150)
            except StaleLeaderError as exc:
                rejected = exc
                print(f"A resumes and writes balance 150 with token {token_a}: rejected ({exc})")
            else:
                raise RuntimeError("the stale write was accepted")
            after_late_write = read_account(db, "alice")
            print(f"alice after A's late write: {after_late_write} (balance, token)")

            await asyncio.to_thread(set_balance, db, token_b, "alice", 250)
            final = read_account(db, "alice")
            print(f"B writes balance 250 with token {token_b}: accepted; alice: {final}")
    return Outcome(token_a, token_b, rejected, after_late_write, final)


def term_token(election: LeaderElection) -> int:
    """The current term's fencing token; raises if this instance does not lead (any more)."""
    token = election.fencing_token
    if token is None:
        raise RuntimeError(f"{election.instance_id} does not lead")
    return token


async def main(url: str, config: ElectionConfig, db: str | None) -> Outcome:
    if db is not None:
        return await scenario(url, config, db)
    with tempfile.TemporaryDirectory() as tmp:
        return await scenario(url, config, Path(tmp) / "fencing.sqlite3")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="recipes-fencing", help="the election's name")
    parser.add_argument("--db", help="the SQLite database file; default a temporary one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(main(REDIS_URL, ElectionConfig.from_env(name=args.name), args.db))
