"""LeaderElection end to end on a fake clock and an in-memory store (``conftest.py``).

Time moves only when a test moves it, so every timing is exact and costs no real time: a hand-over
through the release channel takes no fake time at all, a resign's hold-back exactly
``retry_interval``, a stuck or taken lease ends a term exactly when the rules say. The timings are
the library's defaults: a 10 s lease renewed every 3 s, renew_deadline 6.667 s, retry 2 s.
Nothing sleeps; the tests about Redis clients themselves are in ``test_clients.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from leaderelection import (
    ElectionConfig,
    ElectionNotRunningError,
    ElectionStatistics,
    LeaderElection,
    LeaderElectionError,
)
from leaderelection.testing import FakeClock, MemoryServer
from tests.election.conftest import Drive, MakeElection


def seconds(config: ElectionConfig) -> tuple[float, float, float, float]:
    """``(lock_ttl, heartbeat_interval, retry_interval, renew_deadline)`` in seconds."""
    return (
        config.lock_ttl.total_seconds(),
        config.heartbeat_interval.total_seconds(),
        config.retry_interval.total_seconds(),
        config.renew_deadline.total_seconds(),
    )


async def test_entering_returns_after_the_first_attempt(
    make_election: MakeElection, config: ElectionConfig
) -> None:
    async with make_election(config) as a:
        assert a.is_leader
        assert a.leader_event.is_set()
        assert a.fencing_token is not None
        info = await a.get_leader_info()
        assert info is not None
        assert info.instance_id == a.instance_id
        assert info.fencing_token == a.fencing_token
        assert info.election == config.name
        async with make_election(config) as b:
            assert not b.is_leader
            assert b.fencing_token is None
            assert not b.leader_event.is_set()
            assert await b.get_leader_id() == a.instance_id
            assert b.statistics().leader_id == a.instance_id
            assert b.instance_id != a.instance_id


async def test_one_config_serves_many_candidates_with_distinct_ids(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    lock_ttl, heartbeat, _, _ = seconds(config)
    elections = [make_election(config) for _ in range(5)]
    assert len({e.instance_id for e in elections}) == 5
    for e in elections:
        await e.start()
    leading = [e.is_leader for e in elections]
    assert sum(leading) == 1
    await clock.advance(3 * lock_ttl)  # three leases: the leader renews, nobody else gets in
    assert [e.is_leader for e in elections] == leading
    leader = elections[leading.index(True)]
    assert leader.statistics().terms_won == 1
    assert leader.statistics().renewals == int(3 * lock_ttl / heartbeat)
    assert sum(e.statistics().terms_won for e in elections) == 1


async def test_stop_hands_over_through_the_release_channel(
    make_election: MakeElection, config: ElectionConfig, drive: Drive
) -> None:
    a = make_election(config)
    b = make_election(config)
    await a.start()
    await b.start()
    assert a.is_leader
    assert not b.is_leader
    await a.stop()
    assert not a.is_leader
    # Woken by a's release at once: no fake time passes (a's lease had 10 s to go).
    await drive(b.wait_until_leader(), limit=0)
    assert b.is_leader


async def test_resign_hands_over_and_holds_back(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    lock_ttl, _, retry, _ = seconds(config)
    async with make_election(config) as a, make_election(config) as b:
        first = a.fencing_token
        assert first is not None
        resigned_at = clock.now()
        await a.resign()
        assert not a.is_leader
        assert a.statistics().state == "held_back"
        await drive(b.wait_until_leader(), limit=0)  # the release woke b at once
        second = b.fencing_token
        assert second is not None
        assert second > first
        await clock.advance(retry / 2)
        assert a.statistics().state == "held_back"
        await b.resign()  # b's release reaches a during its hold-back...
        await drive(a.wait_until_leader(), limit=lock_ttl)
        assert clock.now() == pytest.approx(resigned_at + retry)  # ...which a sits out in full
        assert a.fencing_token is not None
        assert a.fencing_token > second  # a new term
        assert a.statistics().terms_won == 2


async def test_resign_when_not_leader_is_a_no_op(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    lock_ttl, _, _, _ = seconds(config)
    async with make_election(config) as a, make_election(config) as b:
        await b.resign()
        assert a.is_leader
        assert not b.is_leader
        assert b.statistics().state == "follower"  # not held back: there was nothing to resign
        await clock.advance(2 * lock_ttl)
        assert a.is_leader
        assert not b.is_leader
        assert a.statistics().terms_won == 1


async def test_callbacks_run_in_order_isolated_and_balanced(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    events: list[str] = []
    errors: list[tuple[BaseException, dict[str, Any]]] = []
    lost = asyncio.Event()

    def handler(exc: BaseException, context: Any) -> None:
        errors.append((exc, dict(context)))

    election = make_election(config, on_error=handler)

    @election.on_become_leader
    def first() -> None:
        events.append("become-1")
        raise RuntimeError("boom")

    @election.on_become_leader
    async def second() -> None:
        await asyncio.sleep(0)
        events.append("become-2")

    @election.while_leader
    async def work() -> None:
        events.append("work-start")
        try:
            await asyncio.Event().wait()
        finally:
            events.append("work-cancelled")

    @election.on_lose_leadership
    async def lose() -> None:
        events.append("lose")
        lost.set()

    async with election:
        await clock.advance(0)  # the callbacks and the task run; no time passes
        assert "become-2" in events
        assert "work-start" in events
        await election.resign()
        await clock.advance(0)
        assert lost.is_set()
    assert events.index("become-1") < events.index("become-2") < events.index("lose")
    assert events.index("work-cancelled") < events.index("lose")
    assert events.count("lose") == 1
    assert len(errors) == 1
    exc, context = errors[0]
    assert isinstance(exc, RuntimeError)
    assert context["kind"] == "on_become_leader"
    assert context["callback"] is first
    assert context["fencing_token"] is not None


async def test_every_become_gets_exactly_one_lose_even_when_stopped_mid_callback(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    events: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()
    election = make_election(config)

    @election.on_become_leader
    async def slow_become() -> None:
        events.append("become-start")
        inside.set()
        await release.wait()
        events.append("become-end")

    election.on_lose_leadership(lambda: events.append("lose"))
    await election.start()
    await clock.advance(0)
    assert inside.is_set()
    stopping = asyncio.create_task(election.stop())
    await clock.advance(0)
    assert not election.is_leader
    assert not stopping.done()  # stop waits for the callbacks
    release.set()
    await clock.advance(0)
    assert stopping.done()
    await stopping
    assert events == ["become-start", "become-end", "lose"]


async def test_slow_async_callback_does_not_delay_heartbeats(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    _, heartbeat, _, _ = seconds(config)
    gate = asyncio.Event()
    returned: list[bool] = []
    election = make_election(config)

    @election.on_become_leader
    async def slow() -> None:
        await gate.wait()
        returned.append(True)

    async with election:
        await clock.advance(5 * heartbeat)
        stats = election.statistics()
        assert stats.renewals == 5  # every heartbeat on time
        assert stats.renew_failures == 0
        assert election.is_leader
        assert not returned  # the callback was waiting all along
        gate.set()
        await clock.advance(0)
        assert returned == [True]


async def test_while_leader_registered_during_a_term_starts_at_once(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    started = asyncio.Event()
    async with make_election(config) as election:
        assert election.is_leader

        @election.while_leader
        async def late() -> None:
            started.set()
            await asyncio.Event().wait()

        await clock.advance(0)  # no time passes
        assert started.is_set()


async def test_while_leader_exception_is_reported_and_election_goes_on(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, heartbeat, _, _ = seconds(config)
    election = make_election(config)

    @election.while_leader
    async def broken() -> None:
        raise ValueError("task failed")

    with caplog.at_level(logging.ERROR, logger="leaderelection"):
        async with election:
            await clock.advance(0)
            assert any("ValueError" in r.getMessage() for r in caplog.records)
            await clock.advance(2 * heartbeat)
            assert election.statistics().renewals == 2
            assert election.is_leader
    record = next(r for r in caplog.records if "ValueError" in r.getMessage())
    assert record.exc_info is not None


async def test_lost_lock_ends_the_term_and_a_new_term_follows(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    server: MemoryServer,
    *,
    drive: Drive,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock_ttl, heartbeat, _, _ = seconds(config)
    lost = asyncio.Event()
    election = make_election(config, on_lose_leadership=lost.set)
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with election:
            first = election.fencing_token
            assert first is not None
            taken_at = clock.now()
            server.set(config.lock_key, "someone-else", 5000)  # our lock was taken, for 5 s
            took = await clock.advance_until(lost.is_set, limit=lock_ttl)
            assert took == pytest.approx(heartbeat)  # the next renewal found it taken
            records = [
                r
                for r in caplog.records
                if r.getMessage() == "Failed to send heartbeat, lost leadership"
            ]
            assert [r.reason for r in records] == ["lock_lost"]  # type: ignore[attr-defined]
            await drive(election.wait_until_leader(), limit=lock_ttl)
            # The foreign lock expired first; the election asked again as it ran out (the
            # core adds a few ms of jitter to a holder's remaining lease).
            assert 5.0 <= clock.now() - taken_at < 5.05
            assert election.fencing_token is not None
            assert election.fencing_token > first
            assert election.statistics().terms_won == 2


async def test_wait_until_leader_times_out_and_follower_returns(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    lock_ttl, _, _, _ = seconds(config)
    async with make_election(config) as a, make_election(config) as b:
        # A timeout of 0 expires at once, on the election's clock.
        with pytest.raises(TimeoutError):
            await b.wait_until_leader(timeout=0)
        await b.wait_until_follower(timeout=0)
        with pytest.raises(TimeoutError):
            await a.wait_until_follower(timeout=0)
        # Without a timeout, b waits as long as a leads, and returns once b leads.
        waiting = asyncio.create_task(b.wait_until_leader())
        await clock.advance(3 * lock_ttl)
        assert not waiting.done()
        await a.stop()
        await clock.advance(0)
        assert waiting.done()
        await waiting
        assert b.is_leader


async def test_waiting_on_a_stopped_election_is_an_error(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    a = make_election(config)
    with pytest.raises(ElectionNotRunningError, match="start"):
        await a.wait_until_leader()
    async with a, make_election(config) as b:
        waiting = asyncio.create_task(b.wait_until_leader())
        await clock.advance(0)
        assert not waiting.done()
        await b.stop()
        with pytest.raises(ElectionNotRunningError):
            await waiting


async def test_lifecycle_errors(make_election: MakeElection, config: ElectionConfig) -> None:
    election = make_election(config)
    await election.stop()  # stopping a never-started election is fine
    await election.stop()
    with pytest.raises(LeaderElectionError, match="already started"):
        await election.start()
    other = make_election(config)
    async with other:
        with pytest.raises(LeaderElectionError, match="already started"):
            await other.start()
    await other.stop()
    assert other.statistics().state == "stopped"


async def test_statistics_is_an_immutable_snapshot(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    _, heartbeat, _, _ = seconds(config)
    async with make_election(config) as election:
        stats = election.statistics()
        assert isinstance(stats, ElectionStatistics)
        assert stats.state == "leader"
        assert stats.terms_won == 1
        assert stats.transitions == 1
        assert stats.acquire_attempts == 1
        assert stats.renewals == 0
        assert stats.last_renew_latency is None
        with pytest.raises(AttributeError):
            stats.state = "follower"  # type: ignore[misc]
        await clock.advance(heartbeat)
        later = election.statistics()
        assert later.renewals == 1
        assert later.last_renew_latency == 0.0  # a memory round trip takes no fake time
    assert stats.state == "leader"  # the snapshot did not change
    assert stats.renewals == 0


async def test_logs_carry_the_go_messages_and_structured_fields(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, heartbeat, _, _ = seconds(config)
    with caplog.at_level(logging.DEBUG, logger="leaderelection"):
        async with make_election(config) as election:
            await clock.advance(heartbeat)
            assert election.statistics().renewals == 1
            token = election.fencing_token
    messages = {r.getMessage(): r for r in caplog.records}
    for text, level in [
        ("Became the leader", logging.INFO),
        ("Heartbeat sent", logging.DEBUG),
        ("Releasing leadership voluntarily", logging.INFO),
    ]:
        record = messages[text]
        assert record.levelno == level
        assert record.election == config.name  # type: ignore[attr-defined]
        assert record.instance_id == election.instance_id  # type: ignore[attr-defined]
        assert record.fencing_token == token  # type: ignore[attr-defined]


async def test_sync_and_async_callbacks_given_to_the_constructor(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def lose() -> None:
        seen.append("lose")
        done.set()

    election = make_election(
        config, on_become_leader=lambda: seen.append("become"), on_lose_leadership=lose
    )
    async with election:
        await clock.advance(0)
        assert seen == ["become"]
    assert seen == ["become", "lose"]
    assert done.is_set()


def test_register_non_callable_is_a_type_error(
    make_election: MakeElection, config: ElectionConfig
) -> None:
    election = make_election(config)
    with pytest.raises(TypeError):
        election.on_become_leader(42)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        election.while_leader("nope")  # type: ignore[type-var]


async def test_stop_from_inside_a_callback_does_not_deadlock(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    election = make_election(config)
    lost = asyncio.Event()

    @election.on_become_leader
    async def stop_at_once() -> None:
        await election.stop()  # returns at once; the shutdown follows this callback

    election.on_lose_leadership(lost.set)
    await election.start()
    await clock.advance(0)
    assert lost.is_set()
    await drive(election.stop(), limit=0)  # already stopped: returns with no time passing
    assert election.statistics().state == "stopped"


async def test_is_leader_reads_the_clock_when_the_loop_was_blocked(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A blocked event loop cannot run the watchdog, but ``is_leader`` turns False on time, and
    waiting for leadership neither returns on the stale event nor resumes the old term."""
    _, _, _, renew_deadline = seconds(config)
    events: list[str] = []
    election = make_election(
        config,
        on_become_leader=lambda: events.append("become"),
        on_lose_leadership=lambda: events.append("lose"),
    )
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with election:
            await clock.advance(0)
            first = election.fencing_token
            assert first is not None
            # The fault: the loop is blocked past renew_deadline; no renewal, no watchdog ran.
            clock.jump(renew_deadline + 0.1)
            assert not election.is_leader
            assert election.fencing_token is None
            assert not election.statistics().is_leader
            assert election.leader_event.is_set()  # only the watchdog clears it, on its turn
            waiting = asyncio.create_task(election.wait_until_leader())
            await asyncio.sleep(0)  # the waiter runs once; no timer has fired yet
            assert not waiting.done()  # the stale leader_event does not satisfy it
            await clock.advance(0)  # the loop runs again: the due timers fire, in order
            assert waiting.done()
            await waiting
            assert election.fencing_token is not None
            assert election.fencing_token > first  # a new term, never the old one resumed
            assert events == ["become", "lose", "become"]
    reasons = [
        r.reason  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "Failed to send heartbeat, lost leadership"
    ]
    assert reasons == ["renew_deadline"]


