"""Fault tests: the guarantees under crash, pause, partition and Redis restart.

Candidates that must be paused or killed run in their own processes (``candidate.py``); a
SIGSTOPped process is the honest model of a paused leader. All processes share one monotonic
clock (Linux ``CLOCK_MONOTONIC``), so their timestamps compare directly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from typing import Any

import pytest

from leaderelection import LeaderElection
from tests.support import eventually, fast_config

from .conftest import MakeCandidate, assert_one_leader_at_a_time

TTL = 1.0
RENEW_DEADLINE = TTL * 2 / 3


async def test_local_step_down_within_renew_deadline_when_redis_is_blackholed(
    shared_redis: Any, make_proxy: Any, name: str
) -> None:
    """Guarantee 2, and no overlap with the next leader (guarantee 3)."""
    config = fast_config(name)
    proxy = await make_proxy(shared_redis)
    work_cancelled = asyncio.Event()
    seen_by_new_leader: list[tuple[bool, bool]] = []

    a = LeaderElection(proxy.url, config)

    @a.while_leader
    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            work_cancelled.set()

    b = LeaderElection(shared_redis.url, config)
    # Runs synchronously at b's first moment as leader: a must have stepped down already.
    b.on_become_leader(lambda: seen_by_new_leader.append((a.is_leader, a.leader_event.is_set())))
    async with a, b:
        assert a.is_leader
        renewals = a.statistics().renewals
        await eventually(lambda: a.statistics().renewals > renewals)  # a renewal just succeeded
        proxy.blackhole()
        cut = time.monotonic()
        await a.wait_until_follower(timeout=RENEW_DEADLINE + 0.5)
        stepped_down = time.monotonic()
        assert not a.leader_event.is_set()
        async with asyncio.timeout(0.1):  # cancelled at the step-down; finishing takes a loop turn
            await work_cancelled.wait()
        # The last successful renewal was sent before the cut, so the deadline is before
        # cut + renew_deadline; allow one scheduling slice for the watchdog to run.
        assert stepped_down - cut <= RENEW_DEADLINE + 0.1
        await b.wait_until_leader(timeout=5)
        assert seen_by_new_leader == [(False, False)]
        proxy.pass_through()


async def test_paused_leader_process_never_overlaps_the_next_leader(
    shared_redis: Any, make_candidate: MakeCandidate, name: str
) -> None:
    """Guarantee 3 under a process pause (SIGSTOP) three times the lease."""
    a = await make_candidate(shared_redis.url, name)
    became_a = await a.expect("became")
    b = await make_candidate(shared_redis.url, name)
    a.signal(signal.SIGSTOP)
    paused = time.monotonic()
    became_b = await b.expect("became", timeout=10)
    await asyncio.sleep(max(0.0, paused + 3 * TTL - time.monotonic()))  # hold the pause: 3x lease
    a.signal(signal.SIGCONT)
    lost_a = await a.expect("lost", timeout=10)
    # a's leadership ended at its last local lease deadline (the pause froze its watchdog, but
    # is_leader reads the clock); b's began later.
    assert a.last_until() < became_b["t"]
    assert became_b["token"] > became_a["token"]
    for candidate in (a, b):  # their last events are out: the history is complete
        await candidate.send("stop")
        await candidate.expect("stopped")
    assert_one_leader_at_a_time(a, b)
    assert lost_a["reason"] in ("renew_deadline", "lock_lost")


async def test_crash_failover_waits_for_the_lease_then_follows_fast(
    shared_redis: Any, make_candidate: MakeCandidate, name: str
) -> None:
    """Guarantee 6: a killed leader's lease is respected, then one follower takes over, alone."""
    config = fast_config(name)
    a = await make_candidate(shared_redis.url, name)
    became_a = await a.expect("became")
    b = await make_candidate(shared_redis.url, name)
    c = await make_candidate(shared_redis.url, name)
    with shared_redis.sync_client() as sync:
        pttl = sync.pttl(config.lock_key)
        a.signal(signal.SIGKILL)
        expiry = time.monotonic() + pttl / 1000
    winners = await _first_of([b, c], "became", timeout=10)
    assert len(winners) == 1, winners
    (first,) = winners
    assert first["t"] >= expiry - 0.002  # not before the lease expired in Redis
    assert first["t"] <= expiry + TTL  # liveness, generously; speed is for the benchmarks
    assert first["token"] > became_a["token"]
    winner, loser = (b, c) if any(r["event"] == "became" for r in b.events) else (c, b)
    # Let the winner lead for two leases: the loser, which found the lock taken at the expiry,
    # tries again (about a lease later) within that time.
    await eventually(lambda: winner.last_until() > first["t"] + 2 * TTL, timeout=10)
    for candidate in (loser, winner):  # the loser first: it must not take over at the end
        await candidate.send("stop")
        await candidate.expect("stopped")
    assert loser.terms() == []
    assert_one_leader_at_a_time(a, b, c)


