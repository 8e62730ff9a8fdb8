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
the true end of its leadership. Commands on stdin: ``resign``, ``stop``, and fenced writes:

* ``fence-set KEY VALUE``: a fence of the current term sets KEY, then prints
  ``{"event": "fenced", "written": bool, "token": ..., "local": bool}`` (``local``: whether the
  fence's local check passed);
* ``pause-then-fence-set KEY VALUE``: the same, but once the fence's local check has passed the
  process prints ``{"event": "pausing", "token": ...}`` and stops itself (SIGSTOP) before the
  write leaves it: a leader paused in the middle of a write. After SIGCONT it sends the write.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from leaderelection import ElectionConfig, Fence, LeaderElection
from leaderelection._core import BecameLeader, LostLeadership, Phase
from leaderelection._store import FencedWrite


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


class PausingWriter:
    """A fence's writer that stops the process after the local check, before the write."""

    def __init__(self, writer: Any, token: int) -> None:
        self._writer = writer
        self._token = token

    async def fenced_write(self, write: FencedWrite, **options: Any) -> tuple[bool, Any]:
        emit(event="pausing", t=time.monotonic(), token=self._token)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns after SIGCONT
        written: tuple[bool, Any] = await self._writer.fenced_write(write, **options)
        return written


async def fenced_set(election: LeaderElection, key: str, value: str, *, pause: bool) -> None:
    fence: Fence = election.fence()
    local = fence.is_current
    if pause:
        fence._writer = PausingWriter(fence._writer, fence.token)
    written = await fence.set(key, value)
    emit(event="fenced", t=time.monotonic(), written=written, token=fence.token, local=local)


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
    campaign = election._campaign
    core = campaign.core
    original_renew = campaign._renew

    async def renew(store: Any, token: str) -> None:
        # A renewal that kept the term (the core has slots: its methods cannot be patched on
        # the instance).
        before = core.lease_deadline
        await original_renew(store, token)
        if core.lease_deadline != before and core.phase is Phase.LEADER:
            emit(event="lease", until=core.lease_deadline)

    campaign._renew = renew  # type: ignore[method-assign]
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
        elif line.startswith(("fence-set ", "pause-then-fence-set ")):
            command, key, value = line.split(" ", 2)
            await fenced_set(election, key, value, pause=command.startswith("pause"))
    await election.stop()
    emit(event="stopped", t=time.monotonic())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:8]))
