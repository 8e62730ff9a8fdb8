"""The election's channel: typed messages, and one supervised subscription per Redis client.

Three kinds of message travel on an election's channel, each published by a script or a command
of the store:

* ``A <leader record JSON>``: a new term began (the acquire script), for observers;
* ``R <fencing token> <instance id>``: a term's lock was released (the release script): followers
  try at once instead of waiting out the lease;
* ``S <instance id>``: a request that the leader with that id resign (``leaderelection
  step-down``).

:class:`ChannelHub` keeps one pub/sub connection per client, shared by every election and
observer on that client, so a thousand candidates in one process cost one connection. Its
listener task is supervised: a listener that raises is reported and the others still hear every
message; a lost connection, or anything unexpected, is logged and the subscription is made again
with backoff, after which every listener hears :class:`Resync` (a message may have been missed).

On a Redis Cluster the channel lives on the node that owns the election's slot (its keys' hash
tag): the hub subscribes there, to the shard channel (``SSUBSCRIBE``, Redis 7+ and Valkey; a plain
``SUBSCRIBE`` on Redis 6.2, whose ``PUBLISH`` reaches every node). A failover or a slot move ends
that subscription (the node fails, or the server sends ``sunsubscribe``); the hub then refreshes
the cluster's map and subscribes on the slot's new owner, and listeners hear :class:`Resync`. On
a cluster the hub is one per client and slot, so elections of different names on one cluster
client subscribe on their own nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

import redis.asyncio
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from ._aio import Flag, close_client
from ._connect import UrlClient, is_cluster, resolve_client
from ._exceptions import StoreAuthenticationError

__all__ = [
    "Announced",
    "ChannelHub",
    "Hub",
    "Listener",
    "Message",
    "Released",
    "Resync",
    "StepDownRequested",
    "parse_message",
]

logger = logging.getLogger("leaderelection")

# Pools (and connections) whose settings a pool of the subscription's own can copy: redis-py's,
# not Sentinel's (which finds the master itself) nor a test double's.
_PLAIN_POOLS: Final = (redis.asyncio.ConnectionPool, redis.asyncio.BlockingConnectionPool)
_PLAIN_CONNECTIONS: Final = (
    redis.asyncio.Connection,
    redis.asyncio.SSLConnection,
    redis.asyncio.UnixDomainSocketConnection,
)


@dataclass(frozen=True, slots=True)
class Announced:
    """``A``: a new term began; ``record`` is the leader record as JSON."""

    record: str


@dataclass(frozen=True, slots=True)
class Released:
    """``R``: the term with ``fencing_token``, held by ``instance_id``, released its lock.

    ``subscribers`` is how many connections listened on the channel, and ``top_priority`` the
    highest priority among the candidates waiting; None when the releaser did not say (an
    older version, or a server that refused to tell)."""

    fencing_token: int
    instance_id: str
    subscribers: int | None = None
    top_priority: int | None = None


@dataclass(frozen=True, slots=True)
class StepDownRequested:
    """``S``: someone asks the leader ``instance_id`` to resign."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class Resync:
    """The subscription was made again: messages may have been missed meanwhile."""


Message = Announced | Released | StepDownRequested | Resync
Listener = Callable[[Message], None]
"""Called with every message on a channel; it must not block (it runs in the listener task)."""


def parse_message(text: str) -> Message | None:
    """The message ``text`` carries, or None for one this version does not know."""
    kind, _, rest = text.partition(" ")
    if kind == "A" and rest:
        return Announced(rest)
    if kind == "R":
        token, _, rest = rest.partition(" ")
        instance_id, _, rest = rest.partition(" ")
        subscribers, _, top = rest.partition(" ")
        if token.isdigit():
            return Released(int(token), instance_id, _count(subscribers), _integer(top))
        return None
    if kind == "S" and rest:
        return StepDownRequested(rest)
    return None


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _count(text: str) -> int | None:
    value = _integer(text)
    return value if value is not None and value >= 0 else None  # -1: the server did not say


class Hub(Protocol):
    """What an election and an observer need of a channel's subscription."""

    async def add(self, channel: str, listener: Listener) -> None:
        """Call ``listener`` with every message on ``channel`` from now on."""
        ...

    async def remove(self, channel: str, listener: Listener) -> None:
        """Stop calling ``listener``."""
        ...

    def is_active(self, channel: str) -> bool:
        """Whether the subscription to ``channel`` is confirmed."""
        ...

    async def wait_active(self, channel: str, *, timeout: float) -> bool:
        """Wait up to ``timeout`` for the subscription to ``channel``; False if it did not come."""
        ...

    def listening(self, channel: str) -> int:
        """How many listeners of ``channel`` share this subscription's connection."""
        ...


