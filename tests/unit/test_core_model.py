"""Model-based tests of the election core: every interleaving the driver can produce stays safe.

Two hypothesis state machines call one :class:`ElectionCore` the way ``_campaign.py`` does, on a
fake clock that the machine moves forward (nothing sleeps), and check it after every step against
a small model that the machine keeps from the calls it made:

* :class:`ElectionCoreAgainstAnyAnswers`: the store may answer anything a store can say, after any
  delay: an attempt is granted (with a fencing token from a model counter that strictly
  increases), held by someone else (for any remaining TTL, or without expiry), held back by
  restart protection, or fails (an error, a timeout, an unknown outcome); a renewal is renewed,
  lost or fails; a release is answered or fails; the store may be unreachable for a while (every
  call times out). Late answers for ended terms are delivered too.
* :class:`ElectionCoreAgainstAModelStore`: the answers come from a model of the Lua scripts (lock,
  lease expiry, fencing counter, restart protection) that a rival candidate competes for, and
  that may restart and lose its data. A request reaches the store halfway to its answer, or at
  any other time after being sent (also after the driver stopped waiting for it), or never.

The call protocol, mirrored by the rules and their preconditions:

* The driver asks the core what to do (``next_action``) and does it when it is due, exactly as
  ``_campaign.py``'s loop does: the driver's timers fire when the clock reaches them
  (``the_next_event_happens``, ``time_passes``), or the clock jumps past them when the event loop
  is blocked (``the_event_loop_is_blocked``). ``Acquire`` sends an attempt; an attempt not
  answered within ``call_timeout`` fails; ``Renew`` sends a renewal; ``StepDown`` calls
  ``check``; a renewal not answered by the end of the local lease fails; the watchdog calls
  ``check`` at ``lease_deadline``. Each call's
  answer is due after a latency drawn when it is sent (possibly past its timeout), unless a rule
  delivers one earlier.
* At most one attempt in flight, sent only while following; at most one renewal in flight, sent
  only during a term; the notices and unknown tokens an attempt carries are read just before it
  is sent; an answer reaches the core only while the driver still waits for it.
* ``resign`` only during a term; ``stop`` at any time (a stopped election stays stopped; stop is
  called twice, by the shutdown and the teardown); release notices at any time before the stop
  (against any answers: while leading, during an attempt, or while waiting for the next one;
  against the model store: whenever the store deletes the lock for a release).
* After ``resign``, a release of the unknown tokens read when the term ended, sent once the
  term's tasks finished (within ``call_timeout``), also while the campaign's next attempt is in
  flight (see :func:`test_a_hand_off_releases_only_the_tokens_it_had_when_the_term_ended`);
  after ``stop``, a release of the unknown tokens read then. ``released`` follows when the store
  answers.

Invariants, checked after every step:

1. Never leader past the deadline: the core says it leads at ``now`` exactly while the model has
   an open term and ``now`` is before the send time of the last successful acquire or renewal of
   that term plus ``renew_deadline``, computed by the model from the calls it made; at that
   instant and after it, the core never leads.
2. Fencing: each new term carries the lock token and fencing token the store answered for the
   attempt that won it, and the attempt's send time; its number is one more than the last; its
   fencing token is greater than the previous term's.
3. Balanced transitions: a call returns at most one transition; they alternate BecameLeader,
   LostLeadership; each LostLeadership ends the term of the BecameLeader before it (the same
   object); after ``stop`` the core does not lead, and every term it began was closed exactly
   once.
4. A term never resumes: an answer for an ended term (renewed, lost or failed) changes nothing,
   and a renewal answered after the deadline ends the term instead of extending it.
5. Unknown tokens: at most eight, distinct, all ours; the token of an attempt in flight is among
   them; none while leading; an ended term's token joins them (unless the store said the lock is
   no longer ours); released tokens leave them.
6. Hold-back: after ``resign`` no attempt is due or sent before ``retry_interval`` has passed.
7. The heartbeat is always due no later than the end of the lease.
8. Against the model store: while the core leads, the lock holds its term's token, with a store
   lease that outlasts the local one (or, after the store restarted and lost its data, at least no
   one else holds the lock).
9. Timings: an attempt answered within ``call_timeout`` leaves at least a heartbeat interval of
   lease; the lease asked of the store (``lock_ttl_ms``) is never shorter than ``lock_ttl``.

By default each machine runs a fixed, derandomized exploration (200 runs of up to 50 steps, a few
seconds), the same on every run. For a longer, randomized one, run::

    HYPOTHESIS_PROFILE=deep python -m pytest tests/unit/test_core_model.py

(``deep``: 5,000 runs of up to 100 steps per machine, a few minutes; failures are saved in
``.hypothesis/`` and replayed first on the next run). Any other registered hypothesis profile
named in ``HYPOTHESIS_PROFILE`` is used as it is.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from leaderelection._config import ElectionConfig
from leaderelection._core import (
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
from leaderelection._store import Acquired, Held, HeldBack

REPRODUCIBLE = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
)
settings.register_profile("deep", max_examples=5000, stateful_step_count=100, deadline=None)
_PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE")
PROFILE = settings.get_profile(_PROFILE_NAME) if _PROFILE_NAME else REPRODUCIBLE

MAX_UNKNOWN_TOKENS = 8
RELEASE_TIMEOUT = 1.0  # seconds: the driver bounds a release by this, or by call_timeout if shorter
EPSILON = 1e-9  # for bounds that a draw from [a, b] meets at b up to rounding


def timings_of(config: ElectionConfig) -> Timings:
    """The core's timings, derived from a validated config exactly as the driver derives them."""
    return Timings(
        lock_ttl=config.lock_ttl.total_seconds(),
        heartbeat_interval=config.heartbeat_interval.total_seconds(),
        retry_interval=config.retry_interval.total_seconds(),
        renew_deadline=config.renew_deadline.total_seconds(),
    )


