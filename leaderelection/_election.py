"""LeaderElection: the asyncio driver of the pure election core.

It owns one anyio task group in a runner task. Its children are the campaign (retry) loop, the
callback dispatcher, and per term a heartbeat loop with its deadline watchdog and the
``while_leader`` tasks. The core decides; this module only sends the store calls it asks for,
bounded by deadlines, sleeps through the clock it was given, and turns the core's transitions into
events, logs and callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import anyio
import redis.asyncio as aioredis

from ._callbacks import Callback, CallbackList, ErrorHandler, LeaderTask, report
from ._clock import Clock, Flag, MonotonicClock, Waitable
from ._config import ElectionConfig
from ._core import (
    BecameLeader,
    ElectionCore,
    LossReason,
    LostLeadership,
    Phase,
    Term,
    Timings,
    Transition,
)
from ._exceptions import (
    ConfigurationError,
    ElectionNotRunningError,
    LeaderElectionError,
    StoreError,
    StoreUnavailableError,
)
from ._info import LeaderInfo
from ._observer import LeaderChange, watch_changes
from ._store import (
    Acquired,
    Held,
    RedisStore,
    ReleaseHub,
    client_from_url,
    close_client,
    redis_argument,
)

__all__ = ["ElectionStatistics", "LeaderElection"]

logger = logging.getLogger("leaderelection")

F = TypeVar("F", bound=Callable[..., Any])
State = Literal["new", "starting", "running", "stopping", "stopped"]
_STOP: Final = object()
_RELEASE_TIMEOUT: Final = 1.0  # seconds; release is best effort, the lease expires anyway


@dataclass(frozen=True, slots=True)
class ElectionStatistics:
    """An immutable snapshot of one election, from ``LeaderElection.statistics()``.

    Attributes:
        state: ``"new"``, ``"follower"``, ``"leader"``, ``"held_back"`` (restart protection or
            after ``resign()``), ``"stopping"`` or ``"stopped"``.
        instance_id: This candidate's id.
        is_leader: Whether this instance leads now.
        fencing_token: The current term's fencing token, or None.
        terms_won: Terms this instance has won.
        transitions: Leadership changes (each won or lost term counts once).
        leader_id: The leader this candidate last saw in the store (itself while leading).
        acquire_attempts: Acquire round trips sent.
        renewals: Successful renewals.
        renew_failures: Renewals that failed or timed out.
        last_renew_latency: Round trip of the last successful renewal, seconds.
        store_errors: Store calls that failed (acquire, renew, release).
        restart_protection: True while elections are held back after a Redis restart.
    """

    state: str
    instance_id: str
    is_leader: bool
    fencing_token: int | None
    terms_won: int
    transitions: int
    leader_id: str | None
    acquire_attempts: int
    renewals: int
    renew_failures: int
    last_renew_latency: float | None
    store_errors: int
    restart_protection: bool


class _TermRun:
    """What one term started: its end signal and its ``while_leader`` tasks."""

    __slots__ = ("ended", "tasks", "term")

    def __init__(self, term: Term) -> None:
        self.term = term
        self.ended = Flag()  # the heartbeat and the watchdog return when it is set
        self.tasks: list[tuple[anyio.CancelScope, Flag]] = []


class LeaderElection:
    """Elect one leader among the candidates of an election, with Redis as the lease store.

    Use it as ``async with LeaderElection(redis, config) as election:``. Entering returns once the
    first acquisition attempt has finished, so ``is_leader`` is meaningful at once. Leaving
    releases leadership (followers are woken through the release channel) and waits for the
    lose callbacks.

    Args:
        redis: A ``redis.asyncio.Redis`` (also from ``Sentinel.master_for``) or ``RedisCluster``
            that the caller owns and the election never closes, or a ``redis://`` /
            ``rediss://`` / ``unix://`` URL whose client the election creates and closes.
        config: The election's settings; default ``ElectionConfig()``.
        on_become_leader: A callback registered first, as with ``election.on_become_leader``.
        on_lose_leadership: A callback registered first, as with ``election.on_lose_leadership``.
        on_error: Called as ``on_error(exception, context)`` when a callback or ``while_leader``
            task raises; the exception is logged either way.
        clock: The monotonic clock to read and sleep through (for tests); default the real one.

    Raises:
        ConfigurationError: ``redis`` is neither an asyncio client nor a URL.
    """

    __slots__ = (
        "__weakref__",
        "_attempts",
        "_become",
        "_campaign_scope",
        "_client",
        "_clock",
        "_config",
        "_core",
        "_dispatcher",
        "_dispatcher_done",
        "_dispatcher_started",
        "_errors",
        "_follower_event",
        "_held_back",
        "_hub",
        "_instance_id",
        "_last_renew_latency",
        "_leader_event",
        "_leader_id",
        "_leader_tasks",
        "_lose",
        "_moves",
        "_on_error",
        "_owns_client",
        "_pending",
        "_pending_flag",
        "_released",
        "_renew_failures",
        "_renewals",
        "_runner",
        "_start_done",
        "_started_wall",
        "_state",
        "_stop_requested",
        "_stopped",
        "_store",
        "_term",
        "_tg",
        "_timings",
        "_url",
        "_wake",
    )

    def __init__(
        self,
        redis: aioredis.Redis | Any | str,
        config: ElectionConfig | None = None,
        *,
        on_become_leader: Callback | None = None,
        on_lose_leadership: Callback | None = None,
        on_error: ErrorHandler | None = None,
        clock: Clock | None = None,
    ) -> None:
        if config is not None and not isinstance(config, ElectionConfig):
            raise ConfigurationError(
                f"config must be an ElectionConfig, got {type(config).__name__}"
            )
        self._config = config if config is not None else ElectionConfig()
        self._url: str | None
        self._url, self._client = redis_argument(redis, "LeaderElection")
        self._owns_client = self._url is not None
        cfg = self._config
        self._instance_id = cfg.instance_id or (
            f"{cfg.hostname}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._timings = Timings(
            lock_ttl=cfg.lock_ttl.total_seconds(),
            heartbeat_interval=cfg.heartbeat_interval.total_seconds(),
            retry_interval=cfg.retry_interval.total_seconds(),
            renew_deadline=cfg.renew_deadline.total_seconds(),
        )
        self._core = ElectionCore(self._timings)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._become = CallbackList("on_become_leader")
        self._lose = CallbackList("on_lose_leadership")
        self._leader_tasks: list[LeaderTask] = []
        if on_become_leader is not None:
            self._become.add(on_become_leader)
        if on_lose_leadership is not None:
            self._lose.add(on_lose_leadership)
        self._on_error = on_error

        self._state: State = "new"
        self._store: RedisStore | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._campaign_scope: anyio.CancelScope | None = None
        self._term: _TermRun | None = None
        # Callback dispatch: items in order, handled by a task started at the first term.
        self._pending: list[tuple[str, _TermRun | None]] = []
        self._pending_flag = Flag()
        self._dispatcher: asyncio.Task[Any] | None = None
        self._dispatcher_started = False
        self._dispatcher_done = Flag()
        self._leader_event = asyncio.Event()
        self._follower_event = Flag()
        self._follower_event.set()
        self._wake = Flag()
        self._stop_requested = Flag()
        self._stopped = Flag()
        self._released = Flag()  # set once the shutdown released what may be ours
        self._start_done = Flag()
        self._hub: ReleaseHub | None = None
        self._held_back = False
        self._leader_id: str | None = None
        self._attempts = self._renewals = self._renew_failures = self._errors = self._moves = 0
        self._last_renew_latency: float | None = None
        self._started_wall = _utcnow()

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
        return self._core.is_leader(self._clock.now())

    @property
    def leader_event(self) -> asyncio.Event:
        """An ``asyncio.Event`` set while this instance leads and cleared when a term ends."""
        return self._leader_event

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leader, else None.

        Pass it to the resources the leader writes to: they can reject a write carrying a token
        lower than one they have seen, which stops a paused former leader that ``is_leader``
        cannot stop.
        """
        term = self._core.term
        return term.fencing_token if term is not None and self.is_leader else None

    def statistics(self) -> ElectionStatistics:
        """An immutable snapshot of the election's state and counters."""
        leading = self.is_leader
        state: str
        if self._state in ("new", "stopping", "stopped"):
            state = self._state
        elif leading:
            state = "leader"
        elif self._held_back or self._core.held_back_until > self._clock.now():
            state = "held_back"
        else:
            state = "follower"
        return ElectionStatistics(
            state=state,
            instance_id=self._instance_id,
            is_leader=leading,
            fencing_token=self.fencing_token,
            terms_won=self._core.terms_won,
            transitions=self._moves,
            leader_id=self._instance_id if leading else self._leader_id,
            acquire_attempts=self._attempts,
            renewals=self._renewals,
            renew_failures=self._renew_failures,
            last_renew_latency=self._last_renew_latency,
            store_errors=self._errors,
            restart_protection=self._held_back,
        )

    async def get_leader_info(self) -> LeaderInfo | None:
        """Read who leads from the store; None when no one does.

        Raises:
            StoreError: Redis failed or did not answer in time.
            CorruptLeaderInfoError: the stored record is not valid LeaderInfo JSON.
        """
        timeout = self._timings.call_timeout
        if self._owns_client and self._state == "stopped":
            # The election's own client is closed; read with a short-lived one.
            client = client_from_url(self._url or "", timeout)
            try:
                return await self._make_store(client).read_info(timeout=timeout)
            finally:
                await client.aclose()
        return await self._get_store().read_info(timeout=timeout)

    async def get_leader_id(self) -> str | None:
        """Read the leader's instance id from the store; None when no one leads."""
        info = await self.get_leader_info()
        return info.instance_id if info is not None else None

    def changes(self) -> AsyncIterator[LeaderChange]:
        """Iterate over the election's leader changes, as :meth:`LeaderObserver.changes` does,
        on this election's client: the current state first, then every change in order.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running()
        return watch_changes(self._get_store(), self._timings)

    # ------------------------------------------------------------------------- waiting

    async def wait_until_leader(self, timeout: float | None = None) -> None:
        """Wait until this instance leads.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ElectionNotRunningError: the election is not running or stopped while waiting.
        """
        self._require_running()
        async with asyncio.timeout(timeout):
            while not self.is_leader:
                if self._leader_event.is_set():
                    # The lease ran out while the loop was busy; the watchdog ends the term on
                    # its next turn and sets the follower event.
                    await self._follower_event.wait()
                    continue
                await _wait_first(self._leader_event, self._stopped)
                if self._stopped.is_set() or self._state in ("stopping", "stopped"):
                    raise ElectionNotRunningError(
                        "the election stopped while waiting for leadership"
                    )

    async def wait_until_follower(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead (returns at once if it does not).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            while self.is_leader:
                await self._follower_event.wait()

    # ----------------------------------------------------------------------- callbacks

    def on_become_leader(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term starts.

        Usable as a decorator. Callbacks run in registration order, isolated from each other.
        """
        self._become.add(callback)
        return callback

    def on_lose_leadership(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term ends.

        It runs only after the term's become callbacks finished and its ``while_leader`` tasks were
        cancelled; every become is followed by exactly one lose unless the process dies.
        """
        self._lose.add(callback)
        return callback

    def while_leader(self, func: F) -> F:
        """Register an async function run as a task for the length of every term.

        The task starts when a term starts (at once, if registered during a term) and is
        cancelled when the term ends, before the lose callbacks run. An exception ends the task
        for this term and is reported like a callback's.
        """
        if not callable(func):
            raise TypeError(f"while_leader needs an async function, got {func!r}")
        self._leader_tasks.append(func)
        if self._term is not None and self._tg is not None:
            self._start_leader_task(func, self._term)
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
        in the background while ``is_leader`` stays False.
        """
        if self._state != "new":
            raise LeaderElectionError(
                f"this election was already started (state {self._state}); create a new "
                "LeaderElection to campaign again"
            )
        self._state = "starting"
        try:
            # The first attempt runs right here, in the caller's task: nothing stands between
            # entering and knowing the outcome but one round trip.
            store = self._get_store()
            hub = self._hub = ReleaseHub.for_client(store.client)
            subscribed = hub is not None and hub.is_active(store.channel)
            await self._attempt(store, first=True)
            if hub is not None:
                # Subscribing after the attempt keeps the attempt alone on the wire. A follower
                # whose attempt went out before the subscription was live may have missed a
                # release in between: once it is live, look again at once.
                await hub.add(store.channel, self._on_release)
                if not subscribed and self._core.phase is Phase.FOLLOWER:
                    timeout = self._timings.call_timeout
                    if await hub.wait_active(store.channel, timeout=timeout):
                        self._core.release_noticed(now=self._clock.now())
        except BaseException:
            # A permanent error or a cancellation: undo what was started, releasing a lock the
            # first attempt may have won, then let the exception through.
            cleanup = asyncio.ensure_future(self._teardown())
            await _wait_shielded(cleanup, self._shutdown_bound())
            raise
        finally:
            self._start_done.set()
        self._state = "running"
        self._runner = asyncio.get_running_loop().create_task(
            self._run(store), name=f"leaderelection:{self._config.name}:{self._instance_id}"
        )

    async def stop(self) -> None:
        """Stop campaigning; release leadership if held. Idempotent.

        Ends the term locally first (``is_leader`` False, ``while_leader`` tasks cancelled),
        then releases the lock, waking a follower at once, then waits for the lose callbacks.
        Bounded even when Redis is gone: the release has a deadline of its own.
        """
        self._stop_requested.set()
        if self._state == "starting":  # stop() while start() is in its first attempt
            await _wait_shielded(self._start_done, self._shutdown_bound())
        if self._runner is None:
            if self._state != "stopped":
                await self._teardown()
            return
        if self._campaign_scope is not None:
            self._campaign_scope.cancel()
        if asyncio.current_task() is self._dispatcher:
            # Called from a callback: the shutdown waits for the callbacks, so it cannot be
            # awaited here; it completes as soon as this callback returns.
            return
        # Even a cancelled caller waits (boundedly) until the lock is released, so that leaving
        # a cancelled scope or asyncio.run() does not strand the lease; then the callbacks.
        await _wait_shielded(self._released, self._shutdown_bound())
        if not self._runner.done():
            # A cancelled caller also gives the runner a bounded while to run the lose callbacks
            # and close a client made from a URL, which asyncio.run() would otherwise cut short.
            await _wait_shielded(self._runner, self._shutdown_bound())
            await asyncio.shield(self._runner)

    async def resign(self) -> None:
        """Hand leadership over now and stay a candidate.

        Ends the term (lose callbacks follow), releases the lock so a follower takes over within
        milliseconds, and holds this instance back for at least ``retry_interval``. Does
        nothing when this instance does not lead.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running()
        run = self._term
        if run is None:
            return
        self._apply(self._core.resign(self._clock.now()))
        if not run.tasks or self._tg is None:
            # Nothing to wait for: send the release from here, at once. If the caller is
            # cancelled while the answer is on its way, the release was sent all the same, and
            # the token stays remembered for stop() or the next acquire.
            await self._release_unknown(run.term)
            return
        # The hand-off runs in the election's task group: it completes even if the caller is
        # cancelled, or is itself a while_leader task that the end of the term just cancelled.
        done = Flag()
        self._tg.start_soon(self._hand_off, run, self._core.unknown_tokens, done)
        await done.wait()

    # ------------------------------------------------------------------------ internals

    def _shutdown_bound(self) -> float:
        """How long the release part of a shutdown can take at most, with a margin."""
        return 2 * self._timings.call_timeout + _RELEASE_TIMEOUT + 0.5

    def _require_running(self) -> None:
        if self._state not in ("starting", "running"):
            raise ElectionNotRunningError(
                f"the election is {self._state}: use `async with LeaderElection(...)` or "
                "`await election.start()` first"
            )

    def _get_store(self) -> RedisStore:
        if self._store is None:
            if self._client is None:
                assert self._url is not None
                self._client = client_from_url(self._url, self._timings.call_timeout)
            self._store = self._make_store(self._client)
        return self._store

    def _make_store(self, client: Any) -> RedisStore:
        return RedisStore.for_config(client, self._config)

    async def _close_client(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client, self._store = self._client, None, None
            with contextlib.suppress(Exception):
                await close_client(client)

    async def _run(self, store: RedisStore) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._term is not None:  # won by the first attempt, in start()
                    self._start_term_tasks(self._term)
                if self._pending and not self._dispatcher_started:
                    self._dispatcher_started = True
                    tg.start_soon(self._dispatch)
                # The retry loop runs in this task (one task less per idle candidate); stop()
                # cancels its scope, and the shutdown follows once the cancellation has landed,
                # so an acquire in flight has settled before anything is released.
                self._campaign_scope = anyio.CancelScope()
                if self._stop_requested.is_set():
                    self._campaign_scope.cancel()
                with self._campaign_scope:
                    await self._campaign(store)
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            await self._teardown()

    async def _teardown(self) -> None:
        """Whatever ended the election (a stop, a cancellation, a failed start, a bug): end the
        term, release what may be ours, run the callbacks still queued, and let go of Redis."""
        await self._abandon()
        if self._hub is not None and self._store is not None:
            await self._hub.remove(self._store.channel, self._on_release)
            self._hub = None
        self._state = "stopped"
        self._leader_event.clear()
        self._follower_event.set()
        self._stopped.set()
        await self._close_client()

    async def _shutdown(self) -> None:
        self._state = "stopping"
        run = self._term
        self._apply(self._core.stop(self._clock.now()))
        if run is not None:
            await self._finish_leader_tasks(run)
        await self._release_unknown(run.term if run is not None else None)
        self._released.set()
        if self._dispatcher_started:
            self._enqueue(_STOP, None)
            await self._dispatcher_done.wait()

    async def _abandon(self) -> None:
        """Leave nothing behind: end the term, release, run the callbacks still queued."""
        self._apply(self._core.stop(self._clock.now()))
        if not self._released.is_set():
            await self._release_unknown(None)
            self._released.set()
        pending, self._pending = self._pending, []
        for kind, run in pending:
            if run is not None:
                await self._run_callbacks(kind, run)

    async def _hand_off(self, run: _TermRun, tokens: tuple[str, ...], done: Flag) -> None:
        """After resign(): let the term's tasks finish, then release so a follower takes over."""
        try:
            await self._finish_leader_tasks(run)
            await self._release_unknown(run.term, tokens)
        finally:
            done.set()

    async def _attempt(self, store: RedisStore, *, first: bool = False) -> None:
        core, clock = self._core, self._clock
        token = secrets.token_hex(16)
        sent = clock.now()
        notices = core.notices
        unknown = core.unknown_tokens
        core.attempt_sent(token)
        self._attempts += 1
        try:
            result = await store.acquire(
                token,
                self._info_json(None, sent_wall=_utcnow()),
                self._timings.lock_ttl_ms,
                unknown_tokens=unknown,
                min_uptime_s=self._timings.restart_uptime_s,
                timeout=self._timings.call_timeout,
                check_role=first,
            )
        except StoreError as exc:
            self._errors += 1
            delay = core.acquire_failed(now=clock.now(), token=token)
            if first and isinstance(exc, StoreUnavailableError):
                # A retrying client can hide a wrong password behind a timeout: look once.
                cause = await store.diagnose(timeout=self._timings.call_timeout)
                if cause is not None:
                    raise cause from exc
            if first and not isinstance(exc, StoreUnavailableError):
                raise
            logger.warning(
                "Failed to acquire leadership, retrying in %.2fs: %s",
                delay,
                exc,
                extra=self._extra(),
            )
            return
        now = clock.now()
        if isinstance(result, Acquired):
            self._held_back = False
            self._apply(
                core.acquired(
                    sent_at=sent, now=now, token=token, fencing_token=result.fencing_token
                )
            )
        elif isinstance(result, Held):
            self._held_back = False
            self._leader_id = result.holder_id
            core.held(now=now, remaining_ms=result.remaining_ms, notices_at_send=notices)
        else:
            if not self._held_back:
                logger.warning(
                    "Redis started %ss ago: holding elections back for %.1fs so that a leader "
                    "from before a restart has stepped down",
                    result.uptime_s,
                    result.wait_ms / 1000,
                    extra=self._extra(),
                )
            self._held_back = True
            core.held_back(now=now, wait_ms=result.wait_ms)

    async def _campaign(self, store: RedisStore) -> None:
        core, clock = self._core, self._clock
        while not self._stop_requested.is_set():
            if core.phase is Phase.LEADER:
                await self._follower_event.wait()
                continue
            if core.next_acquire_at > clock.now():
                self._wake.clear()
                await clock.wait_until(core.next_acquire_at, self._wake)
                continue
            await self._attempt(store)

    async def _heartbeat(self, run: _TermRun, store: RedisStore) -> None:
        # The term's end is signalled, not cancelled: a renewal in flight may finish (the core
        # ignores an ended term's answers, and the script only extends a lock holding its token).
        core, clock, term = self._core, self._clock, run.term
        while not run.ended.is_set():
            if await clock.wait_until(core.next_renew_at, run.ended):
                return
            sent = clock.now()
            timeout = core.renew_timeout(sent)
            if timeout <= 0:
                self._apply(core.check(sent))
                return
            try:
                ok = await store.renew(
                    term.token,
                    self._info_json(term, sent_wall=_utcnow()),
                    self._timings.lock_ttl_ms,
                    timeout=timeout,
                )
            except StoreError as exc:
                if run.ended.is_set():  # the watchdog ended the term while we waited
                    return
                self._errors += 1
                self._renew_failures += 1
                logger.warning("Heartbeat failed, retrying: %s", exc, extra=self._extra())
                self._apply(core.renew_failed(token=term.token, now=clock.now()))
                continue
            now = clock.now()
            if run.ended.is_set():
                return
            if ok:
                self._renewals += 1
                self._last_renew_latency = now - sent
                logger.debug("Heartbeat sent", extra=self._extra())
                self._apply(core.renewed(token=term.token, sent_at=sent, now=now))
            else:
                self._apply(core.renew_lost(token=term.token, now=now))

    async def _watchdog(self, run: _TermRun) -> None:
        core, clock = self._core, self._clock
        while not run.ended.is_set():
            if await clock.wait_until(core.lease_deadline, run.ended):
                return
            self._apply(core.check(clock.now()))

    def _apply(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            self._moves += 1
            if isinstance(transition, BecameLeader):
                self._begin_term(transition.term)
            else:
                self._end_term(transition)

    def _begin_term(self, term: Term) -> None:
        run = _TermRun(term)
        self._term = run
        self._leader_id = self._instance_id
        self._follower_event.clear()
        self._leader_event.set()
        logger.info("Became the leader", extra=self._extra())
        if self._tg is not None:  # else the runner starts them as it comes up
            self._start_term_tasks(run)
        self._enqueue("become", run)

    def _start_term_tasks(self, run: _TermRun) -> None:
        """Start the term's heartbeat, watchdog and ``while_leader`` tasks."""
        assert self._tg is not None and self._store is not None
        self._tg.start_soon(self._heartbeat, run, self._store)
        self._tg.start_soon(self._watchdog, run)
        for func in self._leader_tasks:
            self._start_leader_task(func, run)

    def _end_term(self, lost: LostLeadership) -> None:
        run = self._term
        assert run is not None and run.term is lost.term
        self._term = None
        self._leader_id = None  # unknown until the store is read again
        self._leader_event.clear()
        self._follower_event.set()
        run.ended.set()
        for scope, _ in run.tasks:
            scope.cancel()
        extra = {**self._extra(run.term), "reason": lost.reason.value}
        if lost.reason in (LossReason.RENEW_DEADLINE, LossReason.LOCK_LOST):
            logger.warning("Failed to send heartbeat, lost leadership", extra=extra)
        else:
            logger.info("Stepped down (%s)", lost.reason.value, extra=extra)
        self._enqueue("lose", run)
        self._wake.set()

    def _start_leader_task(self, func: LeaderTask, run: _TermRun) -> None:
        assert self._tg is not None
        scope, done = anyio.CancelScope(), Flag()
        run.tasks.append((scope, done))
        self._tg.start_soon(self._run_leader_task, func, run, scope, done)

    async def _run_leader_task(
        self, func: LeaderTask, run: _TermRun, scope: anyio.CancelScope, done: Flag
    ) -> None:
        try:
            with scope:
                await func()
        except Exception as exc:
            report(exc, self._context("while_leader", func, run.term), self._on_error)
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # A stray CancelledError (the task awaited something that was cancelled) ends
            # this task only, like any other exception.
            report(exc, self._context("while_leader", func, run.term), self._on_error)
        finally:
            done.set()

    async def _finish_leader_tasks(self, run: _TermRun) -> None:
        """Give the term's cancelled ``while_leader`` tasks a moment to finish before releasing."""
        deadline = self._clock.now() + self._timings.call_timeout
        for _, done in run.tasks:
            await self._clock.wait_until(deadline, done)

    def _enqueue(self, kind: Any, run: _TermRun | None) -> None:
        """Queue callbacks for the dispatcher, starting it at the first term."""
        self._pending.append((kind, run))
        self._pending_flag.set()
        if not self._dispatcher_started and self._tg is not None:
            self._dispatcher_started = True
            self._tg.start_soon(self._dispatch)

    async def _dispatch(self) -> None:
        self._dispatcher = asyncio.current_task()
        try:
            while True:
                while not self._pending:
                    self._pending_flag.clear()
                    await self._pending_flag.wait()
                kind, run = self._pending.pop(0)
                if kind is _STOP or run is None:
                    return
                if kind == "lose":
                    for _, task_done in run.tasks:
                        await task_done.wait()
                await self._run_callbacks(kind, run)
        finally:
            self._dispatcher_done.set()

    async def _run_callbacks(self, kind: str, run: _TermRun) -> None:
        callbacks = self._become if kind == "become" else self._lose
        await callbacks.run(self._context(callbacks.kind, None, run.term), self._on_error)

    async def _release_unknown(
        self, term: Term | None, tokens: tuple[str, ...] | None = None
    ) -> None:
        """Release the lock if it holds any token of ours (``term``: the term just ended).

        ``tokens`` defaults to every token whose outcome is unknown. A hand-off passes the ones
        it had when the term ended instead: an acquire sent since then (the campaign goes on)
        may have won the lock, and releasing its token would free a lock the core then leads.
        """
        if tokens is None:
            tokens = self._core.unknown_tokens
        if self._store is None or not tokens:
            return
        if term is not None:
            logger.info("Releasing leadership voluntarily", extra=self._extra(term))
        try:
            await self._store.release(
                tokens, self._instance_id, timeout=min(self._timings.call_timeout, _RELEASE_TIMEOUT)
            )
            self._core.released(tokens)
        except StoreError as exc:
            self._errors += 1
            logger.warning(
                "Could not release the lock (%s); it expires within lock_ttl",
                exc,
                extra=self._extra(),
            )

    def _on_release(self, message: str | None) -> None:
        """A message on the election's channel: a release ("R ...", or None after a reconnect,
        when one may have been missed) wakes a follower; a step-down request naming this
        instance ("S <instance id>") makes a leader resign; a new term ("A ...") is for
        observers."""
        if message is None or message.startswith("R "):
            if self._core.release_noticed(now=self._clock.now()):
                self._wake.set()
        elif message == f"S {self._instance_id}" and self.is_leader and self._tg is not None:
            logger.info("Stepping down on request", extra=self._extra(self._core.term))
            self._tg.start_soon(self._step_down_on_request)

    async def _step_down_on_request(self) -> None:
        with contextlib.suppress(ElectionNotRunningError):
            await self.resign()

    def _info_json(self, term: Term | None, *, sent_wall: datetime) -> str:
        """The LeaderInfo JSON; without a term, the prefix the acquire script completes."""
        started = sent_wall if term is None else self._started_wall
        if term is None:
            self._started_wall = sent_wall
        record: dict[str, object] = {
            "instance_id": self._instance_id,
            "hostname": self._config.hostname,
            "pid": os.getpid(),
            "started_at": started.isoformat(),
            "last_heartbeat": sent_wall.isoformat(),
            "election": self._config.name,
        }
        if self._config.metadata:
            record["metadata"] = self._config.metadata
        text = json.dumps(record, separators=(",", ":"))
        if term is None:
            return text[:-1]
        return text[:-1] + f',"fencing_token":{term.fencing_token}}}'

    def _extra(self, term: Term | None = None) -> dict[str, Any]:
        if term is None and self._core.phase is Phase.LEADER:
            term = self._core.term
        return {
            "election": self._config.name,
            "instance_id": self._instance_id,
            "fencing_token": term.fencing_token if term is not None else None,
        }

    def _context(self, kind: str, callback: Any, term: Term) -> Mapping[str, Any]:
        return {
            "kind": kind,
            "callback": callback,
            "election": self._config.name,
            "instance_id": self._instance_id,
            "fencing_token": term.fencing_token,
        }


def _being_cancelled() -> bool:
    """Whether the current task has a cancellation pending (ours to honour, not to report)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _wait_shielded(awaitable: Flag | asyncio.Future[Any], timeout: float) -> None:
    """Wait up to ``timeout`` for an event or future even if the caller is cancelled meanwhile;
    a cancellation that arrived is raised afterwards."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waiter = asyncio.ensure_future(awaitable.wait()) if isinstance(awaitable, Flag) else awaitable
    cancelled: BaseException | None = None
    with anyio.CancelScope(shield=True):
        while not waiter.done() and (left := deadline - loop.time()) > 0:
            try:
                await asyncio.wait({waiter}, timeout=left)
            except asyncio.CancelledError as exc:
                cancelled = exc
    if isinstance(awaitable, Flag):
        waiter.cancel()
    elif waiter.done() and not waiter.cancelled():
        waiter.exception()  # retrieved: a failed start() reports it once, from start()
    if cancelled is not None:
        raise cancelled


async def _wait_first(*events: Waitable) -> None:
    """Wait until any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _utcnow() -> datetime:
    return datetime.now(UTC)