async def test_graceful_handoff_across_processes(
    shared_redis: Any, make_candidate: MakeCandidate, name: str
) -> None:
    """Guarantee 5: stop() releases and wakes a follower in another process at once."""
    a = await make_candidate(shared_redis.url, name, ttl="5s", heartbeat="1s", retry="1s")
    await a.expect("became")
    b = await make_candidate(shared_redis.url, name, ttl="5s", heartbeat="1s", retry="1s")
    await a.send("stop")
    lost = await a.expect("lost")
    became_b = await b.expect("became", timeout=3)  # a 5 s lease: only the release is this fast
    assert became_b["t"] > lost["t"]


async def test_fencing_tokens_increase_across_a_restart_that_lost_all_data(
    own_redis: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Guarantees 3 and 4 across a Redis restart with no persistence."""
    config = fast_config(name)
    lost = asyncio.Event()
    a = LeaderElection(own_redis.url, config, on_lose_leadership=lost.set)
    b = LeaderElection(own_redis.url, config)
    seen: list[bool] = []
    b.on_become_leader(lambda: seen.append(a.is_leader))
    a.on_become_leader(lambda: seen.append(b.is_leader))
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with a, b:
            old = a.fencing_token
            assert old is not None
            own_redis.restart()  # no persistence: the lock, the info and the fence are gone
            restarted = time.monotonic()
            async with asyncio.timeout(5):
                await lost.wait()
            winner = await _first_leader([a, b], timeout=15)
            new_term = time.monotonic()
            token = winner.fencing_token
            assert token is not None
            assert token > old
            # Restart protection: no term until the server has been up longer than the lease.
            assert new_term - restarted >= math.ceil(TTL) + 1
            # Two terms began (a's first, the winner's after the restart), each while the other
            # election did not lead; the callbacks run after the term began, so wait for them.
            await eventually(lambda: len(seen) == 2)
            assert seen == [False, False]
    assert any("holding elections back" in r.getMessage() for r in caplog.records)


async def test_restart_with_aof_keeps_the_lease_and_the_fence(
    make_redis_server: Any, name: str
) -> None:
    server = make_redis_server(appendonly=True)
    server.wait_uptime_above(4)  # restart protection for a 3 s lease
    config = fast_config(name, lock_ttl="3s", heartbeat_interval="500ms")
    async with LeaderElection(server.url, config) as a:
        old = a.fencing_token
        assert old is not None
        server.restart()
        async with LeaderElection(server.url, config) as b:
            assert not b.is_leader  # the lock survived the restart
            await a.resign()
            # The restarted server is young: the free lock is granted once it has been up
            # longer than the lease (the snapshot might have been older than the last term).
            await b.wait_until_leader(timeout=10)
            assert b.fencing_token is not None
            assert b.fencing_token > old
            assert server.uptime() >= 4  # ceil(3 s) + 1: more than 3 s have passed


async def test_paused_redis_steps_the_leader_down_then_elects_again(
    own_redis: Any, name: str
) -> None:
    config = fast_config(name)
    async with LeaderElection(own_redis.url, config) as a:
        old = a.fencing_token
        assert old is not None
        own_redis.pause()
        try:
            await a.wait_until_follower(timeout=RENEW_DEADLINE + 0.5)
        finally:
            own_redis.resume()
        await a.wait_until_leader(timeout=10)
        assert a.fencing_token is not None
        assert a.fencing_token > old


async def _first_of(candidates: list[Any], event: str, timeout: float) -> list[dict[str, Any]]:
    async with asyncio.timeout(timeout):
        while True:
            hits = [r for c in candidates for r in c.events if r["event"] == event]
            if hits:
                return hits
            for c in candidates:
                c._new.clear()
            waiters = [asyncio.ensure_future(c._new.wait()) for c in candidates]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()


async def _first_leader(elections: list[LeaderElection], timeout: float) -> LeaderElection:
    waiters = {asyncio.ensure_future(e.wait_until_leader()): e for e in elections}
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        assert done, "no leader was elected"
        return waiters[next(iter(done))]
    finally:
        for w in waiters:
            w.cancel()
