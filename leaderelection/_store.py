"""The lease store: the boundary between the election and Redis.

:class:`Store` is what the election needs of a lease store, written as a Protocol: acquire,
renew, release, read, and the channel's subscription. :class:`RedisStore` is its one production
implementation (``leaderelection.testing.MemoryStore`` is the in-memory one of the tests). Each
state change is one Lua script (:mod:`._scripts`) and one round trip (EVALSHA, falling back to
EVAL when the server answers NOSCRIPT, which also caches the script again).

Every call runs under a deadline given by the caller and kept by the election's clock, whatever
retry policy the client has. Redis errors are translated into :mod:`._exceptions` here and
nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeVar

import redis as _redis_sync
import redis.cluster
from pydantic import ValidationError
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff
from redis.crc import key_slot

from ._aio import close_client
from ._channel import ChannelHub, Hub
from ._clock import Clock, MonotonicClock
from ._config import ElectionConfig, _hash_tag
from ._connect import UrlClient, is_cluster, resolve_client
from ._exceptions import (
    ConfigurationError,
    CorruptLeaderInfoError,
    CrossSlotError,
    ReplicasMissingError,
    StoreAuthenticationError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from ._info import LeaderInfo
from ._scripts import (
    ACQUIRE,
    FENCED_DELETE,
    FENCED_HSET,
    FENCED_SET,
    NO_INFO,
    READ,
    RELEASE,
    RENEW,
    SHA,
    STEP_DOWN,
    fenced_eval,
)

__all__ = [
    "AcquireResult",
    "Acquired",
    "FencedWrite",
    "Held",
    "HeldBack",
    "RedisStore",
    "Store",
    "close_client",
    "error_kind",
    "redis_argument",
    "translate",
]

logger = logging.getLogger("leaderelection")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Acquired:
    """The lock is ours: a new term with this fencing token."""

    fencing_token: int


@dataclass(frozen=True, slots=True)
class Held:
    """Someone else holds the lock for ``remaining_ms`` more (negative: no expiry set).

    ``top_priority`` is the highest priority among the candidates waiting for it (None when
    unknown)."""

    remaining_ms: int
    holder_id: str | None
    top_priority: int | None = None


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Restart protection: the server started too recently to grant a term safely."""

    wait_ms: int
    uptime_s: int


AcquireResult = Acquired | Held | HeldBack


@dataclass(frozen=True, slots=True)
class FencedWrite:
    """A write of a Fence: ``kind`` with the caller's ``keys`` and ``args`` (for ``"eval"``,
    the caller's ``script`` too), to run only while the term holds (see ``_FENCED``).

    ``args``: ``set``, the value and PX in ms or ""; ``hset``, field, value, field, value...;
    ``delete``, none; ``eval``, the script's own.
    """

    kind: Literal["set", "hset", "delete", "eval"]
    keys: tuple[str | bytes, ...]
    args: tuple[str | bytes | int | float, ...] = ()
    script: str = ""


