"""Metrics aggregation: every instance records, only the leader aggregates.

    REDIS_URL=redis://localhost:6379/0 python examples/metrics_aggregation.py --seconds 20

Every instance counts its (simulated) requests in a Redis hash. The leader runs a
``while_leader`` loop that sums them up every ``--interval`` seconds and stores the summary;
the loop starts with each term and is cancelled when the term ends. Every instance also calls
``rebuild_report()`` now and then: it is decorated with ``leader_only``, so on a follower the
call returns None at once and the expensive work is skipped. Start a second instance in another
terminal and stop the first: the second's loop starts when it takes over.

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
import itertools
import json
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from leaderelection import ElectionConfig, LeaderElection, leader_only

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


async def record_requests(store: Redis, prefix: str, instance_id: str, count: int) -> None:
    """What every instance does: count its own requests."""
    await store.hincrby(f"{prefix}:requests", instance_id, count)


async def aggregate(store: Redis, prefix: str, *, by: str, fencing_token: int) -> dict[str, Any]:
    """Sum every instance's counters into one summary, stored with the term's fencing token."""
    counts = await store.hgetall(f"{prefix}:requests")
    summary = {
        "total": sum(int(n) for n in counts.values()),
        "instances": len(counts),
        "by": by,
        "fencing_token": fencing_token,
    }
    await store.set(f"{prefix}:summary", json.dumps(summary))
    return summary


@dataclass
class LoopState:
    """What the aggregation loop is doing, for the printout (and the tests)."""

    running: bool = False
    rounds: int = 0


def aggregate_while_leading(
    election: LeaderElection, store: Redis, prefix: str, *, interval: float
) -> LoopState:
    """Register the aggregation loop: it runs for the length of every term of this instance."""
    state = LoopState()

    # --8<-- [start:aggregation-loop]
    @election.while_leader
    async def aggregation_loop() -> None:
        token = election.fencing_token  # this term's token, read once
        if token is None:  # the term already ended
            return
        me = election.instance_id
        state.running = True
        print(f"{me}: leading (fencing token {token}): aggregating every {interval}s", flush=True)
        try:
            while True:
                summary = await aggregate(store, prefix, by=me, fencing_token=token)
                state.rounds += 1
                total, instances = summary["total"], summary["instances"]
                print(
                    f"{me}: aggregated {total} requests (instances reporting: {instances})",
                    flush=True,
                )
                await asyncio.sleep(interval)
        finally:  # the end of the term cancels the loop at an await, before the lose callbacks
            state.running = False
            print(f"{me}: aggregation loop stopped after {state.rounds} rounds", flush=True)
            # --8<-- [end:aggregation-loop]

    return state


def make_rebuild_report(
    election: LeaderElection, store: Redis, prefix: str
) -> Callable[[], Awaitable[dict[str, int] | None]]:
    """``rebuild_report()``: the full report on the leader; None, at once, elsewhere.

    ``store`` decodes responses (``decode_responses=True``).
    """

    # --8<-- [start:report]
    @leader_only(election, pass_token=True)
    async def rebuild_report(*, fencing_token: int) -> dict[str, int]:
        # The expensive part: read everything, sort, store. Only the leader gets here.
        counts = await store.hgetall(f"{prefix}:requests")
        report = dict(sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: -kv[1]))
        record = {"fencing_token": fencing_token, "requests": report}
        await store.set(f"{prefix}:report", json.dumps(record))
        return report
        # --8<-- [end:report]

    return rebuild_report


async def serve(
    url: str, config: ElectionConfig, *, seconds: float | None, interval: float, prefix: str
) -> None:
    """Campaign for ``seconds``, recording requests; aggregate while this instance leads."""
    store = Redis.from_url(url, decode_responses=True)  # the application's client, for its data
    try:
        election = LeaderElection(url, config)
        me = election.instance_id
        aggregate_while_leading(election, store, prefix, interval=interval)
        rebuild_report = make_rebuild_report(election, store, prefix)

        async def handle_requests() -> None:  # every instance, leader or not
            for n in itertools.count(1):
                await record_requests(store, prefix, me, random.randint(1, 10))
                if n % 10 == 0:
                    report = await rebuild_report()
                    outcome = f"{len(report)} instances" if report is not None else "skipped"
                    print(f"{me}: rebuild_report(): {outcome}", flush=True)
                await asyncio.sleep(0.5)

        async with election:
            if not election.is_leader:
                print(f"{me}: following", flush=True)
            requests = asyncio.create_task(handle_requests())
            try:
                await stopped(seconds)
            finally:
                requests.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await requests
        print(f"{me}: stopped", flush=True)
    finally:
        await store.aclose()


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
    parser.add_argument("--name", default="recipes-metrics", help="the election's name")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--prefix", default="recipes:metrics", help="the metrics' key prefix")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(
        serve(
            REDIS_URL,
            ElectionConfig.from_env(name=args.name),
            seconds=args.seconds,
            interval=args.interval,
            prefix=args.prefix,
        )
    )
