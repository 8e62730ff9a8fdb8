"""The lease store: every Redis command the election sends, and every Lua script, lives here.

Each state change is one Lua script and one round trip (EVALSHA, falling back to EVAL when the
server answers NOSCRIPT, which also caches the script again). The lock holds a random per-term
token and is only renewed or deleted by a script that compares it, so a candidate can never extend
or release a term that is not its own.

Every call runs under a deadline given by the caller (``asyncio.timeout``), whatever retry policy
the client has. Redis errors are translated into :mod:`leaderelection._exceptions` here and nowhere
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

import redis as _redis_sync
import redis.asyncio
from pydantic import ValidationError
from redis import exceptions as rx
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._clock import Flag
from ._config import ElectionConfig
from ._exceptions import (
    ConfigurationError,
    CorruptLeaderInfoError,
    StoreAuthenticationError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from ._info import LeaderInfo

__all__ = [
    "AcquireResult",
    "Acquired",
    "Held",
    "HeldBack",
    "RedisStore",
    "ReleaseHub",
    "client_from_url",
    "redis_argument",
]

logger = logging.getLogger("leaderelection")

T = TypeVar("T")

# KEYS[1] lock key, KEYS[2] info key, KEYS[3] fence key
# ARGV[1] the new term's random token
# ARGV[2] lease length in milliseconds
# ARGV[3] the info record as JSON without its closing brace (the script adds the fencing token)
# ARGV[4] tokens of ours the lock may still hold, comma-separated, or "" (such a lock is taken over;
#         an empty lock value is never ours)
# ARGV[5] restart protection: the server uptime in seconds needed before a free lock is granted
#         (a restarted server may have lost, or restored from an older snapshot, the lock of a
#         leader that is still alive); 0 disables it
# ARGV[6] "1" to refuse with READONLY when the server is a replica (checked on the first attempt,
#         since a replica only shows it is read-only once a write is tried)
# ARGV[7] the election's channel, on which the new term is announced ("A " and the info JSON) for
#         observers; "" to announce nothing
# Returns {1, fencing token (string), lease ms}         acquired
#         {0, remaining lease ms, info JSON or false}   held by someone else
#         {2, wait ms, server uptime s}                 held back by restart protection
# The fencing token is max(previous + 1, server time in microseconds), kept as a Redis integer
# string: Lua numbers are doubles and would print a 16-digit token in exponent form.
ACQUIRE: Final = """
if ARGV[6] == '1' and string.find(redis.call('INFO', 'replication'), 'role:slave', 1, true) then
  return redis.error_reply("READONLY You can't write against a read only replica.")
end
local holder = redis.call('GET', KEYS[1])
local ours = holder and holder ~= ''
  and string.find(',' .. ARGV[4] .. ',', ',' .. holder .. ',', 1, true)
if holder and not ours then
  return {0, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}
end
local need = tonumber(ARGV[5])
if not holder and need > 0 then
  local uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
  if uptime < need then
    return {2, (need - uptime) * 1000, uptime}
  end
end
local fence = redis.call('GET', KEYS[3])
if fence and not tonumber(fence) then
  return redis.error_reply('WRONGTYPE leaderelection fence key ' .. KEYS[3] .. ' is not an integer')
end
local t = redis.call('TIME')
local now_us = t[1] .. string.format('%06d', tonumber(t[2]))
local token
if fence and tonumber(fence) >= tonumber(now_us) then
  redis.call('INCR', KEYS[3])
  token = redis.call('GET', KEYS[3])
else
  redis.call('SET', KEYS[3], now_us)
  token = now_us
end
local info = ARGV[3] .. ',"fencing_token":' .. token .. '}'
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], info, 'PX', ARGV[2])
if ARGV[7] ~= '' then
  redis.pcall('PUBLISH', ARGV[7], 'A ' .. info)  -- for observers only: a refusal changes nothing
end
return {1, token, tonumber(ARGV[2])}
"""

# KEYS[1] lock key, KEYS[2] info key
# ARGV[1] our term's token, ARGV[2] lease length in ms, ARGV[3] the new info record (JSON)
# Returns 1 when the lease was extended, 0 when the lock is no longer ours.
RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] lock key, KEYS[2] info key
# ARGV[1] tokens of ours, comma-separated, ARGV[2] the election's channel, ARGV[3] our instance id
# Publishes "R <fencing token> <instance id>" (the token read from the info record, "0" if absent).
# Returns 1 when the lock held one of them and is now deleted (and followers were told), 0 when
# it held none, {3, error} when it was deleted but the server refused the PUBLISH (an ACL).
RELEASE: Final = """
local holder = redis.call('GET', KEYS[1])
local ours = holder and holder ~= ''
  and string.find(',' .. ARGV[1] .. ',', ',' .. holder .. ',', 1, true)