class Store(Protocol):
    """What an election needs of its lease store; every call is bounded by ``timeout``.

    Raises (every method):
        StoreError: a subclass naming what failed; ``StoreUnavailableError`` when the store did
            not answer in time (the outcome of a state change is then unknown).
    """

    @property
    def channel(self) -> str:
        """The election's channel."""
        ...

    @property
    def hub(self) -> Hub | None:
        """The subscription to the channel, or None when the store cannot subscribe."""
        ...

    async def acquire(
        self,
        token: str,
        info_prefix: str,
        ttl_ms: int,
        *,
        unknown_tokens: tuple[str, ...],
        min_uptime_s: int,
        timeout: float,
        check_role: bool = False,
        announce: bool = True,
        priority: int = 0,
    ) -> AcquireResult:
        """Take the lock for a new term if it is free (or holds one of ``unknown_tokens``)."""
        ...

    async def renew(self, token: str, info_json: str, ttl_ms: int, *, timeout: float) -> bool:
        """Extend the term's lease; False when the lock no longer holds ``token``."""
        ...

    async def release(
        self,
        tokens: tuple[str, ...],
        instance_id: str,
        *,
        fencing_token: int | None = None,
        timeout: float,
    ) -> bool:
        """Delete the lock if it holds one of ``tokens`` and announce it; False if it held none."""
        ...

    async def read_info(self, *, timeout: float) -> LeaderInfo | None:
        """The leader record, or None when no one leads."""
        ...

    async def read_state(self, *, timeout: float) -> tuple[LeaderInfo | None, int]:
        """The leader record and the lease left in ms, read at once."""
        ...

    async def request_step_down(self, instance_id: str, *, timeout: float) -> int:
        """Ask the leader ``instance_id`` to resign; returns how many listeners heard it."""
        ...

    async def diagnose(self, *, timeout: float) -> StoreError | None:
        """A permanent cause (credentials, permissions) behind a failed call, or None."""
        ...

    async def fenced_write(
        self, write: FencedWrite, *, token: str, fencing_token: int, timeout: float
    ) -> tuple[bool, Any]:
        """Do ``write`` if the term (``token`` in the lock, ``fencing_token`` in the fence key)
        still holds, in one step; ``(written, the eval script's value or None)``."""
        ...


# (node, script) pairs a store remembers as cached on the server, at most; forgetting one only
# costs sending its body once more.
_CACHED_MAX: Final = 256

_FENCED_SCRIPTS: Final = {"set": FENCED_SET, "hset": FENCED_HSET, "delete": FENCED_DELETE}


@functools.lru_cache(maxsize=256)
def _digest(src: str) -> str:
    return hashlib.sha1(src.encode()).hexdigest()


def _sha(src: str) -> str:
    """The SHA1 that EVALSHA names ``src`` by (the library's scripts' precomputed)."""
    return SHA.get(src) or _digest(src)


