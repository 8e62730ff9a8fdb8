"""LeaderObserver: who leads an election, and every change of leader, for anyone.

Every change of leader reaches the election's channel: a new term is announced by the acquire
script (``A`` and the leader record), a release by the release script (``R``, the term's fencing
token and the instance id). A lease that expires announces nothing, so the observer also reads
the leader record when the current lease can end (its remaining TTL), and after the subscription
reconnects. Between two different terms the stream always shows "no leader": it alternates
leader, no leader, leader. (A new term is granted on a free lock, or on a lock held by a token
of the same candidate that it never learned it had won, after a lost reply.)
Tokens only grow, so an answer older than what was already seen is recognised and dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

from . import _metrics
from ._aio import Flag
from ._channel import Announced, Message, Released, Resync
from ._config import ElectionConfig, config_argument
from ._connect import UrlClient
from ._core import Timings
from ._exceptions import (
    LeaderElectionError,
    StoreAuthenticationError,
    StoreError,
)
from ._info import LeaderInfo
from ._store import RedisStore, Store, close_client, redis_argument

__all__ = ["LeaderChange", "LeaderObserver", "watch_changes"]

logger = logging.getLogger("leaderelection")

_EXPIRY_MARGIN: Final = 0.005  # read this long after the lease can have ended


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """One change of leader, as seen by an observer: an item of
    :meth:`LeaderObserver.changes` or :meth:`LeaderElection.changes`.

    Attributes:
        leader: The new leader's record, or None when no one leads. It is the record as
            announced when the term started, or as read: later heartbeats do not update it
            (:meth:`LeaderObserver.current` reads the latest).
        previous: The leader before the change, or None. Since the items alternate, it is
            set on the "no leader" item that ends a term (the leader whose term ended), and
            None on items that name a leader and on the first item.
        at: When the observer saw the change: a timezone-aware UTC datetime from this
            machine's clock. A lease that expires is seen when the observer next reads, a few
            milliseconds later, or when the next term is announced.
        initial: True for the first item of a stream, which is the state when watching began,
            not a change.
    """

    leader: LeaderInfo | None
    previous: LeaderInfo | None
    at: datetime
    initial: bool = False

    @property
    def fencing_token(self) -> int | None:
        """The new leader's fencing token, or None when no one leads."""
        return self.leader.fencing_token if self.leader is not None else None


async def watch_changes(
    store: Store, timings: Timings, on_change: Callable[[LeaderChange], None] | None = None
) -> AsyncGenerator[LeaderChange, None]:
    """Yield the current leader, then every change of leader, in order (see the module doc);
    ``on_change`` is called with each change before it is yielded."""
    hub = store.hub
    messages: collections.deque[Message] = collections.deque()
    arrived = Flag()

    def listen(message: Message) -> None:
        messages.append(message)
        arrived.set()

    if hub is not None:
        await hub.add(store.channel, listen)
    try:
        if hub is not None:
            await hub.wait_active(store.channel, timeout=timings.call_timeout)
        # Subscribed first, then read: a change after the read is in the messages.
        info, pttl_ms = await store.read_state(timeout=timings.call_timeout)
        loop = asyncio.get_running_loop()
        current = info
        seen = info.fencing_token if info is not None else 0
        first = LeaderChange(leader=info, previous=None, at=_utcnow(), initial=True)
        if on_change is not None:
            on_change(first)
        yield first

        def next_read(leader: LeaderInfo | None, pttl: int) -> float:
            # While someone leads, look again when the lease can have ended; otherwise new terms
            # are announced, and a read once per lease period covers a missed announcement.
            wait = pttl / 1000 + _EXPIRY_MARGIN if leader is not None else timings.lock_ttl
            return loop.time() + wait

        read_at = next_read(info, pttl_ms)
        errors = 0
        task = asyncio.current_task()
        while True:
            # A cancellation that lands inside a redis-py call can be swallowed there (its
            # asyncio.wait_for, on Python 3.11), but the task still counts it: honour it here.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            if not messages:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(read_at):
                        await arrived.wait()
            observed: list[LeaderInfo | None] = []
            resync = not messages and loop.time() >= read_at
            while messages:
                message = messages.popleft()
                if isinstance(message, Resync):  # resubscribed: something may have been missed
                    resync = True
                elif isinstance(message, Announced):
                    try:
                        new = LeaderInfo.model_validate_json(message.record)
                    except ValueError:
                        resync = True
                        continue
                    if new.fencing_token >= seen:
                        observed.append(new)
                        seen = new.fencing_token
                elif isinstance(message, Released):
                    last = observed[-1] if observed else current
                    if last is not None and last.fencing_token == message.fencing_token:
                        observed.append(None)
            if resync:
                try:
                    info, pttl_ms = await store.read_state(timeout=timings.call_timeout)
                except StoreAuthenticationError:
                    raise
                except StoreError as exc:
                    errors += 1
                    delay = min(timings.retry_interval * 2 ** min(errors - 1, 5), timings.lock_ttl)
                    logger.warning("Could not read the leader, retrying in %.1fs: %s", delay, exc)
                    read_at = loop.time() + delay
                    continue
                errors = 0
                if info is None or info.fencing_token >= seen:
                    observed.append(info)
                    if info is not None:
                        seen = info.fencing_token
                read_at = next_read(info, pttl_ms)
            elif observed:
                read_at = next_read(observed[-1], timings.lock_ttl_ms)
            for leader in observed:
                for change in _transitions(current, leader):
                    if on_change is not None:
                        on_change(change)
                    yield change
                current = leader
    finally:
        if hub is not None:
            await hub.remove(store.channel, listen)