if ours then
  local info = redis.call('GET', KEYS[2])
  local fence = info and string.match(info, '"fencing_token":(%d+)') or '0'
  redis.call('DEL', KEYS[1], KEYS[2])
  local published = redis.pcall('PUBLISH', ARGV[2], 'R ' .. fence .. ' ' .. ARGV[3])
  if type(published) == 'table' and published.err then
    return {3, published.err}
  end
  return 1
end
return 0
"""

# KEYS[1] lock key, KEYS[2] info key
# Returns {info JSON or false, remaining lease in ms (PTTL: -2 when there is no lock)}
READ: Final = """
return {redis.call('GET', KEYS[2]), redis.call('PTTL', KEYS[1])}
"""

_SHA: Final = {
    src: hashlib.sha1(src.encode()).hexdigest() for src in (ACQUIRE, RENEW, RELEASE, READ)
}


@dataclass(frozen=True, slots=True)
class Acquired:
    """The lock is ours: a new term with this fencing token."""

    fencing_token: int


@dataclass(frozen=True, slots=True)
class Held:
    """Someone else holds the lock for ``remaining_ms`` more (negative: no expiry set)."""

    remaining_ms: int
    holder_id: str | None


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Restart protection: the server started too recently to grant a term safely."""

    wait_ms: int
    uptime_s: int


AcquireResult = Acquired | Held | HeldBack


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
    if isinstance(exc, rx.AuthenticationError | rx.AuthenticationWrongNumberOfArgsError):
        return StoreAuthenticationError(
            f"Redis refused the credentials while {what}: {message}. Check the password and user "
            "in the URL or client"
        )
    if isinstance(exc, rx.NoPermissionError) or any(m in message for m in _NO_PERMISSION):
        return StoreAuthenticationError(
            f"the Redis user lacks a permission needed while {what}: {message}. Grant EVALSHA, "
            "EVAL, GET, SET, PEXPIRE, PTTL, DEL, INCR, PUBLISH, SUBSCRIBE, UNSUBSCRIBE, INFO and "
            "TIME on the election's keys and channel (docs/security.md has the exact ACL)"
        )
    if isinstance(exc, rx.ReadOnlyError) or "READONLY" in message:
        return StoreReadOnlyError(
            f"Redis is a read-only replica ({message}) while {what}: point the election at the "
            "primary"
        )
    if "WRONGTYPE" in message:
        return WrongKeyTypeError(
            f"an election key ({', '.join(keys) or 'unknown'}) holds a value of another type while "
            f"{what}: {message}. Delete the key or choose another name/key_prefix"
        )
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | OSError | TimeoutError):
        return StoreUnavailableError(f"Redis is unavailable while {what}: {message or type(exc)}")
    return StoreError(f"Redis answered an error while {what}: {message}")