def _text(value: object) -> str:
    """``value`` as text; bytes that are not UTF-8 (a binary key) show as escapes."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)


# How servers word a missing ACL permission, also inside scripts (Redis 6.2, 7, Valkey 8).
_NO_PERMISSION: Final = (
    "NOPERM",
    "no permissions",
    "can't run this command",
    "can't publish to the channel",
    "ACL failure",
)


def translate(exc: BaseException, what: str, keys: tuple[str, ...] = ()) -> StoreError:
    """Translate a redis-py (or socket) exception into the library's own, naming what to fix."""
    message = str(exc).rstrip(".")
    if NO_INFO in message:
        return StoreAuthenticationError(
            f"Redis refuses INFO inside scripts while {what} "
            f"({message.replace(NO_INFO, '').strip()}): restart protection reads the server's "
            "uptime with it. Allow INFO for the "
            "election's user, or turn the protection off with restart_protection=False "
            "(LEADER_ELECTION_RESTART_PROTECTION=false), only with appendfsync always or when a "
            "lost lease costs nothing"
        )
    if isinstance(exc, MasterNotFoundError):
        service = re.search(r"No master found for ('[^']*')", message)
        # redis-py lists each sentinel's client object and error; keep the errors.
        errors = [
            error.rstrip(". ")
            for error in re.findall(r" - (?:\w+:)?(\w+Error: .*?)(?=, <redis|\Z)", message)
        ]
        return StoreUnavailableError(
            f"no Sentinel named a reachable master"
            f"{' for ' + service.group(1) if service else ''} while {what}"
            f"{': ' + '; '.join(errors) if errors else ''}. Check the sentinels' addresses and "
            "the service name in the redis+sentinel:// URL"
        )
    if isinstance(exc, rx.ClusterDownError) or message.startswith("CLUSTERDOWN"):
        return StoreUnavailableError(
            f"the Redis Cluster is down while {what} ({message}): it serves the election's slot "
            "again once a replica of the failed master is promoted"
        )
    if isinstance(exc, rx.TryAgainError) or message.startswith("TRYAGAIN"):
        return StoreUnavailableError(
            f"the Redis Cluster asked to try again while {what} ({message}): the election's slot "
            "is being moved"
        )
    if isinstance(exc, rx.AskError) or message.startswith(("MOVED ", "ASK ")):
        if isinstance(exc, rx.AskError) and not message.startswith(("MOVED", "ASK")):
            message = f"{'MOVED' if isinstance(exc, rx.MovedError) else 'ASK'} {message}"
        return StoreError(
            f"a Redis Cluster node redirected the call while {what} ({message}) to the node that "
            "owns the election's slot, and this client does not follow redirections: pass a "
            "redis:// URL of any node (the library detects cluster mode) or a RedisCluster client"
        )
    if isinstance(exc, rx.ClusterCrossSlotError) or message.startswith("CROSSSLOT"):
        return StoreError(
            f"the election's keys ({', '.join(keys) or 'unknown'}) are in different cluster slots "
            f"while {what}: {message}. Give lock_key and info_key one hash tag, e.g. "
            "'myapp:{leader}:lock' and 'myapp:{leader}:info'"
        )
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return StoreAuthenticationError(
            f"Redis refused the credentials while {what}: {message}. Check the password and user "
            "in the URL or client"
        )
    if isinstance(exc, rx.NoPermissionError) or any(m in message for m in _NO_PERMISSION):
        return StoreAuthenticationError(
            f"the Redis user lacks a permission needed while {what}: {message}. Grant EVALSHA, "
            "EVAL, GET, SET, PEXPIRE, PTTL, DEL, INCR, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, INFO and "
            "TIME on the election's keys and channel, WAIT with min_replicas, and on a Redis "
            "Cluster SPUBLISH, SSUBSCRIBE and SUNSUBSCRIBE (docs/security.md has the exact ACL)"
        )
    if isinstance(exc, rx.ReadOnlyError) or "READONLY" in message:
        return StoreReadOnlyError(
            f"Redis is a read-only replica ({message}) while {what}: point the election at the "
            "primary, or, for a Sentinel-managed Redis, use a redis+sentinel:// URL so that the "
            "master is found again after a failover"
        )
    if "WRONGTYPE" in message:
        return WrongKeyTypeError(
            f"an election key ({', '.join(keys) or 'unknown'}) holds a value of another type while "
            f"{what}: {message}. Delete the key or choose another name/key_prefix"
        )
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | TimeoutError):
        return StoreUnavailableError(f"Redis is unavailable while {what}: {message or type(exc)}")
    return StoreError(f"Redis answered an error while {what}: {message}")


_WRITES: Final = ("acquiring the lock", "renewing the lease", "writing through the fence")

_KINDS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (ReplicasMissingError, "replicas_missing"),
    (StoreAuthenticationError, "authentication"),
    (StoreReadOnlyError, "read_only"),
    (WrongKeyTypeError, "wrong_type"),
    (CorruptLeaderInfoError, "corrupt_info"),
)


