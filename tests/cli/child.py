"""The command that ``leaderelection run`` starts in these tests: it reports its life on stdout.

``python child.py [--ignore-term | --linger SECONDS] [--exit CODE | --exit SIGNAME]``

One JSON line per event, flushed at once, with ``time.monotonic()`` timestamps (one clock for
every process on a Linux machine):

* ``{"event": "start", "t", "pid", "token", "instance_id", "name"}``: the environment that
  ``run`` passed (``LEADER_ELECTION_FENCING_TOKEN``, ``..._INSTANCE_ID``, ``..._NAME``);
* ``{"event": "sigterm", "t"}`` / ``{"event": "sigint", "t"}``: a signal arrived;
* ``{"event": "exit", "t"}``: right before it exits after a signal.

On SIGTERM or SIGINT it exits with status 0, unless ``--ignore-term`` makes it carry on (until
SIGKILL); ``--linger SECONDS`` makes it take that long to exit (a command that cleans up).
``--exit CODE`` exits at once with CODE; ``--exit SIGUSR1`` kills itself with it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps({**fields, "t": time.monotonic()}) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    ignore = "--ignore-term" in argv
    linger = float(argv[argv.index("--linger") + 1]) if "--linger" in argv else 0.0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        emit(event=signal.Signals(signum).name.lower())
        if not ignore:
            time.sleep(linger)
            emit(event="exit")
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emit(
        event="start",
        pid=os.getpid(),
        token=int(os.environ["LEADER_ELECTION_FENCING_TOKEN"]),
        instance_id=os.environ["LEADER_ELECTION_INSTANCE_ID"],
        name=os.environ["LEADER_ELECTION_NAME"],
    )
    if "--exit" in argv:
        how = argv[argv.index("--exit") + 1]
        if how.startswith("SIG"):
            os.kill(os.getpid(), signal.Signals[how])
        return int(how)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
