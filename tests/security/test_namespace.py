"""Every key an election touches, and every channel it uses, belongs to the election.

A whole lifecycle runs on a fresh redis-server (restart protection, election, a follower,
renewals, leader-info reads, a handoff through the release channel, a term lost because the lock
was deleted, stop) while two observers watch the server from the outside:

* ``MONITOR`` sees every command, also those that the Lua scripts run; the keys of each command
  come from the server itself (``COMMAND GETKEYS``);
* keyspace notifications (``notify-keyspace-events KEA``) and a ``PSUBSCRIBE *`` see every key
  that was written, deleted or expired, and every message published.

Each observer is read up to a sentinel sent after the lifecycle, so nothing is still on its way.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import pytest
from redis import exceptions as rx

from leaderelection import ElectionConfig, LeaderElection, LeaderInfo
from tests.support import eventually, fast_config

from .conftest import ACL_COMMANDS

# Commands without key arguments, as far as this test meets them (COMMAND GETKEYS refuses them).
KEYLESS = {"info", "time", "ping", "echo", "hello", "auth", "client", "select"}
CHANNEL_COMMANDS = {
    "publish",
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "pubsub",  # PUBSUB NUMSUB <channel>
}
# Commands outside the ACL whose refusal costs nothing: connection set-up that redis-py sends on
# its own and that needs no grant (HELLO, AUTH) or whose refusal it ignores (CLIENT SETINFO), and
# the PING that start() sends to probe for a cause if its first attempt timed out.
TOLERATED = {"hello", "auth", "client", "ping"}

_ESCAPES = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("a"): b"\a",
    ord("b"): b"\b",
    ord('"'): b'"',
    ord("\\"): b"\\",
}
_HEAD = re.compile(rb"[0-9.]+ \[[0-9]+ ([^\]]*)\] ")


def parse_monitor_line(line: bytes) -> tuple[str, list[bytes]]:
    """Split a MONITOR line into its source (``lua`` or the client's address) and arguments,
    undoing the server's quoting (``sdscatrepr``)."""
    head = _HEAD.match(line)
    assert head is not None, line
    rest = line[head.end() :]
    args: list[bytes] = []
    i = 0
    while i < len(rest):
        if rest[i] == ord(" "):
            i += 1
            continue
        assert rest[i] == ord('"'), line
        i += 1
        arg = bytearray()
        while rest[i] != ord('"'):
            if rest[i] == ord("\\"):
                if rest[i + 1] == ord("x"):
                    arg.append(int(rest[i + 2 : i + 4], 16))
                    i += 4
                else:
                    arg += _ESCAPES[rest[i + 1]]
                    i += 2
            else:
                arg.append(rest[i])
                i += 1
        i += 1
        args.append(bytes(arg))
    return head.group(1).decode(), args


@dataclass
class Observed:
    """What the observers saw of everything but the observers' own commands."""

    commands: list[tuple[str, list[bytes]]] = field(default_factory=list)  # (source, argv)
    notified_keys: set[str] = field(default_factory=set)
    published: list[tuple[str, bytes]] = field(default_factory=list)  # (channel, message)


class Observers:
    """A MONITOR connection and a PSUBSCRIBE * connection, read until their sentinels."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sentinel = f"sentinel-{uuid.uuid4().hex}"
        self.admin = server.client(single_connection_client=True)
        self._monitor_client = server.client()
        self._events_client = server.client()
        self._monitor: Any = None
        self._events: Any = None
        self._lines: list[bytes] = []
        self._messages: list[tuple[str, bytes]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.admin.config_set("notify-keyspace-events", "KEA")
        self.admin_address = (await self.admin.client_info())["addr"]
        self._events = self._events_client.pubsub()
        await self._events.psubscribe("*")
        async with asyncio.timeout(5):
            while (m := await self._events.get_message(timeout=1.0)) is None or m[
                "type"
            ] != "psubscribe":
                pass
        self._monitor = self._monitor_client.monitor()
        await self._monitor.__aenter__()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read_monitor()),
            loop.create_task(self._read_events()),
        ]

    async def _read_monitor(self) -> None:
        mark = self.sentinel.encode()
        while True:
            line = await self._monitor.connection.read_response()
            if mark in line:
                return
            self._lines.append(line)

    async def _read_events(self) -> None:
        mark = self.sentinel.encode()
        while True:
            message = await self._events.get_message(timeout=1.0)
            if message is None or message["type"] != "pmessage":
                continue
            if message["data"] == mark:
                return
            self._messages.append((message["channel"].decode(), message["data"]))

    async def finish(self) -> Observed:
        """Send the sentinels, wait for both readers to reach them, and sort what they saw."""
        await self.admin.echo(self.sentinel)
        await self.admin.publish(self.sentinel, self.sentinel)
        async with asyncio.timeout(10):
            await asyncio.gather(*self._tasks)
        await self.close()
        seen = Observed()
        for line in self._lines:
            source, argv = parse_monitor_line(line)
            if source != self.admin_address:
                seen.commands.append((source, argv))
        for channel, data in self._messages:
            if channel.startswith("__keyspace@"):
                seen.notified_keys.add(channel.split(":", 1)[1])
            elif channel.startswith("__keyevent@"):
                seen.notified_keys.add(data.decode())
            else:
                seen.published.append((channel, data))
        return seen

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._monitor is not None:
            await self._monitor.__aexit__(None, None, None)
            self._monitor = None
        if self._events is not None:
            await self._events.aclose()
            self._events = None
        await self._monitor_client.aclose()
        await self._events_client.aclose()

    async def keys_of(self, argv: list[bytes]) -> list[str]:
        command = argv[0].decode().lower()
        if command in KEYLESS or command in CHANNEL_COMMANDS:
            return []
        try:
            keys = await self.admin.command_getkeys(*argv)
        except rx.ResponseError as exc:  # a command with keys that the server cannot parse
            raise AssertionError(f"no keys for {argv!r}: {exc}") from exc
        return [k.decode() if isinstance(k, bytes) else str(k) for k in keys]


def prefixed(name: str) -> ElectionConfig:
    return fast_config(name, key_prefix="acme-sec")


def explicit_keys(name: str) -> ElectionConfig:
    return fast_config(name, lock_key=f"acme:{name}:leader")


@pytest.mark.parametrize("make_config", [prefixed, explicit_keys], ids=["key_prefix", "lock_key"])
async def test_a_whole_lifecycle_stays_in_the_elections_namespace(
    make_redis_server: Any, name: str, make_config: Callable[[str], ElectionConfig]
) -> None:
    server = make_redis_server()  # fresh: the first term waits for restart protection
    config = make_config(name)
    own_keys = {config.lock_key, config.info_key, config.fence_key, config.waiting_key}
    observers = Observers(server)
    caller_client = server.client()
    a = LeaderElection(server.url, config)
    b = LeaderElection(caller_client, config)
    try:
        await observers.start()
        try:
            await a.start()
            await b.start()
            await eventually(lambda: a.is_leader or b.is_leader, timeout=15)
            leader, follower = (a, b) if a.is_leader else (b, a)
            await eventually(lambda: leader.statistics().renewals >= 3)
            # The follower has found the lock held (its acquire script read the lease's PTTL).
            await eventually(lambda: follower.statistics().leader_id == leader.instance_id)
            info = await follower.get_leader_info()
            assert info is not None
            assert info.instance_id == leader.instance_id
            await leader.resign()  # handoff: the release wakes the follower
            await follower.wait_until_leader(timeout=5)
            await observers.admin.delete(config.lock_key)  # the term is lost at the next renewal
            await follower.wait_until_follower(timeout=5)
            await eventually(lambda: a.is_leader or b.is_leader)
        finally:
            await a.stop()
            await b.stop()
            await caller_client.aclose()
        seen = await observers.finish()
        remaining = {k.decode() for k in await observers.admin.keys("*")}
        command_keys: set[str] = set()
        for _, argv in seen.commands:
            command_keys.update(await observers.keys_of(argv))
    finally:
        await observers.close()
        await observers.admin.aclose()

    # Keys: every key any command named, every key written, deleted or expired, and every key
    # left behind is one of the election's four.
    assert command_keys == own_keys
    assert seen.notified_keys <= own_keys
    assert config.lock_key in seen.notified_keys
    # The fence outlives terms; lock and info were released; the waiting key (the follower's
    # priority) expires two leases after it last asked.
    assert remaining <= {config.fence_key, config.waiting_key}
    assert config.fence_key in remaining
    if make_config is prefixed:
        namespace = f"{config.key_prefix}:{{{config.name}}}:*"
        assert all(fnmatchcase(key, namespace) for key in command_keys | seen.notified_keys)
        assert fnmatchcase(config.release_channel, namespace)

    # Channels: everything published, and every subscription, is the release channel.
    published = {argv[1].decode() for _, argv in seen.commands if argv[0].lower() == b"publish"}
    subscribed = {
        channel.decode()
        for _, argv in seen.commands
        if argv[0].lower() in {b"subscribe", b"psubscribe", b"ssubscribe"}
        for channel in argv[1:]
    }
    assert published == {config.release_channel}
    assert subscribed == {config.release_channel}
    assert not any(argv[0].lower() in {b"psubscribe", b"ssubscribe"} for _, argv in seen.commands)
    assert {channel for channel, _ in seen.published} == {config.release_channel}
    # Releases announce the fencing token, the instance id, how many listen and the highest
    # priority waiting (if any); new terms the public leader record.
    ids = {a.instance_id, b.instance_id}
    for _, data in seen.published:
        kind, _, rest = data.decode().partition(" ")
        if kind == "R":
            token, instance, listening, top = rest.split(" ")
            assert token.isdigit() and instance in ids and listening.isdigit(), data
            assert top == "" or top.lstrip("-").isdigit(), data
        else:
            assert kind == "A" and LeaderInfo.model_validate_json(rest).instance_id in ids, data

    # Commands: all within the documented ACL, or tolerated. The lifecycle took every path but
    # the rare ones (INCR: a fence ahead of the server clock; UNSUBSCRIBE: several elections on
    # one client).
    used = {argv[0].decode().lower() for _, argv in seen.commands}
    assert used <= set(ACL_COMMANDS) | TOLERATED, used
    # PTTL only when a follower's attempt finds the lock held: here the follower learns of the
    # new term from its announcement and waits without asking.
    assert set(ACL_COMMANDS) - {"incr", "unsubscribe", "pttl"} <= used, used
    in_scripts = {argv[0].decode().lower() for source, argv in seen.commands if source == "lua"}
    assert in_scripts - {"pttl"} == {
        "get",
        "set",
        "pexpire",
        "del",
        "info",
        "time",
        "publish",
        "pubsub",
    }