class RedisStore:
    """The lease of one election on one Redis client (``redis.asyncio.Redis`` or RedisCluster)."""

    def __init__(
        self,
        client: Any,
        *,
        lock_key: str,
        info_key: str,
        fence_key: str,
        channel: str,
    ) -> None:
        self._client = client
        self._keys = (lock_key, info_key, fence_key)
        self._channel = channel
        # An in-process fakeredis server dies with the process and cannot lose data under a live
        # leader, and it has no INFO: restart protection does not apply to it.
        self._in_process = type(client).__module__.startswith("fakeredis")

    @classmethod
    def for_config(cls, client: Any, config: ElectionConfig) -> RedisStore:
        """The store of the election that ``config`` describes, on ``client``."""
        return cls(
            client,
            lock_key=config.lock_key,
            info_key=config.info_key,
            fence_key=config.fence_key,
            channel=config.release_channel,
        )

    @property
    def client(self) -> Any:
        """The Redis client."""
        return self._client

    @property
    def channel(self) -> str:
        """The release channel."""
        return self._channel

    async def _bounded(self, what: str, timeout: float, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                return await call()
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"Redis did not answer within {timeout:.3g}s while {what}"
            ) from exc
        except (rx.RedisError, OSError) as exc:
            raise translate(exc, what, self._keys) from exc

    async def _script(self, src: str, nkeys: int, *args: object) -> Any:
        try:
            return await self._client.evalsha(_SHA[src], nkeys, *args)
        except rx.NoScriptError:
            return await self._client.eval(src, nkeys, *args)

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
    ) -> AcquireResult:
        """Try to take the lock for a new term (see ``ACQUIRE``); a new term is announced on
        the election's channel unless ``announce`` is False."""
        reply = await self._bounded(
            "acquiring the lock",
            timeout,
            lambda: self._script(
                ACQUIRE,
                3,
                *self._keys,
                token,
                ttl_ms,
                info_prefix,
                ",".join(unknown_tokens),
                0 if self._in_process else min_uptime_s,
                "1" if check_role and not self._in_process else "0",
                self._channel if announce else "",
            ),
        )
        kind = int(reply[0])
        if kind == 1:
            return Acquired(fencing_token=int(_text(reply[1])))
        if kind == 2:
            return HeldBack(wait_ms=int(reply[1]), uptime_s=int(reply[2]))
        return Held(remaining_ms=int(reply[1]), holder_id=_holder_id(reply[2]))

    async def renew(self, token: str, info_json: str, ttl_ms: int, *, timeout: float) -> bool:
        """Extend our lease; False when the lock is no longer ours (see ``RENEW``)."""
        lock, info, _ = self._keys
        reply = await self._bounded(
            "renewing the lease",
            timeout,
            lambda: self._script(RENEW, 2, lock, info, token, ttl_ms, info_json),
        )
        return int(reply) == 1

    async def release(self, tokens: tuple[str, ...], instance_id: str, *, timeout: float) -> bool:
        """Delete the lock if it holds one of ``tokens`` and tell followers (see ``RELEASE``).

        Returns False when the lock held none of them.
        """
        lock, info, _ = self._keys
        joined = ",".join(tokens)
        reply = await self._bounded(
            "releasing the lock",
            timeout,
            lambda: self._script(RELEASE, 2, lock, info, joined, self._channel, instance_id),
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
        pool = getattr(self._client, "connection_pool", None)
        make = getattr(pool, "make_connection", None)
        if make is None:  # RedisCluster and unknown clients: nothing to probe with
            return None
        try:
            conn = make()
        except Exception:
            return None
        conn.retry = Retry(NoBackoff(), 0)
        try:
            async with asyncio.timeout(timeout):
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
            "reading the leader info", timeout, lambda: self._client.get(self._keys[1])
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
            "reading the leader", timeout, lambda: self._script(READ, 2, lock, info)
        )
        if not raw:
            return None, 0
        return self._parse_info(raw), max(int(pttl), 0)

    async def request_step_down(self, instance_id: str, *, timeout: float) -> int:
        """Ask the leader ``instance_id`` to resign: publish ``S <instance id>`` on the
        election's channel. Returns how many subscribers received the request."""
        return int(
            await self._bounded(
                "asking the leader to step down",
                timeout,
                lambda: self._client.publish(self._channel, f"S {instance_id}"),
            )
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


# Called with each message published on the channel, or with None after a reconnect (when a
# message may have been missed).
ReleaseListener = Callable[[str | None], None]
_READ_TIMEOUT: Final = 1.0  # seconds a pub/sub read waits before the listener looks around


class ReleaseHub:
    """One pub/sub subscription per Redis client, shared by every election on that client.

    A thousand candidates in one process then cost one connection, not a thousand. The listener
    task lives while at least one election is subscribed; the last ``remove`` stops it and waits
    for it. After a reconnect every listener is called, since a release may have been missed.
    """

    _hubs: ClassVar[weakref.WeakKeyDictionary[Any, ReleaseHub]] = weakref.WeakKeyDictionary()

    def __init__(self, client: Any) -> None:
        self._client = client
        self._listeners: dict[str, set[ReleaseListener]] = {}
        self._active: dict[str, Flag] = {}  # set once the server confirmed the subscription
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    @classmethod
    def for_client(cls, client: Any) -> ReleaseHub | None:
        """The hub of ``client``, or None when the client cannot subscribe (RedisCluster)."""
        if not callable(getattr(client, "pubsub", None)):
            return None
        try:
            hub = cls._hubs.get(client)
        except TypeError:  # not weak-referenceable
            return cls(client)
        if hub is None:
            hub = cls._hubs[client] = cls(client)
        return hub

    async def add(self, channel: str, listener: ReleaseListener) -> None:
        """Call ``listener`` with every message published on ``channel`` (and with None after a
        reconnect, when messages may have been missed)."""
        listeners = self._listeners.setdefault(channel, set())
        listeners.add(listener)
        self._active.setdefault(channel, Flag())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._listen(), name="leaderelection-release-listener"
            )
        elif len(listeners) == 1 and self._pubsub is not None:
            with contextlib.suppress(rx.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._pubsub.subscribe(channel)

    def is_active(self, channel: str) -> bool:
        """Whether the server has confirmed the subscription to ``channel``."""
        flag = self._active.get(channel)
        return flag is not None and flag.is_set()

    async def wait_active(self, channel: str, *, timeout: float) -> bool:
        """Wait up to ``timeout`` for the subscription to ``channel``; False if it did not come."""
        flag = self._active.get(channel)
        if flag is None:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await flag.wait()
        return flag.is_set()

    async def remove(self, channel: str, listener: ReleaseListener) -> None:
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
                            await self._pubsub.unsubscribe(channel)
        if not self._listeners:
            # The registry's value holds the client strongly: drop the entry with the last
            # listener, or every client ever used would stay alive.
            with contextlib.suppress(TypeError):
                if self._hubs.get(self._client) is self:
                    del self._hubs[self._client]
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
                logger.warning("The release listener did not stop; leaving it to end on its own")

    def _notify(self, channel: str, message: str | None) -> None:
        for listener in list(self._listeners.get(channel, ())):
            listener(message)

    async def _listen(self) -> None:
        backoff = 0.05
        reconnect = warned = False
        try:
            while self._listeners:
                pubsub = self._client.pubsub()
                self._pubsub = pubsub
                conn: Any = None
                retry: Any = None
                try:
                    await pubsub.subscribe(*self._listeners)
                    # A client with retries would reconnect and resubscribe inside a read without
                    # telling us, and a release published meanwhile would be lost unnoticed: turn
                    # retries off on this connection, so that every loss reaches the code below.
                    conn = getattr(pubsub, "connection", None)
                    retry = getattr(conn, "retry", None)
                    if retry is not None:
                        conn.retry = Retry(NoBackoff(), 0)
                    if reconnect:
                        for channel in list(self._listeners):
                            self._notify(channel, None)
                    backoff = 0.05
                    while self._listeners:
                        message = await pubsub.get_message(timeout=_READ_TIMEOUT)
                        if message is None:
                            continue
                        channel = _text(message["channel"])
                        if message.get("type") == "message":
                            self._notify(channel, _text(message["data"]))
                        elif message.get("type") == "subscribe" and channel in self._active:
                            self._active[channel].set()
                except (rx.RedisError, OSError) as exc:
                    error = translate(exc, "subscribing to the release channel")
                    if isinstance(error, StoreAuthenticationError) and not warned:
                        warned = True
                        logger.warning(
                            "Release channel subscription refused (%s): followers will take over "
                            "only when a lease expires, not at once on release",
                            error,
                        )
                    else:
                        logger.debug("Release subscription lost, reconnecting: %s", exc)
                finally:
                    self._pubsub = None
                    for flag in self._active.values():
                        flag.clear()
                    if conn is not None and retry is not None:
                        conn.retry = retry  # the connection goes back to the client's pool
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await asyncio.shield(close_client(pubsub))
                reconnect = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0 if warned else 2.0)
        except asyncio.CancelledError:
            pass


