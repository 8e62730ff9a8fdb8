"""LeaderElection: the public API and the lifecycle of one candidate.

The campaign (:mod:`._campaign`) runs the election: its runner obeys the pure core
(:mod:`._core`). This class is its public face: the reads (which all go to the core), the waits,
the registrations, and the lifecycle: ``start()`` makes the first attempt in the caller's task
and starts the runner task, ``stop()`` ends it from any caller in bounded time, and whatever ends
the runner, the teardown releases what may be ours and lets go of a client made from a URL.
``docs/architecture.md`` draws the house.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import redis.asyncio as aioredis

from . import _metrics
from ._aio import Flag, close_client, wait_first, wait_shielded
from ._callbacks import Callback, ErrorHandler, check_error_handler
from ._campaign import Campaign, Lifecycle
from ._clock import Clock, MonotonicClock
from ._config import ElectionConfig, config_argument, new_instance_id
from ._connect import UrlClient
from ._core import ElectionStatistics, Phase
from ._exceptions import ElectionNotRunningError, LeaderElectionError, NotLeaderError
from ._fence import Fence, election_keys
from ._info import LeaderInfo
from ._observer import LeaderChange, watch_changes
from ._store import RedisStore, Store, redis_argument
from ._term import current_term

__all__ = ["ElectionStatistics", "LeaderElection", "Lifecycle"]

F = TypeVar("F", bound=Callable[..., Any])


class LeaderElection:
    """Elect one leader among the candidates of an election, with Redis as the lease store.

    Use it as ``async with LeaderElection(redis, config) as election:``. Entering returns once the
    first acquisition attempt has finished, so ``is_leader`` is meaningful at once. Leaving
    releases leadership (followers are woken through the release channel) and waits for the
    lose callbacks.

    Creating the object does not contact Redis.

    Example:
        ```python
        config = ElectionConfig(name="billing")
        async with LeaderElection("redis://localhost:6379/0", config) as election:
            await election.wait_until_leader()
            print("leading with fencing token", election.fencing_token)
        ```

    Args:
        redis: A ``redis.asyncio.Redis`` (also from ``Sentinel.master_for``) or ``RedisCluster``
            that the caller owns and the election never closes. Or a URL whose client the
            election creates when it starts and closes when it stops: ``redis://`` (one server,
            or any node of a Redis Cluster, detected on first use), ``rediss://``, ``unix://``,
            or ``redis+sentinel://host:port[,host:port...]/service_name``
            (``rediss+sentinel://`` for TLS).
        config: The election's settings; default ``ElectionConfig()``.
        on_become_leader: A callback registered first, as with ``election.on_become_leader``.
        on_lose_leadership: A callback registered first, as with ``election.on_lose_leadership``.
        on_error: Called as ``on_error(exception, context)`` when a callback or ``while_leader``
            task raises; the exception is logged either way. A plain function: an async one
            is refused at once, since it would never be awaited. See :data:`ErrorHandler`.
        clock: The monotonic clock that the election reads, waits through and keeps its call
            deadlines by; default the real one. For tests: ``leaderelection.testing.FakeClock``
            moves only when the test moves it.
        store: A lease store to use instead of Redis, for tests:
            ``leaderelection.testing.MemoryServer(clock).store(config)``; ``redis`` is then
            ignored and may be None.

    Raises:
        ConfigurationError: ``redis`` is a synchronous client, or neither an asyncio client
            nor a URL; ``config`` is not an ``ElectionConfig``.
        TypeError: ``on_error`` is async or not callable.
    """

    __slots__ = (
        "__weakref__",
        "_campaign",
        "_client",
        "_clock",
        "_config",
        "_instance_id",
        "_owns_client",
        "_runner",
        "_start_done",
        "_stopped",
        "_url",
    )

    def __init__(
        self,
        redis: aioredis.Redis | Any | str | None,
        config: ElectionConfig | None = None,
        *,
        on_become_leader: Callback | None = None,
        on_lose_leadership: Callback | None = None,
        on_error: ErrorHandler | None = None,
        clock: Clock | None = None,
        store: Store | None = None,
    ) -> None:
        self._config = config_argument(config)
        check_error_handler(on_error)
        self._url: str | None = None
        self._client: Any = None
        if store is None:
            self._url, self._client = redis_argument(redis, "LeaderElection")
        self._owns_client = self._url is not None
        self._instance_id = new_instance_id(self._config)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._campaign = Campaign(self._config, self._instance_id, self._clock, on_error)
        self._campaign.store = store
        if on_become_leader is not None:
            self._campaign.become.add(on_become_leader)
        if on_lose_leadership is not None:
            self._campaign.lose.add(on_lose_leadership)
        self._runner: asyncio.Task[None] | None = None
        self._start_done = Flag()
        self._stopped = Flag()

    # --------------------------------------------------------------------- public reads

    @property
    def config(self) -> ElectionConfig:
        """The election's configuration."""
        return self._config

    @property
    def instance_id(self) -> str:
        """This candidate's id (the config's, or ``hostname-pid-random``)."""
        return self._instance_id

    @property
    def is_leader(self) -> bool:
        """True while this instance leads. Never blocks, never touches Redis.

        Read against the monotonic clock: it turns False at the local lease deadline even if the
        event loop was blocked and the watchdog has not run yet.
        """
        return self._campaign.core.is_leader(self._clock.now())

    @property
    def leader_event(self) -> asyncio.Event:
        """An ``asyncio.Event`` set while this instance leads and cleared when a term ends.

        Clearing happens in the event loop, so while the loop is blocked the event can lag
        behind ``is_leader``: wait on the event (``await election.leader_event.wait()``), and
        decide with ``is_leader``.
        """
        return self._campaign.leader_event

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leader, else None.

        Pass it to the resources the leader writes to: they can reject a write carrying a token
        lower than one they have seen, which stops a paused former leader that ``is_leader``
        cannot stop. For writes to Redis the check is built in: :meth:`fence`.
        """
        term = self._campaign.core.term
        return term.fencing_token if term is not None and self.is_leader else None

    def statistics(self) -> ElectionStatistics:
        """An immutable snapshot of the election's state and counters. Never touches Redis."""
        c = self._campaign
        return c.core.statistics(self._clock.now(), c.state)

    def fence(self) -> Fence:
        """A :class:`Fence` bound to the current term: writes to Redis that are refused from
        the moment the term is over (a newer term exists, or its lease ended).

        Make one at the start of a piece of work, for example at the top of a
        ``while_leader`` task, and write through it; a fence kept past its term never writes.
        Never blocks, never touches Redis.

        Raises:
            NotLeaderError: this instance does not lead (also before ``start()`` and after
                ``stop()``), or the calling ``while_leader`` task belongs to a term that has
                ended (a task that ignored its cancellation gets no fence of the next term).
        """
        c = self._campaign
        core, clock, term, store = c.core, self._clock, c.core.term, c.store
        if term is None or store is None or not core.is_leader(clock.now()):
            raise NotLeaderError(
                f"{self._instance_id} does not lead the election {self._config.name!r} "
                f"(state {self.statistics().state}): make a fence during a term, e.g. in a "
                "while_leader task, or after wait_until_leader()"
            )
        started_for = current_term()
        if started_for is not None and started_for is not term:
            raise NotLeaderError(
                f"fence() was called from a while_leader task of the term with fencing token "
                f"{started_for.fencing_token}, which has ended; the current term "
                f"({term.fencing_token}) starts tasks of its own"
            )

        def is_current() -> bool:
            return core.term is term and core.is_leader(clock.now())

        return Fence(
            store,
            token=term.fencing_token,
            lock_token=term.token,
            is_current=is_current,
            timeout=c.timings.call_timeout,
            reserved=election_keys(self._config),
        )

    async def get_leader_info(self) -> LeaderInfo | None:
        """Read who leads from the store; None when no one does.

        One ``GET`` of the info key, with the election's call deadline. It works in every
        state of the election, also before ``start()`` and after ``stop()``: an election made
        from a URL then reads with a short-lived client of its own, opened and closed for this
        call; one given a client reads through that client (which the caller keeps open); one
        given a ``store`` reads that store. (The threaded
        :meth:`leaderelection.sync.LeaderElection.get_leader_info` is different: it raises
        ``ElectionNotRunningError`` outside ``start()`` ... ``stop()``.)

        Raises:
            StoreError: Redis failed or did not answer in time (usually
                ``StoreUnavailableError``).
            CorruptLeaderInfoError: the stored record is not valid LeaderInfo JSON.
        """
        timeout = self._campaign.timings.call_timeout
        if self._owns_client and self._campaign.state in ("new", "stopped"):
            # The election's own client does not exist or is closed: read with a short-lived one.
            client = UrlClient(self._url or "", timeout)
            try:
                return await self._make_store(client).read_info(timeout=timeout)
            finally:
                await close_client(client)
        return await self._get_store().read_info(timeout=timeout)

    async def get_leader_id(self) -> str | None:
        """Read the leader's instance id from the store; None when no one leads.

        Reads as :meth:`get_leader_info` does, in any state, and raises the same exceptions.
        """
        info = await self.get_leader_info()
        return info.instance_id if info is not None else None

    def changes(self) -> AsyncIterator[LeaderChange]:
        """Iterate over the election's leader changes, as :meth:`LeaderObserver.changes` does,
        on this election's client and its shared subscription: the current state first, then
        every change in order. For a candidate that also wants to know who leads when it does
        not:

        ```python
        async for change in election.changes():
            print(change.fencing_token, change.leader.instance_id if change.leader else None)
        ```

        Stop iterating (leave the loop, or cancel it) before the election stops.

        Raises:
            ElectionNotRunningError: the election is not running (raised when called).
        """
        self._require_running()
        return watch_changes(self._get_store(), self._campaign.timings)

    # ------------------------------------------------------------------------- waiting

    async def wait_until_leader(self, timeout: float | None = None) -> None:
        """Wait until this instance leads; return at once if it does.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ElectionNotRunningError: the election is not running or stopped while waiting.
        """
        self._require_running()
        c = self._campaign
        async with self._deadline(timeout):
            while not self.is_leader:
                if c.leader_event.is_set():
                    # The lease ran out while the loop was busy; the watchdog ends the term on
                    # its next turn and sets the follower event.
                    await c.follower_event.wait()
                    continue
                await wait_first(c.leader_event, self._stopped)
                if self._stopped.is_set() or c.state in ("stopping", "stopped"):
                    raise ElectionNotRunningError(
                        "the election stopped while waiting for leadership"
                    )

    async def wait_until_follower(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead (returns at once if it does not).

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with self._deadline(timeout):
            while self.is_leader:
                await self._campaign.follower_event.wait()

    # ----------------------------------------------------------------------- callbacks

    def on_become_leader(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term starts.

        Usable as a decorator. Callbacks run in registration order, one at a time, isolated
        from each other: an exception is logged and handed to ``on_error``, and the rest still
        run. They never delay heartbeats.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        self._campaign.become.add(callback)
        return callback

    def on_lose_leadership(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term ends.

        It runs only after the term's become callbacks finished and its ``while_leader`` tasks
        ended; every become is followed by exactly one lose unless the process dies. Usable
        as a decorator.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        self._campaign.lose.add(callback)
        return callback

    def while_leader(self, func: F) -> F:
        """Register an async function run as a task for the length of every term.

        The task starts when a term starts (at once, if registered during a term) and is
        cancelled when the term ends, before the lose callbacks run. An exception ends the task
        for this term and is reported like a callback's. Usable as a decorator.

        The task runs in a cancel scope that stays cancelled once the term ended: every
        ``await`` after that point, in a ``finally:`` block too, is cancelled again, so that a
        task whose cancellation was swallowed somewhere still ends. Cleanup that must await
        runs under ``anyio.CancelScope(shield=True)``. A task that does not end is waited for
        one lease (``lock_ttl``) at most, then logged as not finished.

        Raises:
            TypeError: ``func`` is not callable.
        """
        if not callable(func):
            raise TypeError(f"while_leader needs an async function, got {func!r}")
        self._campaign.add_leader_task(func)
        return func

    # ----------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start campaigning; return once the first acquisition attempt has finished.

        Raises:
            ConfigurationError: the URL is unusable.
            StoreAuthenticationError: Redis refused the credentials or permissions.
            StoreReadOnlyError: the server is a read-only replica.
            WrongKeyTypeError: an election key holds another type.
            StoreError: Redis answered another permanent error.
            LeaderElectionError: the election was already started.

        A Redis that is down or slow is not an error here: the election logs it and keeps trying
        in the background while ``is_leader`` stays False. On a free election the first
        instance to start leads when this returns (unless restart protection holds elections
        back, which the log and ``statistics()`` say). An election starts only once.
        """
        c = self._campaign
        if c.state != "new":
            raise LeaderElectionError(
                f"this election was already started (state {c.state}); create a new "
                "LeaderElection to campaign again"
            )
        c.state = "starting"
        _metrics.register_election(c)
        try:
            # The first attempt runs right here, in the caller's task: nothing stands between
            # entering and knowing the outcome but one round trip.
            store = self._get_store()
            hub = store.hub
            if hub is not None and hub.is_active(store.channel):
                # The client listens already: listen first, so that a release announced while
                # the attempt is on its way is heard (the attempt then tries again at once).
                await hub.add(store.channel, c.on_message)
                c.listening = True
                await c.attempt(store, first=True)
            else:
                await c.attempt(store, first=True)
                if hub is not None:
                    # Subscribing after the attempt keeps the attempt alone on the wire. A
                    # follower whose attempt went out before the subscription was live may have
                    # missed a release in between: once it is live, look again at once.
                    await hub.add(store.channel, c.on_message)
                    c.listening = True
                    if c.core.phase is Phase.FOLLOWER and await hub.wait_active(
                        store.channel, timeout=c.timings.call_timeout
                    ):
                        c.core.release_noticed(now=self._clock.now(), heard=False)
        except BaseException:
            # A permanent error or a cancellation: undo what was started, releasing a lock the
            # first attempt may have won, then let the exception through.
            await wait_shielded(
                asyncio.ensure_future(self._teardown()), c.shutdown_bound(), self._clock
            )
            raise
        finally:
            self._start_done.set()
        c.state = "running"
        self._runner = asyncio.get_running_loop().create_task(
            self._run(store), name=f"leaderelection:{self._config.name}:{self._instance_id}"
        )

    async def stop(self) -> None:
        """Stop campaigning; release leadership if held. Idempotent, and bounded from any caller.

        Ends the term locally first (``is_leader`` False, ``while_leader`` tasks cancelled),
        then releases the lock, waking a follower at once, then waits for the lose callbacks.
        Bounded even when Redis is gone (the release has a deadline of its own) and when user
        code ignores cancellation (it is waited for one lease at most, and logged). Called from
        a callback or a ``while_leader`` task, it starts the shutdown and returns at once: the
        shutdown waits for that very code. Safe on an election that was never started; a
        client made from a URL is closed. ``docs/architecture.md`` lists the order a term ends
        in.
        """
        c = self._campaign
        c.stop_requested.set()
        c.wake.set()
        if c.state == "starting":  # stop() while start() is in its first attempt
            await wait_shielded(self._start_done, c.shutdown_bound(), self._clock)
        runner = self._runner
        if runner is None:
            if c.state != "stopped":
                await self._teardown()
            return
        if c.drive_scope is not None:
            c.drive_scope.cancel()
        if c.in_own_task():
            return
        # Even a cancelled caller waits (boundedly) until the lock is released, so that leaving
        # a cancelled scope or asyncio.run() does not strand the lease; then the callbacks, and
        # the closing of a client made from a URL, which asyncio.run() would otherwise cut short.
        await wait_shielded(c.released, c.shutdown_bound(), self._clock)
        await wait_shielded(runner, c.shutdown_bound() + 2 * c.grace, self._clock)

    async def resign(self) -> None:
        """Hand leadership over now and stay a candidate.

        Ends the term (lose callbacks follow), releases the lock so a follower takes over within
        milliseconds, and holds this instance back for at least ``retry_interval``; if no
        other candidate takes over, this instance leads again after that, in a new term. Does
        nothing when this instance does not lead.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running()
        await self._campaign.resign()

    # ------------------------------------------------------------------------ internals

    async def _run(self, store: Store) -> None:
        """The runner task: the campaign's loop, then, whatever ended it, the teardown."""
        try:
            await self._campaign.run(store)
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        """End the term, release, run the callbacks still queued, and let go of Redis."""
        c = self._campaign
        try:
            await c.abandon()
        finally:
            c.state = "stopped"
            _metrics.unregister_election(c)
        self._stopped.set()
        if self._owns_client and self._client is not None:
            client, self._client, c.store = self._client, None, None
            with contextlib.suppress(Exception):
                await close_client(client)

    def _wait_for_user_code(self, timeout: float) -> None:
        """Wait up to ``timeout`` for ``while_leader`` tasks before a release and for callbacks
        at a shutdown (the sync election's threads cannot be cancelled: it waits for them)."""
        c = self._campaign
        c.task_wait = c.grace = c.dispatcher.grace = timeout

    def _deadline(self, timeout: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """A block that raises ``TimeoutError`` after ``timeout`` seconds of the election's
        clock (never, for None)."""
        if timeout is None:
            return contextlib.nullcontext()
        return self._clock.timeout(timeout)

    def _require_running(self) -> None:
        state = self._campaign.state
        if state not in ("starting", "running"):
            raise ElectionNotRunningError(
                f"the election is {state}: use `async with LeaderElection(...)` or "
                "`await election.start()` first"
            )

    def _get_store(self) -> Store:
        c = self._campaign
        if c.store is None:
            if self._client is None:
                assert self._url is not None
                self._client = UrlClient(self._url, c.timings.call_timeout)
            c.store = self._make_store(self._client)
        return c.store

    def _make_store(self, client: Any) -> RedisStore:
        return RedisStore.for_config(client, self._config, self._clock)
