"""The election as a pure state machine: no asyncio, no Redis, no clock of its own.

Rule 1: everything that decides whether this instance is leader lives here. The I/O layer
(``_campaign.py``) tells the core what happened (a store answer, with the monotonic time the call
was sent and answered) and asks it what to do next (acquire at T, renew at T, step down at T).
Every method takes ``now`` from one monotonic clock; the core never reads a clock itself, so tests
drive it with plain numbers.

The driver asks :meth:`ElectionCore.next_action` what to do next (acquire at T, renew at T, step
down at T), does it, and reports the outcome; it keeps no state of its own about leading. The
counters that :meth:`ElectionCore.statistics` reports are kept here too.

The safety argument fits in three lines:

* A term's lease in Redis starts no earlier than the moment the acquire (or renew) was *sent*, and
  lasts ``lock_ttl``.
* The core counts its own lease from that send time and lasts only ``renew_deadline`` <
  ``lock_ttl``, so it ends locally before it can end in Redis, as long as the two clocks run at
  roughly the same rate (the margin ``lock_ttl - renew_deadline`` absorbs drift and scheduling).
* A term that ended never resumes: a late successful renewal cannot revive it. Leading again is a
  new term, with a new token and a new fencing token.
"""

from __future__ import annotations

import bisect
import enum
import math
import random
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ACQUIRE_RESULTS",
    "ERROR_KINDS",
    "LATENCY_BUCKETS",
    "Acquire",
    "Action",
    "BecameLeader",
    "ElectionCore",
    "ElectionStatistics",
    "LossReason",
    "LostLeadership",
    "Phase",
    "Renew",
    "StepDown",
    "Stopped",
    "Term",
    "Timings",
    "Transition",
]


class Phase(enum.Enum):
    """Where the election stands."""

    FOLLOWER = "follower"
    LEADER = "leader"
    STOPPED = "stopped"


class LossReason(enum.Enum):
    """Why a term ended."""

    RENEW_DEADLINE = "renew_deadline"  # no successful renewal within renew_deadline
    LOCK_LOST = "lock_lost"  # the store says the lock is no longer ours
    RESIGNED = "resigned"  # resign() was called
    STOPPED = "stopped"  # stop() was called
    ERROR = "error"  # the driver failed unexpectedly and starts over


@dataclass(frozen=True, slots=True)
class Timings:
    """The election's durations in seconds (see ElectionConfig)."""

    lock_ttl: float
    heartbeat_interval: float
    retry_interval: float
    renew_deadline: float

    @property
    def call_timeout(self) -> float:
        """Deadline of an acquire or read: it must leave a fresh lease usable when it answers."""
        return min(self.heartbeat_interval, self.renew_deadline - self.heartbeat_interval)

    @property
    def grace(self) -> float:
        """How long a shutdown waits for user code (a ``while_leader`` task, a callback) that
        does not finish when asked: one lease."""
        return self.lock_ttl

    @classmethod
    def from_config(cls, config: Any) -> Timings:
        """The timings of an ``ElectionConfig``."""
        return cls(
            lock_ttl=config.lock_ttl.total_seconds(),
            heartbeat_interval=config.heartbeat_interval.total_seconds(),
            retry_interval=config.retry_interval.total_seconds(),
            renew_deadline=config.renew_deadline.total_seconds(),
        )

    @property
    def lock_ttl_ms(self) -> int:
        """The lease length as Redis wants it."""
        return max(1, math.ceil(self.lock_ttl * 1000))  # never shorter than the local lease

    @property
    def restart_uptime_s(self) -> int:
        """Server uptime (s) required before a free lock is granted (restart protection).

        ``uptime_in_seconds`` is the difference of two wall-clock readings cut to whole seconds
        (the start and now; Redis caches "now" a little stale, which only makes it smaller), so
        a reading of ``u`` means more than ``u - 1`` seconds have passed. Asking for
        ``ceil(lock_ttl) + 1`` therefore guarantees more than ``ceil(lock_ttl)`` seconds since
        the server started: any leader of the lost data set renewed before that start, and has
        stepped down within ``renew_deadline < lock_ttl`` of its last renewal.
        """
        return math.ceil(self.lock_ttl) + 1


