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
* ``write`` (``token``, ``seq``, ``t0``, ``ok``, ``at``): a fenced write came back: ``ok`` when
  written, ``at`` where it was decided (``"redis"`` by the script's check, ``"local"`` by the
  fence's own check before anything was sent); ``seq`` numbers the process's writes across its
  terms, ``t0`` is when the write left for Redis (after any block);
* ``block_start``/``block_end`` (``seconds``): the leader task blocked the event loop.

While it leads, the ``while_leader`` task makes a :class:`~leaderelection.Fence` for its term and
appends a record (token, writer, sequence number, send time) to a list on the lease server
through it (``Fence.eval``), every 20 ms: Redis applies the write only while the fence key holds
the term's token and the lock its lease. Sent by a leader that has since been replaced, the write
is refused: that is what fencing is for. The ``block SECONDS`` command (on stdin) makes the next
write block the event loop with ``time.sleep`` after the fence's local check has passed and
before the script is sent, which is the textbook stale leader: its write reaches Redis after a
successor was elected. ``stop`` stops the election.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sys
import time
from typing import Any

from leaderelection import ElectionConfig, Fence, LeaderElection, NotLeaderError, StoreError
from leaderelection._core import BecameLeader, LostLeadership, Phase
from leaderelection._store import FencedWrite

# The fenced resource: a list on the lease server, in the election's hash slot, to which each
# write appends its record; the Fence runs it only while the term holds. Its arrival order is
# the order in which Redis applied the writes.
FENCED_APPEND = """
return redis.call('RPUSH', KEYS[1], cjson.encode({ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]}))
"""
WRITE_EVERY = 0.02


def resource_key(name: str) -> str:
    """The fenced list of the election ``name`` (with its hash tag, so in its slot)."""
    return f"chaos:{{{name}}}:fenced-log"


class Recorder:
    """A fence's writer that records the outcome of every write that passed the fence's local
    check, and that can block the event loop right then, before the script leaves (the fault
    ``block SECONDS``).

    The write runs in a task of its own, shielded, and its outcome is recorded when its reply
    comes: a stale leader's write is sent when its loop unblocks, and the end of its term then
    cancels the ``while_leader`` task that awaits it, but not the write.
    """

    def __init__(self, writer: Any, history: History, blocks: collections.deque[float]) -> None:
        self._writer = writer
        self._history = history
        self._blocks = blocks
        self.write: dict[str, Any] = {}  # the token, seq and t0 of the write being made
        self.sent = False

    async def fenced_write(self, write: FencedWrite, **options: Any) -> tuple[bool, Any]:
        self.sent = True
        if self._blocks:
            seconds = self._blocks.popleft()
            self._history.emit("block_start", seconds=seconds)
            time.sleep(seconds)  # noqa: ASYNC251 (the fault itself: a task blocking the loop)
            self._history.emit("block_end", seconds=seconds)
        # The send time is now, after any block: the checker compares it with the terms that
        # began before it. The record's last argument is that time.
        self.write["t0"] = sent = time.monotonic()
        write = dataclasses.replace(write, args=(*write.args[:-1], sent))
        fields = dict(self.write)
        task = asyncio.ensure_future(self._writer.fenced_write(write, **options))

        def record(done: asyncio.Future[tuple[bool, Any]]) -> None:
            if done.cancelled():
                return
            if (error := done.exception()) is not None:
                self._history.emit("write_error", **fields, error=repr(error))
            else:
                self._history.emit("write", **fields, ok=done.result()[0], at="redis")

        task.add_done_callback(record)
        written: tuple[bool, Any] = await asyncio.shield(task)
        return written


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
    original_renew = campaign._renew

    async def renew(store: Any, token: str) -> None:
        # A renewal that moved the deadline of a term that goes on (the core has slots: its
        # methods cannot be patched on the instance).
        before = core.lease_deadline
        await original_renew(store, token)
        if core.lease_deadline != before and core.phase is Phase.LEADER:
            history.emit("lease", until=core.lease_deadline)

    campaign._renew = renew  # type: ignore[method-assign]

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
    instance = settings["instance_id"]
    key = resource_key(settings["name"])
    blocks: collections.deque[float] = collections.deque()
    sequence = itertools.count(1)  # per process, across terms: (writer, seq) names one write

    async def fenced_actions() -> None:
        token = election.fencing_token
        history.emit("worker_start", token=token)
        try:
            fence: Fence = election.fence()
        except NotLeaderError:  # the term ended before its task ran
            history.emit("worker_end", token=token)
            return
        recorder = Recorder(fence._writer, history, blocks)
        fence._writer = recorder
        try:
            while True:
                seq = next(sequence)
                t0 = time.monotonic()
                recorder.write = {"token": fence.token, "seq": seq, "t0": t0}
                recorder.sent = False
                # A network fault or a restart is recorded by the recorder; go on.
                with contextlib.suppress(StoreError):
                    result = await fence.eval(
                        FENCED_APPEND, keys=[key], args=[fence.token, instance, seq, t0]
                    )
                    if not recorder.sent:  # refused by the fence's local check
                        history.emit("write", **recorder.write, ok=bool(result), at="local")
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
    history.emit("stopped")


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(relativeCreated)8.0f %(levelname)s %(message)s"
    )
    asyncio.run(main(json.loads(sys.argv[1])))