@st.composite
def valid_timings(draw: st.DrawFn) -> Timings:
    """Timings of any config that validation accepts (10 ms between the durations at least)."""
    ttl = draw(st.one_of(st.integers(30, 3_000), st.integers(30, 60_000)))
    deadline = draw(st.integers(20, ttl - 10))
    heartbeat = draw(st.integers(1, deadline - 10))
    retry = draw(st.integers(1, 3 * ttl))
    return timings_of(
        ElectionConfig(
            hostname="model",
            lock_ttl=timedelta(milliseconds=ttl),
            renew_deadline=timedelta(milliseconds=deadline),
            heartbeat_interval=timedelta(milliseconds=heartbeat),
            retry_interval=timedelta(milliseconds=retry),
        )
    )


DEFAULT_TIMINGS = timings_of(ElectionConfig(hostname="model"))
TIMINGS = st.one_of(st.just(DEFAULT_TIMINGS), valid_timings())  # shrinks to the default
# Durations as fractions of lock_ttl: none, a quick round trip, up to past every deadline.
ANSWER_DELAY = st.one_of(st.just(0.0), st.floats(0.0, 0.02), st.floats(0.0, 1.5))
TIME_STEP = st.one_of(st.floats(0.0, 0.05), st.floats(0.0, 1.0), st.floats(1.0, 5.0))
REMAINING_MS = st.one_of(st.just(-1), st.just(0), st.integers(0, 100_000), st.integers(0, 10**9))
# When the answer to a call arrives, as a fraction of the call's timeout (past 1: it never does):
# at once, a quick round trip, any time, just before the caller gives up.
LATENCY = st.one_of(st.just(0.0), st.floats(0.0, 0.1), st.floats(0.0, 1.2), st.floats(0.95, 1.0))
# An answer to an attempt: its kind and a number (granted: the fencing counter's increment; held:
# the holder's remaining ms; held back: wait_ms). Grants and renewals come up most often.
ATTEMPT_ANSWER = st.sampled_from(["granted", "granted", "held", "held back", "failed"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        {
            "granted": st.integers(1, 10**6),
            "held": REMAINING_MS,
            "held back": st.integers(0, 30_000),
            "failed": st.just(0),
        }[kind],
    )
)
RENEWAL_ANSWER = st.sampled_from(["renewed", "renewed", "renewed", "lost", "failed"])


@dataclass
class Request:
    """A store call on its way: processed by the store at most once, answered at most once."""

    kind: str  # "acquire", "renew" or "release"
    tokens: tuple[str, ...]  # acquire: (token, *unknown tokens); renew: (token,); release: all
    reaches_store_at: float  # halfway to its answer
    processed: bool = False
    result: object = None
    answer_at: float = math.inf  # releases: when the answer arrives, unless it times out first
    times_out_at: float = math.inf


@dataclass
class Attempt:
    """An acquire as the campaign sent it; the driver gives up on it at ``times_out_at``."""

    token: str
    sent_at: float
    times_out_at: float
    notices_at_send: int
    unknown_at_send: tuple[str, ...]
    restarts_at_send: int
    answer_at: float = math.inf  # when its answer arrives, unless a rule delivers one earlier
    answer: object = None  # the answer planned for then, if the machine plans answers
    request: Request | None = None  # set when a model store serves it


@dataclass
class Renewal:
    """A renewal as the heartbeat sent it; the driver gives up on it at ``times_out_at``."""

    token: str
    sent_at: float
    times_out_at: float
    answer_at: float = math.inf
    answer: object = None
    request: Request | None = None


class TransitionLog:
    """Every transition the core emitted, checked as it arrives (invariants 2 and 3)."""

    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.terms: list[Term] = []

    @property
    def open_term(self) -> Term | None:
        """The term of a BecameLeader not yet followed by its LostLeadership."""
        last = self.transitions[-1] if self.transitions else None
        return last.term if isinstance(last, BecameLeader) else None

    def record(self, out: list[Transition]) -> None:
        assert len(out) <= 1, f"one call emitted several transitions: {out}"
        for transition in out:
            if isinstance(transition, BecameLeader):
                assert self.open_term is None, "two BecameLeader in a row"
                term = transition.term
                assert term.number == len(self.terms) + 1, "terms are numbered 1, 2, 3, ..."
                if self.terms:
                    previous = self.terms[-1]
                    assert term.fencing_token > previous.fencing_token, "fencing token went back"
                    assert term.token != previous.token, "a new term reused a lock token"
                self.terms.append(term)
            else:
                assert self.open_term is not None, "LostLeadership without an open term"
                assert transition.term is self.open_term, "LostLeadership for another term"
            self.transitions.append(transition)

    def assert_every_term_closed_once(self) -> None:
        began = [t.term for t in self.transitions if isinstance(t, BecameLeader)]
        ended = [t.term for t in self.transitions if isinstance(t, LostLeadership)]
        assert began == ended, "every BecameLeader is followed by exactly one LostLeadership"