@dataclass(frozen=True, slots=True)
class Term:
    """One period of leadership."""

    number: int  # 1 for this instance's first term, 2 for its second, ...
    token: str  # random value held in the lock for this term only
    fencing_token: int  # from the store; strictly increasing across terms of the election
    sent_at: float  # monotonic send time of the acquire that won it


@dataclass(frozen=True, slots=True)
class BecameLeader:
    """A term began."""

    term: Term


@dataclass(frozen=True, slots=True)
class LostLeadership:
    """A term ended."""

    term: Term
    reason: LossReason


Transition = BecameLeader | LostLeadership

# What an acquire attempt's answer can be: the lock was won; it was won too late to lead (the
# answer came after renew_deadline); someone else holds it; restart protection held it back; or
# the call failed.
ACQUIRE_RESULTS: Final = ("acquired", "late", "held", "held_back", "error")
# The kinds of failed store calls (see ``_store.error_kind``).
ERROR_KINDS: Final = (
    "timeout",
    "connection",
    "cluster",
    "replicas_missing",
    "authentication",
    "read_only",
    "wrong_type",
    "corrupt_info",
    "other",
)
# Upper bounds (seconds) of the renewal round-trip histogram's buckets; a last one is unbounded.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Acquire:
    """Send an acquire at ``at`` (with deadline ``Timings.call_timeout``)."""

    at: float


@dataclass(frozen=True, slots=True)
class Renew:
    """Renew the term ``token`` at ``at``; its deadline is what is left of the local lease."""

    at: float
    token: str


@dataclass(frozen=True, slots=True)
class StepDown:
    """The local lease runs out at ``at``: call :meth:`ElectionCore.check` then."""

    at: float


@dataclass(frozen=True, slots=True)
class Stopped:
    """Nothing more to do: the election stopped."""

    at: float = math.inf


Action = Acquire | Renew | StepDown | Stopped


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
        last_error: Why the last acquire or renewal failed (for example too few replicas
            acknowledged it, with ``min_replicas``), or None once one succeeds again.
        lease_remaining: Seconds left on the local lease while leading (the term ends when it
            reaches 0 without a renewal), else 0.0.
        leadership_lost: Terms ended, by reason: ``resigned``, ``stopped``, ``renew_deadline``,
            ``lock_lost`` and ``error`` (every key is present).
        acquire_results: Acquire attempts answered, by result: ``acquired``, ``late`` (won, but
            answered after ``renew_deadline``), ``held`` (another instance leads),
            ``held_back`` (restart protection) and ``error``.
        store_errors_by_kind: ``store_errors`` by kind: ``timeout``, ``connection``,
            ``cluster``, ``replicas_missing``, ``authentication``, ``read_only``,
            ``wrong_type``, ``corrupt_info`` and ``other``.
        release_notices: Releases announced on the election's channel that this instance heard
            as a follower.
        follower_wakeups: Of those, the ones that moved its next attempt earlier (a handoff
            taken at once instead of at the next scheduled attempt).
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
    last_error: str | None = None
    lease_remaining: float = 0.0
    # Read-only views of copies (hash=False: a snapshot stays hashable).
    leadership_lost: Mapping[str, int] = field(
        default_factory=lambda: _frozen(dict.fromkeys((r.value for r in LossReason), 0)),
        hash=False,
    )
    acquire_results: Mapping[str, int] = field(
        default_factory=lambda: _frozen(dict.fromkeys(ACQUIRE_RESULTS, 0)), hash=False
    )
    store_errors_by_kind: Mapping[str, int] = field(
        default_factory=lambda: _frozen(dict.fromkeys(ERROR_KINDS, 0)), hash=False
    )
    release_notices: int = 0
    follower_wakeups: int = 0

    @classmethod
    def initial(cls, instance_id: str, state: str = "new") -> ElectionStatistics:
        """The snapshot of an election that has not campaigned (yet)."""
        return cls(state, instance_id, False, None, 0, 0, None, 0, 0, 0, None, 0, False)


_frozen = types.MappingProxyType