async def test_a_stray_cancelled_error_in_callbacks_is_isolated(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    """A callback or task that awaits something cancelled fails alone; the election goes on."""
    _, heartbeat, _, _ = seconds(config)
    events: list[str] = []
    errors: list[str] = []
    lost = asyncio.Event()

    async def cancelled_future() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError, though nobody cancelled this task

    election = make_election(config, on_error=lambda exc, ctx: errors.append(ctx["kind"]))
    election.on_become_leader(cancelled_future)
    election.on_become_leader(lambda: events.append("become-2"))
    election.while_leader(cancelled_future)
    election.on_lose_leadership(lambda: (events.append("lose"), lost.set()))
    async with election:
        await clock.advance(0)
        assert "become-2" in events
        assert len(errors) == 2
        await clock.advance(2 * heartbeat)
        assert election.statistics().renewals == 2
        assert election.is_leader
        await election.resign()
        await clock.advance(0)
        assert lost.is_set()
    assert events == ["become-2", "lose"]
    assert sorted(errors) == ["on_become_leader", "while_leader"]


async def test_resign_from_a_while_leader_task_still_hands_over(
    make_election: MakeElection, config: ElectionConfig, drive: Drive
) -> None:
    a = make_election(config)

    @a.while_leader
    async def give_up() -> None:
        await a.resign()  # ends this very task's term

    async with a, make_election(config) as b:
        # Handed over by a release: no fake time passes (a's lease had 10 s to go).
        await drive(b.wait_until_leader(), limit=0)
        assert b.is_leader
        assert not a.is_leader
        assert a.statistics().terms_won == 1


async def test_resign_right_after_start_returns(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    """start() returns before the election's own task runs; the API works at once."""
    lock_ttl, _, retry, _ = seconds(config)
    async with make_election(config) as a:
        assert a.is_leader
        await a.resign()
        assert not a.is_leader
        assert not a.leader_event.is_set()
        resigned_at = clock.now()
        await drive(a.wait_until_leader(), limit=lock_ttl)
        assert clock.now() - resigned_at == pytest.approx(retry)  # after the hold-back, a new term
        assert a.statistics().terms_won == 2


# ---------------------------------------------------------- every wait goes through the clock
#
# ``_clock.py`` says the election "never reads time, calls asyncio.sleep or sets an
# asyncio.timeout of its own: it asks its clock". The bounds of stop() on user code and the
# timeouts of the waits are kept by the election's clock too: under a FakeClock they end when
# fake time passes, and no test waits for real time.


def ignoring_cancellation(release: asyncio.Event) -> Callable[[], Awaitable[None]]:
    """User code that swallows every cancellation and ends only once ``release`` is set."""

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    return stubborn


async def stop_on_the_clock(
    election: LeaderElection, clock: FakeClock, release: asyncio.Event, *, limit: float
) -> float:
    """Stop ``election`` while moving the clock; return the fake time stop() took. The stubborn
    code is released afterwards, so that nothing is left running."""
    stopping = asyncio.create_task(election.stop())
    try:
        return await clock.advance_until(stopping.done, limit=limit)
    finally:
        release.set()
        await stopping


async def test_stop_bounds_a_stubborn_while_leader_task_on_the_election_clock(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock_ttl, _, _, _ = seconds(config)
    release = asyncio.Event()
    election = make_election(config)
    election.while_leader(ignoring_cancellation(release))
    await election.start()
    await clock.advance(0)
    # call_timeout (3 s) for the task before the release, a lease of grace before the lose
    # callbacks: all of it fake time, since the bounds are kept by the clock.
    await stop_on_the_clock(election, clock, release, limit=3 * lock_ttl)
    assert election.statistics().state == "stopped"
    assert any("did not finish" in r.getMessage() for r in caplog.records)


async def test_wait_until_leader_timeout_is_kept_by_the_election_clock(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    lock_ttl, _, _, _ = seconds(config)
    async with make_election(config) as a, make_election(config) as b:
        assert a.is_leader
        waiting = asyncio.create_task(b.wait_until_leader(timeout=lock_ttl / 2))
        await clock.advance(lock_ttl)
        timed_out = waiting.done()
        waiting.cancel()
        (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
        assert timed_out, "a lease of fake time passed and the wait went on"
        assert isinstance(outcome, TimeoutError)


async def test_a_lose_callback_that_ignores_cancellation_is_waited_for_one_lease_only(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock_ttl, _, _, _ = seconds(config)
    release = asyncio.Event()
    election = make_election(config)
    election.on_lose_leadership(ignoring_cancellation(release))
    await election.start()
    await clock.advance(0)
    took = await stop_on_the_clock(election, clock, release, limit=3 * lock_ttl)
    assert took < 1.5 * lock_ttl  # one lease of grace (and a moment after the cancel), not two
    warnings = [r for r in caplog.records if "did not finish" in r.getMessage()]
    assert len(warnings) == 2  # "within ... of stop(); cancelling it", then "after it was ..."


async def test_stop_from_a_task_that_a_while_leader_task_started_waits_for_the_shutdown(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    """Only the while_leader task itself (and the callbacks) get stop()'s early return: a task
    it started is not the code the shutdown waits for."""
    election = make_election(config)
    seen: list[str] = []
    children: list[asyncio.Task[None]] = []

    async def child() -> None:
        await election.stop()
        seen.append(election.statistics().state)

    @election.while_leader
    async def spawns() -> None:
        children.append(asyncio.create_task(child()))
        await asyncio.Event().wait()

    await election.start()
    await clock.advance(0)
    assert children
    await clock.advance_until(children[0].done, limit=30)
    assert seen == ["stopped"]