async def close_client(client: Any) -> None:
    """Close a redis-py asyncio client or pub/sub: ``aclose()`` where redis-py has it (5.0.1+),
    else ``close()``; nothing for an object with neither."""
    closer = getattr(client, "aclose", None) or getattr(client, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result


def client_from_url(url: str, call_timeout: float) -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` whose connects are bounded by ``call_timeout``."""
    options: dict[str, Any] = {
        "socket_connect_timeout": max(call_timeout, 0.1),
        "health_check_interval": 0,
    }
    if not url.lower().startswith("unix:"):
        options["socket_keepalive"] = True  # TCP only: a Unix socket connection refuses it
    try:
        return redis.asyncio.Redis.from_url(url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot use Redis URL {_redact(url)!r}: {exc}. Expected redis://[[user]:password@]"
            "host[:port][/db], rediss://... or unix:///path/to/socket"
        ) from exc


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def redis_argument(target: Any, owner: str) -> tuple[str | None, Any]:
    """Split the ``redis`` argument of ``owner`` (a class name) into ``(url, client)``.

    Raises:
        ConfigurationError: ``redis`` is a synchronous client, or not a Redis client or URL.
    """
    if isinstance(target, str):
        return target, None
    if isinstance(target, _redis_sync.Redis):
        raise ConfigurationError(
            f"{owner} needs an asyncio client: pass redis.asyncio.Redis(...), not "
            "redis.Redis(...), or a redis:// URL"
        )
    if callable(getattr(target, "evalsha", None)):
        return None, target
    raise ConfigurationError(
        "redis must be a redis.asyncio.Redis or RedisCluster client or a redis:// URL, "
        f"got {type(target).__name__}"
    )