# When the lock is free, a candidate below the highest priority waiting lets the higher ones go
# first: it waits for their whole random window (below), then this much per level (at most
# PRIORITY_LEVELS levels).
PRIORITY_STEP: Final = 0.002
PRIORITY_LEVELS: Final = 10
# After a release, each follower tries after a random delay of up to this much per other
# follower: the first usually wins alone, and its announcement reaches the others (who then drop
# their attempt) before they send theirs. A lone follower tries at once.
HANDOFF_SPREAD: Final = 0.0005

# Seconds added to a holder's remaining lease before trying again: late enough to find it
# expired, spread enough that many followers on one client do not all ask in the same instant.
_HELD_JITTER = (0.0005, 0.010)
_RNG = random.Random()  # shared: a Random's state is 2.5 KB, and jitter needs no independence
_MAX_UNKNOWN = 8  # unknown-outcome tokens kept (the oldest is dropped first)


class ElectionCore:
    """The state of one candidate. Not thread-safe; one event loop drives it."""

    # Slots: with more attributes than a shared-key instance dict holds, every candidate would
    # carry a dict of its own (about 1.4 KB).
    __slots__ = (
        "_rng",
        "acquire_results",
        "attempts",
        "errors",
        "errors_by_kind",
        "held_back_until",
        "instance_id",
        "last_error",
        "last_renew_latency",
        "latency_counts",
        "latency_sum",
        "leader_id",
        "lease_deadline",
        "losses",
        "next_acquire_at",
        "next_renew_at",
        "notices",
        "phase",
        "priority",
        "releases_heard",
        "renew_failures",
        "renewals",
        "restart_protection",
        "store_errors",
        "term",
        "terms_won",
        "timings",
        "transitions",
        "unknown_tokens",
        "wakeups",
    )

    def __init__(
        self,
        timings: Timings,
        *,
        rng: random.Random | None = None,
        instance_id: str = "",
        priority: int = 0,
    ) -> None:
        self.timings = timings
        self.instance_id = instance_id
        self.priority = priority
        self._rng = rng or _RNG
        self.phase = Phase.FOLLOWER
        self.term: Term | None = None
        self.lease_deadline = 0.0  # while leader: local step-down time
        self.next_renew_at = 0.0  # while leader: when to renew next
        self.next_acquire_at = 0.0  # while follower: when to try to acquire next
        self.held_back_until = 0.0  # after resign(): no attempts before this
        # Tokens of ours that the lock may still hold (acquires whose answer was lost, ended terms
        # not yet released), newest last. The next acquire takes such a lock over; stop() and
        # resign() release it.
        self.unknown_tokens: tuple[str, ...] = ()
        self.errors = 0  # consecutive store errors
        self.terms_won = 0
        self.notices = 0  # releases announced to this follower so far
        self.restart_protection = False  # the store holds elections back after a restart
        self.leader_id: str | None = None  # the holder the store named last (ours while leading)
        # Counters for statistics().
        self.transitions = 0
        self.attempts = 0
        self.renewals = 0
        self.renew_failures = 0
        self.store_errors = 0
        self.last_renew_latency: float | None = None
        self.last_error: str | None = None  # why the last acquire or renewal failed
        # Fixed keys, so that another thread (a metrics scrape) can copy them at any time.
        self.losses = dict.fromkeys((r.value for r in LossReason), 0)
        self.acquire_results = dict.fromkeys(ACQUIRE_RESULTS, 0)
        self.errors_by_kind = dict.fromkeys(ERROR_KINDS, 0)
        self.releases_heard = 0  # releases announced to this follower (notices count more)
        self.wakeups = 0  # releases heard that moved the next attempt earlier
        # The renewal round trips: a count per LATENCY_BUCKETS bound (and one above), and a sum.
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    # ----------------------------------------------------------------------------- queries

    def is_leader(self, now: float) -> bool:
        """True while a term is held and its local lease has not run out."""
        return self.phase is Phase.LEADER and now < self.lease_deadline

    def renew_timeout(self, now: float) -> float:
        """The deadline of a renewal sent at ``now``: what is left of the local lease."""
        return self.lease_deadline - now

    def next_action(self, now: float) -> Action:
        """What the driver does next, and when (it may be due already: ``at <= now``).

        A follower acquires at ``next_acquire_at``. A leader renews at ``next_renew_at`` while
        that is before the end of its local lease, and steps down at the end of it otherwise.
        """
        if self.phase is Phase.STOPPED:
            return Stopped()
        if self.phase is Phase.LEADER:
            assert self.term is not None
            if now < self.lease_deadline and self.next_renew_at < self.lease_deadline:
                return Renew(self.next_renew_at, self.term.token)
            return StepDown(self.lease_deadline)
        return Acquire(self.next_acquire_at)

    def state(self, now: float) -> str:
        """``"leader"``, ``"held_back"`` (restart protection, or after ``resign()``),
        ``"follower"`` or ``"stopped"``."""
        if self.phase is Phase.STOPPED:
            return "stopped"
        if self.is_leader(now):
            return "leader"
        if self.restart_protection or self.held_back_until > now:
            return "held_back"
        return "follower"

    def statistics(self, now: float, lifecycle: str = "running") -> ElectionStatistics:
        """A snapshot of the election at ``now``; ``lifecycle`` is the driver's (``"new"``,
        ``"stopping"`` and ``"stopped"`` stand for themselves)."""
        leading = self.is_leader(now)
        term = self.term
        return ElectionStatistics(
            state=lifecycle if lifecycle in ("new", "stopping", "stopped") else self.state(now),
            instance_id=self.instance_id,
            is_leader=leading,
            fencing_token=term.fencing_token if leading and term is not None else None,
            terms_won=self.terms_won,
            transitions=self.transitions,
            leader_id=self.instance_id if leading else self.leader_id,
            acquire_attempts=self.attempts,
            renewals=self.renewals,
            renew_failures=self.renew_failures,
            last_renew_latency=self.last_renew_latency,
            store_errors=self.store_errors,
            restart_protection=self.restart_protection,
            last_error=self.last_error,
            lease_remaining=max(self.lease_deadline - now, 0.0) if leading else 0.0,
            leadership_lost=_frozen(self.losses.copy()),
            acquire_results=_frozen(self.acquire_results.copy()),
            store_errors_by_kind=_frozen(self.errors_by_kind.copy()),
            release_notices=self.releases_heard,
            follower_wakeups=self.wakeups,
        )

    # ---------------------------------------------------------------------- follower inputs

    def attempt_sent(self, token: str) -> None:
        """An acquire with ``token`` is about to be sent: its outcome is unknown until answered."""
        self.attempts += 1
        self._remember(token)

    def released(self, tokens: tuple[str, ...]) -> None:
        """``tokens`` were released (or found not to hold the lock): forget them."""
        self.unknown_tokens = tuple(t for t in self.unknown_tokens if t not in tokens)

    def acquired(
        self, *, sent_at: float, now: float, token: str, fencing_token: int
    ) -> list[Transition]:
        """The store granted the lock to an acquire sent at ``sent_at``."""
        if self.phase is not Phase.FOLLOWER:
            return []
        self.errors = 0
        self.restart_protection = False
        if now >= sent_at + self.timings.renew_deadline:
            # Answered too late to lead safely; the token stays unknown, taken over next time.
            self.acquire_results["late"] += 1
            self.next_acquire_at = now
            return []
        self.acquire_results["acquired"] += 1
        self.unknown_tokens = ()  # the lock now holds this term's token, none of the older ones
        self.terms_won += 1
        self.term = Term(self.terms_won, token, fencing_token, sent_at)
        self.phase = Phase.LEADER
        self.lease_deadline = sent_at + self.timings.renew_deadline
        self.next_renew_at = sent_at + self.timings.heartbeat_interval
        self.leader_id = self.instance_id
        self.transitions += 1
        return [BecameLeader(self.term)]

    def held(
        self,
        *,
        now: float,
        remaining_ms: int,
        notices_at_send: int | None = None,
        holder_id: str | None = None,
        top_priority: int | None = None,
    ) -> None:
        """Someone else holds the lock; sleep until their lease can have expired (and a little
        longer when a candidate of higher priority waits: it goes first).

        ``notices_at_send`` is ``notices`` when the acquire was sent: a release announced while it
        was in flight may have come after the store answered, so try again at once.
        """
        self.errors = 0
        self.acquire_results["held"] += 1
        self.restart_protection = False
        self.leader_id = holder_id
        self.unknown_tokens = ()  # the lock holds someone else's token
        if notices_at_send is not None and notices_at_send != self.notices:
            self.next_acquire_at = max(now, self.held_back_until)
            return
        if remaining_ms < 0:  # a lock without expiry (not ours): look again later
            delay = self.timings.retry_interval
        else:
            delay = min(remaining_ms / 1000, self.timings.lock_ttl)
        behind = self.priority_delay(top_priority)
        if behind:  # after the whole jitter window of the candidates ahead
            delay += behind + _HELD_JITTER[1]
        self.next_acquire_at = max(
            now + delay + self._rng.uniform(*_HELD_JITTER), self.held_back_until
        )

    def held_back(self, *, now: float, wait_ms: int) -> None:
        """Restart protection is holding elections back for ``wait_ms``."""
        self.errors = 0
        self.acquire_results["held_back"] += 1
        self.restart_protection = True
        self.leader_id = None
        self.unknown_tokens = ()  # the lock is free
        self.next_acquire_at = max(
            now + wait_ms / 1000 + self._rng.uniform(0.0, 0.05), self.held_back_until
        )

    def acquire_failed(self, *, now: float, token: str, kind: str = "other") -> float:
        """The acquire failed (``kind``: one of ``ERROR_KINDS``) or its outcome is unknown;
        returns the backoff chosen."""
        self.errors += 1
        self.acquire_results["error"] += 1
        self._store_error(kind)
        self._remember(token)
        delay = self.backoff()
        self.next_acquire_at = max(now + delay, self.held_back_until)
        return delay

    def priority_delay(self, top_priority: int | None) -> float:
        """How long to let the candidates of higher priority go first: PRIORITY_STEP per level
        below ``top_priority`` (the highest waiting), for PRIORITY_LEVELS levels at most."""
        if top_priority is None or top_priority <= self.priority:
            return 0.0
        return PRIORITY_STEP * min(top_priority - self.priority, PRIORITY_LEVELS)

    def release_noticed(
        self,
        *,
        now: float,
        heard: bool = True,
        others: int = 0,
        top_priority: int | None = None,
    ) -> bool:
        """A release was announced (``heard``), or may have been missed (a resubscription);
        returns True when the next attempt moved earlier.

        The attempt comes after the priority delay and a random spread over ``others`` (the
        other followers the release reached), so that one follower usually tries alone. During
        a hold-back the attempt moves to the hold-back's end rather than to ``now``.
        """
        if self.phase is not Phase.FOLLOWER:
            return False
        self.notices += 1
        self.releases_heard += heard
        window = HANDOFF_SPREAD * others
        delay = self._rng.uniform(0.0, window) if window else 0.0
        behind = self.priority_delay(top_priority)
        if behind:  # after the whole random window of the candidates ahead
            delay += behind + window
        due = max(now + delay, self.held_back_until)
        if due >= self.next_acquire_at:
            return False
        self.next_acquire_at = due
        self.wakeups += heard
        return True

    def term_announced(self, *, now: float, holder_id: str | None) -> bool:
        """Another instance (``holder_id``) began a term: an earlier attempt (after a release)
        would find the lock held, so look again when the new lease can have expired. Returns
        True when the next attempt moved later."""
        if self.phase is not Phase.FOLLOWER:
            return False
        self.leader_id = holder_id
        later = now + self.timings.lock_ttl + self._rng.uniform(*_HELD_JITTER)
        if self.next_acquire_at >= later:
            return False
        self.next_acquire_at = max(later, self.held_back_until)
        return True

    def backoff(self) -> float:
        """Exponential backoff with jitter after ``errors`` consecutive store errors."""
        t = self.timings
        cap = max(t.retry_interval, t.lock_ttl)
        base: float = min(t.retry_interval * 2.0 ** max(self.errors - 1, 0), cap)
        return base * self._rng.uniform(0.5, 1.0)

    # ------------------------------------------------------------------------ leader inputs

    def renewed(self, *, token: str, sent_at: float, now: float) -> list[Transition]:
        """The store extended the lease of the renewal sent at ``sent_at``."""
        if not self._holds(token):
            return []
        if now >= self.lease_deadline:
            return self._lose(now, LossReason.RENEW_DEADLINE)
        self.errors = 0
        self.renewals += 1
        latency = self.last_renew_latency = now - sent_at
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.lease_deadline = max(self.lease_deadline, sent_at + self.timings.renew_deadline)
        self.next_renew_at = sent_at + self.timings.heartbeat_interval
        return []

    def renew_lost(self, *, token: str, now: float) -> list[Transition]:
        """The store says the lock is no longer ours."""
        if not self._holds(token):
            return []
        return self._lose(now, LossReason.LOCK_LOST)

    def renew_failed(self, *, token: str, now: float, kind: str = "other") -> list[Transition]:
        """A renewal failed or timed out (``kind``: one of ``ERROR_KINDS``): try again soon,
        step down if the deadline passed."""
        self._store_error(kind)
        self.renew_failures += 1  # also when the term ended while the renewal was under way
        if not self._holds(token):
            return []
        self.errors += 1
        if now >= self.lease_deadline:
            return self._lose(now, LossReason.RENEW_DEADLINE)
        retry = min(self.timings.heartbeat_interval / 4, 0.05 * 2 ** min(self.errors, 6))
        self.next_renew_at = min(now + retry, self.lease_deadline)
        return []

    def check(self, now: float) -> list[Transition]:
        """Step down if the local lease ran out (the watchdog)."""
        if self.phase is Phase.LEADER and now >= self.lease_deadline:
            return self._lose(now, LossReason.RENEW_DEADLINE)
        return []

    # ---------------------------------------------------------------------- user commands

    def resign(self, now: float) -> list[Transition]:
        """End the term now and hold back for ``retry_interval`` so another can take over.

        Does nothing when not leader.
        """
        if self.phase is not Phase.LEADER:
            return []
        self.held_back_until = now + self.timings.retry_interval
        self.next_acquire_at = max(self.next_acquire_at, self.held_back_until)
        return self._lose(now, LossReason.RESIGNED)

    def release_failed(self, kind: str = "other") -> None:
        """A release failed (the lease expires by itself)."""
        self._store_error(kind)

    def fail(self, now: float) -> list[Transition]:
        """The driver failed unexpectedly: end the term (it cannot be vouched for) and campaign
        again after a backoff; returns the transitions."""
        self.errors += 1
        out = self._lose(now, LossReason.ERROR) if self.phase is Phase.LEADER else []
        if self.phase is Phase.FOLLOWER:
            self.next_acquire_at = max(now + self.backoff(), self.held_back_until)
        return out

    def stop(self, now: float) -> list[Transition]:
        """End the term (if any) and stop campaigning for good."""
        out = self._lose(now, LossReason.STOPPED) if self.phase is Phase.LEADER else []
        self.phase = Phase.STOPPED
        return out

    # ----------------------------------------------------------------------------- helpers

    def _store_error(self, kind: str) -> None:
        self.store_errors += 1
        self.errors_by_kind[kind if kind in self.errors_by_kind else "other"] += 1

    def _remember(self, token: str) -> None:
        kept = tuple(t for t in self.unknown_tokens if t != token)
        self.unknown_tokens = (*kept, token)[-_MAX_UNKNOWN:]

    def _holds(self, token: str) -> bool:
        return self.phase is Phase.LEADER and self.term is not None and self.term.token == token

    def _lose(self, now: float, reason: LossReason) -> list[Transition]:
        term = self.term
        assert term is not None
        self.phase = Phase.FOLLOWER
        self.lease_deadline = 0.0
        self.leader_id = None  # unknown until the store is read again
        self.transitions += 1
        self.losses[reason.value] += 1
        if reason is not LossReason.LOCK_LOST:
            # The lock may still hold the term's token until it is released or expires.
            self._remember(term.token)
        if reason not in (LossReason.RESIGNED, LossReason.STOPPED):
            self.next_acquire_at = max(now, self.held_back_until)
        return [LostLeadership(term, reason)]
