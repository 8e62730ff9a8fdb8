"""The pure election core, driven with plain numbers: no event loop, no Redis, no sleeping."""

from __future__ import annotations

import random

import pytest

from leaderelection._core import (
    BecameLeader,
    ElectionCore,
    LossReason,
    LostLeadership,
    Phase,
    Timings,
)

T = Timings(lock_ttl=10.0, heartbeat_interval=3.0, retry_interval=2.0, renew_deadline=20 / 3)


def core() -> ElectionCore:
    return ElectionCore(T, rng=random.Random(7))


def leader(sent_at: float = 100.0, now: float = 100.001, token: str = "t1") -> ElectionCore:
    c = core()
    out = c.acquired(sent_at=sent_at, now=now, token=token, fencing_token=42)
    assert out == [BecameLeader(c.term)] if c.term else False
    return c


def test_timings_derived_values() -> None:
    assert T.call_timeout == 3.0
    assert T.lock_ttl_ms == 10_000
    assert T.restart_uptime_s == 11  # uptime >= ceil(10) + 1: more than 10 s have passed
    assert Timings(1.5, 0.2, 0.3, 1.0).restart_uptime_s == 3
    assert Timings(2.0004, 0.5, 0.3, 1.0).lock_ttl_ms == 2001  # never shorter than asked


def test_acquire_starts_a_term_counted_from_send_time() -> None:
    c = leader(sent_at=100.0, now=100.5)
    assert c.phase is Phase.LEADER
    assert c.term is not None
    assert (c.term.number, c.term.token, c.term.fencing_token) == (1, "t1", 42)
    assert c.lease_deadline == pytest.approx(100.0 + 20 / 3)
    assert c.next_renew_at == 103.0


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (100.0, True),
        (106.66, True),
        (100.0 + 20 / 3, False),  # exactly at the deadline: no longer leader
        (107.0, False),
        (1e9, False),
    ],
)
def test_is_leader_is_read_against_the_clock(now: float, expected: bool) -> None:
    assert leader(sent_at=100.0, now=100.0).is_leader(now) is expected


def test_acquire_answered_after_the_deadline_does_not_lead_and_is_taken_over() -> None:
    c = core()
    c.attempt_sent("late")
    assert c.acquired(sent_at=100.0, now=107.0, token="late", fencing_token=1) == []
    assert c.phase is Phase.FOLLOWER
    assert c.unknown_tokens == ("late",)
    assert c.next_acquire_at == 107.0


@pytest.mark.parametrize(
    ("sent", "now", "deadline"),
    [
        (103.0, 103.001, 103.0 + 20 / 3),  # deadline counts from the renewal's send time
        (103.0, 106.0, 103.0 + 20 / 3),  # a slow answer does not extend it further
    ],
)
def test_renewal_extends_the_lease_from_its_send_time(
    sent: float, now: float, deadline: float
) -> None:
    c = leader()
    assert c.renewed(token="t1", sent_at=sent, now=now) == []
    assert c.lease_deadline == pytest.approx(deadline)
    assert c.next_renew_at == sent + 3.0


def test_renewal_answered_after_the_deadline_ends_the_term_for_good() -> None:
    c = leader(sent_at=100.0, now=100.0)
    out = c.renewed(token="t1", sent_at=103.0, now=107.0)
    assert [type(t) for t in out] == [LostLeadership]
    assert isinstance(out[0], LostLeadership)
    assert out[0].reason is LossReason.RENEW_DEADLINE
    assert c.phase is Phase.FOLLOWER
    # A second late success for the same term changes nothing: the term never resumes.
    assert c.renewed(token="t1", sent_at=103.5, now=107.1) == []
    assert not c.is_leader(107.1)