class CandidateDrivenLikeTheDriver(RuleBasedStateMachine):
    """One candidate's core, called the way ``_campaign.py`` calls it, checked against a model.

    Subclasses decide what the store answers. This class runs the driver's timers, resigns,
    stops and releases like the driver, and turns each answer into the core call the driver
    makes, checking the outcome against the model's.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log = TransitionLog()
        self.now = 0.0
        self.phase = Phase.FOLLOWER  # the model's: LEADER exactly while a term is open
        self.term: Term | None = None
        self.lease_end = 0.0  # send time of the term's last successful acquire/renewal + deadline
        self.term_restarts = 0  # store restarts seen when the term's attempt was sent
        self.attempt: Attempt | None = None
        self.renewal: Renewal | None = None
        self.unanswered_renewals: list[Renewal] = []  # of this term: the driver gave up on them
        self.ended_renewals: list[Renewal] = []  # of ended terms, their answers never read
        self.notices = 0
        self.held_back_until = 0.0
        # Releases owed after resign/stop: when they go out, and the tokens read when the term
        # ended (None: read when sent).
        self.releases_due: list[tuple[float, tuple[str, ...] | None]] = []
        self.our_tokens: set[str] = set()
        self.restarts = 0
        self.next_id = 0

    # ------------------------------------------------------------------ set-up and hooks

    @initialize(
        timings=TIMINGS,
        seed=st.integers(0, 2**32 - 1),
        start=st.floats(0.0, 1e6),
        runs_for=st.one_of(st.none(), st.integers(2, 60)),
    )
    def a_candidate_starts(
        self, timings: Timings, seed: int, start: float, runs_for: int | None
    ) -> None:
        """A candidate starts at ``start``; the application may stop it ``runs_for`` leases on
        (or only once the run is over)."""
        # An attempt answered within its deadline leaves a heartbeat's worth of lease to lead.
        assert 0 < timings.call_timeout <= timings.renew_deadline - timings.heartbeat_interval
        assert timings.lock_ttl_ms / 1000 >= timings.lock_ttl
        self.t = timings
        self.core = ElectionCore(timings, rng=random.Random(seed))
        self.now = start
        self.stop_from = math.inf if runs_for is None else start + runs_for * timings.lock_ttl
        self.started()

    def started(self) -> None:
        """Called once the core exists."""

    def attempt_sent(self, attempt: Attempt, data: st.DataObject) -> None:
        """The campaign sent ``attempt``: plan its answer."""

    def renewal_sent(self, renewal: Renewal, data: st.DataObject) -> None:
        """The heartbeat sent ``renewal``: plan its answer."""

    def release_sent(self, tokens: tuple[str, ...], data: st.DataObject) -> None:
        """A release of ``tokens`` was sent."""

    def can_arrive(self, call: Attempt | Renewal) -> bool:
        """Whether the planned answer to ``call`` can still arrive."""
        return call.answer_at < math.inf

    def planned_attempt_answer_arrives(self) -> None:
        """The attempt's planned answer arrives now."""
        raise NotImplementedError

    def planned_renewal_answer_arrives(self) -> None:
        """The renewal's planned answer arrives now."""
        raise NotImplementedError

    # ------------------------------------------------------------------- the driver

    def new_token(self, kind: str) -> str:
        self.next_id += 1
        token = f"{kind}-{self.next_id}"
        if kind != "rival":
            self.our_tokens.add(token)
        return token

    def wait(self, fraction_of_ttl: float) -> None:
        self.now += fraction_of_ttl * self.t.lock_ttl

    def events(self) -> list[tuple[float, str]]:
        """What happens next, and when: the action the core names (the driver waits for it when
        no call is in flight), the watchdog, and the planned answers."""
        events = []
        attempt, renewal = self.attempt, self.renewal
        if self.phase is Phase.FOLLOWER:
            if attempt is None:
                action = self.core.next_action(self.now)
                assert isinstance(action, Acquire), action
                events.append((action.at, "next action"))
            else:
                events.append((attempt.times_out_at, "attempt timeout"))
                if self.can_arrive(attempt):
                    events.append((attempt.answer_at, "attempt answered"))
        elif self.phase is Phase.LEADER:
            events.append((self.core.lease_deadline, "watchdog"))
            if renewal is None:
                action = self.core.next_action(self.now)
                assert isinstance(action, Renew | StepDown), action
                assert action.at <= self.lease_end  # 7: never due after the end of the lease
                events.append((action.at, "next action"))
            else:
                events.append((renewal.times_out_at, "renewal timeout"))
                if self.can_arrive(renewal):
                    events.append((renewal.answer_at, "renewal answered"))
        if self.releases_due:
            events.append((min(due for due, _ in self.releases_due), "release"))
        return events

    def happen(self, event: str, data: st.DataObject) -> None:
        """Let ``event`` happen, now that its time has come."""
        if event == "next action":
            self.act(data)
        elif event == "attempt timeout":
            self.answer_attempt(None)
        elif event == "attempt answered":
            self.planned_attempt_answer_arrives()
        elif event == "renewal timeout":
            self.answer_renewal("failed")
        elif event == "renewal answered":
            self.planned_renewal_answer_arrives()
        elif event == "release":
            self.send_release(data)
        elif event == "watchdog":
            self.watchdog()
        else:
            raise AssertionError(f"no such event: {event}")

    def act(self, data: st.DataObject) -> None:
        """Do what ``core.next_action`` says is due now, as the driver's loop does."""
        action = self.core.next_action(self.now)
        assert action.at <= self.now, (action, self.now)
        if isinstance(action, Acquire):
            self.send_attempt(data)
        elif isinstance(action, Renew):
            assert self.term is not None and action.token == self.term.token
            self.send_renewal(data)
        else:
            assert isinstance(action, StepDown), action
            assert self.now >= self.lease_end  # the lease is over: the driver steps down
            self.watchdog()

    def send_attempt(self, data: st.DataObject) -> None:
        assert self.now >= self.core.next_acquire_at
        assert self.now >= self.held_back_until, "an attempt during the hold-back after resign"
        attempt = Attempt(
            token=self.new_token("attempt"),
            sent_at=self.now,
            times_out_at=self.now + self.t.call_timeout,
            notices_at_send=self.core.notices,
            unknown_at_send=self.core.unknown_tokens,
            restarts_at_send=self.restarts,
        )
        attempt.answer_at = self.now + data.draw(LATENCY, "latency") * self.t.call_timeout
        self.attempt = attempt
        self.core.attempt_sent(attempt.token)
        self.attempt_sent(attempt, data)

    def send_renewal(self, data: st.DataObject) -> None:
        assert self.term is not None
        assert self.now >= self.core.next_renew_at
        assert self.now < self.lease_end  # with no time left, next_action says StepDown
        timeout = self.core.renew_timeout(self.now)
        assert timeout == self.lease_end - self.now
        renewal = Renewal(self.term.token, self.now, times_out_at=self.lease_end)
        renewal.answer_at = self.now + data.draw(LATENCY, "latency") * timeout
        self.renewal = renewal
        self.renewal_sent(renewal, data)

    def watchdog(self) -> None:
        expected = self.loss(LossReason.RENEW_DEADLINE) if self.now >= self.lease_end else []
        self.expect(self.core.check(self.now), expected)

    def expect(self, out: list[Transition], expected: list[Transition]) -> None:
        """Check the core's transitions against the model's and move the model along."""
        assert out == expected
        self.log.record(out)
        for transition in out:
            if isinstance(transition, BecameLeader):
                self.phase = Phase.LEADER
                self.term = transition.term
            else:
                stopped = transition.reason is LossReason.STOPPED
                self.phase = Phase.STOPPED if stopped else Phase.FOLLOWER
                self.term = None
                if self.renewal is not None:  # the heartbeat stops waiting for it
                    self.unanswered_renewals.append(self.renewal)
                    self.renewal = None
                self.ended_renewals += self.unanswered_renewals
                self.unanswered_renewals = []

    def loss(self, reason: LossReason) -> list[Transition]:
        assert self.term is not None
        return [LostLeadership(self.term, reason)]

    def answer_attempt(self, result: Acquired | Held | HeldBack | None) -> None:
        """The attempt in flight is answered (``None``: it failed, timed out or is unknown)."""
        attempt = self.attempt
        assert attempt is not None
        self.attempt = None
        core, t, now = self.core, self.t, self.now
        if isinstance(result, Acquired):
            out = core.acquired(
                sent_at=attempt.sent_at,
                now=now,
                token=attempt.token,
                fencing_token=result.fencing_token,
            )
            if now < attempt.sent_at + t.renew_deadline:
                number = len(self.log.terms) + 1
                term = Term(number, attempt.token, result.fencing_token, attempt.sent_at)
                self.expect(out, [BecameLeader(term)])
                self.lease_end = attempt.sent_at + t.renew_deadline
                self.term_restarts = attempt.restarts_at_send
                assert core.unknown_tokens == ()
            else:  # answered too late to lead: taken over by the next attempt, sent at once
                self.expect(out, [])
                assert attempt.token in core.unknown_tokens
                assert core.next_acquire_at <= now
        elif isinstance(result, Held):
            notice_in_flight = self.notices != attempt.notices_at_send
            core.held(
                now=now,
                remaining_ms=result.remaining_ms,
                notices_at_send=attempt.notices_at_send,
            )
            assert core.unknown_tokens == ()
            due = core.next_acquire_at
            if notice_in_flight:  # a release came while the attempt was out: look again now
                assert due == max(now, self.held_back_until)
            else:  # sleep until the holder's lease can have expired, and only a little longer
                if result.remaining_ms < 0:
                    wait = t.retry_interval
                else:
                    wait = min(result.remaining_ms / 1000, t.lock_ttl)
                assert due > now + wait or due == self.held_back_until
                assert due <= max(now + wait + 0.010 + EPSILON, self.held_back_until)
        elif isinstance(result, HeldBack):
            core.held_back(now=now, wait_ms=result.wait_ms)
            assert core.unknown_tokens == ()
            wait = result.wait_ms / 1000
            due = core.next_acquire_at
            assert due >= max(now + wait, self.held_back_until)
            assert due <= max(now + wait + 0.05 + EPSILON, self.held_back_until)
        else:
            delay = core.acquire_failed(now=now, token=attempt.token)
            assert core.unknown_tokens[-1] == attempt.token
            assert t.retry_interval / 2 <= delay <= max(t.retry_interval, t.lock_ttl) + EPSILON
            assert core.next_acquire_at == max(now + delay, self.held_back_until)

    def answer_renewal(self, outcome: str) -> None:
        """The renewal in flight is answered: ``renewed``, ``lost`` or ``failed``."""
        renewal = self.renewal
        assert renewal is not None
        assert self.term is not None
        assert renewal.token == self.term.token
        self.renewal = None
        core, t, now, token = self.core, self.t, self.now, renewal.token
        if outcome == "renewed":
            out = core.renewed(token=token, sent_at=renewal.sent_at, now=now)
            if now >= self.lease_end:  # too late: the term is over for good
                self.expect(out, self.loss(LossReason.RENEW_DEADLINE))
                assert token in core.unknown_tokens
            else:
                self.expect(out, [])
                self.lease_end = max(self.lease_end, renewal.sent_at + t.renew_deadline)
                assert core.next_renew_at == renewal.sent_at + t.heartbeat_interval
        elif outcome == "lost":
            self.expect(core.renew_lost(token=token, now=now), self.loss(LossReason.LOCK_LOST))
            assert token not in core.unknown_tokens  # the store said the lock is not ours
            assert core.next_acquire_at <= max(now, self.held_back_until)  # campaign at once
        else:
            self.unanswered_renewals.append(renewal)  # its answer may yet come, unread
            out = core.renew_failed(token=token, now=now)
            if now >= self.lease_end:
                self.expect(out, self.loss(LossReason.RENEW_DEADLINE))
                assert token in core.unknown_tokens
            else:  # retry soon, and still before the deadline
                self.expect(out, [])
                assert now < core.next_renew_at <= self.lease_end
                assert core.next_renew_at <= now + t.heartbeat_interval / 4

    def answer_release(self, tokens: tuple[str, ...]) -> None:
        """The store answered a release of ``tokens`` (whether or not the lock held one)."""
        self.core.released(tokens)
        assert not set(tokens) & set(self.core.unknown_tokens)

    def announce_release(self) -> None:
        """The release channel announced a release (ours or another candidate's)."""
        due_before = self.core.next_acquire_at
        moved = self.core.release_noticed(now=self.now)
        if self.phase is not Phase.FOLLOWER:
            assert moved is False
            assert self.core.next_acquire_at == due_before
            return
        self.notices += 1
        due = max(self.now, self.held_back_until)
        assert moved is (due < due_before)
        assert self.core.next_acquire_at == min(due, due_before)

    def stop(self) -> None:
        expected = self.loss(LossReason.STOPPED) if self.phase is Phase.LEADER else []
        self.expect(self.core.stop(self.now), expected)
        if self.phase is not Phase.STOPPED:  # the shutdown releases what may be ours
            self.releases_due.append((self.now, None))
        self.phase = Phase.STOPPED
        self.attempt = None  # the campaign is cancelled: an answer in flight is never read
        assert self.log.open_term is None
        assert not self.core.is_leader(self.now)

    # ------------------------------------------------------------------------ the clock

    @rule(step=TIME_STEP, data=st.data())
    def time_passes(self, step: float, data: st.DataObject) -> None:
        """The clock moves on by ``step`` leases, or to the first event due before that."""
        until = self.now + step * self.t.lock_ttl
        due, event = min(self.events(), default=(math.inf, "nothing"))
        if due > until:
            self.now = until
        else:
            self.now = max(self.now, due)
            self.happen(event, data)

    @precondition(lambda self: self.events())
    @rule(data=st.data())
    def the_next_event_happens(self, data: st.DataObject) -> None:
        """The event loop sleeps until the first event due, which then happens."""
        due, event = min(self.events())
        self.now = max(self.now, due)
        self.happen(event, data)

    @rule(step=TIME_STEP)
    def the_event_loop_is_blocked(self, step: float) -> None:
        """The process pauses (a blocked loop, SIGSTOP): the clock jumps, no timer runs."""
        self.wait(step)

    @precondition(
        lambda self: (
            (self.phase is Phase.FOLLOWER and self.attempt is None)
            or (self.phase is Phase.LEADER and self.renewal is None)
        )
    )
    @rule(data=st.data())
    def the_driver_does_the_next_action_when_due(self, data: st.DataObject) -> None:
        """The driver's loop wakes when ``next_action`` is due (or later) and does it."""
        self.now = max(self.now, self.core.next_action(self.now).at)
        self.act(data)

    @precondition(lambda self: self.phase is Phase.LEADER)
    @rule()
    def the_watchdog_wakes_at_the_lease_deadline(self) -> None:
        self.now = max(self.now, self.core.lease_deadline)
        self.watchdog()

    @precondition(lambda self: self.phase is Phase.LEADER and self.now < self.lease_end)
    @rule()
    def time_reaches_the_last_instant_of_the_lease(self) -> None:
        self.now = max(self.now, math.nextafter(self.lease_end, -math.inf))

    # ------------------------------------------------------------- commands and notices

    @precondition(lambda self: self.phase is Phase.LEADER)
    @rule(tasks_finish_after=st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.just(1.0)))
    def the_leader_resigns(self, tasks_finish_after: float) -> None:
        """The hand-off releases the tokens it has now once the term's while_leader tasks
        finished: at once (none), a little later, or ``call_timeout`` later (they ignore their
        cancellation); ``tasks_finish_after`` is a fraction of ``call_timeout``."""
        assert self.term is not None
        token = self.term.token
        self.expect(self.core.resign(self.now), self.loss(LossReason.RESIGNED))
        self.held_back_until = self.now + self.t.retry_interval
        assert self.core.next_acquire_at >= self.held_back_until
        assert token in self.core.unknown_tokens  # released next, or taken over
        due = self.now + tasks_finish_after * self.t.call_timeout
        self.releases_due.append((due, self.core.unknown_tokens))

    @precondition(lambda self: self.phase is not Phase.STOPPED and self.now >= self.stop_from)
    @rule()
    def the_application_stops_the_election(self) -> None:
        self.stop()

    def send_release(self, data: st.DataObject) -> None:
        """Send the release due first (earlier than due: the tasks finished sooner)."""
        owed = min(self.releases_due, key=lambda release: release[0])
        self.releases_due.remove(owed)
        _, read_when_the_term_ended = owed
        tokens = read_when_the_term_ended
        if tokens is None:
            tokens = self.core.unknown_tokens
        if tokens:
            self.release_sent(tokens, data)

    @precondition(lambda self: self.releases_due)
    @rule(data=st.data())
    def a_release_is_sent_early(self, data: st.DataObject) -> None:
        self.send_release(data)

    # -------------------------------------------------------------------- invariants

    @invariant()
    def the_core_leads_exactly_until_the_model_lease_ends(self) -> None:
        leading = self.phase is Phase.LEADER and self.now < self.lease_end
        assert self.core.is_leader(self.now) is leading
        if self.phase is Phase.LEADER:
            assert not self.core.is_leader(self.lease_end)
            assert not self.core.is_leader(self.lease_end + self.t.lock_ttl)

    @invariant()
    def the_core_is_in_the_model_phase_and_term(self) -> None:
        assert self.core.phase is self.phase
        if self.phase is Phase.LEADER:
            assert self.core.term is self.log.open_term
            assert self.core.term == self.term
        else:
            assert self.log.open_term is None
        assert self.core.terms_won == len(self.log.terms)
        assert self.core.notices == self.notices

    @invariant()
    def unknown_tokens_are_ours_few_and_distinct(self) -> None:
        unknown = self.core.unknown_tokens
        assert len(unknown) <= MAX_UNKNOWN_TOKENS
        assert len(set(unknown)) == len(unknown)
        assert set(unknown) <= self.our_tokens
        if self.attempt is not None:
            assert self.attempt.token in unknown
        if self.phase is Phase.LEADER:
            assert unknown == ()

    @invariant()
    def no_attempt_is_due_during_the_hold_back(self) -> None:
        if self.phase is Phase.FOLLOWER:
            assert self.core.next_acquire_at >= self.held_back_until

    @invariant()
    def the_heartbeat_is_due_before_the_lease_ends(self) -> None:
        if self.phase is Phase.LEADER:
            assert self.core.next_renew_at <= self.lease_end

    def teardown(self) -> None:
        """Every election ends with stop(), twice (the shutdown, then the teardown)."""
        if not hasattr(self, "core"):
            return
        self.stop()
        assert self.core.stop(self.now) == []
        self.log.assert_every_term_closed_once()
        assert self.core.phase is Phase.STOPPED
        assert not self.core.is_leader(self.now)
        assert self.core.release_noticed(now=self.now) is False
        late = self.core.acquired(sent_at=self.now, now=self.now, token="late", fencing_token=1)
        assert late == []


