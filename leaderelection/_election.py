"""LeaderElection: the public API and the lifecycle of one candidate.

The pure core (:mod:`._core`) decides; this class obeys. Its runner task asks the core for the
next action (acquire, renew, step down, or wait until a time), sends the store call it names with
a deadline kept by the election's clock, reports the answer back, and turns the transitions the
core returns into events, logs, term tasks (:mod:`._term`) and callbacks (:mod:`._callbacks`).
It keeps no copy of "who leads": every read goes to the core.

Tasks and their owners (``docs/architecture.md`` draws them):

* the runner: owned by the election, supervised by itself: an unexpected error is logged with
  its traceback, the term (if any) ends, and the campaign starts over after a backoff;
* per term, the watchdog and the ``while_leader`` tasks: owned by the term's :class:`TermRun`;
* the callback dispatcher: owned by the election, bounded at shutdown;
* hand-offs after ``resign()``: owned by the election, waited for by the shutdown;
* the channel listener: owned by the client's :class:`ChannelHub`, supervised there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import anyio
import redis.asyncio as aioredis

from ._aio import Flag, wait_first, wait_shielded
from ._callbacks import (
    Callback,
    CallbackList,
    Dispatcher,
    ErrorHandler,
    LeaderTask,
    check_error_handler,
)
from ._channel import Message, Released, Resync, StepDownRequested
from ._clock import Clock, MonotonicClock
from ._config import ElectionConfig, config_argument, new_instance_id
from ._core import (
    Acquire,
    BecameLeader,
    ElectionCore,
    ElectionStatistics,
    LossReason,
    LostLeadership,
    Phase,
    Renew,
    StepDown,
    Term,
    Timings,
    Transition,
)
from ._exceptions import ElectionNotRunningError, LeaderElectionError, StoreError
from ._exceptions import StoreUnavailableError as _Unavailable
from ._info import LeaderInfo
from ._observer import LeaderChange, watch_changes
from ._store import (
    Acquired,
    Held,
    RedisStore,
    Store,
    client_from_url,
    close_client,
    redis_argument,
)
from ._term import TermRun

__all__ = ["ElectionStatistics", "LeaderElection", "Lifecycle"]

logger = logging.getLogger("leaderelection")

F = TypeVar("F", bound=Callable[..., Any])
Lifecycle = Literal["new", "starting", "running", "stopping", "stopped"]
_RELEASE_TIMEOUT: Final = 1.0  # seconds; release is best effort, the lease expires anyway


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
            task raises; the exception is logged either way. A plain function, not async.
        clock: The monotonic clock to read and wait through (for tests); default the real one.
        store: A lease store to use instead of Redis (``leaderelection.testing.MemoryStore``);
            ``redis`` is then ignored and may be None.

    Raises:
        ConfigurationError: ``redis`` is neither an asyncio client nor a URL.
        TypeError: ``on_error`` is async or not callable.
    """

    __slots__ = (
        "__weakref__",
        "_background",
        "_become",
        "_client",
        "_clock",
        "_config",
        "_core",
        "_dispatcher",
        "_drive_scope",
        "_follower_event",
        "_grace",
        "_instance_id",
        "_leader_event",
        "_leader_task_set",
        "_leader_tasks",
        "_listening",
        "_lose",
        "_on_error",
        "_owns_client",
        "_released",
        "_runner",
        "_start_done",
        "_started_wall",
        "_state",
        "_stop_requested",
        "_stopped",
        "_store",
        "_task_wait",
        "_term",
        "_timings",
        "_url",
        "_wake",
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
        self._store: Store | None = store
        self._instance_id = new_instance_id(self._config)
        self._timings = Timings.from_config(self._config)
        self._grace = self._timings.grace  # for user code that ignores cancellation
        self._task_wait = self._timings.call_timeout  # for while_leader tasks, before a release
        self._core = ElectionCore(self._timings, instance_id=self._instance_id)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._become = CallbackList("on_become_leader")
        self._lose = CallbackList("on_lose_leadership")
        self._leader_tasks: list[LeaderTask] = []
        if on_become_leader is not None:
            self._become.add(on_become_leader)
        if on_lose_leadership is not None:
            self._lose.add(on_lose_leadership)
        self._on_error = on_error
        self._dispatcher = Dispatcher(
            self._become,
            self._lose,
            context=lambda kind, run: self._context(kind, None, run.term),
            on_error=on_error,
            grace=self._grace,
        )

        self._state: Lifecycle = "new"
        self._runner: asyncio.Task[None] | None = None
        self._drive_scope: anyio.CancelScope | None = None
        self._term: TermRun | None = None  # the tasks of the current term, while it runs
        self._background: set[asyncio.Task[None]] = set()  # hand-offs after resign()
        self._leader_task_set: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
        self._leader_event = asyncio.Event()
        self._follower_event = Flag()
        self._follower_event.set()
        self._wake = Flag()  # the runner looks at the core again
        self._stop_requested = Flag()
        self._stopped = Flag()
        self._released = Flag()  # set once the shutdown released what may be ours
        self._start_done = Flag()
        self._listening = False
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
        return self._core.statistics(self._clock.now(), self._state)

    async def get_leader_info(self) -> LeaderInfo | None:
        """Read who leads from the store; None when no one does.

        Raises:
            StoreError: Redis failed or did not answer in time.
            CorruptLeaderInfoError: the stored record is not valid LeaderInfo JSON.
        """
        timeout = self._timings.call_timeout
        if self._owns_client and self._state in ("new", "stopped"):
            # The election's own client does not exist or is closed: read with a short-lived one.
            client = client_from_url(self._url or "", timeout)
            try:
                return await self._make_store(client).read_info(timeout=timeout)
            finally:
                await close_client(client)
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
                await wait_first(self._leader_event, self._stopped)
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

        It runs only after the term's become callbacks finished and its ``while_leader`` tasks
        ended; every become is followed by exactly one lose unless the process dies.
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
        if self._term is not None:
            self._start_leader_task(self._term, func)
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
            hub = store.hub
            if hub is not None and hub.is_active(store.channel):
                # The client listens already: listen first, so that a release announced while
                # the attempt is on its way is heard (the attempt then tries again at once).
                await hub.add(store.channel, self._on_message)
                self._listening = True
                await self._attempt(store, first=True)
            else:
                await self._attempt(store, first=True)
                if hub is not None:
                    # Subscribing after the attempt keeps the attempt alone on the wire. A
                    # follower whose attempt went out before the subscription was live may have
                    # missed a release in between: once it is live, look again at once.
                    await hub.add(store.channel, self._on_message)
                    self._listening = True
                    if self._core.phase is Phase.FOLLOWER and await hub.wait_active(
                        store.channel, timeout=self._timings.call_timeout
                    ):
                        self._core.release_noticed(now=self._clock.now())
        except BaseException:
            # A permanent error or a cancellation: undo what was started, releasing a lock the
            # first attempt may have won, then let the exception through.
            await wait_shielded(asyncio.ensure_future(self._teardown()), self._shutdown_bound())
            raise
        finally:
            self._start_done.set()
        self._state = "running"
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
        shutdown waits for that very code.
        """
        self._stop_requested.set()
        self._wake.set()
        if self._state == "starting":  # stop() while start() is in its first attempt
            await wait_shielded(self._start_done, self._shutdown_bound())
        runner = self._runner
        if runner is None:
            if self._state != "stopped":
                await self._teardown()
            return
        if self._drive_scope is not None:
            self._drive_scope.cancel()
        if self._in_own_task():
            return
        # Even a cancelled caller waits (boundedly) until the lock is released, so that leaving
        # a cancelled scope or asyncio.run() does not strand the lease; then the callbacks, and
        # the closing of a client made from a URL, which asyncio.run() would otherwise cut short.
        await wait_shielded(self._released, self._shutdown_bound())
        await wait_shielded(runner, self._shutdown_bound() + 2 * self._grace)

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
        tokens = self._core.unknown_tokens
        if not run.tasks:
            # Nothing to wait for: send the release from here, at once. If the caller is
            # cancelled while the answer is on its way, the release was sent all the same, and
            # the token stays remembered for stop() or the next acquire.
            await self._release(run.term, tokens)
            return
        # The hand-off runs in a task of the election's: it completes even if the caller is
        # cancelled, or is itself a while_leader task that the end of the term just cancelled.
        await asyncio.shield(self._spawn(self._hand_off(run, tokens)))

    # ------------------------------------------------------------------------ the runner

    async def _run(self, store: Store) -> None:
        """The runner task: drive the core until stopped, restarting after a failure; then shut
        down. Whatever ends it, the teardown releases what may be ours and lets go of Redis."""
        core, clock = self._core, self._clock
        try:
            while not self._stop_requested.is_set():
                self._drive_scope = anyio.CancelScope()
                if self._stop_requested.is_set():
                    self._drive_scope.cancel()
                try:
                    with self._drive_scope:
                        await self._drive(store)
                except Exception as exc:
                    self._apply(core.fail(clock.now()))
                    logger.error(
                        "The election's runner failed (%s: %s); campaigning again in %.2fs",
                        type(exc).__name__,
                        exc,
                        max(core.next_acquire_at - clock.now(), 0.0),
                        exc_info=exc,
                        extra=self._extra(),
                    )
                    await clock.wait_until(core.next_acquire_at, self._stop_requested)
            await self._shutdown()
        finally:
            await self._teardown()

    async def _drive(self, store: Store) -> None:
        """Do what the core says, when it says, until the election stops."""
        core, clock = self._core, self._clock
        while not self._stop_requested.is_set():
            now = clock.now()
            action = core.next_action(now)
            if action.at > now:
                self._wake.clear()
                await clock.wait_until(action.at, self._wake)
            elif isinstance(action, Acquire):
                await self._attempt(store)
            elif isinstance(action, Renew):
                await self._renew(store, action.token)
            elif isinstance(action, StepDown):
                self._apply(core.check(now))
            else:
                return

    async def _attempt(self, store: Store, *, first: bool = False) -> None:
        core, clock = self._core, self._clock
        token = secrets.token_hex(16)
        sent = clock.now()
        notices = core.notices
        unknown = core.unknown_tokens
        core.attempt_sent(token)
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
            delay = core.acquire_failed(now=clock.now(), token=token)
            if first and isinstance(exc, _Unavailable):
                # A retrying client can hide a wrong password behind a timeout: look once.
                cause = await store.diagnose(timeout=self._timings.call_timeout)
                if cause is not None:
                    raise cause from exc
            if first and not isinstance(exc, _Unavailable):
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
            self._apply(
                core.acquired(
                    sent_at=sent, now=now, token=token, fencing_token=result.fencing_token
                )
            )
        elif isinstance(result, Held):
            core.held(
                now=now,
                remaining_ms=result.remaining_ms,
                notices_at_send=notices,
                holder_id=result.holder_id,
            )
        else:
            if not core.restart_protection:
                logger.warning(
                    "Redis started %ss ago: holding elections back for %.1fs so that a leader "
                    "from before a restart has stepped down",
                    result.uptime_s,
                    result.wait_ms / 1000,
                    extra=self._extra(),
                )
            core.held_back(now=now, wait_ms=result.wait_ms)

    async def _renew(self, store: Store, token: str) -> None:
        core, clock = self._core, self._clock
        term = core.term
        assert term is not None
        sent = clock.now()
        try:
            ok = await store.renew(
                token,
                self._info_json(term, sent_wall=_utcnow()),
                self._timings.lock_ttl_ms,
                timeout=core.renew_timeout(sent),
            )
        except StoreError as exc:
            logger.warning("Heartbeat failed, retrying: %s", exc, extra=self._extra(term))
            self._apply(core.renew_failed(token=token, now=clock.now()))
            return
        except Exception as exc:
            # An odd reply or a client bug: the renewal's outcome is unknown, as after a timeout.
            logger.error(
                "Heartbeat failed unexpectedly, retrying", exc_info=exc, extra=self._extra(term)
            )
            self._apply(core.renew_failed(token=token, now=clock.now()))
            return
        now = clock.now()
        if ok:
            logger.debug("Heartbeat sent", extra=self._extra(term))
            self._apply(core.renewed(token=token, sent_at=sent, now=now))
        else:
            self._apply(core.renew_lost(token=token, now=now))

    def _apply(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            if isinstance(transition, BecameLeader):
                self._begin_term(transition.term)
            else:
                self._end_term(transition)

    def _begin_term(self, term: Term) -> None:
        run = self._term = TermRun(term)
        self._follower_event.clear()
        self._leader_event.set()
        logger.info("Became the leader", extra=self._extra(term))
        core = self._core
        run.start_watchdog(
            self._clock,
            lambda: core.lease_deadline,
            lambda: self._apply(core.check(self._clock.now())),
        )
        for func in self._leader_tasks:
            self._start_leader_task(run, func)
        self._dispatcher.enqueue("become", run)

    def _end_term(self, lost: LostLeadership) -> None:
        run = self._term
        assert run is not None and run.term is lost.term
        self._term = None
        self._leader_event.clear()
        self._follower_event.set()
        run.end()
        extra = {**self._extra(run.term), "reason": lost.reason.value}
        if lost.reason in (LossReason.RENEW_DEADLINE, LossReason.LOCK_LOST):
            logger.warning("Failed to send heartbeat, lost leadership", extra=extra)
        else:
            logger.info("Stepped down (%s)", lost.reason.value, extra=extra)
        self._dispatcher.enqueue("lose", run)
        self._wake.set()

    def _start_leader_task(self, run: TermRun, func: LeaderTask) -> None:
        task = run.start_task(
            func, context=self._context("while_leader", func, run.term), on_error=self._on_error
        )
        self._leader_task_set.add(task)

    # ------------------------------------------------------------------- shutting down

    async def _shutdown(self) -> None:
        self._state = "stopping"
        run = self._term
        self._apply(self._core.stop(self._clock.now()))
        if run is not None:
            await run.wait_tasks(self._task_wait)
        if self._background:  # a hand-off in flight releases its own term first
            await asyncio.wait(set(self._background), timeout=self._shutdown_bound())
        await self._release(run.term if run is not None else None)
        self._released.set()
        await self._dispatcher.close()

    async def _teardown(self) -> None:
        """Whatever ended the election (a stop, a cancellation, a failed start, a bug): end the
        term, release what may be ours, run the callbacks still queued, and let go of Redis."""
        self._apply(self._core.stop(self._clock.now()))
        if not self._released.is_set():
            await self._release(None)
            self._released.set()
        await self._dispatcher.close()
        store = self._store
        if self._listening and store is not None and store.hub is not None:
            self._listening = False
            await store.hub.remove(store.channel, self._on_message)
        self._state = "stopped"
        self._leader_event.clear()
        self._follower_event.set()
        self._stopped.set()
        if self._owns_client and self._client is not None:
            client, self._client, self._store = self._client, None, None
            with contextlib.suppress(Exception):
                await close_client(client)

    async def _hand_off(self, run: TermRun, tokens: tuple[str, ...]) -> None:
        """After resign(): let the term's tasks finish, then release so a follower takes over."""
        await run.wait_tasks(self._task_wait)
        await self._release(run.term, tokens)

    async def _release(self, term: Term | None, tokens: tuple[str, ...] | None = None) -> None:
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
                tokens,
                self._instance_id,
                fencing_token=term.fencing_token if term is not None else None,
                timeout=min(self._timings.call_timeout, _RELEASE_TIMEOUT),
            )
            self._core.released(tokens)
        except StoreError as exc:
            self._core.release_failed()
            logger.warning(
                "Could not release the lock (%s); it expires within lock_ttl",
                exc,
                extra=self._extra(),
            )

    # ------------------------------------------------------------------------ internals

    def _wait_for_user_code(self, timeout: float) -> None:
        """Wait up to ``timeout`` for ``while_leader`` tasks before a release and for callbacks
        at a shutdown (the sync election's threads cannot be cancelled: it waits for them)."""
        self._task_wait = self._grace = timeout
        self._dispatcher.grace = timeout

    def _on_message(self, message: Message) -> None:
        """A message on the election's channel: a release (or a resubscription, when one may
        have been missed) wakes a follower; a step-down request naming this instance makes a
        leader resign; a new term's announcement is for observers."""
        if isinstance(message, Released | Resync):
            if self._core.release_noticed(now=self._clock.now()):
                self._wake.set()
        elif (
            isinstance(message, StepDownRequested)
            and message.instance_id == self._instance_id
            and self.is_leader
            and self._state == "running"
        ):
            logger.info("Stepping down on request", extra=self._extra(self._core.term))
            self._spawn(self._step_down_on_request())

    async def _step_down_on_request(self) -> None:
        with contextlib.suppress(ElectionNotRunningError):
            await self.resign()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task the election owns until it ends; its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("A hand-off failed", exc_info=task.exception(), extra=self._extra())

    def _in_own_task(self) -> bool:
        """Whether the caller is the election's callback dispatcher or a ``while_leader`` task."""
        task = asyncio.current_task()
        if task is None:
            return False
        return task is self._dispatcher.task or task in self._leader_task_set

    def _shutdown_bound(self) -> float:
        """How long the release part of a shutdown can take at most, with a margin."""
        return 2 * self._timings.call_timeout + _RELEASE_TIMEOUT + 0.5

    def _require_running(self) -> None:
        if self._state not in ("starting", "running"):
            raise ElectionNotRunningError(
                f"the election is {self._state}: use `async with LeaderElection(...)` or "
                "`await election.start()` first"
            )

    def _get_store(self) -> Store:
        if self._store is None:
            if self._client is None:
                assert self._url is not None
                self._client = client_from_url(self._url, self._timings.call_timeout)
            self._store = self._make_store(self._client)
        return self._store

    def _make_store(self, client: Any) -> RedisStore:
        return RedisStore.for_config(client, self._config, self._clock)

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


def _utcnow() -> datetime:
    return datetime.now(UTC)