def test_renewal_for_an_old_term_is_ignored() -> None:
    c = leader(token="t1")
    c.resign(101.0)
    c.next_acquire_at = 0
    c.held_back_until = 0
    c.acquired(sent_at=102.0, now=102.0, token="t2", fencing_token=43)
    assert c.renewed(token="t1", sent_at=102.5, now=102.6) == []
    assert c.renew_lost(token="t1", now=102.6) == []
    assert c.renew_failed(token="t1", now=102.6) == []
    assert c.is_leader(102.7)
    assert c.term is not None
    assert c.term.token == "t2"


def test_lock_lost_ends_the_term() -> None:
    c = leader()
    (out,) = c.renew_lost(token="t1", now=103.0)
    assert isinstance(out, LostLeadership)
    assert out.reason is LossReason.LOCK_LOST
    assert c.next_acquire_at == 103.0
    assert c.unknown_tokens == ()  # the store says the lock is someone else's


def test_failed_renewals_retry_quickly_then_step_down_at_the_deadline() -> None:
    c = leader(sent_at=100.0, now=100.0)
    now = 103.0
    retries = []
    while True:
        out = c.renew_failed(token="t1", now=now)
        if out:
            break
        retries.append(c.next_renew_at - now)
        assert c.next_renew_at <= c.lease_deadline
        now = c.next_renew_at
    assert all(0 < r <= 0.75 for r in retries)
    assert now >= 100.0 + 20 / 3
    assert isinstance(out[0], LostLeadership)
    assert out[0].reason is LossReason.RENEW_DEADLINE
    assert c.unknown_tokens == ("t1",)  # the lock may still be ours: take it over or release it


@pytest.mark.parametrize(
    ("now", "lost"),
    [(106.0, False), (106.66, False), (106.67, True), (200.0, True)],
)
def test_watchdog_steps_down_at_the_deadline(now: float, lost: bool) -> None:
    c = leader(sent_at=100.0, now=100.0)
    out = c.check(now)
    assert bool(out) is lost
    assert (c.phase is Phase.FOLLOWER) is lost


@pytest.mark.parametrize(
    ("remaining_ms", "low", "high"),
    [
        (7000, 7.0005, 7.0105),  # wake just after the holder's lease can have expired
        (0, 0.0005, 0.0105),
        (3_600_000, 10.0005, 10.0105),  # a foreign long TTL is capped at lock_ttl
        (-1, 2.0005, 2.0105),  # a lock without expiry: look again after retry_interval
    ],
)
def test_follower_sleeps_until_the_lease_can_have_expired(
    remaining_ms: int, low: float, high: float
) -> None:
    c = core()
    c.held(now=50.0, remaining_ms=remaining_ms)
    assert 50.0 + low <= c.next_acquire_at <= 50.0 + high


def test_release_notice_wakes_a_follower_at_once() -> None:
    c = core()
    c.held(now=50.0, remaining_ms=9000)
    assert c.release_noticed(now=51.0) is True
    assert c.next_acquire_at == 51.0


def test_release_notice_during_an_acquire_in_flight_is_not_lost() -> None:
    c = core()
    notices = c.notices  # the acquire is sent
    c.release_noticed(now=50.0)  # the release is announced before the answer arrives
    c.held(now=50.001, remaining_ms=9000, notices_at_send=notices)  # the answer: still held
    assert c.next_acquire_at == 50.001  # try again at once, not in 9 s
    c.held(now=50.002, remaining_ms=9000, notices_at_send=c.notices)
    assert c.next_acquire_at > 59.0


def test_release_notice_is_ignored_by_a_leader_and_deferred_during_hold_back() -> None:
    c = leader(sent_at=100.0, now=100.0)
    assert c.release_noticed(now=101.0) is False
    c.resign(101.0)
    assert c.release_noticed(now=102.0) is False  # held back until 103.0, attempt due then
    assert c.next_acquire_at == 103.0
    c.held(now=103.0, remaining_ms=9000)
    assert c.release_noticed(now=103.5) is True
    assert c.next_acquire_at == 103.5


