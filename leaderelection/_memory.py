"""An in-memory lease store for tests: the scripts' rules, kept in Python, on a clock you drive.

:class:`MemoryServer` plays a Redis server (keys that expire by the clock, fencing counters,
channels, uptime for restart protection, and faults to inject); :class:`MemoryStore` is one
election's :class:`~leaderelection._store.Store` on it. With a :class:`~._clock.FakeClock`, an
election runs without Redis and without waiting for real time::

    clock = FakeClock()
    server = MemoryServer(clock)
    election = LeaderElection(None, config, clock=clock, store=server.store(config))
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ._channel import Listener, Message, notify, parse_message
from ._clock import Clock, MonotonicClock
from ._config import ElectionConfig
from ._exceptions import (
    CorruptLeaderInfoError,
    StoreError,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from ._info import LeaderInfo
from ._store import Acquired, AcquireResult, FencedWrite, Held, HeldBack, Store

__all__ = ["MemoryServer", "MemoryStore"]

T = TypeVar("T")


@dataclass(slots=True)
class _Entry:
    value: str
    expires_at: float  # on the server's clock


class MemoryServer:
    """A Redis stand-in in this process, for elections on a clock the test drives.

    Args:
        clock: The clock keys expire by; give the elections the same one.
        uptime: Seconds the server has been up (restart protection holds a young server back).

    Faults (set them, and undo them, between steps of a test):
        ``unavailable``: every call fails at once with ``StoreUnavailableError``.
        ``hanging``: every call hangs until its deadline (then ``StoreUnavailableError``).
        :meth:`restart`: the server restarts and loses its data.
    """

    def __init__(self, clock: Clock | None = None, *, uptime: float = 3600.0) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock()
        self._started_at = self.clock.now() - uptime
        self._data: dict[str, _Entry] = {}
        self._hashes: dict[str, dict[str, str]] = {}  # written through fences; never expire
        self._counters: dict[str, int] = {}
        self._listeners: dict[str, set[Listener]] = {}
        self.unavailable = False
        self.hanging = False
        self.commands = 0  # round trips served, for tests that count them

    def store(self, config: ElectionConfig) -> MemoryStore:
        """The store of the election that ``config`` describes, on this server."""
        return MemoryStore(self, config)

    @property
    def uptime(self) -> int:
        """Whole seconds since the server (re)started, as INFO reports them."""
        return int(self.clock.now() - self._started_at)

    def restart(self) -> None:
        """Restart with no data: every key and counter is gone, uptime starts again at 0."""
        self._data.clear()
        self._hashes.clear()
        self._counters.clear()
        self._started_at = self.clock.now()

    def get(self, key: str) -> str | None:
        """A key's value, or None when it is missing or expired."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self.clock.now():
            del self._data[key]
            return None
        return entry.value

    def pttl_ms(self, key: str) -> int:
        """Milliseconds a key has left, -2 when it is missing (Redis's PTTL)."""
        if self.get(key) is None:
            return -2
        return max(int((self._data[key].expires_at - self.clock.now()) * 1000), 0)

    def set(self, key: str, value: str, ttl_ms: float | None) -> None:
        """Set a key that expires ``ttl_ms`` from now (None: never)."""
        expires = math.inf if ttl_ms is None else self.clock.now() + ttl_ms / 1000
        self._hashes.pop(key, None)
        self._data[key] = _Entry(value, expires)

    def hgetall(self, key: str) -> dict[str, str]:
        """A hash's fields and values (empty when there is no such hash)."""
        return dict(self._hashes.get(key, {}))

    def hset(self, key: str, mapping: dict[str, str]) -> None:
        """Set fields of a hash.

        Raises:
            WrongKeyTypeError: ``key`` holds a string.
        """
        if self.get(key) is not None:
            raise WrongKeyTypeError(f"{key!r} holds a string, not a hash")
        self._hashes.setdefault(key, {}).update(mapping)

    def delete(self, *keys: str) -> None:
        """Delete keys (a missing one is fine)."""
        for key in keys:
            self._data.pop(key, None)
            self._hashes.pop(key, None)

    def publish(self, channel: str, text: str) -> int:
        """Deliver ``text`` to the channel's listeners on the loop's next turn, as a server's
        push would arrive; returns how many listen."""
        listeners = self._listeners.get(channel, set())
        message = parse_message(text)
        if message is not None and listeners:
            asyncio.get_running_loop().call_soon(_deliver, set(listeners), message, channel)
        return len(listeners)

    async def call(self, what: str, timeout: float, func: Callable[[], T]) -> T:
        """One round trip: ``func()`` under the faults in force, bounded by ``timeout``."""
        if self.unavailable:
            raise StoreUnavailableError(
                f"the memory server is unavailable while {what}"
            ) from ConnectionRefusedError("the memory server is unavailable")
        try:
            async with self.clock.timeout(max(timeout, 0.0)):
                await asyncio.sleep(0)  # a round trip lets other tasks run
                while self.hanging:
                    await _forever()
        except TimeoutError as exc:
            raise StoreUnavailableError(
                f"the memory server did not answer within {timeout:.3g}s while {what}"
            ) from exc
        self.commands += 1
        return func()

    # The channel subscription (the Hub protocol): always active, in this process.

    async def add(self, channel: str, listener: Listener) -> None:
        """Call ``listener`` with every message on ``channel``."""
        self._listeners.setdefault(channel, set()).add(listener)

    async def remove(self, channel: str, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._listeners.get(channel, set()).discard(listener)

    def is_active(self, channel: str) -> bool:
        """Always True: an in-process subscription is live at once."""
        return True

    async def wait_active(self, channel: str, *, timeout: float) -> bool:
        """Always True at once."""
        return True

    def listening(self, channel: str) -> int:
        """1: each listener stands for a connection of its own (the release's subscriber count
        counts listeners)."""
        return 1


def _deliver(listeners: set[Listener], message: Message, channel: str) -> None:
    notify(listeners, message, channel)  # isolated: one listener that raises stops no other


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


class MemoryStore:
    """One election's lease on a :class:`MemoryServer`: the Lua scripts' rules in Python."""

    def __init__(self, server: MemoryServer, config: ElectionConfig) -> None:
        self.server = server
        self._lock, self._info, self._fence = config.lock_key, config.info_key, config.fence_key
        self._waiting = config.waiting_key
        self._channel = config.release_channel

    @property
    def channel(self) -> str:
        """The election's channel."""
        return self._channel

    @property
    def hub(self) -> MemoryServer:
        """The channel subscription: the server itself."""
        return self.server

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
        """See ``ACQUIRE`` in ``_scripts.py``."""
        s = self.server

        def script() -> AcquireResult:
            holder = s.get(self._lock)
            if holder and holder not in unknown_tokens:
                top = s.get(self._waiting)
                if top is None or priority >= int(top):
                    s.set(self._waiting, str(priority), 2 * ttl_ms)
                    top = str(priority)
                return Held(s.pttl_ms(self._lock), _holder_id(s.get(self._info)), int(top))
            if holder is None and min_uptime_s > 0 and s.uptime < min_uptime_s:
                return HeldBack((min_uptime_s - s.uptime) * 1000, s.uptime)
            fence = s._counters[self._fence] = s._counters.get(self._fence, 0) + 1
            info = f'{info_prefix},"fencing_token":{fence}}}'
            s.set(self._lock, token, ttl_ms)
            s.set(self._info, info, ttl_ms)
            if announce:
                s.publish(self._channel, "A " + info)
            return Acquired(fence)

        return await s.call("acquiring the lock", timeout, script)

    async def renew(self, token: str, info_json: str, ttl_ms: int, *, timeout: float) -> bool:
        """See ``RENEW``."""
        s = self.server

        def script() -> bool:
            if s.get(self._lock) != token:
                return False
            s.set(self._lock, token, ttl_ms)
            s.set(self._info, info_json, ttl_ms)
            return True

        return await s.call("renewing the lease", timeout, script)

    async def release(
        self,
        tokens: tuple[str, ...],
        instance_id: str,
        *,
        fencing_token: int | None = None,
        timeout: float,
    ) -> bool:
        """See ``RELEASE``."""
        s = self.server

        def script() -> bool:
            holder = s.get(self._lock)
            if not holder or holder not in tokens:
                return False
            fence = fencing_token if fencing_token is not None else s._counters.get(self._fence)
            s.delete(self._lock, self._info)
            subscribers = len(s._listeners.get(self._channel, ()))
            top = s.get(self._waiting) or ""
            s.publish(self._channel, f"R {fence or 0} {instance_id} {subscribers} {top}")
            return True

        return await s.call("releasing the lock", timeout, script)

    async def read_info(self, *, timeout: float) -> LeaderInfo | None:
        """The leader record, or None."""
        info, _ = await self.read_state(timeout=timeout)
        return info

    async def read_state(self, *, timeout: float) -> tuple[LeaderInfo | None, int]:
        """The leader record and the lease left in ms."""
        s = self.server
        raw, pttl = await s.call(
            "reading the leader", timeout, lambda: (s.get(self._info), s.pttl_ms(self._lock))
        )
        if not raw:
            return None, 0
        try:
            return LeaderInfo.model_validate_json(raw), max(pttl, 0)
        except ValueError as exc:
            raise CorruptLeaderInfoError(f"the leader record is not valid: {raw!r}") from exc

    async def request_step_down(self, instance_id: str, *, timeout: float) -> int:
        """Publish ``S <instance id>``; returns how many listen."""
        s = self.server
        return await s.call(
            "asking the leader to step down",
            timeout,
            lambda: s.publish(self._channel, f"S {instance_id}"),
        )

    async def diagnose(self, *, timeout: float) -> StoreError | None:
        """Nothing to diagnose in memory."""
        return None

    async def fenced_write(
        self, write: FencedWrite, *, token: str, fencing_token: int, timeout: float
    ) -> tuple[bool, Any]:
        """See ``_FENCED`` in ``_scripts.py``: ``set``, ``hset`` and ``delete`` only.

        Raises:
            StoreError: an ``eval`` (the memory store runs no Lua).
        """
        if write.kind == "eval":
            raise StoreError(
                "the in-memory store runs no Lua: fence.eval() needs Redis (fence.set(), "
                "fence.hset() and fence.delete() work here)"
            )
        s = self.server

        def script() -> tuple[bool, Any]:
            if s._counters.get(self._fence) != fencing_token or s.get(self._lock) != token:
                return False, None
            keys = [_text(key) for key in write.keys]
            args = [_text(arg) for arg in write.args]
            if write.kind == "set":
                s.set(keys[0], args[0], float(args[1]) if args[1] else None)
            elif write.kind == "hset":
                s.hset(keys[0], dict(zip(args[::2], args[1::2], strict=True)))
            else:
                s.delete(*keys)
            return True, None

        return await s.call("writing through the fence", timeout, script)


def _text(value: str | bytes | int | float) -> str:
    """A value as Redis stores it: bytes decoded (bytes that are not UTF-8, a pickle say, with
    surrogate escapes: ``text.encode(errors="surrogateescape")`` gives them back), a float as
    redis-py sends it."""
    if isinstance(value, bytes):
        return value.decode(errors="surrogateescape")
    return repr(value) if isinstance(value, float) else str(value)


def _holder_id(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    holder = value.get("instance_id") if isinstance(value, dict) else None
    return holder if isinstance(holder, str) else None


def _is_a_store(store: MemoryStore) -> Store:
    return store  # mypy checks here that MemoryStore keeps to the Store protocol
