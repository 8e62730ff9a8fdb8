"""A plain threaded program with one leader-only job across all its copies.

Start it in two or three terminals (or on several hosts) against the same Redis::

    REDIS_URL=redis://localhost:6379/0 python examples/threads_worker.py

Every copy runs three worker threads that check ``election.is_leader``; exactly one copy runs
the leader-only job. Stop the leader (Ctrl-C, or ``kill`` for SIGTERM): it releases leadership
on the way out, and another copy takes over within milliseconds.

Options: ``--seconds N`` runs for N seconds and exits; ``--name NAME`` picks the election
(default ``LEADER_ELECTION_NAME``, else ``threads-worker-example``). The other
``LEADER_ELECTION_*`` variables set the timings (see docs/configuration.md).

The line ``threads_worker: leading, fencing token N`` is printed each time this copy starts to
lead.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType

from leaderelection import ElectionConfig
from leaderelection.sync import LeaderElection


def say(line: str) -> None:
    # One write per line: print() writes the text and the newline separately, and lines from
    # several threads would run together.
    print(f"threads_worker: {line}\n", end="", flush=True)


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT (Ctrl-C) and SIGTERM end the program through KeyboardInterrupt."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="exit after N seconds")
    parser.add_argument("--name", default=None, help="the election's name")
    args = parser.parse_args()

    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    name = args.name or os.environ.get("LEADER_ELECTION_NAME") or "threads-worker-example"
    election = LeaderElection(url, ElectionConfig.from_env(name=name))
    stopping = threading.Event()

    # --8<-- [start:threads]
    # Register before starting, so that a term won by the first attempt runs them too.
    @election.while_leader
    def leader_only_job(term_over: threading.Event) -> None:
        token = election.fencing_token  # this term's token: hand it to what the job writes to
        say(f"leading, fencing token {token}")
        ticks = 0
        while not term_over.wait(1.0):  # returns at once when the term ends
            ticks += 1
            say(f"leader-only job, tick {ticks}")

    @election.on_lose_leadership
    def term_ended() -> None:
        say("term ended")

    def worker(number: int) -> None:
        seen: bool | None = None
        while True:
            leading = election.is_leader  # never blocks
            if leading != seen:
                say(f"worker-{number} sees this process as {'leader' if leading else 'follower'}")
                seen = leading
            if stopping.wait(0.2):
                return
                # --8<-- [end:threads]

    # Also for SIGINT: a program started in the background by a shell script inherits it
    # ignored, and would then not stop on Ctrl-C.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with election:  # returns once the first attempt finished; leaving releases leadership
            role = "leader" if election.is_leader else "follower"
            say(f"started as {role} (instance {election.instance_id}, election {name})")
            workers = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3)]
            for thread in workers:
                thread.start()
            try:
                stopping.wait(args.seconds)
            finally:
                stopping.set()
                for thread in workers:
                    thread.join()
                say("stopping")
    except KeyboardInterrupt:
        say("interrupted")
    say("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