class ElectionCoreAgainstAnyAnswers(CandidateDrivenLikeTheDriver):
    """The store answers anything a store can say, after any delay."""

    def __init__(self) -> None:
        super().__init__()
        self.fence = 0  # the model store's fencing counter: it only goes up
        self.releases_in_flight: list[tuple[str, ...]] = []
        self.store_unreachable = False  # every call then times out

    def can_arrive(self, call: Attempt | Renewal) -> bool:
        return super().can_arrive(call) and not self.store_unreachable

    def a_release_notice_can_matter(self) -> bool:
        """While leading (ignored), during an attempt, or while waiting for the next one."""
        if self.phase is Phase.FOLLOWER:
            return self.attempt is not None or self.core.next_acquire_at > self.now
        return self.phase is Phase.LEADER

    @precondition(a_release_notice_can_matter)
    @rule()
    def another_candidate_announces_a_release(self) -> None:
        self.announce_release()

    @precondition(lambda self: not self.store_unreachable)
    @rule()
    def the_store_becomes_unreachable(self) -> None:
        self.store_unreachable = True

    @precondition(lambda self: self.store_unreachable)
    @rule()
    def the_store_is_reachable_again(self) -> None:
        self.store_unreachable = False

    def release_sent(self, tokens: tuple[str, ...], data: st.DataObject) -> None:
        self.releases_in_flight.append(tokens)

    def attempt_sent(self, attempt: Attempt, data: st.DataObject) -> None:
        attempt.answer = data.draw(ATTEMPT_ANSWER, "answer")

    def renewal_sent(self, renewal: Renewal, data: st.DataObject) -> None:
        renewal.answer = data.draw(RENEWAL_ANSWER, "answer")

    def planned_attempt_answer_arrives(self) -> None:
        assert self.attempt is not None
        answer = self.attempt.answer
        assert isinstance(answer, tuple)
        self.attempt_answered(answer)

    def planned_renewal_answer_arrives(self) -> None:
        assert self.renewal is not None
        self.answer_renewal(str(self.renewal.answer))

    def attempt_answered(self, answer: tuple[str, int]) -> None:
        """Granted (the fencing counter moves up by the number), held by someone else (for
        that many ms), held back (for that many ms), or failed: an error, a timeout, or an
        outcome never learned."""
        kind, number = answer
        if kind == "granted":
            self.fence += number
            self.answer_attempt(Acquired(fencing_token=self.fence))
        elif kind == "held":
            self.answer_attempt(Held(remaining_ms=number, holder_id="other"))
        elif kind == "held back":
            self.answer_attempt(HeldBack(wait_ms=number, uptime_s=0))
        else:
            self.answer_attempt(None)

    @precondition(lambda self: self.attempt is not None and not self.store_unreachable)
    @rule(delay=ANSWER_DELAY, answer=ATTEMPT_ANSWER)
    def the_store_answers_the_attempt(self, delay: float, answer: tuple[str, int]) -> None:
        self.wait(delay)
        self.attempt_answered(answer)

    @precondition(lambda self: self.renewal is not None and not self.store_unreachable)
    @rule(delay=ANSWER_DELAY, outcome=RENEWAL_ANSWER)
    def the_store_answers_the_renewal(self, delay: float, outcome: str) -> None:
        self.wait(delay)
        self.answer_renewal(outcome)

    # The driver never reads the answer of a renewal it gave up on (a timeout) or whose term
    # ended; should one reach the core during a later term, it must change nothing.
    @precondition(lambda self: self.ended_renewals and self.phase is Phase.LEADER)
    @rule(data=st.data(), delay=ANSWER_DELAY, outcome=RENEWAL_ANSWER)
    def a_late_answer_for_an_ended_term_changes_nothing(
        self, data: st.DataObject, delay: float, outcome: str
    ) -> None:
        renewal = data.draw(st.sampled_from(self.ended_renewals))
        self.wait(delay)
        core = self.core

        def state() -> tuple[object, ...]:
            return (
                core.phase,
                core.term,
                core.lease_deadline,
                core.next_renew_at,
                core.next_acquire_at,
                core.unknown_tokens,
                core.errors,
            )

        before = state()
        if outcome == "renewed":
            out = core.renewed(token=renewal.token, sent_at=renewal.sent_at, now=self.now)
        elif outcome == "lost":
            out = core.renew_lost(token=renewal.token, now=self.now)
        else:
            out = core.renew_failed(token=renewal.token, now=self.now)
        assert out == []
        assert state() == before

    @precondition(lambda self: self.releases_in_flight)
    @rule(data=st.data(), answered=st.booleans())
    def a_release_is_answered_or_fails(self, data: st.DataObject, answered: bool) -> None:
        tokens = data.draw(st.sampled_from(self.releases_in_flight))
        self.releases_in_flight.remove(tokens)
        if answered:
            self.answer_release(tokens)


