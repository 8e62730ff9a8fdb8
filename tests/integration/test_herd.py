"""On a real server: a handoff among many followers costs a few scripts, not one per follower,
and the highest priority waiting takes the lock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection
from tests.redis_harness import RedisServer

FOLLOWERS = 12
HANDOFFS = 6


async def _scripts(admin: Any) -> int:
    stats = await admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


async def _next_leader(elections: list[LeaderElection], old: LeaderElection) -> LeaderElection:
    waits = {asyncio.ensure_future(e.wait_until_leader()): e for e in elections if e is not old}
    try:
        done, _ = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    assert done, "no follower took over within 5 s"
    return waits[next(iter(done))]


@pytest.mark.redis
async def test_a_handoff_among_many_followers_costs_a_few_scripts(
    shared_redis: RedisServer, name: str
) -> None:
    # A 30 s lease and 10 s heartbeats: no renewal or expiry attempt falls inside the handoffs.
    config = ElectionConfig(
        name=name,
        lock_ttl=30,
        heartbeat_interval=10,
        retry_interval="50ms",
        restart_protection=False,  # a 30 s lease would wait for the server to be up 31 s
    )
    clients = [shared_redis.client() for _ in range(FOLLOWERS + 1)]  # a connection each
    elections = [LeaderElection(client, config) for client in clients]
    admin = shared_redis.client()
    try:
        for election in elections:
            await election.start()
        numsub = await admin.pubsub_numsub(config.release_channel)
        assert numsub[0][1] == FOLLOWERS + 1
        leader = next(e for e in elections if e.is_leader)
        before = await _scripts(admin)
        for _ in range(HANDOFFS):
            await leader.resign()
            leader = await _next_leader(elections, leader)
        scripts = (await _scripts(admin) - before) / HANDOFFS
    finally:
        for election in elections:
            await election.stop()
        for client in [*clients, admin]:
            await client.aclose()
    print(f"\n{FOLLOWERS} followers: {scripts:.1f} scripts per handoff")
    # Each follower trying on every release would be 1 + FOLLOWERS = 13 scripts (and the one that
    # resigned tries once its hold-back ends, if no announcement stopped it).
    assert scripts <= FOLLOWERS * 2 / 3, scripts


@pytest.mark.redis
async def test_a_release_goes_to_the_highest_priority_follower(
    shared_redis: RedisServer, name: str
) -> None:
    config = ElectionConfig(name=name, lock_ttl=30, heartbeat_interval=10, restart_protection=False)
    clients = [shared_redis.client() for _ in range(5)]
    leader = LeaderElection(clients[0], config)
    low = [LeaderElection(c, config) for c in clients[1:4]]
    high = LeaderElection(clients[4], config.model_copy(update={"priority": 3}))
    try:
        for election in (leader, *low, high):
            await election.start()  # a follower's first attempt records its priority
        assert leader.is_leader
        await leader.resign()
        assert await _next_leader([*low, high], leader) is high
    finally:
        for election in (leader, *low, high):
            await election.stop()
        for client in clients:
            await client.aclose()