def test_release_notice_during_hold_back_is_not_dropped() -> None:
    c = leader(sent_at=100.0, now=100.0)
    c.resign(101.0)  # held back until 103.0
    c.next_acquire_at = 110.0  # e.g. a holder's lease seen during the hold-back
    assert c.release_noticed(now=102.0) is True
    assert c.next_acquire_at == 103.0  # deferred to the end of the hold-back, not lost


def test_unknown_tokens_are_kept_bounded_and_forgotten_when_released() -> None:
    c = core()
    for i in range(12):
        c.attempt_sent(f"t{i}")
    assert c.unknown_tokens == tuple(f"t{i}" for i in range(4, 12))
    c.released(("t5", "t11"))
    assert "t5" not in c.unknown_tokens
    assert "t11" not in c.unknown_tokens
    (won,) = c.acquired(sent_at=1.0, now=1.0, token="t12", fencing_token=9)
    assert isinstance(won, BecameLeader)
    assert c.unknown_tokens == ()


def test_resign_holds_back_for_retry_interval() -> None:
    c = leader(sent_at=100.0, now=100.0)
    (out,) = c.resign(101.0)
    assert isinstance(out, LostLeadership)
    assert out.reason is LossReason.RESIGNED
    assert c.held_back_until == 103.0
    c.held(now=101.5, remaining_ms=0)
    assert c.next_acquire_at >= 103.0
    assert c.unknown_tokens == ()  # held by the new leader: our resigned token is gone


def test_resign_when_not_leader_does_nothing() -> None:
    c = core()
    c.held(now=5.0, remaining_ms=1000)
    due = c.next_acquire_at
    assert c.resign(10.0) == []
    assert c.held_back_until == 0.0
    assert c.next_acquire_at == due


def test_acquire_errors_back_off_exponentially_with_jitter_and_remember_the_token() -> None:
    c = core()
    delays = [c.acquire_failed(now=0.0, token=f"t{i}") for i in range(6)]
    assert c.unknown_tokens == tuple(f"t{i}" for i in range(6))
    caps = [2, 4, 8, 10, 10, 10]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    c.held(now=0.0, remaining_ms=100)
    assert c.errors == 0


def test_restart_protection_delays_the_next_attempt() -> None:
    c = core()
    c.held_back(now=5.0, wait_ms=9000)
    assert 14.0 <= c.next_acquire_at <= 14.05


def test_stop_ends_the_term_and_the_campaign() -> None:
    c = leader()
    (out,) = c.stop(101.0)
    assert isinstance(out, LostLeadership)
    assert out.reason is LossReason.STOPPED
    assert c.phase is Phase.STOPPED
    assert c.acquired(sent_at=102.0, now=102.0, token="x", fencing_token=1) == []
    assert c.stop(103.0) == []


def test_terms_are_numbered_and_never_resume() -> None:
    c = core()
    won_terms = []
    now = 0.0
    for i in range(5):
        (won,) = c.acquired(sent_at=now, now=now, token=f"t{i}", fencing_token=100 + i)
        assert isinstance(won, BecameLeader)
        assert won.term is c.term
        won_terms.append(won.term)
        now += 1.0
        (lost,) = c.check(now + 10)
        assert isinstance(lost, LostLeadership)
        assert lost.term is won.term
        # The ended term's renewal succeeds late, then the store says it is lost: neither
        # revives the term or ends it a second time.
        assert c.renewed(token=f"t{i}", sent_at=now, now=now + 10.5) == []
        assert c.renew_lost(token=f"t{i}", now=now + 10.5) == []
        assert c.phase is Phase.FOLLOWER
        assert not c.is_leader(now + 10.5)
        now += 11
    # Each term is the store's grant as the core reported it: numbered in order, with the token
    # and the fencing token of the acquire that won it.
    assert [(t.number, t.token, t.fencing_token) for t in won_terms] == [
        (i + 1, f"t{i}", 100 + i) for i in range(5)
    ]
    assert c.terms_won == 5