def _transitions(current: LeaderInfo | None, new: LeaderInfo | None) -> list[LeaderChange]:
    """The changes from ``current`` to ``new``: none for the same term, and a "no leader" in
    between two different terms."""
    now = _utcnow()
    if new is None:
        return [] if current is None else [LeaderChange(None, current, now)]
    if current is None:
        return [LeaderChange(new, None, now)]
    if current.fencing_token == new.fencing_token:
        return []
    return [LeaderChange(None, current, now), LeaderChange(new, None, now)]


class LeaderObserver:
    """Watches an election without campaigning: who leads, and every change of leader.

    It never takes the lock: it reads who leads, follows every change of leader, and can ask
    the leader to step down. Any process can run one: a dashboard, an operator's script, a
    service that routes requests to the leader. Use it as
    ``async with LeaderObserver(redis, config) as observer:``; creating it does not contact
    Redis, and the client connects on first use.

    It needs the election's ``name`` (and ``key_prefix`` or key overrides, if the candidates
    set them). The timing fields should match the candidates' too: ``lock_ttl`` bounds how
    long a missed announcement can go unnoticed, ``retry_interval`` is the first delay after a
    failed read, and every call has the candidates' deadline, ``min(heartbeat_interval,
    renew_deadline - heartbeat_interval)``.

    Args:
        redis: A ``redis.asyncio.Redis`` (also from ``Sentinel.master_for``) or
            ``RedisCluster`` that the caller owns and the observer never closes, or a URL (any
            form an election takes) whose client the observer creates on first use and closes
            in :meth:`aclose`.
        config: The election's settings; the default is ``ElectionConfig()``.

    Raises:
        ConfigurationError: ``redis`` is a synchronous client, or neither an asyncio client
            nor a URL; ``config`` is not an ``ElectionConfig``.
    """

    def __init__(self, redis: Any, config: ElectionConfig | None = None) -> None:
        self._config = config_argument(config)
        self._timings = Timings.from_config(self._config)
        self._url: str | None
        self._client: Any
        self._url, self._client = redis_argument(redis, "LeaderObserver")
        self._store: RedisStore | None = None
        self._closed = False
        # Who leads as the observers of this election saw it last, for the metrics exporters;
        # shared with the other open observers of the name, and let go at close (or collection).
        self._sighting = _metrics.open_sighting(self._config.name, self._timings.lock_ttl)
        self._let_go = weakref.finalize(self, _metrics.close_sighting, self._sighting)

    @property
    def config(self) -> ElectionConfig:
        """The election's settings."""
        return self._config

    def _get_store(self) -> RedisStore:
        if self._closed:
            raise LeaderElectionError("this LeaderObserver is closed")
        if self._store is None:
            if self._client is None:
                assert self._url is not None
                self._client = UrlClient(self._url, self._timings.call_timeout)
            self._store = RedisStore.for_config(self._client, self._config)
        return self._store

    async def current(self) -> LeaderInfo | None:
        """Read who leads now; None when no one does. One round trip: the read script.

        Raises:
            StoreError: Redis failed or did not answer in time (``StoreUnavailableError``), or
                refused (``StoreAuthenticationError``).
            CorruptLeaderInfoError: the stored record is not valid LeaderInfo JSON.
        """
        info, _ = await self.current_lease()
        return info

    async def current_lease(self) -> tuple[LeaderInfo | None, float]:
        """Read who leads now and the seconds left on its lease (0.0 when no one leads).

        Raises the same exceptions as :meth:`current`.
        """
        info, pttl_ms = await self._get_store().read_state(timeout=self._timings.call_timeout)
        self._sighting.saw(info, None, time.monotonic())
        return info, pttl_ms / 1000

    def changes(self) -> AsyncIterator[LeaderChange]:
        """Iterate over the leader changes: first the current state (``initial=True``), then
        every change, in order.

        ```python
        async for change in observer.changes():
            print(change.at, change.leader.instance_id if change.leader else "no leader")
        ```

        - The items alternate between a leader and "no leader" (``leader=None``): between
          two terms there is always a "no leader" item, also when the observer did not see
          the gap, and also when the same instance leads again in a new term. Each term is
          reported once.
        - It waits on the election's channel, and reads Redis only when a lease it saw can
          have run out, or once per ``lock_ttl`` when no one leads: it never polls faster
          than once per lease.
        - Redis errors after the first read are retried with backoff (from
          ``retry_interval``, doubling, up to ``lock_ttl``) and logged as a WARNING, ``Could
          not read the leader, retrying in ...``; no change is reported meanwhile.
        - It runs until the loop is left, the task is cancelled or the iterator is closed.
          Each call returns a new, independent iterator; all the iterators and elections on
          one client share one subscription. Stop iterating before :meth:`aclose`.

        Raises:
            StoreError: the first read failed (the following ones are retried).
            StoreAuthenticationError: Redis refused a permission, at any read.
            CorruptLeaderInfoError: the first read found a record that is not valid
                ``LeaderInfo`` JSON.
            LeaderElectionError: the observer is closed (raised when called).
        """
        return self._watch(self._get_store())

    async def _watch(self, store: RedisStore) -> AsyncIterator[LeaderChange]:
        """watch_changes, telling the metrics' sighting what it sees while it runs."""
        sighting = self._sighting

        def saw(change: LeaderChange) -> None:
            sighting.saw(change.leader, change.previous, time.monotonic())

        _metrics.watching(sighting, 1)
        try:
            async with contextlib.aclosing(watch_changes(store, self._timings, saw)) as changes:
                async for change in changes:
                    yield change
        finally:
            _metrics.watching(sighting, -1)

    async def request_step_down(self, instance_id: str | None = None) -> str | None:
        """Ask the leader to resign gracefully, as ``resign()`` would: it releases, a follower
        takes over within milliseconds, and it stays a candidate.

        The request is one ``PUBLISH`` of ``S <instance id>`` on the election's channel; the
        candidate with that id resigns if it leads when the request arrives, and logs
        ``Stepping down on request``. It returns once the request is published, not when the
        leader has resigned: watch :meth:`changes` to see the handoff.

        Args:
            instance_id: The leader to ask; by default the current one. A request naming an
                instance that does not lead is ignored by every candidate.

        Returns:
            The instance id asked, or None when no one leads (nothing was sent).

        Raises:
            LeaderElectionError: no one received the request: no candidate (nor observer) of
                the election is subscribed to its channel. Observers count as receivers too, so
                a request can be received and still find no leader to honour it.
            StoreError: Redis failed or refused.
        """
        store = self._get_store()
        if instance_id is None:
            info = await self.current()
            if info is None:
                return None
            instance_id = info.instance_id
        received = await store.request_step_down(instance_id, timeout=self._timings.call_timeout)
        if received == 0:
            raise LeaderElectionError(
                f"no one subscribed to election {self._config.name!r} received the step-down "
                f"request on {store.channel!r}: no candidate is running, or none can SUBSCRIBE"
            )
        return instance_id

    async def aclose(self) -> None:
        """Close the client if the observer created it (from a URL), and the observer: a later
        call raises ``LeaderElectionError``. A client the caller passed is left open.
        Idempotent."""
        self._closed = True
        self._let_go()
        if self._url is not None and self._client is not None:
            client, self._client, self._store = self._client, None, None
            with contextlib.suppress(Exception):
                await close_client(client)

    async def __aenter__(self) -> Self:
        """Return the observer (the client connects on first use)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the observer (see :meth:`aclose`)."""
        await self.aclose()


def _utcnow() -> datetime:
    return datetime.now(UTC)
