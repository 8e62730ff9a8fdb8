"""Test doubles of the elections: no Redis, no clock, and the test decides who leads.

:class:`FakeLeaderElection` has the public surface of :class:`leaderelection.LeaderElection`
and :class:`FakeSyncLeaderElection` that of :class:`leaderelection.sync.LeaderElection`, with the
same documented semantics for what the code under test sees: callbacks in registration order,
each isolated and reported to ``on_error`` with the same context; ``while_leader`` work started
at the start of every term and ended before the lose callbacks; every become followed by exactly
one lose; a term that ended never resumes; fencing tokens that strictly increase. What they do
not have is a campaign: terms start and end only when the test says so, through controls
(``elect()``, ``depose()``, ``hand_over()``) that return once the callbacks they cause have run,
so tests need no sleeps. A :class:`FakeElectionGroup` is what a shared Redis is to real
candidates: at most one of its members leads, and they share one token counter and one view of
who leads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar

import anyio

from ._callbacks import (
    Callback,
    CallbackList,
    ErrorHandler,
    LeaderTask,
    check_thread_function,
    refuse_awaitable,
    report,
)
from ._config import ElectionConfig
from ._election import ElectionStatistics
from ._exceptions import (
    ConfigurationError,
    ElectionNotRunningError,
    LeaderElectionError,
    NotLeaderError,
    WrongKeyTypeError,
)
from ._fence import Fence, SyncFence, election_keys
from ._info import LeaderInfo
from ._observer import LeaderChange
from ._store import FencedWrite

if TYPE_CHECKING:
    from . import sync
    from ._election import LeaderElection
    from ._protocol import ElectionProtocol, SyncElectionProtocol

__all__ = ["FakeElectionGroup", "FakeLeaderElection", "FakeSyncLeaderElection", "FencedEval"]

logger = logging.getLogger("leaderelection")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
C = TypeVar("C", bound=Callable[[], object])
J = TypeVar("J", bound=Callable[[threading.Event], object])
State = Literal["new", "running", "stopping", "stopped"]
Reason = Literal["lost", "resigned", "stopped"]

_OUTSIDE_HOSTNAME: Final = "fake-host"  # the hostname of a leader named by set_leader("id")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------ group


class _Listener:
    """One ``changes()`` iteration: the changes published to it, delivered on its own loop."""

    __slots__ = ("_arrived", "_changes", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changes: collections.deque[LeaderChange] = collections.deque()
        self._arrived = asyncio.Event()

    def push(self, change: LeaderChange) -> None:
        """Deliver ``change`` (from any thread: a sync double can publish too)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._append(change)
            return
        with contextlib.suppress(RuntimeError):  # the listener's loop is closed: nobody reads
            self._loop.call_soon_threadsafe(self._append, change)

    def _append(self, change: LeaderChange) -> None:
        self._changes.append(change)
        self._arrived.set()

    async def get(self) -> LeaderChange:
        """The next change, waiting for it if need be."""
        while not self._changes:
            self._arrived.clear()
            await self._arrived.wait()
        return self._changes.popleft()