class ModelStore:
    """The lock, lease and fencing counter of the Lua scripts in ``_store.py``, on a shared clock.

    A key lives until its expiry time inclusive (Redis deletes it once ``now > expiry``). After a
    restart that lost the data, a free lock is granted only once the server's uptime, read in the
    worst way (whole seconds, one too many), reaches ``restart_uptime_s``. The fencing counter
    survives a restart, as the script re-seeds it from the server's time, which only grows.
    """

    def __init__(self, timings: Timings) -> None:
        self.timings = timings
        self.lock: str | None = None
        self.expires_at = 0.0
        self.fence = 0
        self.started_at: float | None = None  # None: up since long before the test began
        self.restarts = 0

    def holder(self, now: float) -> str | None:
        return self.lock if self.lock is not None and now <= self.expires_at else None

    def acquire(
        self, token: str, unknown: tuple[str, ...], now: float
    ) -> Acquired | Held | HeldBack:
        holder = self.holder(now)
        if holder is not None and holder not in unknown:
            return Held(remaining_ms=int((self.expires_at - now) * 1000), holder_id=holder)
        if holder is None and self.started_at is not None:
            uptime = math.floor(now - self.started_at) + 1
            need = self.timings.restart_uptime_s
            if uptime < need:
                return HeldBack(wait_ms=(need - uptime) * 1000, uptime_s=uptime)
        self.fence += 1
        self.lock = token
        self.expires_at = now + self.timings.lock_ttl_ms / 1000
        return Acquired(fencing_token=self.fence)

    def renew(self, token: str, now: float) -> bool:
        if self.holder(now) != token:
            return False
        self.expires_at = now + self.timings.lock_ttl_ms / 1000
        return True

    def release(self, tokens: tuple[str, ...], now: float) -> bool:
        holder = self.holder(now)
        if holder is None or holder not in tokens:
            return False
        self.lock = None
        return True

    def restart(self, now: float) -> None:
        self.lock = None
        self.started_at = now
        self.restarts += 1