def error_kind(exc: BaseException) -> str:
    """The kind of a failed store call, one of ``_core.ERROR_KINDS``, for the metrics: its
    class, and for an unavailable store the redis-py or socket error behind it."""
    for cls, kind in _KINDS:
        if isinstance(exc, cls):
            return kind
    cause = exc.__cause__
    if isinstance(cause, TimeoutError | rx.TimeoutError):
        return "timeout"
    if isinstance(cause, rx.ClusterDownError | rx.TryAgainError | rx.AskError) or (
        isinstance(cause, rx.ResponseError)
        and str(cause).startswith(("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "CROSSSLOT"))
    ):
        return "cluster"
    if isinstance(cause, rx.ConnectionError | OSError):  # MasterNotFoundError too
        return "connection"
    return "other"


class RedisStore:
    """The lease of one election on one Redis client: ``redis.asyncio.Redis`` (also one from
    ``Sentinel.master_for``), ``RedisCluster``, or the :class:`UrlClient` of a URL.

    With ``min_replicas`` above 0, every write that grants or extends a term is followed, in the
    same round trip and on the same connection, by ``WAIT min_replicas``; a write that fewer
    replicas acknowledged within the call's deadline raises :class:`ReplicasMissingError`.
    """

    def __init__(
        self,
        client: Any,
        *,
        lock_key: str,
        info_key: str,
        fence_key: str,
        channel: str,
        clock: Clock | None = None,
        min_replicas: int = 0,
        waiting_key: str | None = None,
    ) -> None:
        self._client = client
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._keys = (lock_key, info_key, fence_key)
        self._waiting = waiting_key or fence_key.removesuffix(":fence") + ":waiting"
        self._channel = channel
        self._min_replicas = min_replicas
        # (node, script) pairs this store has run: the server caches the script
        self._cached: set[tuple[str | None, str]] = set()
        # An in-process fakeredis server dies with the process and cannot lose data under a live
        # leader, and it has no INFO: restart protection does not apply to it.
        self._in_process = any(c.__module__.startswith("fakeredis") for c in type(client).__mro__)

    @classmethod
    def for_config(
        cls, client: Any, config: ElectionConfig, clock: Clock | None = None
    ) -> RedisStore:
        """The store of the election that ``config`` describes, on ``client``."""
        return cls(
            client,
            lock_key=config.lock_key,
            info_key=config.info_key,
            fence_key=config.fence_key,
            channel=config.release_channel,
            clock=clock,
            min_replicas=config.min_replicas,
            waiting_key=config.waiting_key,
        )

    @property
    def client(self) -> Any:
        """The Redis client."""
        return self._client

    @property
    def channel(self) -> str:
        """The release channel."""
        return self._channel

    @property
    def hub(self) -> Hub | None:
        """The client's channel subscription (None for a client that cannot subscribe)."""
        return ChannelHub.for_client(self._client, translate, self._channel)

    async def _bounded(self, what: str, timeout: float, call: Callable[[Any], Awaitable[T]]) -> T:
        """``call(client)`` under ``timeout``, with redis errors translated."""
        client: Any = None
        try:
            async with self._clock.timeout(max(timeout, 0.0)):
                client = await resolve_client(self._client)
                return await call(client)
        except TimeoutError as exc:
            waiting = (
                f" (with min_replicas={self._min_replicas}, the wait for the replicas' "
                "acknowledgements may be what did not finish)"
                if self._min_replicas and what in _WRITES
                else ""
            )
            raise StoreUnavailableError(
                f"Redis did not answer within {timeout:.3g}s while {what}{waiting}"
            ) from exc
        except (rx.RedisError, OSError) as exc:
            error = translate(exc, what, self._keys)
            url = self._client if isinstance(self._client, UrlClient) else None
            if isinstance(exc, MasterNotFoundError) and url is not None and url.sentinel:
                error = StoreUnavailableError(
                    f"{error} (sentinels tried: {url.sentinel.describe()})"
                )
            elif isinstance(exc, rx.AskError) and is_cluster(client):
                error = StoreUnavailableError(
                    f"the election's slot moved while {what} ({exc}): trying again"
                )
            elif isinstance(exc, rx.AskError) and url is not None:
                error = StoreError(
                    f"{error}. The URL's node did not say it is in a Redis Cluster (it refused "
                    "INFO cluster?): allow INFO for the election's user, or pass a RedisCluster "
                    "client"
                )
            raise error from exc

    @staticmethod
    async def _script(client: Any, src: str, nkeys: int, *args: object) -> Any:
        try:
            return await client.evalsha(_sha(src), nkeys, *args)
        except rx.NoScriptError:
            return await client.eval(src, nkeys, *args)

    async def _write(self, client: Any, timeout: float, src: str, nkeys: int, *args: Any) -> Any:
        """Run a script that may grant or extend a term; with ``min_replicas``, also WAIT.

        Returns the script's reply, or ``(reply, replicas that acknowledged, WAIT's ms)`` with
        ``min_replicas``. WAIT counts the acknowledgements of its own connection's writes, so
        it must follow the script on the script's connection: one pipeline on a single server
        (or Sentinel's master), one connection of the slot's node on a cluster. Either way it
        costs no extra round trip.
        """
        if self._min_replicas == 0:
            return await self._script(client, src, nkeys, *args)
        # Half the deadline: a server notices a WAIT's timeout on its next cron tick (100 ms
        # apart at the default hz 10), so the answer can come that much later than asked.
        wait_ms = max(1, int(timeout * 500))
        wait = ("WAIT", self._min_replicas, wait_ms)
        node = client.get_node_from_key(args[0]) if is_cluster(client) else None
        cache_key = (getattr(node, "name", None), src)
        # A WAIT after a script the server did not know would wait for nothing, and the retry
        # would wait again: the first call of each script on a server sends its body (EVAL
        # caches it).
        for cached in (True, False) if cache_key in self._cached else (False,):
            script = ("EVALSHA", _sha(src)) if cached else ("EVAL", src)
            command = (*script, nkeys, *args)
            if node is None:
                pipe = client.pipeline(transaction=False)
                pipe.execute_command(*command)
                pipe.execute_command(*wait)
                reply, acknowledged = await pipe.execute(raise_on_error=False)
            else:
                reply, acknowledged = await self._on_node(client, node, (command, wait))
            if cached and isinstance(reply, rx.NoScriptError):
                continue  # the server lost its script cache (a restart)
            for result in (reply, acknowledged):
                if isinstance(result, BaseException):
                    raise result
            if len(self._cached) >= _CACHED_MAX:  # eval scripts made on the fly: stay bounded
                self._cached.clear()
            self._cached.add(cache_key)
            return reply, int(acknowledged), wait_ms
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _on_node(client: Any, node: Any, commands: tuple[tuple[Any, ...], ...]) -> Any:
        """Send ``commands`` on one connection of the cluster ``node``; their replies, errors
        included. A redirection or a failing slot means the slot moved or its master failed:
        the cluster's map is refreshed and the call fails as transient, to be tried again (the
        cluster client's own retries would send the commands on different connections)."""
        connection = node.acquire_connection()
        replies: list[Any] = []
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except rx.ResponseError as exc:
                    replies.append(exc)
        except (rx.ConnectionError, rx.TimeoutError, OSError):
            with contextlib.suppress(Exception):
                await connection.disconnect()
            with contextlib.suppress(Exception):  # the node failed: learn who serves the slot
                await client.nodes_manager.initialize()
            raise
        except BaseException:  # a cancellation mid-read: the connection must not be reused
            with contextlib.suppress(Exception):
                await connection.disconnect()
            raise
        finally:
            release = getattr(node, "release", None)
            if release is not None:
                release(connection)
            else:  # redis-py before 5.1
                node._free.append(connection)
        if isinstance(replies[0], rx.AskError | rx.ClusterDownError | rx.TryAgainError):
            with contextlib.suppress(Exception):
                await client.nodes_manager.initialize()
            raise rx.TryAgainError(
                f"TRYAGAIN the election's slot is moving or failing over ({replies[0]})"
            )
        return replies

    def _missing(self, acknowledged: int, what: str, wait_ms: int) -> ReplicasMissingError:
        return ReplicasMissingError(
            f"only {acknowledged} of min_replicas={self._min_replicas} replicas acknowledged "
            f"{what} within {wait_ms} ms: it does not count until they do. Check that the "
            "replicas are connected (INFO replication), or lower min_replicas"
        )

    async def acquire(
        self,
        token: str,
        info_prefix: str,
        ttl_ms: int,
        *,
        unknown_tokens: tuple[str, ...],
        min_uptime_s: int,
        timeout: float,
        check_role: bool = False,
        announce: bool = True,
        priority: int = 0,
    ) -> AcquireResult:
        """Try to take the lock for a new term (see ``ACQUIRE``); a new term is announced on
        the election's channel unless ``announce`` is False. While the lock is held, the
        candidate's ``priority`` is recorded among those waiting."""
        reply = await self._bounded(
            "acquiring the lock",
            timeout,
            lambda client: self._write(
                client,
                timeout,
                ACQUIRE,
                4,
                *self._keys,
                self._waiting,
                token,
                ttl_ms,
                info_prefix,
                ",".join(unknown_tokens),
                0 if self._in_process else min_uptime_s,
                "1" if check_role and not self._in_process else "0",
                self._channel if announce else "",
                "1" if is_cluster(client) else "",
                priority,
            ),
        )
        acknowledged, wait_ms = None, 0
        if self._min_replicas:
            reply, acknowledged, wait_ms = reply
        kind = int(reply[0])
        if kind == 1:
            if acknowledged is not None and acknowledged < self._min_replicas:
                raise self._missing(acknowledged, "the new term", wait_ms)
            return Acquired(fencing_token=int(_text(reply[1])))
        if kind == 2:
            return HeldBack(wait_ms=int(reply[1]), uptime_s=int(reply[2]))
        top = reply[3] if len(reply) > 3 else None
        return Held(
            remaining_ms=int(reply[1]),
            holder_id=_holder_id(reply[2]),
            top_priority=int(top) if top not in (None, False) else None,
        )

    async def renew(self, token: str, info_json: str, ttl_ms: int, *, timeout: float) -> bool:
        """Extend our lease; False when the lock is no longer ours (see ``RENEW``)."""
        lock, info, _ = self._keys
        reply = await self._bounded(
            "renewing the lease",
            timeout,
            lambda client: self._write(
                client, timeout, RENEW, 2, lock, info, token, ttl_ms, info_json
            ),
        )
        if self._min_replicas:
            reply, acknowledged, wait_ms = reply
            if int(reply) == 1 and acknowledged < self._min_replicas:
                raise self._missing(acknowledged, "the renewal", wait_ms)
        return int(reply) == 1

    async def release(
        self,
        tokens: tuple[str, ...],
        instance_id: str,
        *,
        fencing_token: int | None = None,
        timeout: float,
    ) -> bool:
        """Delete the lock if it holds one of ``tokens`` and tell followers (see ``RELEASE``).

        ``fencing_token`` is the released term's, announced with the release; None when the
        releaser does not know it (an acquire whose reply was lost).

        Returns False when the lock held none of them.
        """
        joined = ",".join(tokens)
        fence = "" if fencing_token is None else str(fencing_token)
        reply = await self._bounded(
            "releasing the lock",
            timeout,
            lambda client: self._script(
                client,
                RELEASE,
                4,
                *self._keys,
                self._waiting,
                joined,
                self._channel,
                instance_id,
                fence,
                "1" if is_cluster(client) else "",
            ),
        )
        if isinstance(reply, list):
            logger.warning(
                "Released the lock, but Redis refused to announce it on %s (%s): followers take "
                "over at their next attempt, within lock_ttl, not at once. Grant PUBLISH on the "
                "channel",
                self._channel,
                _text(reply[1]),
            )
            return True
        return int(reply) == 1

    async def diagnose(self, *, timeout: float) -> StoreError | None:
        """Find a permanent cause behind a failed call, with one connection that never retries.

        A caller's client may retry (redis-py 8 retries ten times by default) and redis-py's
        AuthenticationError is a ConnectionError, so a wrong password can look like a server
        that does not answer in time. This opens one fresh connection with retries off, sends
        PING, and returns the permanent error it meets (authentication, permissions), or None.
        """
        client = self._client
        if isinstance(client, UrlClient):
            client = client.resolved
        pool = getattr(client, "connection_pool", None)
        make = getattr(pool, "make_connection", None)
        if make is None:  # RedisCluster and unknown clients: nothing to probe with
            return None
        try:
            conn = make()
        except Exception:
            return None
        conn.retry = Retry(NoBackoff(), 0)
        try:
            async with self._clock.timeout(timeout):
                await conn.connect()
                await conn.send_command("PING")
                await conn.read_response()
        except (rx.AuthenticationError, rx.AuthenticationWrongNumberOfArgsError) as exc:
            return translate(exc, "connecting")
        except rx.ResponseError as exc:
            return translate(exc, "connecting") if "NOPERM" in str(exc) else None
        except (rx.RedisError, OSError, TimeoutError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        return None

    async def read_info(self, *, timeout: float) -> LeaderInfo | None:
        """Read the leader-info record; None when no one leads.

        Raises:
            CorruptLeaderInfoError: the record is not a valid LeaderInfo.
        """
        raw = await self._bounded(
            "reading the leader info", timeout, lambda client: client.get(self._keys[1])
        )
        if raw is None:
            return None
        return self._parse_info(raw)

    async def read_state(self, *, timeout: float) -> tuple[LeaderInfo | None, int]:
        """Read the leader record and the lease left in ms, in one round trip (see ``READ``).

        Returns ``(None, ...)`` when no one leads; the lease left is 0 then.

        Raises:
            CorruptLeaderInfoError: the record is not a valid LeaderInfo.
        """
        lock, info, _ = self._keys
        raw, pttl = await self._bounded(
            "reading the leader", timeout, lambda client: self._script(client, READ, 2, lock, info)
        )
        if not raw:
            return None, 0
        return self._parse_info(raw), max(int(pttl), 0)

    async def request_step_down(self, instance_id: str, *, timeout: float) -> int:
        """Ask the leader ``instance_id`` to resign: publish ``S <instance id>`` on the
        election's channel (on a cluster, the shard channel, by a script routed to the slot).
        Returns how many subscribers received the request."""

        async def publish(client: Any) -> Any:
            message = f"S {instance_id}"
            if is_cluster(client):
                return await self._script(
                    client, STEP_DOWN, 1, self._keys[0], self._channel, message, "1"
                )
            return await client.publish(self._channel, message)

        return int(await self._bounded("asking the leader to step down", timeout, publish))

    async def fenced_write(
        self, write: FencedWrite, *, token: str, fencing_token: int, timeout: float
    ) -> tuple[bool, Any]:
        """Do ``write`` in one script that first checks that the term still holds (see
        ``_FENCED`` in ``_scripts.py``); with ``min_replicas``, a written reply also waits for
        the replicas' acknowledgements, as a renewal does.

        Returns ``(written, value)``: ``value`` is what an eval script returned (else None).

        Raises:
            CrossSlotError: on a Redis Cluster, a key is not in the election's slot.
            ReplicasMissingError: written on the primary, but fewer than ``min_replicas``
                replicas acknowledged it in time (a failover may lose it).
            StoreError: Redis refused the script or one of its commands.
        """
        lock, _, fence = self._keys
        src = fenced_eval(write.script) if write.kind == "eval" else _FENCED_SCRIPTS[write.kind]
        keys = (*write.keys, lock, fence)

        async def run(client: Any) -> Any:
            if is_cluster(client):
                self._check_slots(write.keys)
            return await self._write(
                client, timeout, src, len(keys), *keys, *write.args, token, str(fencing_token)
            )

        try:
            reply = await self._bounded("writing through the fence", timeout, run)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, rx.ClusterCrossSlotError) or str(cause).startswith("CROSSSLOT"):
                raise self._cross_slot(self._outside(write.keys) or write.keys) from cause
            wrong_credentials = isinstance(
                cause, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError
            )
            if (
                isinstance(exc, StoreAuthenticationError)
                and cause is not None
                and not (wrong_credentials)
            ):
                raise StoreAuthenticationError(
                    f"the Redis user may not write through the fence "
                    f"({', '.join(map(_text, write.keys)) or 'no keys'}): {cause}. Grant the "
                    "commands of the write (SET, HSET, DEL, or those the eval script calls) on "
                    "those keys, besides the election's own permissions (docs/security.md)"
                ) from cause
            if isinstance(exc, WrongKeyTypeError):
                raise WrongKeyTypeError(
                    f"a key written through the fence ({', '.join(map(_text, write.keys))}) "
                    f"holds a value of another type: {cause}"
                ) from cause
            raise
        if self._min_replicas:
            reply, acknowledged, wait_ms = reply
            if int(reply[0]) == 1 and acknowledged < self._min_replicas:
                raise ReplicasMissingError(
                    f"the fenced write was applied on the primary, but only {acknowledged} of "
                    f"min_replicas={self._min_replicas} replicas acknowledged it within {wait_ms} "
                    "ms: a failover before they do may lose it. Check that the replicas are "
                    "connected (INFO replication), or lower min_replicas"
                )
        written = int(reply[0]) == 1
        return written, (reply[1] if written and len(reply) > 1 else None)

    def _check_slots(self, keys: tuple[str | bytes, ...]) -> None:
        outside = self._outside(keys)
        if outside:
            raise self._cross_slot(outside[:1])

    def _outside(self, keys: tuple[str | bytes, ...]) -> tuple[str | bytes, ...]:
        """The keys that are not in the election's cluster slot."""
        slot = key_slot(self._keys[2].encode())
        return tuple(k for k in keys if key_slot(k.encode() if isinstance(k, str) else k) != slot)

    def _cross_slot(self, keys: tuple[str | bytes, ...]) -> CrossSlotError:
        tag = _hash_tag(self._keys[2]) or ""
        named = ", ".join(repr(_text(key)) for key in keys) or "the keys"
        return CrossSlotError(
            f"{named} is not in the election's Redis Cluster hash slot "
            f"({key_slot(self._keys[2].encode())}): a fenced write checks the fence key and "
            "writes in one script, which runs on one node. Give the key the election's hash tag "
            f"{{{tag}}}, e.g. 'myapp:{{{tag}}}:progress' (with the default key names the tag is "
            'the election\'s name: f"myapp:{{{config.name}}}:progress"). Data that cannot live '
            "in that slot can carry fence.token to a resource that checks it (docs/recipes.md, "
            "fencing tokens in a database)"
        )

    def _parse_info(self, raw: Any) -> LeaderInfo:
        try:
            return LeaderInfo.model_validate_json(raw)
        except ValidationError as exc:
            raise CorruptLeaderInfoError(
                f"the leader-info record at {self._keys[1]!r} is not valid LeaderInfo JSON "
                f"({exc.error_count()} error(s): {exc.errors(include_url=False)[0]['msg']}); "
                f"it expires with the lease, or delete it: {_text(raw)[:200]!r}"
            ) from exc


def _holder_id(raw: object) -> str | None:
    if not raw:
        return None
    try:
        return LeaderInfo.model_validate_json(
            raw if isinstance(raw, bytes | str) else str(raw)
        ).instance_id
    except ValidationError:
        logger.warning(
            "Leader info record is corrupt; ignoring it", extra={"raw": _text(raw)[:200]}
        )
        return None


def redis_argument(target: Any, owner: str) -> tuple[str | None, Any]:
    """Split the ``redis`` argument of ``owner`` (a class name) into ``(url, client)``.

    Raises:
        ConfigurationError: ``redis`` is a synchronous client, or not a Redis client or URL.
    """
    if isinstance(target, str):
        return target, None
    if isinstance(target, _redis_sync.cluster.RedisCluster):
        raise ConfigurationError(
            f"{owner} needs an asyncio client: pass redis.asyncio.RedisCluster(...), not "
            "redis.cluster.RedisCluster(...), or a redis:// URL of a cluster node"
        )
    if isinstance(target, _redis_sync.Redis):
        raise ConfigurationError(
            f"{owner} needs an asyncio client: pass redis.asyncio.Redis(...), not "
            "redis.Redis(...), or a redis:// URL"
        )
    if callable(getattr(target, "evalsha", None)):
        return None, target
    raise ConfigurationError(
        "redis must be a redis.asyncio.Redis or RedisCluster client or a URL (redis://, "
        "rediss://, unix://, redis+sentinel://), "
        f"got {type(target).__name__}"
    )