class FakeElectionGroup:
    """The candidates of one fake election: what a shared Redis is to real candidates.

    At most one member leads at a time. Members share one fencing-token counter, so tokens
    strictly increase across all their terms, and one record of who leads, which every member's
    ``get_leader_info()`` and ``changes()`` read. The leader can also be an instance outside the
    fakes (:meth:`set_leader`), so that a follower under test names it.

    Every fake belongs to a group: one made without ``group=`` gets a group of its own. Members
    must share the election's ``config.name`` and have distinct instance ids. A group can hold
    asyncio and sync doubles together; it is thread-safe.

    Example::

        group = FakeElectionGroup()
        a = FakeLeaderElection(ElectionConfig(name="billing", instance_id="a"), group=group)
        b = FakeLeaderElection(ElectionConfig(name="billing", instance_id="b"), group=group)
        async with a, b:
            await a.elect()
            assert await b.get_leader_id() == "a"
            await a.hand_over(b)
            assert group.leader is b
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._members: list[FakeLeaderElection | FakeSyncLeaderElection] = []
        self._name: str | None = None
        self._leader: FakeLeaderElection | FakeSyncLeaderElection | None = None
        self._record: LeaderInfo | None = None  # who leads, as a store would say
        self._last_token = 0
        self._listeners: list[_Listener] = []
        self._data: dict[str, str | dict[str, str]] = {}
        self._evals: list[FencedEval] = []

    def __repr__(self) -> str:
        who = self._record.instance_id if self._record is not None else None
        return f"<FakeElectionGroup {self._name!r} leader={who!r} tokens={self._last_token}>"

    @property
    def candidates(self) -> tuple[FakeLeaderElection | FakeSyncLeaderElection, ...]:
        """The group's members, in the order they were made."""
        with self._lock:
            return tuple(self._members)

    @property
    def leader(self) -> FakeLeaderElection | FakeSyncLeaderElection | None:
        """The member that leads now; None when none does (an outside leader may)."""
        return self._leader

    @property
    def leader_info(self) -> LeaderInfo | None:
        """Who leads, as ``get_leader_info()`` reads it: a member or an outside instance.

        A leading member's record has ``last_heartbeat`` set to the time of the read, as a
        leader's renewals keep it fresh.
        """
        with self._lock:
            record = self._record
            if record is not None and self._leader is not None:
                record = record.model_copy(update={"last_heartbeat": _utcnow()})
            return record

    @property
    def last_fencing_token(self) -> int:
        """The highest fencing token granted so far in the group (0 before the first term)."""
        return self._last_token

    @property
    def data(self) -> dict[str, str | dict[str, str]]:
        """What the members' fences wrote, as Redis would hold it: key -> value (a ``str``),
        or field -> value for a hash. A write is applied only while its term is the group's
        latest and its member still leads, as the real fence's script does. ``px`` is not
        applied (nothing expires). The test may read it, and change it to set the scene."""
        return self._data

    @property
    def evals(self) -> list[FencedEval]:
        """The ``fence.eval()`` calls the group applied, in order: the double runs no Lua, so a
        written eval is recorded here (and returns ``FenceResult(True, None)``)."""
        return self._evals

    def set_leader(
        self,
        leader: LeaderInfo | str | None,
        *,
        fencing_token: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> LeaderInfo | None:
        """Say that an instance outside the fakes leads (or, with None, that no one does).

        Args:
            leader: The leader's record, or its instance id (a record is made with hostname
                ``"fake-host"``, pid 0 and the group's election name), or None for no leader.
            fencing_token: With an instance id, its term's token; default the next one. It must
                be above every token granted before.
            metadata: With an instance id, what it advertises (``{"url": ...}``).

        Returns:
            The record now stored, or None.

        Raises:
            RuntimeError: a member leads: end its term first (``depose()``).
            ValueError: the token is not above every token granted before.
            TypeError: ``fencing_token`` or ``metadata`` given with a record.
        """
        with self._lock:
            if self._leader is not None:
                raise RuntimeError(
                    f"{self._leader.instance_id} (a fake of this group) leads: end its term "
                    "first, e.g. with `await fake.depose()`"
                )
            if leader is None:
                self._move(None)
                return None
            if isinstance(leader, LeaderInfo):
                if fencing_token is not None or metadata is not None:
                    raise TypeError(
                        "fencing_token and metadata go with an instance id, not a record"
                    )
                if leader != self._record:
                    self._take_token(leader.fencing_token)
                record = leader
            elif isinstance(leader, str):
                token = self._take_token(fencing_token)
                now = _utcnow()
                record = LeaderInfo(
                    instance_id=leader,
                    hostname=_OUTSIDE_HOSTNAME,
                    pid=0,
                    started_at=now,
                    last_heartbeat=now,
                    fencing_token=token,
                    election=self._name if self._name is not None else "default",
                    metadata=dict(metadata or {}),
                )
            else:
                raise TypeError(f"leader must be a LeaderInfo, an instance id or None: {leader!r}")
            self._move(record)
            return record

    # --------------------------------------------------------------- for the members

    def _join(self, member: FakeLeaderElection | FakeSyncLeaderElection) -> None:
        with self._lock:
            name = member.config.name
            if self._name is not None and name != self._name:
                raise ConfigurationError(
                    f"the fakes of one group are candidates of one election: this group's is "
                    f"{self._name!r}, the new member's config names {name!r}"
                )
            if any(m.instance_id == member.instance_id for m in self._members):
                raise ConfigurationError(
                    f"instance id {member.instance_id!r} is taken in this group: give each "
                    "fake its own (ElectionConfig(instance_id=...), or None for a random one)"
                )
            self._name = name
            self._members.append(member)

    def _take_token(self, requested: int | None) -> int:
        if requested is None:
            token = self._last_token + 1
        elif isinstance(requested, bool) or not isinstance(requested, int):
            raise TypeError(f"a fencing token is an int, got {requested!r}")
        elif requested <= self._last_token:
            raise ValueError(
                f"fencing tokens strictly increase: {requested} is not above "
                f"{self._last_token}, the last token granted in this group"
            )
        else:
            token = requested
        self._last_token = token
        return token

    def _grant(
        self,
        member: FakeLeaderElection | FakeSyncLeaderElection,
        requested: int | None,
        make_record: Callable[[int], LeaderInfo],
    ) -> LeaderInfo:
        """Start a term of ``member``: the next (or the requested) token, and its record."""
        with self._lock:
            if self._leader is not None:
                raise RuntimeError(
                    f"{self._leader.instance_id} leads this group's election: end its term "
                    "first (depose(), resign(), stop()), or use hand_over()"
                )
            record = make_record(self._take_token(requested))
            self._leader = member
            self._move(record)
            return record

    def _fenced_write(
        self,
        member: FakeLeaderElection | FakeSyncLeaderElection,
        write: FencedWrite,
        fencing_token: int,
    ) -> tuple[bool, Any]:
        """A fence's write: applied only while ``member`` leads with the group's latest token."""
        with self._lock:
            if self._leader is not member or self._last_token != fencing_token:
                return False, None
            keys = [_text(key) for key in write.keys]
            args = [_text(arg) for arg in write.args]
            if write.kind == "set":
                self._data[keys[0]] = args[0]
            elif write.kind == "hset":
                current = self._data.setdefault(keys[0], {})
                if not isinstance(current, dict):
                    raise WrongKeyTypeError(f"{keys[0]!r} holds a string, not a hash")
                current.update(zip(args[::2], args[1::2], strict=True))
            elif write.kind == "delete":
                for key in keys:
                    self._data.pop(key, None)
            else:
                self._evals.append(
                    FencedEval(write.script, tuple(keys), tuple(args), fencing_token)
                )
            return True, None

    def _release(self, member: FakeLeaderElection | FakeSyncLeaderElection) -> None:
        with self._lock:
            if self._leader is member:
                self._leader = None
                self._move(None)

    def _move(self, record: LeaderInfo | None) -> None:
        """Store ``record`` and publish the changes, with "no leader" between two terms."""
        previous, self._record = self._record, record
        now = _utcnow()
        changes: list[LeaderChange] = []
        if previous is not None and (
            record is None or record.fencing_token != previous.fencing_token
        ):
            changes.append(LeaderChange(leader=None, previous=previous, at=now))
        if record is not None and (
            previous is None or record.fencing_token != previous.fencing_token
        ):
            changes.append(LeaderChange(leader=record, previous=None, at=now))
        for listener in self._listeners:
            for change in changes:
                listener.push(change)

    async def _watch(self) -> AsyncIterator[LeaderChange]:
        listener = _Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners.append(listener)
            current = self.leader_info
        try:
            yield LeaderChange(leader=current, previous=None, at=_utcnow(), initial=True)
            while True:
                yield await listener.get()
        finally:
            with self._lock:
                self._listeners.remove(listener)


@dataclass(frozen=True)
class FencedEval:
    """A ``fence.eval()`` of a test double, as :attr:`FakeElectionGroup.evals` records it:
    the script, its keys and arguments (as text) and the fencing token of its term."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str, ...]
    fencing_token: int


class _GroupWriter:
    """Where a double's fence writes: its group's :attr:`FakeElectionGroup.data`."""

    __slots__ = ("_group", "_member")

    def __init__(
        self, group: FakeElectionGroup, member: FakeLeaderElection | FakeSyncLeaderElection
    ) -> None:
        self._group = group
        self._member = member

    async def fenced_write(
        self, write: FencedWrite, *, token: str, fencing_token: int, timeout: float
    ) -> tuple[bool, Any]:
        return self._group._fenced_write(self._member, write, fencing_token)


def _text(value: str | bytes | int | float) -> str:
    """A value as the group's ``data`` keeps it: bytes decoded (bytes that are not UTF-8 with
    surrogate escapes, so ``text.encode(errors="surrogateescape")`` gives them back)."""
    if isinstance(value, bytes):
        return value.decode(errors="surrogateescape")
    return repr(value) if isinstance(value, float) else str(value)


def _run_now(what: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine that never waits (a double's fenced write) to its end, here."""
    coro = func()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{what} of a test double waited for something")  # pragma: no cover