def notify(listeners: set[Listener] | None, message: Message, channel: str) -> None:
    """Call each listener with ``message``; one that raises is logged and the rest still run."""
    for listener in list(listeners or ()):
        try:
            listener(message)
        except Exception:
            logger.exception(
                "A listener of the channel %s raised; the other listeners still hear it", channel
            )


_READ_TIMEOUT: Final = 1.0  # seconds a pub/sub read waits before the listener looks around


class _ShardMoved(Exception):
    """The server ended a shard-channel subscription: the slot moved to another node."""


class ChannelHub:
    """One pub/sub subscription per Redis client, shared by every election on that client.

    The listener task lives while at least one listener is subscribed; the last ``remove`` stops
    it and waits for it. After a reconnect every listener hears :class:`Resync`.
    """

    _hubs: ClassVar[weakref.WeakKeyDictionary[Any, dict[int | None, ChannelHub]]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        client: Any,
        translate: Callable[[BaseException, str], Exception],
        slot: int | None = None,
    ) -> None:
        self._client = client
        self._slot = slot  # the cluster slot of its channels; None off a cluster
        self._translate = translate  # the store's translation of redis errors
        self._listeners: dict[str, set[Listener]] = {}
        self._active: dict[str, Flag] = {}  # set once the server confirmed the subscription
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._sharded = False  # the live subscription is to shard channels
        self._shards = True  # False once a cluster node said it has no SSUBSCRIBE (Redis 6.2)

    @classmethod
    def for_client(
        cls, client: Any, translate: Callable[[BaseException, str], Exception], channel: str
    ) -> ChannelHub | None:
        """The hub of ``client`` for ``channel``, or None when the client cannot subscribe.

        ``translate(exc, what)`` turns a redis error into the library's own. On a cluster client
        the hub is the one of the channel's slot.
        """
        if not (
            isinstance(client, UrlClient)
            or is_cluster(client)
            or callable(getattr(client, "pubsub", None))
        ):
            return None
        slot = key_slot(channel.encode()) if is_cluster(client) else None
        try:
            hubs = cls._hubs.setdefault(client, {})
        except TypeError:  # not weak-referenceable
            return cls(client, translate)
        hub = hubs.get(slot)
        if hub is None:
            hub = hubs[slot] = cls(client, translate, slot)
        return hub

    async def add(self, channel: str, listener: Listener) -> None:
        """Call ``listener`` with every message published on ``channel`` (and with
        :class:`Resync` after a reconnect, when messages may have been missed)."""
        listeners = self._listeners.setdefault(channel, set())
        listeners.add(listener)
        self._active.setdefault(channel, Flag())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name="leaderelection-channel-listener"
            )
        elif len(listeners) == 1 and self._pubsub is not None:
            with contextlib.suppress(rx.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    if self._sharded:
                        await self._pubsub.ssubscribe(channel)
                    else:
                        await self._pubsub.subscribe(channel)

    def is_active(self, channel: str) -> bool:
        """Whether the server has confirmed the subscription to ``channel``."""
        flag = self._active.get(channel)
        return flag is not None and flag.is_set()

    def listening(self, channel: str) -> int:
        """How many listeners of ``channel`` this hub's one connection serves."""
        return len(self._listeners.get(channel, ()))

    async def wait_active(self, channel: str, *, timeout: float) -> bool:
        """Wait up to ``timeout`` for the subscription to ``channel``; False if it did not come."""
        flag = self._active.get(channel)
        if flag is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await flag.wait()
        return flag.is_set()

    async def remove(self, channel: str, listener: Listener) -> None:
        """Stop calling ``listener``; the last removal stops the listener task."""
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[channel]
                self._active.pop(channel, None)
                if self._pubsub is not None and self._listeners:
                    with contextlib.suppress(rx.RedisError, OSError, TimeoutError):
                        async with asyncio.timeout(1.0):
                            if self._sharded:
                                await self._pubsub.sunsubscribe(channel)
                            else:
                                await self._pubsub.unsubscribe(channel)
        if not self._listeners:
            # The registry's value holds the client strongly: drop the entry with the last
            # listener, or every client ever used would stay alive.
            with contextlib.suppress(TypeError):
                hubs = self._hubs.get(self._client, {})
                if hubs.get(self._slot) is self:
                    del hubs[self._slot]
                if not hubs:
                    self._hubs.pop(self._client, None)
        if not self._listeners and self._task is not None:
            task, self._task = self._task, None
            # redis-py can swallow a cancellation that lands inside a pub/sub read, so cancel
            # again until the task ends; the listener also sees that no one listens any more
            # within one read timeout.
            for _ in range(4 * int(_READ_TIMEOUT) + 4):
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    break
            else:
                logger.warning("The channel listener did not stop; leaving it to end on its own")

    async def _supervise(self) -> None:
        """The listener task: subscribe, read, and on any failure subscribe again (backoff)."""
        backoff = 0.05
        resync = warned = False
        try:
            while self._listeners:
                try:
                    await self._listen(resync)
                    backoff = 0.05
                except (rx.RedisError, OSError) as exc:
                    if "SSUBSCRIBE" in str(exc) and "unknown command" in str(exc).lower():
                        # Redis 6.2's cluster has no shard channels, but broadcasts PUBLISH
                        # (which the scripts fall back to) to every node: SUBSCRIBE there.
                        self._shards = False
                    error = self._translate(exc, "subscribing to the release channel")
                    if isinstance(error, StoreAuthenticationError) and not warned:
                        warned = True
                        logger.warning(
                            "Release channel subscription refused (%s): followers will take over "
                            "only when a lease expires, not at once on release",
                            error,
                        )
                    else:
                        logger.debug("Release subscription lost, reconnecting: %s", exc)
                except _ShardMoved as exc:
                    logger.debug("Release subscription moved, subscribing again: %s", exc)
                except Exception:
                    logger.exception(
                        "The channel listener failed unexpectedly; subscribing again in %.2fs",
                        backoff,
                    )
                resync = True
                await self._refresh_cluster_map()
                if not self._listeners:
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0 if warned else 2.0)
        except asyncio.CancelledError:
            pass

    async def _refresh_cluster_map(self) -> None:
        """After a lost cluster subscription: learn the slots' owners again (a failover)."""
        client = self._client.resolved if isinstance(self._client, UrlClient) else self._client
        if not is_cluster(client):
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await client.nodes_manager.initialize()

    async def _open(self) -> tuple[Any, Any, bool]:
        """A pub/sub of the channels' server, the client to close with it (or None), and whether
        the server is in a Redis Cluster.

        On a cluster: a connection of its own to the node that owns the channels' slot."""
        client = await resolve_client(self._client)
        if not is_cluster(client):
            pool: Any = getattr(client, "connection_pool", None)
            if type(pool) in _PLAIN_POOLS and pool.connection_class in _PLAIN_CONNECTIONS:
                # A pool of its own: closing the subscription disconnects its connection, and in
                # the client's pool that dead connection would cost the next command a reconnect.
                own = redis.asyncio.Redis(
                    connection_pool=redis.asyncio.ConnectionPool(
                        connection_class=pool.connection_class, **pool.connection_kwargs
                    )
                )
                return own.pubsub(), own, False
            return client.pubsub(), None, False  # Sentinel's pool finds the master itself
        node = client.get_node_from_key(next(iter(self._listeners)))
        own = redis.asyncio.Redis(
            connection_pool=redis.asyncio.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
        )
        return own.pubsub(), own, True

    async def _subscribe(self, pubsub: Any, cluster: bool, channels: list[str]) -> None:
        self._sharded = (
            cluster  # shard channels, where the cluster's servers have them
            and self._shards
            and callable(getattr(pubsub, "ssubscribe", None))
        )
        if self._sharded:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    async def _listen(self, resync: bool) -> None:
        own: Any = None
        pubsub: Any = None
        conn: Any = None
        retry: Any = None
        try:
            pubsub, own, cluster = await self._open()
            channels = list(self._listeners)
            await self._subscribe(pubsub, cluster, channels)
            # Published only once connected: an add() meanwhile must not subscribe on its own
            # (redis-py would open a second connection that nobody reads).
            self._pubsub = pubsub
            missing = [c for c in self._listeners if c not in channels]
            if missing:
                await self._subscribe(pubsub, cluster, missing)
            # A client with retries would reconnect and resubscribe inside a read without telling
            # us, and a release published meanwhile would be lost unnoticed: turn retries off on
            # this connection, so that every loss reaches the supervisor.
            conn = getattr(pubsub, "connection", None)
            retry = getattr(conn, "retry", None)
            if retry is not None:
                conn.retry = Retry(NoBackoff(), 0)
            if resync:
                for channel, listeners in list(self._listeners.items()):
                    notify(listeners, Resync(), channel)
            while self._listeners:
                message = await pubsub.get_message(timeout=_READ_TIMEOUT)
                if message is None:
                    continue
                channel = _text(message["channel"])
                kind = message.get("type")
                if kind in ("message", "smessage"):
                    parsed = parse_message(_text(message["data"]))
                    if parsed is not None:
                        notify(self._listeners.get(channel), parsed, channel)
                elif kind in ("subscribe", "ssubscribe") and channel in self._active:
                    self._active[channel].set()
                elif kind == "sunsubscribe" and channel in self._listeners:
                    raise _ShardMoved(f"the server ended the subscription to {channel}")
        finally:
            self._pubsub = None
            for flag in self._active.values():
                flag.clear()
            if conn is not None and retry is not None:
                conn.retry = retry  # the connection goes back to the client's pool
            for each in (pubsub, own):
                if each is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await asyncio.shield(close_client(each))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
