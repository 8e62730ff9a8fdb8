"""A candidate in its own process, for fault tests:
``python candidate.py URL NAME ID TTL HEARTBEAT RETRY [MIN_REPLICAS]``.

It campaigns and prints one JSON line per event on stdout, flushed at once, with
``time.monotonic()`` timestamps (one clock for every process on a Linux machine):

* ``{"event": "ready", "leader": bool}`` once ``start()`` returned;
* ``{"event": "became", "t": ..., "token": ..., "until": ...}`` when a term starts;
* ``{"event": "lease", "until": ...}`` whenever a renewal moved the local lease deadline;
* ``{"event": "lost", "t": ..., "reason": ...}`` when a term ends;
* ``{"event": "stopped"}`` after ``stop()``.

``until`` is the monotonic time at which ``is_leader`` turns False unless renewed: it is read from
the core the moment the core moves it, so a process paused right after a renewal still reports
the true end of its leadership. Commands on stdin: ``resign``, ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from leaderelection import ElectionConfig, LeaderElection
from leaderelection._core import BecameLeader, LostLeadership


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def record_transitions(election: LeaderElection) -> None:
    """Print every transition the moment the core decides it (the campaign applies it)."""
    campaign = election._campaign
    original_apply = campaign.apply

    def apply(transitions: list[Any]) -> None:
        for transition in transitions:
            if isinstance(transition, BecameLeader):
                emit(
                    event="became",
                    t=time.monotonic(),
                    token=transition.term.fencing_token,
                    until=campaign.core.lease_deadline,
                )
            elif isinstance(transition, LostLeadership):
                emit(event="lost", t=time.monotonic(), reason=transition.reason.value)
        original_apply(transitions)

    campaign.apply = apply  # type: ignore[method-assign]


async def main(argv: list[str]) -> None:
    url, name, instance_id, ttl, heartbeat, retry, *rest = argv
    replicas = rest[0] if rest else "0"
    config = ElectionConfig(
        name=name,
        instance_id=instance_id,
        lock_ttl=ttl,
        heartbeat_interval=heartbeat,
        retry_interval=retry,
        min_replicas=int(replicas),
    )
    election = LeaderElection(url, config)
    record_transitions(election)
    core = election._campaign.core
    original_renewed = core.renewed

    def renewed(**kwargs: Any) -> Any:
        out = original_renewed(**kwargs)
        if not out:
            emit(event="lease", until=core.lease_deadline)
        return out

    core.renewed = renewed  # type: ignore[method-assign]
    await election.start()
    emit(event="ready", leader=election.is_leader)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "resign":
            await election.resign()
            emit(event="resigned", t=time.monotonic())
        elif line == "stop":
            break
    await election.stop()
    emit(event="stopped", t=time.monotonic())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:8]))
