"""Who takes a free lock: priority first, and one follower at a time rather than the whole herd.

On the fake clock and the memory server (whose release announces how many listen and the highest
priority waiting, as the scripts do), so that the orders and counts are exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection, StoreUnavailableError
from leaderelection._core import HANDOFF_SPREAD, PRIORITY_LEVELS, PRIORITY_STEP
from leaderelection.testing import FakeClock, MemoryServer
from tests.election.conftest import Drive, MakeElection


async def start_all(elections: list[LeaderElection]) -> None:
    for election in elections:
        await election.start()


async def test_a_release_goes_to_the_highest_priority_waiting(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    leader = make_election(config)
    low = [make_election(config) for _ in range(3)]
    high = make_election(config.model_copy(update={"priority": 5}))
    await start_all([leader, *low, high])  # each follower's first attempt records its priority
    assert leader.is_leader
    await leader.resign()
    await drive(high.wait_until_leader(), limit=1)
    # The others heard the new term's announcement and dropped their attempts.
    assert all(not e.is_leader for e in low)
    assert {e.statistics().leader_id for e in low} == {high.instance_id}
    assert all(e.statistics().acquire_results["held"] == 1 for e in low)  # the first attempt only


async def test_an_expired_lease_goes_to_the_highest_priority_waiting(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    """Each follower learns the highest priority waiting at its attempts (one per lease): the
    low one, started first, learns of the high one at its next look, a lease later."""
    leader = make_election(config)
    low = make_election(config)
    high = make_election(config.model_copy(update={"priority": 1}))
    await start_all([leader, low, high])
    await clock.advance(config.lock_ttl.total_seconds() + 0.5)  # one look each
    assert low.statistics().acquire_results["held"] == 2
    crashed = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await crashed.wait()  # as if the leader's process had died: no call arrives
        raise StoreUnavailableError("the leader's process is gone")

    store = leader._campaign.store
    assert store is not None
    originals = store.renew, store.acquire, store.release
    store.renew = store.acquire = store.release = never  # type: ignore[method-assign]
    try:
        await drive(high.wait_until_leader(), limit=15)
    finally:
        store.renew, store.acquire, store.release = originals  # type: ignore[method-assign]
        crashed.set()
    assert not low.is_leader
    # The low one tried after the high one's jitter window and PRIORITY_STEP: the lock was taken.
    assert low.statistics().leader_id == high.instance_id


async def test_a_sitting_leader_is_never_preempted(
    make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    leader = make_election(config)
    await leader.start()
    high = make_election(config.model_copy(update={"priority": 100}))
    await high.start()
    await clock.advance(60)  # many leases: the leader renews, the high one waits
    assert leader.is_leader and not high.is_leader
    assert leader.statistics().terms_won == 1


@pytest.mark.parametrize("followers", [1, 10, 50])
async def test_a_handoff_costs_a_few_attempts_whatever_the_number_of_followers(
    make_election: MakeElection, server: MemoryServer, clock: FakeClock, followers: int
) -> None:
    """Each follower waits a random fraction of the spread before it tries; the first one's
    announcement makes the others drop their attempts. (On the memory server an announcement
    arrives at once: on a real server the few tried within one round trip also go.)"""
    config = ElectionConfig(name=f"herd-{followers}")
    leader = make_election(config)
    waiting = [make_election(config) for _ in range(followers)]
    await start_all([leader, *waiting])
    before = server.commands
    released = clock.now()
    await leader.resign()
    await clock.advance_until(lambda: any(e.is_leader for e in waiting), limit=1)
    took = clock.now() - released
    attempts = server.commands - before - 1  # the release itself
    assert attempts == 1  # one follower tried, and won
    assert took <= HANDOFF_SPREAD * followers + 0.001
    if followers == 1:
        assert took == pytest.approx(0, abs=1e-6)  # a lone follower tries at once


def test_the_priority_delay_is_bounded() -> None:
    from leaderelection._core import ElectionCore, Timings

    timings = Timings(lock_ttl=10, heartbeat_interval=3, retry_interval=2, renew_deadline=6.5)
    core = ElectionCore(timings, priority=-100)
    assert core.priority_delay(None) == 0
    assert core.priority_delay(-100) == 0
    assert core.priority_delay(-99) == PRIORITY_STEP
    assert core.priority_delay(100) == PRIORITY_STEP * PRIORITY_LEVELS  # at most
    assert ElectionCore(timings, priority=3).priority_delay(1) == 0  # lower ones never wait it
