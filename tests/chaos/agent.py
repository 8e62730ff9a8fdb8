"""One chaos candidate, in its own process: ``python -m tests.chaos.agent SETTINGS_JSON``.

It campaigns in one election and appends every event to its history file, one JSON object per
line, each written with a single ``write()`` on an ``O_APPEND`` descriptor so that a SIGKILL loses
no line already emitted. Every timestamp is ``time.monotonic()``, one clock for every process on
a Linux machine, which lets the checker compare histories across processes.

Events (``e`` is the event name, ``t`` the monotonic time):

* ``start`` (``pid``), ``ready`` (``leader``), ``stopped``;
* ``acquired`` (``token``, ``until``): a term started; ``until`` is the local lease deadline, after
  which ``is_leader`` reads False unless a renewal moves it;
* ``lease`` (``until``): a renewal moved the deadline;
* ``lost`` (``token``, ``reason``): a term ended;
* ``become_start``/``become_end``/``lose_start``/``lose_end`` (``token``): the user callbacks;
* ``worker_start``/``worker_cancelled``/``worker_end`` (``token``): the ``while_leader`` task;
* ``write`` (``token``, ``seq``, ``t0``, ``ok``): a fenced action came back from the resource;
* ``block_start``/``block_end`` (``seconds``): the leader task blocked the event loop.

While it leads, the ``while_leader`` task performs fenced actions on the resource server: it reads
``is_leader`` and ``fencing_token``, then sends a write that the resource applies only when the
token is not lower than the highest it has seen. Sent by a leader that has since been replaced,
the write is rejected: that is what fencing is for. The ``block SECONDS`` command (on stdin)
makes the task block the event loop with ``time.sleep`` between reading the token and sending
the write, which is the textbook stale leader. ``stop`` stops the election.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import sys
import time
from typing import Any

import redis.asyncio

from leaderelection import ElectionConfig, LeaderElection
from leaderelection._core import BecameLeader, LostLeadership

# The fenced resource: accept a write only if its token is not lower than the highest accepted
# so far. Tokens are decimal strings without leading zeros, compared exactly (length, then
# text), never as Lua doubles. Every write, accepted or not, is logged in arrival order.
FENCED_WRITE = """
local highest = redis.call('GET', KEYS[1])
local token = ARGV[1]
local ok = 0
if not highest or #token > #highest or (#token == #highest and token >= highest) then
  redis.call('SET', KEYS[1], token)
  ok = 1
end
redis.call('RPUSH', KEYS[2], cjson.encode({token, ARGV[2], tonumber(ARGV[3]), ARGV[4], ok}))
return ok
"""
RESOURCE_KEYS = ("fenced:highest", "fenced:log")
WRITE_EVERY = 0.02


class History:
    """Appends events to a JSONL file, one atomic ``write()`` per line."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, e: str, **fields: Any) -> None:
        fields = {"e": e, "t": time.monotonic(), **fields}
        os.write(self._fd, (json.dumps(fields) + "\n").encode())


def recording_election(redis_: Any, config: ElectionConfig, history: History) -> LeaderElection:
    """An election that records every transition the moment the core decides it, the renewals
    that move its deadline, and the start and end of its become and lose callbacks."""
    election = LeaderElection(redis_, config)
    campaign = election._campaign
    acquired_tokens: collections.deque[int] = collections.deque()
    original_apply = campaign.apply

    def apply(transitions: list[Any]) -> None:
        for transition in transitions:
            if isinstance(transition, BecameLeader):
                acquired_tokens.append(transition.term.fencing_token)
                history.emit(
                    "acquired",
                    token=transition.term.fencing_token,
                    until=campaign.core.lease_deadline,
                )
            elif isinstance(transition, LostLeadership):
                history.emit(
                    "lost",
                    token=transition.term.fencing_token,
                    reason=transition.reason.value,
                )
        original_apply(transitions)

    campaign.apply = apply  # type: ignore[method-assign]
    core = campaign.core
    original_renewed = core.renewed

    def renewed(**kwargs: Any) -> Any:
        before = core.lease_deadline
        out = original_renewed(**kwargs)
        if core.lease_deadline != before and not out:
            history.emit("lease", until=core.lease_deadline)
        return out

    core.renewed = renewed  # type: ignore[method-assign]

    # The callbacks take no arguments: they are matched to terms by order (the n-th become to
    # the n-th term), and the checker verifies that order against the acquired and lost events.
    lose_tokens: collections.deque[int | None] = collections.deque()

    def on_become() -> None:
        token = acquired_tokens.popleft() if acquired_tokens else None
        history.emit("become_start", token=token)
        lose_tokens.append(token)
        history.emit("become_end", token=token)

    async def on_lose() -> None:
        token = lose_tokens.popleft() if lose_tokens else None
        history.emit("lose_start", token=token)
        await asyncio.sleep(0)
        history.emit("lose_end", token=token)

    election.on_become_leader(on_become)
    election.on_lose_leadership(on_lose)
    return election


async def main(settings: dict[str, Any]) -> None:
    history = History(settings["history"])
    history.emit("start", pid=os.getpid())
    config = ElectionConfig(
        name=settings["name"],
        instance_id=settings["instance_id"],
        lock_ttl=settings["ttl"],
        heartbeat_interval=settings["heartbeat"],
        retry_interval=settings["retry"],
    )
    election = recording_election(settings["lease_url"], config, history)
    resource = redis.asyncio.from_url(
        settings["resource_url"], socket_connect_timeout=config.lock_ttl.total_seconds()
    )
    write = resource.register_script(FENCED_WRITE)
    instance = settings["instance_id"]
    ttl = config.lock_ttl.total_seconds()
    blocks: collections.deque[float] = collections.deque()

    async def fenced_actions() -> None:
        token = election.fencing_token
        history.emit("worker_start", token=token)
        seq = 0
        try:
            while True:
                if not election.is_leader:
                    await asyncio.sleep(WRITE_EVERY)
                    continue
                current = election.fencing_token
                if blocks:
                    seconds = blocks.popleft()
                    history.emit("block_start", seconds=seconds)
                    time.sleep(seconds)  # noqa: ASYNC251 (the fault itself: a task blocking the loop)
                    history.emit("block_end", seconds=seconds)
                seq += 1
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(ttl):
                        ok = await write(
                            keys=list(RESOURCE_KEYS), args=[current, instance, seq, t0]
                        )
                except (TimeoutError, redis.RedisError) as exc:  # a network fault: go on
                    history.emit("write_error", token=current, seq=seq, t0=t0, error=repr(exc))
                else:
                    history.emit("write", token=current, seq=seq, t0=t0, ok=ok)
                await asyncio.sleep(WRITE_EVERY)
        except asyncio.CancelledError:
            history.emit("worker_cancelled", token=token)
            raise
        finally:
            history.emit("worker_end", token=token)

    election.while_leader(fenced_actions)

    await election.start()
    history.emit("ready", leader=election.is_leader)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        command, _, argument = line.partition(" ")
        if command == "block":
            blocks.append(float(argument))
        elif command == "stop":
            break
    await election.stop()
    await resource.aclose()
    history.emit("stopped")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(relativeCreated)8.0f %(levelname)s %(message)s"
    )
    asyncio.run(main(json.loads(sys.argv[1])))