class ElectionCoreAgainstAModelStore(CandidateDrivenLikeTheDriver):
    """The answers come from a model store that a rival candidate competes for.

    Requests reach the store in any order, at any time after being sent, also after the driver
    stopped waiting for them, or never.
    """

    def __init__(self) -> None:
        super().__init__()
        self.network: list[Request] = []  # sent, not yet processed by the store
        self.releases: list[Request] = []  # sent, not yet answered
        self.rival_token: str | None = None

    def started(self) -> None:
        self.store = ModelStore(self.t)

    def send(self, kind: str, tokens: tuple[str, ...], answer_at: float) -> Request:
        request = Request(kind, tokens, reaches_store_at=(self.now + answer_at) / 2)
        self.network.append(request)
        return request

    def attempt_sent(self, attempt: Attempt, data: st.DataObject) -> None:
        tokens = (attempt.token, *attempt.unknown_at_send)
        attempt.request = self.send("acquire", tokens, attempt.answer_at)

    def renewal_sent(self, renewal: Renewal, data: st.DataObject) -> None:
        renewal.request = self.send("renew", (renewal.token,), renewal.answer_at)

    def release_sent(self, tokens: tuple[str, ...], data: st.DataObject) -> None:
        timeout = min(self.t.call_timeout, RELEASE_TIMEOUT)
        answer_at = self.now + data.draw(LATENCY, "latency") * timeout
        request = self.send("release", tokens, answer_at)
        request.answer_at, request.times_out_at = answer_at, self.now + timeout
        self.releases.append(request)

    def release_is_answered(self, request: Request) -> bool:
        """Whether the answer to ``request`` arrives before it times out."""
        return request.answer_at <= request.times_out_at and self.can_answer(request)

    def release_settles_at(self, request: Request) -> float:
        """When the driver learns how ``request`` went: its answer, or its timeout."""
        return request.answer_at if self.release_is_answered(request) else request.times_out_at

    def events(self) -> list[tuple[float, str]]:
        events = super().events()
        if self.network:
            arrival = min(request.reaches_store_at for request in self.network)
            events.append((arrival, "a request reaches the store"))
        if self.releases:
            settled = min(self.release_settles_at(request) for request in self.releases)
            events.append((settled, "a release is answered or times out"))
        return events

    def happen(self, event: str, data: st.DataObject) -> None:
        if event == "a request reaches the store":
            self.process(min(self.network, key=lambda request: request.reaches_store_at))
        elif event == "a release is answered or times out":
            request = min(self.releases, key=self.release_settles_at)
            self.releases.remove(request)
            if self.release_is_answered(request):
                self.process(request)
                self.answer_release(request.tokens)
        else:
            super().happen(event, data)

    def can_arrive(self, call: Attempt | Renewal) -> bool:
        return super().can_arrive(call) and self.can_answer(call.request)

    def planned_attempt_answer_arrives(self) -> None:
        assert self.attempt is not None
        assert self.attempt.request is not None
        result = self.process(self.attempt.request)
        assert isinstance(result, Acquired | Held | HeldBack)
        self.answer_attempt(result)

    def planned_renewal_answer_arrives(self) -> None:
        assert self.renewal is not None
        assert self.renewal.request is not None
        self.answer_renewal("renewed" if self.process(self.renewal.request) else "lost")

    def can_answer(self, request: Request | None) -> bool:
        """Whether ``request`` was processed, or still can be."""
        return request is not None and (request.processed or request in self.network)

    def process(self, request: Request) -> object:
        """The store's answer to ``request``, which it processes now if it has not yet."""
        if request.processed:
            return request.result
        self.network.remove(request)
        request.processed = True
        store, now = self.store, self.now
        if request.kind == "acquire":
            token, *unknown = request.tokens
            request.result = store.acquire(token, tuple(unknown), now)
        elif request.kind == "renew":
            request.result = store.renew(request.tokens[0], now)
        else:
            request.result = store.release(request.tokens, now)
            if request.result and self.phase is not Phase.STOPPED:
                self.announce_release()  # published on the channel this candidate listens to
        return request.result

    # ---------------------------------------------------------------------- the store

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def the_store_processes_a_request(self, data: st.DataObject) -> None:
        self.process(data.draw(st.sampled_from(self.network)))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def a_request_is_lost_on_the_way(self, data: st.DataObject) -> None:
        self.network.remove(data.draw(st.sampled_from(self.network)))

    # While this candidate leads: the case restart protection is there for.
    @precondition(lambda self: self.phase is Phase.LEADER and self.store.restarts < 2)
    @rule()
    def the_store_restarts_and_loses_its_data(self) -> None:
        self.store.restart(self.now)
        self.restarts = self.store.restarts

    # ---------------------------------------------------------------------- the rival

    def rival_holds_the_lock(self) -> bool:
        return self.rival_token is not None and self.store.holder(self.now) == self.rival_token

    @precondition(lambda self: self.store.holder(self.now) is None)
    @rule()
    def a_rival_acquires_the_free_lock(self) -> None:
        token = self.new_token("rival")
        if isinstance(self.store.acquire(token, (), self.now), Acquired):
            self.rival_token = token

    @precondition(rival_holds_the_lock)
    @rule()
    def the_rival_renews(self) -> None:
        assert self.rival_token is not None
        assert self.store.renew(self.rival_token, self.now)

    @precondition(rival_holds_the_lock)
    @rule()
    def the_rival_releases(self) -> None:
        assert self.rival_token is not None
        assert self.store.release((self.rival_token,), self.now)
        if self.phase is not Phase.STOPPED:
            self.announce_release()

    # ------------------------------------------------------------------ the answers

    @precondition(lambda self: self.attempt is not None and self.can_arrive(self.attempt))
    @rule(delay=ANSWER_DELAY)
    def the_store_answers_the_attempt(self, delay: float) -> None:
        assert self.attempt is not None
        assert self.attempt.request is not None
        result = self.process(self.attempt.request)
        assert isinstance(result, Acquired | Held | HeldBack)
        self.wait(delay)
        self.answer_attempt(result)

    @precondition(lambda self: self.attempt is not None)
    @rule(delay=ANSWER_DELAY)
    def the_attempt_fails(self, delay: float) -> None:
        """An error or a timeout; if still on its way, the store may process it later."""
        self.wait(delay)
        self.answer_attempt(None)

    @precondition(lambda self: self.renewal is not None and self.can_arrive(self.renewal))
    @rule(delay=ANSWER_DELAY)
    def the_store_answers_the_renewal(self, delay: float) -> None:
        assert self.renewal is not None
        assert self.renewal.request is not None
        renewed = self.process(self.renewal.request)
        self.wait(delay)
        self.answer_renewal("renewed" if renewed else "lost")

    @precondition(lambda self: self.renewal is not None)
    @rule(delay=ANSWER_DELAY)
    def the_renewal_fails(self, delay: float) -> None:
        self.wait(delay)
        self.answer_renewal("failed")

    @precondition(lambda self: any(self.can_answer(r) for r in self.releases))
    @rule(data=st.data())
    def the_store_answers_a_release(self, data: st.DataObject) -> None:
        request = data.draw(st.sampled_from([r for r in self.releases if self.can_answer(r)]))
        self.releases.remove(request)
        self.process(request)
        self.answer_release(request.tokens)

    @precondition(lambda self: self.releases)
    @rule(data=st.data())
    def a_release_fails(self, data: st.DataObject) -> None:
        self.releases.remove(data.draw(st.sampled_from(self.releases)))

    # -------------------------------------------------------------------- invariant

    @invariant()
    def a_leading_core_holds_the_lock_for_longer_than_it_leads(self) -> None:
        if not self.core.is_leader(self.now):
            return
        assert self.term is not None
        holder = self.store.holder(self.now)
        assert holder is None or holder in self.our_tokens, "two leaders"
        if self.store.restarts == self.term_restarts:
            assert holder == self.term.token
            assert self.store.expires_at >= self.lease_end


