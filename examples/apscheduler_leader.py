"""APScheduler 3 jobs that run on the leader only: a new scheduler for every term.

    REDIS_URL=redis://localhost:6379/0 python examples/apscheduler_leader.py --seconds 20

Start it in two terminals. The leader prints ``scheduler started`` and then a line for every
run of the job; the other instance prints nothing more until it leads. Stop the leader (Ctrl-C,
SIGTERM, or the end of ``--seconds``): its scheduler shuts down, it releases leadership, and the
other instance starts a scheduler of its own within milliseconds.

Needs APScheduler 3 (``pip install "apscheduler>=3.10,<4"``).

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
import signal
from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from leaderelection import ElectionConfig, LeaderElection, leader_only

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")


# --8<-- [start:scheduler-per-term]
def run_scheduler_while_leading(
    election: LeaderElection, make_scheduler: Callable[[int], AsyncIOScheduler]
) -> None:
    """Start a new scheduler when a term starts, and shut it down when the term ends.

    ``make_scheduler(fencing_token)`` returns a scheduler with its jobs added, not started.
    """
    scheduler: AsyncIOScheduler | None = None

    @election.on_become_leader
    def start_scheduler() -> None:
        nonlocal scheduler
        token = election.fencing_token
        if token is None:  # the term ended before this callback ran
            return
        scheduler = make_scheduler(token)
        scheduler.start()  # callbacks run in the event loop, which the scheduler uses

    @election.on_lose_leadership
    def stop_scheduler() -> None:
        nonlocal scheduler
        if scheduler is not None:
            # A shut-down APScheduler 3 scheduler is not restarted: the next term makes a new
            # one. wait=False: coroutine jobs still running are cancelled. The shutdown takes
            # effect at the event loop's next iteration.
            scheduler.shutdown(wait=False)
            scheduler = None
            # --8<-- [end:scheduler-per-term]


async def report(*, instance_id: str, fencing_token: int) -> None:
    """The job. Pass the fencing token to whatever a real job writes to."""
    say(f"{instance_id}: job ran, fencing token {fencing_token}")


# --8<-- [start:job-factory]
def job_scheduler(election: LeaderElection, interval: float) -> Callable[[int], AsyncIOScheduler]:
    """A factory of schedulers that run :func:`report` every ``interval`` seconds."""

    def make_scheduler(fencing_token: int) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            # The scheduler shuts down in the lose callback, a moment after the term ended:
            # leader_only skips a run that starts in between.
            leader_only(election)(report),
            "interval",
            seconds=interval,
            kwargs={"instance_id": election.instance_id, "fencing_token": fencing_token},
            id="report",
        )
        return scheduler

    return make_scheduler
    # --8<-- [end:job-factory]


async def serve(
    url: str, config: ElectionConfig, *, seconds: float | None, interval: float
) -> None:
    """Campaign for ``seconds``, with the scheduler running while this instance leads."""
    election = LeaderElection(url, config)
    me = election.instance_id
    # Register before entering, so that a term won on entry finds everything in place.
    run_scheduler_while_leading(election, job_scheduler(election, interval))
    # Callbacks run in registration order: these two run after the scheduler's own.
    election.on_become_leader(
        lambda: say(f"{me}: leading with fencing token {election.fencing_token}, scheduler started")
    )
    election.on_lose_leadership(lambda: say(f"{me}: no longer leading, scheduler shut down"))

    async with election:
        if not election.is_leader:
            say(f"{me}: following; the jobs run on the leader")
        await stopped(seconds)
    say(f"{me}: stopped")


def say(line: str) -> None:
    print(line, flush=True)


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
    parser.add_argument("--name", default="recipes-apscheduler", help="the election's name")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between job runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(
        serve(
            REDIS_URL,
            ElectionConfig.from_env(name=args.name),
            seconds=args.seconds,
            interval=args.interval,
        )
    )
