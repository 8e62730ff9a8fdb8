"""The campaign of one candidate: the runner that obeys the core, and the terms it starts.

The pure core (:mod:`._core`) decides; the campaign obeys. Its runner asks the core for the next
action (acquire, renew, step down, or wait until a time), sends the store call it names with a
deadline kept by the clock, reports the answer back, and turns the transitions the core returns
into events, logs, term tasks (:mod:`._term`) and callbacks (:mod:`._callbacks`). It keeps no
copy of "who leads": every read goes to the core. :class:`~._election.LeaderElection` is the
public face of a campaign and runs its lifecycle; ``docs/architecture.md`` draws both.

Tasks and their owners:

* the runner (:meth:`Campaign.run`): started and owned by the election, supervised here: an
  unexpected error is logged with its traceback, the term (if any) ends, and the campaign starts
  over after a backoff;
* per term, the watchdog and the ``while_leader`` tasks: owned by the term's :class:`TermRun`;
* the callback dispatcher: owned by the campaign, bounded at shutdown;
* hand-offs after ``resign()`` and step-downs on request: owned by the campaign, waited for by
  the shutdown;
* the channel listener: owned by the client's hub (:mod:`._channel`), supervised there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import anyio

from . import _metrics
from ._aio import Flag, wait_bounded
from ._callbacks import CallbackList, Dispatcher, ErrorHandler, LeaderTask
from ._channel import Announced, Message, Released, Resync, StepDownRequested
from ._clock import Clock
from ._config import ElectionConfig
from ._core import (
    Acquire,
    BecameLeader,
    ElectionCore,
    LossReason,
    LostLeadership,
    Phase,
    Renew,
    StepDown,
    Term,
    Timings,
    Transition,
)
from ._exceptions import StoreError
from ._exceptions import StoreUnavailableError as _Unavailable
from ._store import Acquired, Held, Store, error_kind
from ._term import TermRun, current_run

__all__ = ["Campaign", "Lifecycle"]

logger = logging.getLogger("leaderelection")

Lifecycle = Literal["new", "starting", "running", "stopping", "stopped"]
_RELEASE_TIMEOUT: Final = 1.0  # seconds; release is best effort, the lease expires anyway


class Campaign:
    """One candidate's state and its runner (see the module docstring). Not thread-safe."""

    # Slots keep an idle candidate small; "__dict__" lets a test wrap a method of one instance.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "background",
        "become",
        "clock",
        "config",
        "core",
        "dispatcher",
        "drive_scope",
        "follower_event",
        "grace",
        "instance_id",
        "leader_event",
        "leader_tasks",
        "listening",
        "lose",
        "on_error",
        "released",
        "started_wall",
        "state",
        "stop_requested",
        "store",
        "task_wait",
        "term",
        "timings",
        "wake",
    )

    def __init__(
        self,
        config: ElectionConfig,
        instance_id: str,
        clock: Clock,
        on_error: ErrorHandler | None,
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.timings = Timings.from_config(config)
        self.clock = clock
        self.core = ElectionCore(self.timings, instance_id=instance_id, priority=config.priority)
        self.state: Lifecycle = "new"
        self.store: Store | None = None
        self.become = CallbackList("on_become_leader")
        self.lose = CallbackList("on_lose_leadership")
        self.leader_tasks: list[LeaderTask] = []
        self.on_error = on_error
        self.grace = self.timings.grace  # for user code that ignores cancellation
        self.task_wait = self.timings.call_timeout  # for while_leader tasks, before a release
        self.dispatcher = Dispatcher(
            self.become,
            self.lose,
            context=lambda kind, run: self.context(kind, None, run.term),
            on_error=on_error,
            grace=self.grace,
            clock=clock,
        )
        self.term: TermRun | None = None  # the tasks of the current term, while it runs
        self.background: set[asyncio.Task[None]] = set()  # hand-offs, step-downs on request
        self.leader_event = asyncio.Event()  # set exactly while a term runs
        self.follower_event = Flag()
        self.follower_event.set()
        self.wake = Flag()  # the runner looks at the core again
        self.stop_requested = Flag()
        self.released = Flag()  # set once the shutdown released what may be ours
        self.listening = False  # subscribed to the channel
        self.drive_scope: anyio.CancelScope | None = None
        self.started_wall = _utcnow()

    async def resign(self) -> None:
        """End the term, hand the lock over and hold back (see ``LeaderElection.resign``)."""
        run = self.term
        if run is None:
            return
        self.apply(self.core.resign(self.clock.now()))
        tokens = self.core.unknown_tokens
        if not run.tasks:
            # Nothing to wait for: send the release from here, at once. If the caller is
            # cancelled while the answer is on its way, the release was sent all the same, and
            # the token stays remembered for stop() or the next acquire.
            await self.release(run.term, tokens)
            return
        # The hand-off runs in a task of the campaign's: it completes even if the caller is
        # cancelled, or is itself a while_leader task that the end of the term just cancelled.
        await asyncio.shield(self.spawn(self.hand_off(run, tokens)))

    def add_leader_task(self, func: LeaderTask) -> None:
        """Register a ``while_leader`` function; it starts at once during a term."""
        self.leader_tasks.append(func)
        if self.term is not None:
            self._start_leader_task(self.term, func)

    async def abandon(self) -> None:
        """Whatever ended the campaign (a stop, a cancellation, a failed start, a bug): end the
        term, release what may be ours, run the callbacks still queued, stop listening."""
        self.apply(self.core.stop(self.clock.now()))
        if not self.released.is_set():
            await self.release(None)
            self.released.set()
        await self.dispatcher.close()
        store = self.store
        if self.listening and store is not None and store.hub is not None:
            self.listening = False
            await store.hub.remove(store.channel, self.on_message)
        self.leader_event.clear()
        self.follower_event.set()

    def shutdown_bound(self) -> float:
        """How long the release part of a shutdown can take at most, with a margin."""
        return 2 * self.timings.call_timeout + _RELEASE_TIMEOUT + 0.5

    async def run(self, store: Store) -> None:
        """The runner: drive the core until stopped, starting over after a failure; then shut
        down (end the term, release, run the lose callbacks)."""
        core, clock = self.core, self.clock
        try:
            while not self.stop_requested.is_set():
                self.drive_scope = anyio.CancelScope()
                if self.stop_requested.is_set():
                    self.drive_scope.cancel()
                try:
                    with self.drive_scope:
                        await self._drive(store)
                except Exception as exc:
                    self.apply(core.fail(clock.now()))
                    logger.error(
                        "The election's runner failed (%s: %s); campaigning again in %.2fs",
                        type(exc).__name__,
                        exc,
                        max(core.next_acquire_at - clock.now(), 0.0),
                        exc_info=exc,
                        extra=self.extra(),
                    )
                    await clock.wait_until(core.next_acquire_at, self.stop_requested)
            await self.shutdown()
        except Exception:
            logger.exception("The election's shutdown failed", extra=self.extra())

    async def _drive(self, store: Store) -> None:
        """Do what the core says, when it says, until the election stops."""
        core, clock = self.core, self.clock
        while not self.stop_requested.is_set():
            now = clock.now()
            action = core.next_action(now)
            if action.at > now:
                self.wake.clear()
                await clock.wait_until(action.at, self.wake)
            elif isinstance(action, Acquire):
                await self.attempt(store)
            elif isinstance(action, Renew):
                await self._renew(store, action.token)
            elif isinstance(action, StepDown):
                self.apply(core.check(now))
            else:
                return

    async def attempt(self, store: Store, *, first: bool = False) -> None:
        """Send one acquire and report its answer to the core; ``first``: the attempt of
        ``start()``, which raises permanent errors instead of retrying them."""
        core, clock = self.core, self.clock
        token = secrets.token_hex(16)
        sent = clock.now()
        notices = core.notices
        unknown = core.unknown_tokens
        core.attempt_sent(token)
        try:
            result = await store.acquire(
                token,
                self.info_json(None, sent_wall=_utcnow()),
                self.timings.lock_ttl_ms,
                unknown_tokens=unknown,
                min_uptime_s=self.timings.restart_uptime_s if self.config.restart_protection else 0,
                timeout=self.timings.call_timeout,
                check_role=first,
                priority=self.config.priority,
            )
        except StoreError as exc:
            core.last_error = str(exc)
            delay = core.acquire_failed(now=clock.now(), token=token, kind=error_kind(exc))
            if first and isinstance(exc, _Unavailable):
                # A retrying client can hide a wrong password behind a timeout: look once.
                cause = await store.diagnose(timeout=self.timings.call_timeout)
                if cause is not None:
                    raise cause from exc
            if first and not isinstance(exc, _Unavailable):
                raise
            logger.warning(
                "Failed to acquire leadership, retrying in %.2fs: %s",
                delay,
                exc,
                extra=self.extra(),
            )
            return
        now = clock.now()
        core.last_error = None
        if isinstance(result, Acquired):
            self.apply(
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
                top_priority=result.top_priority,
            )
        else:
            if not core.restart_protection:
                logger.warning(
                    "Redis started %ss ago: holding elections back for %.1fs so that a leader "
                    "from before a restart has stepped down",
                    result.uptime_s,
                    result.wait_ms / 1000,
                    extra=self.extra(),
                )
            core.held_back(now=now, wait_ms=result.wait_ms)

    async def _renew(self, store: Store, token: str) -> None:
        core, clock = self.core, self.clock
        term = core.term
        assert term is not None
        sent = clock.now()
        try:
            ok = await store.renew(
                token,
                self.info_json(term, sent_wall=_utcnow()),
                self.timings.lock_ttl_ms,
                timeout=core.renew_timeout(sent),
            )
        except StoreError as exc:
            core.last_error = str(exc)
            logger.warning("Heartbeat failed, retrying: %s", exc, extra=self.extra(term))
            self.apply(core.renew_failed(token=token, now=clock.now(), kind=error_kind(exc)))
            return
        except Exception as exc:
            # An odd reply or a client bug: the renewal's outcome is unknown, as after a timeout.
            logger.error(
                "Heartbeat failed unexpectedly, retrying", exc_info=exc, extra=self.extra(term)
            )
            self.apply(core.renew_failed(token=token, now=clock.now()))
            return
        now = clock.now()
        core.last_error = None
        if ok:
            logger.debug("Heartbeat sent", extra=self.extra(term))
            counted = core.renewals
            self.apply(core.renewed(token=token, sent_at=sent, now=now))
            if _metrics.listeners and core.renewals > counted:  # not a late answer
                _metrics.notify("renewed", self, now - sent)
        else:
            self.apply(core.renew_lost(token=token, now=now))

    def apply(self, transitions: list[Transition]) -> None:
        """Act on the core's transitions: begin or end a term."""
        for transition in transitions:
            if isinstance(transition, BecameLeader):
                self.begin_term(transition.term)
            else:
                self.end_term(transition)

    def begin_term(self, term: Term) -> None:
        """A term began: events, log, its watchdog and tasks, its become callbacks."""
        run = self.term = TermRun(term, self.clock, owner=self)
        self.follower_event.clear()
        self.leader_event.set()
        logger.info("Became the leader", extra=self.extra(term))
        if _metrics.listeners:
            _metrics.notify("term_began", self, term)
        core = self.core
        run.start_watchdog(
            lambda: core.lease_deadline, lambda: self.apply(core.check(self.clock.now()))
        )
        for func in self.leader_tasks:
            self._start_leader_task(run, func)
        self.dispatcher.enqueue("become", run)

    def end_term(self, lost: LostLeadership) -> None:
        """A term ended: events, log, its tasks cancelled, its lose callbacks queued."""
        run = self.term
        assert run is not None and run.term is lost.term
        self.term = None
        self.leader_event.clear()
        self.follower_event.set()
        run.end()
        extra = {**self.extra(run.term), "reason": lost.reason.value}
        if lost.reason in (LossReason.RENEW_DEADLINE, LossReason.LOCK_LOST):
            logger.warning("Failed to send heartbeat, lost leadership", extra=extra)
        else:
            logger.info("Stepped down (%s)", lost.reason.value, extra=extra)
        if _metrics.listeners:
            _metrics.notify("term_ended", self, run.term, lost.reason)
        self.dispatcher.enqueue("lose", run)
        self.wake.set()

    def _start_leader_task(self, run: TermRun, func: LeaderTask) -> None:
        run.start_task(
            func, context=self.context("while_leader", func, run.term), on_error=self.on_error
        )

    async def shutdown(self) -> None:
        """End the term, let its tasks finish, release, and run the callbacks still queued."""
        self.state = "stopping"
        run = self.term
        self.apply(self.core.stop(self.clock.now()))
        if run is not None:
            await run.wait_tasks(self.task_wait)
        deadline = self.clock.now() + self.shutdown_bound()
        for task in list(self.background):  # a hand-off in flight releases its own term first
            await wait_bounded(task, deadline - self.clock.now(), self.clock)
        await self.release(run.term if run is not None else None)
        self.released.set()
        await self.dispatcher.close()

    async def hand_off(self, run: TermRun, tokens: tuple[str, ...]) -> None:
        """After resign(): let the term's tasks finish, then release so a follower takes over."""
        await run.wait_tasks(self.task_wait)
        await self.release(run.term, tokens)

    async def release(self, term: Term | None, tokens: tuple[str, ...] | None = None) -> None:
        """Release the lock if it holds any token of ours (``term``: the term just ended).

        ``tokens`` defaults to every token whose outcome is unknown. A hand-off passes the ones
        it had when the term ended instead: an acquire sent since then (the campaign goes on)
        may have won the lock, and releasing its token would free a lock the core then leads.
        """
        if tokens is None:
            tokens = self.core.unknown_tokens
        if self.store is None or not tokens:
            return
        if term is not None:
            logger.info("Releasing leadership voluntarily", extra=self.extra(term))
        try:
            await self.store.release(
                tokens,
                self.instance_id,
                fencing_token=term.fencing_token if term is not None else None,
                timeout=min(self.timings.call_timeout, _RELEASE_TIMEOUT),
            )
            self.core.released(tokens)
        except StoreError as exc:
            self.core.release_failed(error_kind(exc))
            logger.warning(
                "Could not release the lock (%s); it expires within lock_ttl",
                exc,
                extra=self.extra(),
            )

    def on_message(self, message: Message) -> None:
        """A message on the election's channel: a release (or a resubscription, when one may
        have been missed) wakes a follower; a step-down request naming this instance makes a
        leader resign; a new term's announcement is for observers."""
        if isinstance(message, Released | Resync):
            # Another instance's release is heard (with its count of listeners and the top
            # priority); our own, or a resubscription, only makes us look again.
            heard, others, top = False, 0, None
            if isinstance(message, Released) and message.instance_id != self.instance_id:
                heard, top = True, message.top_priority
                others = self._other_followers(message.subscribers)
            if self.core.release_noticed(
                now=self.clock.now(), heard=heard, others=others, top_priority=top
            ):
                self.wake.set()
        elif isinstance(message, Announced):
            holder = _holder(message.record)
            if holder != self.instance_id and self.core.term_announced(
                now=self.clock.now(), holder_id=holder
            ):
                self.wake.set()
        elif (
            isinstance(message, StepDownRequested)
            and message.instance_id == self.instance_id
            and self.core.is_leader(self.clock.now())
            and self.state == "running"
        ):
            logger.info("Stepping down on request", extra=self.extra(self.core.term))
            self.spawn(self._step_down_on_request())

    def _other_followers(self, subscribers: int | None) -> int:
        """How many other followers a release reached, from the channel's subscriber count
        (connections, the leader's included) and the listeners on this one's connection."""
        store = self.store
        if subscribers is None or store is None or store.hub is None:
            return 0
        local = max(store.hub.listening(store.channel), 1)
        return max(max(subscribers - 1, 1) * local - 1, 0)

    async def _step_down_on_request(self) -> None:
        if self.state == "running":
            await self.resign()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in a task the election owns until it ends; its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("A hand-off failed", exc_info=task.exception(), extra=self.extra())

    def in_own_task(self) -> bool:
        """Whether the caller is the election's callback dispatcher or a ``while_leader`` task."""
        task = asyncio.current_task()
        if task is None:
            return False
        run = current_run()
        return task is self.dispatcher.task or (
            run is not None and run.owner is self and run.runs(task)
        )

    def info_json(self, term: Term | None, *, sent_wall: datetime) -> str:
        """The LeaderInfo JSON; without a term, the prefix the acquire script completes."""
        started = sent_wall if term is None else self.started_wall
        if term is None:
            self.started_wall = sent_wall
        record: dict[str, object] = {
            "instance_id": self.instance_id,
            "hostname": self.config.hostname,
            "pid": os.getpid(),
            "started_at": started.isoformat(),
            "last_heartbeat": sent_wall.isoformat(),
            "election": self.config.name,
        }
        if self.config.metadata:
            record["metadata"] = self.config.metadata
        text = json.dumps(record, separators=(",", ":"))
        if term is None:
            return text[:-1]
        return text[:-1] + f',"fencing_token":{term.fencing_token}}}'

    def extra(self, term: Term | None = None) -> dict[str, Any]:
        """The structured log fields: election, instance id and fencing token."""
        if term is None and self.core.phase is Phase.LEADER:
            term = self.core.term
        return {
            "election": self.config.name,
            "instance_id": self.instance_id,
            "fencing_token": term.fencing_token if term is not None else None,
        }

    def context(self, kind: str, callback: Any, term: Term) -> Mapping[str, Any]:
        """The context handed to ``on_error`` for a failure of ``callback``."""
        return {
            "kind": kind,
            "callback": callback,
            "election": self.config.name,
            "instance_id": self.instance_id,
            "fencing_token": term.fencing_token,
        }


def _holder(record: str) -> str | None:
    """The instance id of an announced leader record, or None when it cannot be read."""
    try:
        holder = json.loads(record).get("instance_id")
    except (ValueError, AttributeError):
        return None
    return holder if isinstance(holder, str) else None


def _utcnow() -> datetime:
    return datetime.now(UTC)