def _not_leading(instance_id: str, state: str) -> NotLeaderError:
    return NotLeaderError(
        f"{instance_id} does not lead (the election is {state}): make a fence during a term, "
        "e.g. after elect()"
    )


def _make_instance_id(config: ElectionConfig) -> str:
    return config.instance_id or f"{config.hostname}-{os.getpid()}-{secrets.token_hex(4)}"


def _check_config(config: ElectionConfig | None) -> ElectionConfig:
    if config is not None and not isinstance(config, ElectionConfig):
        raise ConfigurationError(f"config must be an ElectionConfig, got {type(config).__name__}")
    return config if config is not None else ElectionConfig()


def _record(config: ElectionConfig, instance_id: str, token: int) -> LeaderInfo:
    now = _utcnow()
    return LeaderInfo(
        instance_id=instance_id,
        hostname=config.hostname,
        pid=os.getpid(),
        started_at=now,
        last_heartbeat=now,
        fencing_token=token,
        election=config.name,
        metadata=config.metadata,
    )


def _statistics(
    member: FakeLeaderElection | FakeSyncLeaderElection, state: State, stats: _Counters
) -> ElectionStatistics:
    token = member.fencing_token
    leading = token is not None
    info = member.group._record
    return ElectionStatistics(
        state=state if state != "running" else ("leader" if leading else "follower"),
        instance_id=member.instance_id,
        is_leader=leading,
        fencing_token=token,
        terms_won=stats.terms_won,
        transitions=stats.transitions,
        leader_id=member.instance_id if leading else (info.instance_id if info else None),
        acquire_attempts=0,
        renewals=0,
        renew_failures=0,
        last_renew_latency=None,
        store_errors=0,
        restart_protection=False,
    )


@dataclass
class _Counters:
    terms_won: int = 0
    transitions: int = 0


def _context(
    config: ElectionConfig, instance_id: str, kind: str, callback: Any, token: int
) -> Mapping[str, Any]:
    return {
        "kind": kind,
        "callback": callback,
        "election": config.name,
        "instance_id": instance_id,
        "fencing_token": token,
    }


def _log_begin(config: ElectionConfig, instance_id: str, token: int) -> None:
    extra = {"election": config.name, "instance_id": instance_id, "fencing_token": token}
    logger.info("Became the leader", extra=extra)


def _log_end(config: ElectionConfig, instance_id: str, token: int, reason: Reason) -> None:
    extra = {
        "election": config.name,
        "instance_id": instance_id,
        "fencing_token": token,
        "reason": reason,
    }
    if reason == "lost":
        logger.warning("Failed to send heartbeat, lost leadership", extra=extra)
    else:
        logger.info("Stepped down (%s)", reason, extra=extra)


# ------------------------------------------------------------------------- asyncio double


@dataclass(eq=False)
class _Term:
    """One term of an asyncio double: its token, its record and its ``while_leader`` tasks, each
    run in a cancel scope that the end of the term cancels."""

    token: int
    record: LeaderInfo
    tasks: list[tuple[asyncio.Task[None], anyio.CancelScope]] = field(default_factory=list)


@dataclass(eq=False)
class _Item:
    """Callbacks waiting for the dispatcher; ``done`` resolves once they ran."""

    kind: Literal["become", "lose"]
    term: _Term
    done: asyncio.Future[None]


