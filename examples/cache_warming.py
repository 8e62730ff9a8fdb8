"""Cache warming: the leader fills the shared cache once at the start of each of its terms.

    REDIS_URL=redis://localhost:6379/0 python examples/cache_warming.py --seconds 20

The ``on_become_leader`` callback writes the hot keys into Redis, slowly, as a real warm-up
that reads a database would. While it runs, the heartbeats go on (the callbacks run in a task
of their own): the instance prints how many renewals happened during the warm-up, and that it
still leads. Start a second instance in another terminal, then stop the first: the second warms
the cache when it takes over, with its own fencing token.

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
import json
import logging
import os
import signal
import time
from collections.abc import Callable

from redis.asyncio import Redis

from leaderelection import ElectionConfig, LeaderElection

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


async def warm_cache(
    cache: Redis,
    prefix: str,
    *,
    keys: int,
    batch: int,
    batch_delay: float,
    go_on: Callable[[], bool] = lambda: True,
) -> int:
    """Write ``keys`` entries, ``batch`` at a time, while ``go_on()``; returns how many were
    written. Each batch first waits ``batch_delay`` seconds, standing in for the database read
    of a real warm-up."""
    for start in range(0, keys, batch):
        await asyncio.sleep(batch_delay)  # reading the batch from the database
        if not go_on():
            return start
        async with cache.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + batch, keys)):
                pipe.set(f"{prefix}:item:{i}", f"value {i}", ex=3600)
            await pipe.execute()
    return keys


def warm_on_every_term(
    election: LeaderElection,
    cache: Redis,
    prefix: str,
    *,
    keys: int = 1000,
    batch: int = 100,
    batch_delay: float = 0.4,
) -> None:
    """Register the warm-up: it runs once at the start of every term this instance wins."""

    # --8<-- [start:warm]
    @election.on_become_leader
    async def warm() -> None:
        token = election.fencing_token
        if token is None:  # the term ended before this callback ran
            return
        me = election.instance_id
        renewals, started = election.statistics().renewals, time.monotonic()
        count = await warm_cache(
            cache,
            prefix,
            keys=keys,
            batch=batch,
            batch_delay=batch_delay,
            # The term can end while this runs, and nothing cancels a callback: stop by itself.
            go_on=lambda: election.fencing_token == token,
        )
        if count < keys:
            print(f"{me}: stopped warming after {count} keys: the term ended", flush=True)
            return
            # --8<-- [end:warm]
        # Who warmed the cache, and in which term: for operators (and the tests).
        record = {"instance_id": me, "fencing_token": token, "keys": count}
        await cache.set(f"{prefix}:warmed", json.dumps(record))
        await cache.hincrby(f"{prefix}:warm-runs", me, 1)
        heartbeats = election.statistics().renewals - renewals
        print(
            f"{me}: warmed {count} keys in {time.monotonic() - started:.1f}s "
            f"(fencing token {token}); lease renewals meanwhile: {heartbeats}; "
            f"still leading: {election.is_leader}",
            flush=True,
        )


async def serve(
    url: str, config: ElectionConfig, *, seconds: float | None, prefix: str, batch_delay: float
) -> None:
    """Campaign for ``seconds``, warming the cache at the start of every term."""
    cache = Redis.from_url(url)  # the application's own client, for its data
    try:
        election = LeaderElection(url, config)
        me = election.instance_id
        election.on_become_leader(  # registered first: runs before the warm-up
            lambda: print(f"{me}: leading, warming the cache", flush=True)
        )
        warm_on_every_term(election, cache, prefix, batch_delay=batch_delay)
        election.on_lose_leadership(lambda: print(f"{me}: no longer leading", flush=True))
        async with election:
            if not election.is_leader:
                print(f"{me}: following", flush=True)
            await stopped(seconds)
        print(f"{me}: stopped", flush=True)
    finally:
        await cache.aclose()


async def stopped(seconds: float | None) -> None:
    """Return after ``seconds``, or at SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="recipes-cache", help="the election's name")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--prefix", default="recipes:cache", help="the cache's key prefix")
    parser.add_argument(
        "--batch-delay",
        type=float,
        default=0.4,
        help="seconds between batches of 100 keys (1000 keys in all); default 0.4",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(
        serve(
            REDIS_URL,
            ElectionConfig.from_env(name=args.name),
            seconds=args.seconds,
            prefix=args.prefix,
            batch_delay=args.batch_delay,
        )
    )
