"""A plain asyncio worker: run as many copies as you like, exactly one runs the singleton loop.

    REDIS_URL=redis://localhost:6379/0 python examples/async_worker.py

Start it in two terminals: one prints ``leading: fencing token N``, the other ``following: leader
is <id>``. Stop the leader with Ctrl-C (SIGINT) or SIGTERM: it releases leadership on the way out
and the other takes over within milliseconds. ``--seconds N`` stops it by itself after N seconds;
``--name NAME`` picks the election.

Environment:
    REDIS_URL: The Redis (or Valkey) URL, in any form the library takes (a cluster node's
        ``redis://``, ``redis+sentinel://...``); default ``redis://localhost:6379/0``.
    WORK_INTERVAL: Seconds between two rounds of the singleton loop; default 1.
    LEADER_ELECTION_*: The election's settings (``ElectionConfig.from_env``), e.g.
        ``LEADER_ELECTION_LOCK_TTL``; ``LEADER_ELECTION_NAME`` is the default of ``--name``
        (else ``example-worker``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from leaderelection import ElectionConfig, LeaderElection

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
WORK_INTERVAL = float(os.environ.get("WORK_INTERVAL", "1"))


def say(line: str) -> None:
    print(line, flush=True)


async def main(name: str, seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    config = ElectionConfig.from_env(name=name)
    async with LeaderElection(REDIS_URL, config) as election:
        say(f"started: instance {election.instance_id}, election {config.name}")

        @election.while_leader  # runs for every term this instance wins, cancelled when it ends
        async def singleton() -> None:
            token = election.fencing_token
            say(f"leading: fencing token {token}")
            rounds = 0
            while True:
                rounds += 1
                # The real work goes here; pass `token` to what it writes to.
                logging.getLogger("examples.async_worker").info("round %d", rounds)
                await asyncio.sleep(WORK_INTERVAL)

        async def report_leader() -> None:
            async for change in election.changes():  # the current leader, then every change
                if change.leader is None:
                    say("following: no leader right now")
                elif change.leader.instance_id != election.instance_id:
                    say(f"following: leader is {change.leader.instance_id}")

        reporter = asyncio.create_task(report_leader())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        say("stopping: releasing leadership" if election.is_leader else "stopping")
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    say("stopped")  # leaving `async with` released the lock: a follower, if any, leads already


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A leader-elected asyncio worker.")
    parser.add_argument(
        "--name",
        default=os.environ.get("LEADER_ELECTION_NAME", "example-worker"),
        help="the election's name; default LEADER_ELECTION_NAME, else example-worker",
    )
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(main(args.name, args.seconds))