class FakeLeaderElection:
    """A test double of :class:`leaderelection.LeaderElection`: the test decides who leads.

    It has the election's public surface with the same semantics, and no Redis and no clock: it
    never campaigns, so a term starts only when the test calls :meth:`elect` (or
    :meth:`hand_over` on the leader) and ends only on :meth:`depose`, :meth:`resign`,
    :meth:`stop` or :meth:`hand_over`. Each of these returns once the callbacks it caused have
    run, so a test waits for nothing else. Within a term, the election's rules hold: become
    callbacks and ``while_leader`` tasks start together; when the term ends, ``is_leader`` turns
    False, ``leader_event`` clears, the tasks are cancelled and finish, and then the lose
    callbacks run, once. Callbacks run one at a time in a task of the double, in registration
    order, each isolated (an exception is logged and reported to ``on_error`` with the same
    context as the real election's).

    Use it wherever the code under test takes a ``LeaderElection`` (typed as
    :class:`leaderelection.ElectionProtocol`, or passed to ``leaderelection.fastapi``)::

        election = FakeLeaderElection(ElectionConfig(name="billing"))
        async with election:                 # a follower: no one leads yet
            token = await election.elect()   # become callbacks ran, while_leader tasks started
            await election.depose()          # as if the lease was lost; lose callbacks ran

    Args:
        config: The election's settings, as for the real election (only ``name``,
            ``instance_id``, ``hostname`` and ``metadata`` matter here); default
            ``ElectionConfig()``.
        on_become_leader: A callback registered first, as with :meth:`on_become_leader`.
        on_lose_leadership: A callback registered first, as with :meth:`on_lose_leadership`.
        on_error: Called as ``on_error(exception, context)`` when a callback or
            ``while_leader`` task raises, as with the real election.
        group: The :class:`FakeElectionGroup` this candidate belongs to; default a new group
            of its own.
        leader: Who leads while this instance follows, as with
            :meth:`FakeElectionGroup.set_leader`: a ``LeaderInfo`` or an instance id.
        elect_on_start: Take the lead in :meth:`start` if no one leads, as the real election
            does on a free election; default False (a follower until :meth:`elect`).

    Raises:
        ConfigurationError: ``config`` is not an ``ElectionConfig``, or does not fit the group
            (another election name, an instance id already taken).
    """

    def __init__(
        self,
        config: ElectionConfig | None = None,
        *,
        on_become_leader: Callback | None = None,
        on_lose_leadership: Callback | None = None,
        on_error: ErrorHandler | None = None,
        group: FakeElectionGroup | None = None,
        leader: LeaderInfo | str | None = None,
        elect_on_start: bool = False,
    ) -> None:
        self._config = _check_config(config)
        self._instance_id = _make_instance_id(self._config)
        self._group = group if group is not None else FakeElectionGroup()
        self._group._join(self)
        self._become = CallbackList("on_become_leader")
        self._lose = CallbackList("on_lose_leadership")
        self._leader_tasks: list[LeaderTask] = []
        if on_become_leader is not None:
            self._become.add(on_become_leader)
        if on_lose_leadership is not None:
            self._lose.add(on_lose_leadership)
        self._on_error = on_error
        self._elect_on_start = elect_on_start
        self._state: State = "new"
        self._term: _Term | None = None
        self._counters = _Counters()
        self._leader_event = asyncio.Event()
        self._follower_event = asyncio.Event()
        self._follower_event.set()
        self._stopped = asyncio.Event()
        self._queue: collections.deque[_Item] = collections.deque()
        self._tail: asyncio.Future[None] | None = None  # the last item queued
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._read_error: Exception | None = None
        if leader is not None:
            self._group.set_leader(leader)

    def __repr__(self) -> str:
        return (
            f"<FakeLeaderElection {self._instance_id!r} {self.statistics().state} "
            f"fencing_token={self.fencing_token}>"
        )

    # ------------------------------------------------------------ the election's reads

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
        """True while this instance leads (between :meth:`elect` and the end of the term)."""
        return self._term is not None

    @property
    def leader_event(self) -> asyncio.Event:
        """An ``asyncio.Event`` set exactly while this instance leads."""
        return self._leader_event

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leader, else None."""
        term = self._term
        return term.token if term is not None else None

    def fence(self) -> Fence:
        """A :class:`~leaderelection.Fence` bound to the current term, writing into the
        group's :attr:`FakeElectionGroup.data` (an ``eval`` is recorded in
        :attr:`FakeElectionGroup.evals`). Its writes are refused once the term ended or a newer
        term exists, as the real fence's.

        Raises:
            NotLeaderError: this instance does not lead.
        """
        term = self._term
        if term is None or self._state != "running":
            raise _not_leading(self._instance_id, self.statistics().state)
        return Fence(
            _GroupWriter(self._group, self),
            token=term.token,
            lock_token="",
            is_current=lambda: self._term is term,
            timeout=math.inf,
            reserved=election_keys(self._config),
        )

    def statistics(self) -> ElectionStatistics:
        """A snapshot, as the real election's: ``state`` is ``"new"``, ``"follower"``,
        ``"leader"``, ``"stopping"`` or ``"stopped"`` (never ``"held_back"``); ``terms_won``,
        ``transitions``, ``is_leader``, ``fencing_token`` and ``leader_id`` are kept; the Redis
        counters stay zero."""
        return _statistics(self, self._state, self._counters)

    async def get_leader_info(self) -> LeaderInfo | None:
        """Who leads, as the group's store says: this instance's record while it leads, the
        leading member's or the outside leader's (see ``leader=``) otherwise, or None.

        Raises:
            StoreError: the error set with :meth:`fail_store_reads`.
        """
        await asyncio.sleep(0)  # a read is a round trip: let other tasks run, as they would
        if self._read_error is not None:
            raise self._read_error
        return self._group.leader_info

    async def get_leader_id(self) -> str | None:
        """The leader's instance id, from :meth:`get_leader_info`; None when no one leads."""
        info = await self.get_leader_info()
        return info.instance_id if info is not None else None

    def changes(self) -> AsyncIterator[LeaderChange]:
        """Iterate over the group's leader changes: the current state first (``initial``), then
        every change in order, with "no leader" between two terms, as the real election's.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running()
        return self._group._watch()

    # ----------------------------------------------------------------------- waiting

    async def wait_until_leader(self, timeout: float | None = None) -> None:
        """Wait until this instance leads (that is, until the test elects it).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ElectionNotRunningError: the election is not running or stopped while waiting.
        """
        self._require_running()
        async with asyncio.timeout(timeout):
            while self._term is None:
                await _wait_first(self._leader_event, self._stopped)
                if self._state in ("stopping", "stopped"):
                    raise ElectionNotRunningError(
                        "the election stopped while waiting for leadership"
                    )

    async def wait_until_follower(self, timeout: float | None = None) -> None:
        """Wait until this instance does not lead (returns at once if it does not).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        async with asyncio.timeout(timeout):
            while self._term is not None:
                await self._follower_event.wait()

    # --------------------------------------------------------------------- callbacks

    def on_become_leader(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term starts.

        Usable as a decorator. Callbacks run in registration order, isolated from each other.
        """
        self._become.add(callback)
        return callback

    def on_lose_leadership(self, callback: F) -> F:
        """Register a zero-argument callback (sync or async) run when a term ends, after the
        term's become callbacks finished and its ``while_leader`` tasks were cancelled."""
        self._lose.add(callback)
        return callback

    def while_leader(self, func: F) -> F:
        """Register an async function run as a task for the length of every term.

        It starts when a term starts (at once, if registered during a term) and is cancelled
        when the term ends, before the lose callbacks run. An exception ends the task for this
        term and is reported like a callback's.
        """
        if not callable(func):
            raise TypeError(f"while_leader needs an async function, got {func!r}")
        self._leader_tasks.append(func)
        if self._term is not None:
            self._start_task(func, self._term)
        return func

    # --------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        """Start (see :meth:`start`) and return the election."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop (see :meth:`stop`)."""
        await self.stop()

    async def start(self) -> None:
        """Start: the election runs, as a follower unless ``elect_on_start`` and no one leads
        (then it returns once the first term's become callbacks ran).

        Raises:
            LeaderElectionError: the election was already started.
        """
        if self._state != "new":
            raise LeaderElectionError(
                f"this election was already started (state {self._state}); create a new "
                "FakeLeaderElection to campaign again"
            )
        self._state = "running"
        if self._elect_on_start and self._group._record is None:
            await self.elect()

    async def stop(self) -> None:
        """Stop: end the term if leading and wait for the lose callbacks. Idempotent.

        Called from one of this election's callbacks, it returns at once and the stop completes
        when the callback returns, as with the real election.
        """
        if self._state == "new":
            self._state = "stopped"
            self._stopped.set()
            return
        if self._state == "stopped":
            return
        if self._stopping is None:
            self._state = "stopping"
            self._stopping = asyncio.get_running_loop().create_task(self._shutdown())
        if asyncio.current_task() is self._dispatcher:
            return
        # Shielded: stop() from a while_leader task is cancelled by the end of its own term,
        # and the shutdown must complete all the same.
        await asyncio.shield(self._stopping)

    async def resign(self) -> None:
        """End the term (lose callbacks follow, and have run when this returns) and stay a
        candidate. Does nothing when this instance does not lead. No other member takes over
        by itself: use :meth:`hand_over` for that.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running()
        if self._term is None:
            return
        await self._wait_for(self._end_term("resigned"))

    # ---------------------------------------------------------------- the test's controls

    @property
    def group(self) -> FakeElectionGroup:
        """The group this candidate belongs to."""
        return self._group

    async def elect(self, *, fencing_token: int | None = None) -> int:
        """Start a term of this instance, as if it won the lock; return its fencing token.

        ``is_leader`` turns True and ``leader_event`` is set at once; the ``while_leader``
        tasks start and the become callbacks run; it returns once the callbacks ran and the
        tasks have run until they first had to wait. Called from one of this election's own
        callbacks, it returns without waiting (the become callbacks run after that callback).

        Args:
            fencing_token: The term's token; default one above the last token granted in the
                group. It must be above every token granted before.

        Raises:
            ElectionNotRunningError: the election is not running (``start()`` it first).
            RuntimeError: this instance, or another member of the group, leads already.
            ValueError: ``fencing_token`` is not above every token granted before.
        """
        self._require_running("elect()")
        if self._term is not None:
            raise RuntimeError(
                f"{self._instance_id} leads already (token {self._term.token}); a term never "
                "resumes: end it first (depose() or resign())"
            )
        record = self._group._grant(
            self, fencing_token, lambda token: _record(self._config, self._instance_id, token)
        )
        term = _Term(record.fencing_token, record)
        self._term = term
        self._counters.terms_won += 1
        self._counters.transitions += 1
        self._follower_event.clear()
        self._leader_event.set()
        _log_begin(self._config, self._instance_id, term.token)
        for func in list(self._leader_tasks):
            self._start_task(func, term)
        await self._wait_for(self._enqueue("become", term))
        return term.token

    async def depose(self) -> None:
        """End the term as if the lease was lost (a failed renewal, a lock taken over).

        ``is_leader`` turns False, ``leader_event`` clears, the ``while_leader`` tasks are
        cancelled, and the lose callbacks run once they finished; it returns when they ran. The
        group then has no leader: name one with :meth:`set_leader`, or :meth:`elect` a member.

        Raises:
            RuntimeError: this instance does not lead.
        """
        if self._term is None:
            raise RuntimeError(f"{self._instance_id} does not lead: there is no term to end")
        await self._wait_for(self._end_term("lost"))

    async def hand_over(self, other: FakeLeaderElection) -> int:
        """End this instance's term and start one of ``other``, with a higher token, as a
        ``resign()`` does when ``other`` is the follower that takes over.

        Returns once this instance's lose callbacks and then ``other``'s become callbacks ran;
        the result is ``other``'s fencing token.

        Raises:
            RuntimeError: this instance does not lead.
            ValueError: ``other`` is this instance or not of the same group.
            ElectionNotRunningError: ``other`` is not running.
        """
        if other is self or other._group is not self._group:
            raise ValueError(
                "hand_over() needs another candidate of the same FakeElectionGroup (pass "
                "group= to both fakes)"
            )
        if self._term is None:
            raise RuntimeError(f"{self._instance_id} does not lead: it has nothing to hand over")
        other._require_running("hand_over()")
        if asyncio.current_task() is self._dispatcher:
            raise LeaderElectionError(
                "hand_over() cannot be called from this election's own callbacks: the lose "
                "callbacks it waits for run after them; call it from the test"
            )
        lost = self._end_term("resigned")

        async def take_over() -> int:
            await asyncio.shield(lost)
            return await other.elect()

        # A task of its own, shielded: a while_leader task of this term that hands over is
        # cancelled by the end of its term, and the hand-over must complete all the same.
        task = asyncio.get_running_loop().create_task(take_over())
        return await asyncio.shield(task)

    def set_leader(
        self,
        leader: LeaderInfo | str | None,
        *,
        fencing_token: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> LeaderInfo | None:
        """Name the leader while this instance follows; see :meth:`FakeElectionGroup.set_leader`.

        Raises:
            RuntimeError: a member of the group (this one included) leads.
        """
        return self._group.set_leader(leader, fencing_token=fencing_token, metadata=metadata)

    def fail_store_reads(self, error: Exception | None) -> None:
        """Make :meth:`get_leader_info` and :meth:`get_leader_id` raise ``error`` (for example
        ``StoreUnavailableError("down")``) until called again with None. Leadership is not
        affected: end the term with :meth:`depose` for that."""
        self._read_error = error

    # --------------------------------------------------------------------- internals

    def _require_running(self, what: str = "") -> None:
        if self._state != "running":
            doing = f"{what}: " if what else ""
            raise ElectionNotRunningError(
                f"{doing}the election is {self._state}: use `async with election` or "
                "`await election.start()` first"
            )

    def _start_task(self, func: LeaderTask, term: _Term) -> None:
        scope = anyio.CancelScope()
        task = asyncio.get_running_loop().create_task(
            self._run_task(func, term, scope),
            name=f"while_leader:{getattr(func, '__name__', func)}",
        )
        term.tasks.append((task, scope))

    async def _run_task(self, func: LeaderTask, term: _Term, scope: anyio.CancelScope) -> None:
        # In a cancel scope, as the real election runs it: once the term ended, every await in
        # the task's cleanup is cancelled too, unless shielded (anyio.CancelScope(shield=True)).
        context = _context(self._config, self._instance_id, "while_leader", func, term.token)
        try:
            with scope:
                await func()
        except Exception as exc:
            report(exc, context, self._on_error)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling() > 0:
                raise
            report(exc, context, self._on_error)  # a stray CancelledError, not the term's end

    def _end_term(self, reason: Reason) -> asyncio.Future[None]:
        """End the term now; return the future of its lose callbacks."""
        term = self._term
        assert term is not None
        self._term = None
        self._counters.transitions += 1
        self._leader_event.clear()
        self._follower_event.set()
        for _, scope in term.tasks:
            scope.cancel()
        self._group._release(self)
        _log_end(self._config, self._instance_id, term.token, reason)
        return self._enqueue("lose", term)

    def _enqueue(self, kind: Literal["become", "lose"], term: _Term) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        item = _Item(kind, term, loop.create_future())
        self._queue.append(item)
        self._tail = item.done
        if self._dispatcher is None:
            self._dispatcher = loop.create_task(
                self._dispatch(), name=f"leaderelection-fake:{self._instance_id}"
            )
        return item.done

    async def _wait_for(self, done: asyncio.Future[None]) -> None:
        """Wait for queued callbacks, unless called from a callback (which they wait for)."""
        if asyncio.current_task() is not self._dispatcher:
            await asyncio.shield(done)

    async def _dispatch(self) -> None:
        try:
            while self._queue:
                item = self._queue[0]
                try:
                    if item.kind == "lose":
                        running = [task for task, _ in item.term.tasks if not task.done()]
                        if running:
                            await asyncio.wait(running)
                    callbacks = self._become if item.kind == "become" else self._lose
                    context = _context(
                        self._config, self._instance_id, callbacks.kind, None, item.term.token
                    )
                    await callbacks.run(context, self._on_error)
                finally:
                    self._queue.popleft()
                    if not item.done.done():
                        item.done.set_result(None)
        finally:
            self._dispatcher = None
            while self._queue:  # cancelled (the loop is closing): nobody will run these
                self._queue.popleft().done.cancel()

    async def _shutdown(self) -> None:
        if self._term is not None:
            self._end_term("stopped")
        if self._tail is not None:
            await asyncio.shield(self._tail)
        self._state = "stopped"
        self._stopped.set()


# ---------------------------------------------------------------------------- sync double


class _SyncRole(threading.local):
    """What the current thread runs for one sync double: a callback, a job, or neither."""

    role: Literal["callback", "job"] | None = None
    term_over: threading.Event | None = None
    token: int | None = None  # the fencing token of the job's term


@dataclass(eq=False)
class _SyncTerm:
    """One term of a sync double: its token, and its ``while_leader`` threads and event."""

    token: int
    record: LeaderInfo
    term_over: threading.Event = field(default_factory=threading.Event)
    jobs: list[threading.Thread] = field(default_factory=list)


@dataclass(eq=False)
class _SyncItem:
    kind: Literal["become", "lose"]
    term: _SyncTerm
    release: bool = False  # a lose that lets the group go once the term's functions returned
    done: threading.Event = field(default_factory=threading.Event)


class FakeSyncLeaderElection:
    """A test double of :class:`leaderelection.sync.LeaderElection`: the test decides who leads.

    The sync counterpart of :class:`FakeLeaderElection`, with blocking controls. Its callbacks
    run in a worker thread of the double (one at a time, in registration order, each isolated)
    and each ``while_leader`` function in a thread of its own for the length of a term, called
    with a ``threading.Event`` set when the term ends, as with the real one. The same rules
    hold, and a term ends in the real one's order: ``is_leader`` turns False, the event is set;
    on :meth:`resign`, :meth:`stop` or :meth:`hand_over` the functions return while the group
    still names this instance (the lock is held) and only then may another lead; on
    :meth:`depose` (a lost lease) the group lets go at once; either way the lose callbacks run
    after the functions returned. The controls return once the callbacks they
    caused have run.

    Unlike the real one it has no event loop and no ``async_election``, and ``on_error`` runs in
    the thread of the callback or function that failed (the real one runs it on its loop).

    Args:
        config: The election's settings; default ``ElectionConfig()``.
        on_become_leader: A callback registered first, as with :meth:`on_become_leader`.
        on_lose_leadership: A callback registered first, as with :meth:`on_lose_leadership`.
        on_error: Called as ``on_error(exception, context)`` when a callback or
            ``while_leader`` function raises.
        group: The :class:`FakeElectionGroup` this candidate belongs to; default its own.
        leader: Who leads while this instance follows (a ``LeaderInfo`` or an instance id).
        elect_on_start: Take the lead in :meth:`start` if no one leads; default False.

    Raises:
        ConfigurationError: ``config`` is not an ``ElectionConfig``, or does not fit the group.
    """

    def __init__(
        self,
        config: ElectionConfig | None = None,
        *,
        on_become_leader: Callable[[], object] | None = None,
        on_lose_leadership: Callable[[], object] | None = None,
        on_error: ErrorHandler | None = None,
        group: FakeElectionGroup | None = None,
        leader: LeaderInfo | str | None = None,
        elect_on_start: bool = False,
    ) -> None:
        self._config = _check_config(config)
        self._instance_id = _make_instance_id(self._config)
        self._group = group if group is not None else FakeElectionGroup()
        self._group._join(self)
        self._on_error = on_error
        self._elect_on_start = elect_on_start
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified on every change of state
        self._become: list[Callable[[], object]] = []
        self._lose: list[Callable[[], object]] = []
        self._jobs: list[Callable[[threading.Event], object]] = []
        self._state: State = "new"
        self._term: _SyncTerm | None = None
        self._counters = _Counters()
        self._queue: collections.deque[_SyncItem] = collections.deque()
        self._tail: _SyncItem | None = None
        self._dispatching = False
        self._role = _SyncRole()
        self._read_error: Exception | None = None
        if on_become_leader is not None:
            self.on_become_leader(on_become_leader)
        if on_lose_leadership is not None:
            self.on_lose_leadership(on_lose_leadership)
        if leader is not None:
            self._group.set_leader(leader)

    def __repr__(self) -> str:
        return (
            f"<FakeSyncLeaderElection {self._instance_id!r} {self.statistics().state} "
            f"fencing_token={self.fencing_token}>"
        )

    # ------------------------------------------------------------ the election's reads

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
        """True while this instance leads. Never blocks; any thread."""
        return self._term is not None

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leader, else None. Never blocks."""
        term = self._term
        return term.token if term is not None else None

    def statistics(self) -> ElectionStatistics:
        """A snapshot, as :meth:`FakeLeaderElection.statistics`."""
        return _statistics(self, self._state, self._counters)

    def fence(self) -> SyncFence:
        """A :class:`~leaderelection.sync.SyncFence` bound to the current term, writing into
        the group's :attr:`FakeElectionGroup.data`, as :meth:`FakeLeaderElection.fence`.
        Never blocks; any thread.

        Raises:
            NotLeaderError: this instance does not lead.
        """
        term = self._term
        if term is None or self._state != "running":
            raise _not_leading(self._instance_id, self.statistics().state)
        role = self._role
        if role.role == "job" and role.term_over is not term.term_over:
            raise NotLeaderError(
                f"fence() was called from a while_leader function of the term with fencing "
                f"token {role.token}, which has ended (its term_over event is set)"
            )
        fence = Fence(
            _GroupWriter(self._group, self),
            token=term.token,
            lock_token="",
            is_current=lambda: self._term is term,
            timeout=math.inf,
            reserved=election_keys(self._config),
        )
        return SyncFence(fence, _run_now)

    def get_leader_info(self) -> LeaderInfo | None:
        """Who leads, as the group's store says; None when no one does.

        Raises:
            ElectionNotRunningError: the election is not running.
            StoreError: the error set with :meth:`fail_store_reads`.
        """
        self._require_running("get_leader_info()")
        if self._read_error is not None:
            raise self._read_error
        return self._group.leader_info

    def get_leader_id(self) -> str | None:
        """The leader's instance id; None when no one leads.

        Raises:
            ElectionNotRunningError: the election is not running.
            StoreError: the error set with :meth:`fail_store_reads`.
        """
        info = self.get_leader_info()
        return info.instance_id if info is not None else None

    # ----------------------------------------------------------------------- waiting

    def wait_until_leader(self, timeout: float | None = None) -> None:
        """Block until this instance leads (until the test elects it).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ElectionNotRunningError: the election is not running, or stopped while waiting.
        """
        with self._changed:
            self._require_running("wait_until_leader()")
            done = self._changed.wait_for(
                lambda: self._term is not None or self._state != "running", timeout
            )
            if self._term is not None:
                return
            if not done:
                raise TimeoutError("this instance did not become the leader in time")
            raise ElectionNotRunningError("the election stopped while waiting for leadership")

    def wait_until_follower(self, timeout: float | None = None) -> None:
        """Block until this instance does not lead. From a ``while_leader`` function, until its
        event is set.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        role = self._role
        if role.role == "job" and role.term_over is not None:
            if not role.term_over.wait(timeout):
                raise TimeoutError("the term did not end in time")
            return
        with self._changed:
            if not self._changed.wait_for(lambda: self._term is None, timeout):
                raise TimeoutError("this instance still leads")

    # --------------------------------------------------------------------- callbacks

    def on_become_leader(self, callback: C) -> C:
        """Register a zero-argument function run in a worker thread when a term starts.

        Raises:
            TypeError: ``callback`` is not callable, is async, or needs arguments.
        """
        check_thread_function(callback, "on_become_leader", 0)
        with self._lock:
            self._become.append(callback)
        return callback

    def on_lose_leadership(self, callback: C) -> C:
        """Register a zero-argument function run in a worker thread when a term ends, after
        the term's become callbacks and ``while_leader`` functions returned.

        Raises:
            TypeError: ``callback`` is not callable, is async, or needs arguments.
        """
        check_thread_function(callback, "on_lose_leadership", 0)
        with self._lock:
            self._lose.append(callback)
        return callback

    def while_leader(self, func: J) -> J:
        """Register a function run in a thread of its own for the length of every term, called
        with a ``threading.Event`` set when the term ends; one registered during a term starts
        at once.

        Raises:
            TypeError: ``func`` is not callable, is async, or does not take one argument.
        """
        check_thread_function(func, "while_leader", 1)
        with self._lock:
            self._jobs.append(func)
            if self._term is not None:
                self._start_job(func, self._term)
        return func

    # --------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        """Start (see :meth:`start`) and return the election."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop (see :meth:`stop`)."""
        self.stop()

    def start(self) -> None:
        """Start: a follower, unless ``elect_on_start`` and no one leads.

        Raises:
            LeaderElectionError: the election was already started.
        """
        with self._changed:
            if self._state != "new":
                raise LeaderElectionError(
                    f"this election was already started (state {self._state}); create a new "
                    "FakeSyncLeaderElection to campaign again"
                )
            self._state = "running"
            self._changed.notify_all()
        if self._elect_on_start and self._group._record is None:
            self.elect()

    def stop(self) -> None:
        """Stop: the term ends, the ``while_leader`` functions are told to finish and return,
        the group lets go, the lose callbacks run; returns when all of that is done.
        Idempotent; any thread.

        Raises:
            LeaderElectionError: called from this election's callback or ``while_leader``
                function, which the stop would wait for.
        """
        if self._role.role is not None:
            raise LeaderElectionError(
                "stop() cannot be called from this election's own callback or while_leader "
                "function: it waits for them to return"
            )
        with self._changed:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                self._changed.notify_all()
                return
            if self._state == "stopping":
                self._changed.wait_for(lambda: self._state == "stopped")
                return
            self._state = "stopping"
            self._changed.notify_all()
            term = self._term
        if term is not None:
            self._end_gracefully(term, "stopped")
        tail = self._tail
        if tail is not None:
            tail.done.wait()
        with self._changed:
            self._state = "stopped"
            self._changed.notify_all()

    def resign(self) -> None:
        """End the term and stay a candidate: the term ends, the ``while_leader`` functions are
        told to finish and return, the group lets go, the lose callbacks run; returns when they
        ran. Called from a
        ``while_leader`` function, it returns once that function's event is set. Nothing happens
        when this instance does not lead.

        Raises:
            ElectionNotRunningError: the election is not running.
        """
        self._require_running("resign()")
        term = self._term
        if term is None:
            return
        if self._role.role == "job":
            self._in_thread(lambda: self._end_gracefully(term, "resigned"))
            term.term_over.wait()
            return
        item = self._end_gracefully(term, "resigned")
        if item is not None:
            self._wait_for(item)

    # ---------------------------------------------------------------- the test's controls

    @property
    def group(self) -> FakeElectionGroup:
        """The group this candidate belongs to."""
        return self._group

    def elect(self, *, fencing_token: int | None = None) -> int:
        """Start a term of this instance; return its fencing token once the become callbacks
        ran (the ``while_leader`` threads are started).

        Raises:
            ElectionNotRunningError: the election is not running.
            RuntimeError: this instance, or another member of the group, leads already.
            ValueError: ``fencing_token`` is not above every token granted before.
        """
        with self._changed:
            self._require_running("elect()")
            if self._term is not None:
                raise RuntimeError(
                    f"{self._instance_id} leads already (token {self._term.token}); a term "
                    "never resumes: end it first (depose() or resign())"
                )
            record = self._group._grant(
                self, fencing_token, lambda token: _record(self._config, self._instance_id, token)
            )
            term = _SyncTerm(record.fencing_token, record)
            self._term = term
            self._counters.terms_won += 1
            self._counters.transitions += 1
            _log_begin(self._config, self._instance_id, term.token)
            for func in self._jobs:
                self._start_job(func, term)
            item = self._enqueue("become", term)
            self._changed.notify_all()
        self._wait_for(item)
        return term.token

    def depose(self) -> None:
        """End the term as if the lease was lost: ``is_leader`` turns False, the functions'
        event is set, and the lose callbacks run once they returned; returns when they ran.

        Raises:
            RuntimeError: this instance does not lead.
        """
        with self._changed:
            term = self._term
            if term is None:
                raise RuntimeError(f"{self._instance_id} does not lead: there is no term to end")
            item = self._end_term(term, "lost")
        term.term_over.set()
        self._wait_for(item)

    def hand_over(self, other: FakeSyncLeaderElection) -> int:
        """End this instance's term as :meth:`resign` does, then start one of ``other`` with a
        higher token; return ``other``'s token once its become callbacks ran.

        Raises:
            RuntimeError: this instance does not lead.
            ValueError: ``other`` is this instance or not of the same group.
            ElectionNotRunningError: ``other`` is not running.
        """
        if other is self or other._group is not self._group:
            raise ValueError(
                "hand_over() needs another candidate of the same FakeElectionGroup (pass "
                "group= to both fakes)"
            )
        term = self._term
        if term is None:
            raise RuntimeError(f"{self._instance_id} does not lead: it has nothing to hand over")
        other._require_running("hand_over()")
        if self._role.role is not None:
            raise LeaderElectionError(
                "hand_over() cannot be called from this election's own callback or while_leader "
                "function: the end of the term waits for them to return; call it from the test"
            )
        item = self._end_gracefully(term, "resigned")
        if item is not None:
            item.done.wait()
        return other.elect()

    def set_leader(
        self,
        leader: LeaderInfo | str | None,
        *,
        fencing_token: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> LeaderInfo | None:
        """Name the leader while this instance follows; see :meth:`FakeElectionGroup.set_leader`."""
        return self._group.set_leader(leader, fencing_token=fencing_token, metadata=metadata)

    def fail_store_reads(self, error: Exception | None) -> None:
        """Make :meth:`get_leader_info` and :meth:`get_leader_id` raise ``error`` until called
        again with None."""
        self._read_error = error

    # --------------------------------------------------------------------- internals

    def _require_running(self, what: str) -> None:
        if self._state != "running":
            raise ElectionNotRunningError(
                f"{what}: the election is {self._state}; use `with election:` or call start() first"
            )

    def _in_thread(self, func: Callable[[], object]) -> None:
        thread = threading.Thread(target=func, name=f"leaderelection-fake-{self._config.name}")
        thread.daemon = True
        thread.start()

    def _start_job(self, func: Callable[[threading.Event], object], term: _SyncTerm) -> None:
        thread = threading.Thread(
            target=self._run_job,
            args=(func, term),
            name=f"leaderelection-fake-job-{getattr(func, '__name__', 'job')}",
        )
        thread.daemon = True
        term.jobs.append(thread)
        thread.start()

    def _run_job(self, func: Callable[[threading.Event], object], term: _SyncTerm) -> None:
        role = self._role
        role.role, role.term_over, role.token = "job", term.term_over, term.token
        try:
            refuse_awaitable(func(term.term_over), func)
        except Exception as exc:
            report(
                exc,
                _context(self._config, self._instance_id, "while_leader", func, term.token),
                self._on_error,
            )
        finally:
            role.role, role.term_over, role.token = None, None, None

    def _end_gracefully(self, term: _SyncTerm, reason: Reason) -> _SyncItem | None:
        """End ``term`` in the real election's order: ``is_leader`` turns False and the
        functions are told to finish; the group still names this instance the leader (the lock
        is held) until they returned, then lets go, then the lose callbacks run (the dispatcher
        does both). None if the term ended meanwhile."""
        with self._changed:
            if self._term is not term:
                return None
            self._term = None
            self._counters.transitions += 1
            _log_end(self._config, self._instance_id, term.token, reason)
            item = self._enqueue("lose", term, release=True)
            self._changed.notify_all()
        term.term_over.set()
        return item

    def _end_term(self, term: _SyncTerm, reason: Reason) -> _SyncItem:
        """End ``term`` now (the lock is held); return the item of its lose callbacks."""
        self._term = None
        self._counters.transitions += 1
        self._group._release(self)
        _log_end(self._config, self._instance_id, term.token, reason)
        item = self._enqueue("lose", term)
        self._changed.notify_all()
        return item

    def _enqueue(
        self, kind: Literal["become", "lose"], term: _SyncTerm, *, release: bool = False
    ) -> _SyncItem:
        item = _SyncItem(kind, term, release)
        with self._lock:
            self._queue.append(item)
            self._tail = item
            if not self._dispatching:
                self._start_dispatcher()
        return item

    def _start_dispatcher(self) -> None:
        """Start the thread that runs the queued callbacks (the lock is held)."""
        self._dispatching = True
        thread = threading.Thread(
            target=self._dispatch, name=f"leaderelection-fake-callbacks-{self._config.name}"
        )
        thread.daemon = True
        thread.start()

    def _wait_for(self, item: _SyncItem) -> None:
        """Wait for queued callbacks, unless this thread is one they wait for."""
        if self._role.role is None:
            item.done.wait()

    def _dispatch(self) -> None:
        try:
            self._run_queued()
        except BaseException:
            # A callback raised past Exception (SystemExit in a thread): the queue goes on.
            with self._lock:
                self._dispatching = False
                if self._queue:
                    self._start_dispatcher()
            raise

    def _run_queued(self) -> None:
        role = self._role
        while True:
            with self._lock:
                if not self._queue:
                    self._dispatching = False
                    return
                item = self._queue.popleft()
            try:
                if item.kind == "lose":
                    for job in list(item.term.jobs):
                        job.join()
                    if item.release:
                        self._group._release(self)
                role.role = "callback"
                kind = "on_become_leader" if item.kind == "become" else "on_lose_leadership"
                with self._lock:
                    callbacks = list(self._become if item.kind == "become" else self._lose)
                for callback in callbacks:
                    try:
                        refuse_awaitable(callback(), callback)
                    except Exception as exc:
                        report(
                            exc,
                            _context(
                                self._config, self._instance_id, kind, callback, item.term.token
                            ),
                            self._on_error,
                        )
            finally:
                role.role = None
                item.done.set()


async def _wait_first(*events: asyncio.Event) -> None:
    """Wait until any of ``events`` is set."""
    if any(event.is_set() for event in events):
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


if TYPE_CHECKING:
    # The double and the real election offer the same surface (checked by mypy).
    def _conforms(real: LeaderElection, fake: FakeLeaderElection) -> list[ElectionProtocol]:
        return [real, fake]

    def _conforms_sync(
        real: sync.LeaderElection, fake: FakeSyncLeaderElection
    ) -> list[SyncElectionProtocol]:
        return [real, fake]
