"""Fenced writes to Redis: a term's writes are refused from the moment its term is over.

A fencing token is only useful if the resource checks it. For the commonest resource, Redis
itself, a :class:`Fence` does the check: ``LeaderElection.fence()`` binds one to the current
term, and each of its writes is one Lua script that writes only if

* the election's fence key holds exactly this term's fencing token (no newer term was granted;
  a missing fence key, on a server that lost its data, holds no term), and
* the election's lock still holds this term's random token (the lease has not ended: expired,
  released by ``resign()`` or ``stop()``, taken over).

Before any round trip, the fence also checks locally that its term is still this instance's
current one and that the local lease has not run out (``is_leader``): a ``Fence`` kept past its
term never writes, even while Redis would still accept it. A refused write returns False (or a
:class:`FenceResult` that is falsy) and changes nothing.

The guard keys and arguments go after the caller's, so that ``KEYS[1]`` and ``ARGV[1]`` of a
script given to :meth:`Fence.eval` are the caller's own (see ``fenced_eval`` in ``_scripts.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from ._config import ElectionConfig
from ._store import FencedWrite

__all__ = ["Fence", "FenceResult", "FenceWriter", "SyncFence", "election_keys"]

T = TypeVar("T")

Key = str | bytes
"""A Redis key, as redis-py takes it."""

Value = str | bytes | int | float
"""A value to write, as redis-py encodes it (``bool`` is refused, as redis-py does)."""


@dataclass(frozen=True, slots=True)
class FenceResult:
    """What :meth:`Fence.eval` did: truthy exactly when the script ran.

    Attributes:
        written: True when the term still held and the script ran; False when it was refused
            (a newer term exists, the lease ended, or the fence's term is over locally).
        value: What the script returned, converted as Redis converts a script's reply (a
            number to ``int`` with its fraction cut, a string to ``bytes`` or ``str`` as the
            client decodes, a table to a ``list`` up to its first nil, ``false`` and nil to
            None, ``true`` to 1); None when not written.
    """

    written: bool
    value: Any = None

    def __bool__(self) -> bool:
        return self.written


def election_keys(config: ElectionConfig) -> tuple[str, ...]:
    """The keys of the election itself, which a fence refuses to write."""
    return (config.lock_key, config.info_key, config.fence_key, config.waiting_key)


class FenceWriter(Protocol):
    """Where a fence's writes go: the election's store (or a test double's stand-in)."""

    async def fenced_write(
        self, write: FencedWrite, *, token: str, fencing_token: int, timeout: float
    ) -> tuple[bool, Any]:
        """Do ``write`` if the term still holds; ``(written, value)``."""
        ...


class Fence:
    """The writes of one term, refused from the moment the term is over.

    Made by :meth:`leaderelection.LeaderElection.fence` during a term; never made directly.
    Each write checks, in one Lua script with the write itself, that the election's fence key
    holds exactly :attr:`token` and that the lock still holds this term; the fence first checks
    locally that its term is still this instance's current term. A write returns True when
    written and False when refused, which happens once a newer term exists or the term's lease
    has ended, and leaves the data as it was. False means the term is over: stop the work and
    leave it to the next leader. A fence kept past its term (by a task that ignored its
    cancellation, after ``resign()`` or ``stop()``) returns False at once, without a round
    trip, even while Redis would still take the write.

    The fence key is compared as text (tokens have 16 digits, more than a Lua number holds
    exactly), and a missing fence key, on a server that lost its data, holds no term.

    With ``leaderelection.testing.MemoryStore``, ``set``, ``hset`` and ``delete`` keep the
    same rules in memory, and ``eval`` raises ``StoreError`` (there is no Lua there). The
    fences of the test doubles write into ``FakeElectionGroup.data`` and record each ``eval``
    in ``FakeElectionGroup.evals``.

    On a Redis Cluster, every key written must be in the election's hash slot: give it the
    election's hash tag, e.g. ``f"myapp:{{{config.name}}}:progress"`` (see
    :class:`~leaderelection.CrossSlotError`).

    Every call is bounded by the election's call deadline (``min(heartbeat_interval,
    renew_deadline - heartbeat_interval)``).

    Raises (every write):
        TypeError, ValueError: an argument of the wrong type or value (checked before anything
            is sent, also when the term is over); a key that is one of the election's own.
        CrossSlotError: on a Redis Cluster, a key is not in the election's slot.
        StoreUnavailableError: Redis did not answer in time; the write may or may not have
            happened. Trying again is safe for ``set``, ``hset``, ``delete`` and idempotent
            scripts (a write that happened is the term's own); a script that adds (``INCRBY``,
            ``RPUSH``) should carry an id it can check, or it may apply twice.
        ReplicasMissingError: with ``min_replicas``, the write was applied on the primary but
            fewer replicas acknowledged it in time (a failover may lose it).
        WrongKeyTypeError: a key holds a value of another type (``hset`` on a string).
        StoreError: Redis refused the script (an error in an ``eval`` script, a permission).
    """

    __slots__ = ("_is_current", "_lock_token", "_reserved", "_timeout", "_token", "_writer")

    def __init__(
        self,
        writer: FenceWriter,
        *,
        token: int,
        lock_token: str,
        is_current: Callable[[], bool],
        timeout: float,
        reserved: Iterable[str] = (),
    ) -> None:
        self._writer = writer
        self._token = token
        self._lock_token = lock_token
        self._is_current = is_current
        self._timeout = timeout
        self._reserved = frozenset(key.encode() for key in reserved)

    def __repr__(self) -> str:
        return f"<Fence token={self._token} {'current' if self._is_current() else 'over'}>"

    @property
    def token(self) -> int:
        """The fencing token of the term this fence is bound to."""
        return self._token

    @property
    def is_current(self) -> bool:
        """True while the fence's term is this instance's current term and its local lease has
        not run out. Never blocks, never touches Redis; Redis has the last word at each write."""
        return self._is_current()

    async def set(self, key: Key, value: Value, *, px: int | timedelta | None = None) -> bool:
        """``SET key value [PX px]`` if the term still holds.

        Args:
            key: The key to set.
            value: A ``str``, ``bytes``, ``int`` or ``float``.
            px: Expire the key after this many milliseconds (or this ``timedelta``); default
                never.

        Returns:
            True when written, False when refused (the term is over).
        """
        written, _ = await self._send(self._set(key, value, px))
        return written

    async def hset(self, key: Key, mapping: Mapping[Key, Value]) -> bool:
        """``HSET key field value ...`` for every item of ``mapping`` if the term still holds.

        Returns:
            True when written, False when refused (the term is over).
        """
        written, _ = await self._send(self._hset(key, mapping))
        return written

    async def delete(self, *keys: Key) -> bool:
        """``DEL`` the keys if the term still holds (a missing key is fine).

        Returns:
            True when done, False when refused (the term is over).
        """
        written, _ = await self._send(self._delete(keys))
        return written

    async def eval(
        self, script: str, keys: Sequence[Key] = (), args: Sequence[Value] = ()
    ) -> FenceResult:
        """Run a Lua ``script`` if the term still holds, in the same step as the check.

        The script reads its keys as ``KEYS[1]``, ``KEYS[2]``, ... and its arguments as
        ``ARGV[1]``, ... exactly as with ``EVAL``: the guard's own keys and arguments are
        cut off before it runs. Declare every key the script touches in ``keys`` (on a Redis
        Cluster they must be in the election's slot). A ``return`` ends the script and its value
        becomes the ``value`` of the :class:`FenceResult`; a ``redis.error_reply(...)`` or a failing
        ``redis.call`` raises ``StoreError`` (writes the script made before the error stay, as
        with any Redis script). A shebang line (``#!lua flags=...``) is not supported.

        Example::

            result = await fence.eval(
                "return redis.call('INCRBY', KEYS[1], ARGV[1])", ["myapp:{billing}:n"], [5]
            )
            if result:  # written: result.value is the new count

        Returns:
            A :class:`FenceResult`: truthy when the script ran, with what it returned.
        """
        written, value = await self._send(self._eval(script, keys, args))
        return FenceResult(written, value)

    # ------------------------------------------------------------------------ internals

    async def _send(self, write: FencedWrite) -> tuple[bool, Any]:
        """Send a checked write, unless the term is over here already."""
        if not self._is_current():
            return False, None
        return await self._writer.fenced_write(
            write, token=self._lock_token, fencing_token=self._token, timeout=self._timeout
        )

    def _set(self, key: Key, value: Value, px: int | timedelta | None) -> FencedWrite:
        return FencedWrite(
            "set", (self._key(key),), (_value(value, "value"), "" if px is None else _px(px))
        )

    def _hset(self, key: Key, mapping: Mapping[Key, Value]) -> FencedWrite:
        if not isinstance(mapping, Mapping):
            raise TypeError(f"hset() takes a mapping of fields to values, got {mapping!r}")
        if not mapping:
            raise ValueError("hset() needs at least one field: the mapping is empty")
        args: list[Value] = []
        for field, value in mapping.items():
            args += (_value(field, "a field"), _value(value, "a value"))
        return FencedWrite("hset", (self._key(key),), tuple(args))

    def _delete(self, keys: tuple[Key, ...]) -> FencedWrite:
        if not keys:
            raise ValueError("delete() needs at least one key")
        return FencedWrite("delete", tuple(self._key(key) for key in keys))

    def _eval(self, script: str, keys: Sequence[Key], args: Sequence[Value]) -> FencedWrite:
        if not isinstance(script, str) or not script.strip():
            raise ValueError(f"eval() needs the Lua script's text, got {script!r}")
        if script.lstrip().startswith("#!"):
            raise ValueError(
                "eval() runs the script inside the fence's own script: a shebang line "
                "(#!lua flags=...) is not supported there; remove it"
            )
        for name, items in (("keys", keys), ("args", args)):
            if isinstance(items, str | bytes) or not isinstance(items, Sequence):
                raise TypeError(f"eval() takes {name} as a list, got {items!r}")
        return FencedWrite(
            "eval",
            tuple(self._key(key) for key in keys),
            tuple(_value(arg, "an argument") for arg in args),
            script,
        )

    def _key(self, key: Key) -> Key:
        if not isinstance(key, str | bytes):
            raise TypeError(f"a key is a str or bytes, got {key!r}")
        if (key.encode() if isinstance(key, str) else key) in self._reserved:
            raise ValueError(
                f"{key!r} is one of the election's own keys: a fence writes the application's "
                "data, never the election's lock, info, fence or waiting key"
            )
        return key


def _value(value: object, what: str) -> Value:
    if isinstance(value, bool) or not isinstance(value, str | bytes | int | float):
        raise TypeError(f"{what} must be a str, bytes, int or float, got {value!r}")
    return value


def _px(px: object) -> int:
    if isinstance(px, timedelta):
        ms = px / timedelta(milliseconds=1)
    elif isinstance(px, int) and not isinstance(px, bool):
        ms = px
    else:
        raise TypeError(f"px is milliseconds (an int) or a timedelta, got {px!r}")
    if ms < 1 or ms != int(ms):
        raise ValueError(f"px must be a whole number of milliseconds of at least 1, got {px!r}")
    return int(ms)


class _Runner(Protocol):
    """Runs a coroutine function where the fence's store lives and blocks for its result."""

    def __call__(self, what: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T: ...


class SyncFence:
    """The blocking twin of :class:`Fence`, made by ``leaderelection.sync.LeaderElection.fence()``.

    The same writes with the same checks, from any thread: each runs on the election's event
    loop and blocks the calling thread until Redis answered. A fence whose term is over returns
    False without a round trip. See :class:`Fence` for what each method does and raises; a
    call from the election's own loop thread (``on_error``) raises ``LeaderElectionError``, and
    a call during which the election stops raises ``ElectionNotRunningError`` (like a timeout,
    the write may or may not have been applied: Redis refuses it once the lock is released).
    Called from a ``while_leader`` function whose term has ended, ``fence()`` raises
    ``NotLeaderError``.
    """

    __slots__ = ("_fence", "_run")

    def __init__(self, fence: Fence, run: _Runner) -> None:
        self._fence = fence
        self._run = run

    def __repr__(self) -> str:
        return f"<SyncFence token={self.token} {'current' if self.is_current else 'over'}>"

    @property
    def token(self) -> int:
        """The fencing token of the term this fence is bound to."""
        return self._fence.token

    @property
    def is_current(self) -> bool:
        """True while the fence's term is this instance's current term (see
        :attr:`Fence.is_current`). Never blocks; any thread."""
        return self._fence.is_current

    def set(self, key: Key, value: Value, *, px: int | timedelta | None = None) -> bool:
        """``SET key value [PX px]`` if the term still holds; True when written."""
        written, _ = self._send("fence.set()", self._fence._set(key, value, px))
        return written

    def hset(self, key: Key, mapping: Mapping[Key, Value]) -> bool:
        """``HSET`` every item of ``mapping`` if the term still holds; True when written."""
        written, _ = self._send("fence.hset()", self._fence._hset(key, mapping))
        return written

    def delete(self, *keys: Key) -> bool:
        """``DEL`` the keys if the term still holds; True when done."""
        written, _ = self._send("fence.delete()", self._fence._delete(keys))
        return written

    def eval(
        self, script: str, keys: Sequence[Key] = (), args: Sequence[Value] = ()
    ) -> FenceResult:
        """Run a Lua ``script`` if the term still holds (see :meth:`Fence.eval`)."""
        written, value = self._send("fence.eval()", self._fence._eval(script, keys, args))
        return FenceResult(written, value)

    def _send(self, what: str, write: FencedWrite) -> tuple[bool, Any]:
        if not self._fence.is_current:
            return False, None
        return self._run(what, lambda: self._fence._send(write))