# A passing run takes seconds, but shrinking a failure to a short sequence can take minutes
# (hypothesis gives up after five), and a named profile may explore for longer than that.
_SHRINKING_TIME = pytest.mark.timeout(900 if _PROFILE_NAME is None else 0)
TestElectionCoreAgainstAnyAnswers = _SHRINKING_TIME(ElectionCoreAgainstAnyAnswers.TestCase)
TestElectionCoreAgainstAnyAnswers.settings = PROFILE
TestElectionCoreAgainstAModelStore = _SHRINKING_TIME(ElectionCoreAgainstAModelStore.TestCase)
TestElectionCoreAgainstAModelStore.settings = PROFILE


def test_a_hand_off_releases_only_the_tokens_it_had_when_the_term_ended() -> None:
    """resign(), the campaign's next attempt, the hand-off's release, then the attempt's answer.

    The hand-off releases once the term's ``while_leader`` tasks finished (up to
    ``call_timeout``, 3 s by default), while the campaign attempts again after
    ``retry_interval`` (2 s by default), and ``attempt_sent`` puts that attempt's token among the
    unknown tokens until its answer arrives. Releasing the unknown tokens read at that later point
    would free the lock the attempt just won, and the core would then lead while a rival holds
    the lock; the tokens read when the term ended leave it alone.
    """
    t = DEFAULT_TIMINGS  # lock_ttl 10 s, retry_interval 2 s, call_timeout 3 s
    store = ModelStore(t)
    core = ElectionCore(t, rng=random.Random(0))
    core.attempt_sent("term-1")
    first = store.acquire("term-1", (), now=0.0)
    assert isinstance(first, Acquired)
    core.acquired(sent_at=0.0, now=0.0, token="term-1", fencing_token=first.fencing_token)

    core.resign(1.0)  # the hand-off now waits for a while_leader task that is slow to finish
    hand_off_tokens = core.unknown_tokens
    assert hand_off_tokens == ("term-1",)
    assert core.next_acquire_at == 1.0 + t.retry_interval

    # 3.0: the campaign's next attempt; at 3.1 the store takes our own lock over for it.
    unknown = core.unknown_tokens
    core.attempt_sent("term-2")
    second = store.acquire("term-2", unknown, now=3.1)
    assert isinstance(second, Acquired)
    assert core.unknown_tokens == ("term-1", "term-2")  # what a later read would release

    # 4.0 (1.0 + call_timeout): the hand-off releases; the lock is no longer term-1's.
    assert not store.release(hand_off_tokens, now=4.0)
    core.released(hand_off_tokens)
    assert not isinstance(store.acquire("rival", (), now=4.0), Acquired)

    # 4.5: the attempt's answer arrives, well within its call timeout.
    out = core.acquired(sent_at=3.0, now=4.5, token="term-2", fencing_token=second.fencing_token)
    assert [type(transition) for transition in out] == [BecameLeader]
    assert core.is_leader(4.5)
    assert store.holder(4.5) == "term-2"
