"""Tests that kill mutations the rest of the suite let through (real redis-server).

Restart protection as the driver applies it (fakeredis turns it off, so only a real server can
show it), and the lease length that renewals ask for. Neither test pauses: a brand-new server is
young by construction, and a 5 s lease leaves a wide gap between a full lease and half of one.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest

from leaderelection import LeaderElection
from tests.support import eventually, fast_config


async def test_a_brand_new_server_holds_the_first_election_back(
    make_redis_server: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Guarantee 3: on a server younger than ceil(lock_ttl) + 1 s with the lock free, the
    election does not grant a term; statistics() and the log say it is holding back."""
    server = make_redis_server()  # just started: uptime 0 or 1 s
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    needed = math.ceil(config.lock_ttl.total_seconds()) + 1
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with LeaderElection(server.url, config) as election:
            stats = election.statistics()
            uptime = server.uptime()
            assert uptime < needed  # the premise: the server is younger than the lease margin
            assert not election.is_leader
            assert election.fencing_token is None
            assert not election.leader_event.is_set()
            assert stats.state == "held_back"
            assert stats.restart_protection is True
            assert stats.terms_won == 0
            assert stats.acquire_attempts == 1
            with server.sync_client() as sync:
                assert sync.exists(config.lock_key, config.info_key, config.fence_key) == 0
    held_back = [r for r in caplog.records if "holding elections back" in r.getMessage()]
    assert len(held_back) == 1, [r.getMessage() for r in caplog.records]
    assert held_back[0].levelno == logging.WARNING
    assert held_back[0].election == config.name  # type: ignore[attr-defined]


async def test_renewals_ask_for_the_whole_lease(shared_redis: Any, name: str) -> None:
    """The acquire and every renewal set lock and info to expire lock_ttl from now, not less.

    A 5 s lease (the longest the shared server's uptime lets restart protection grant), a
    100 ms heartbeat and the default renew_deadline (3.3 s): the remaining TTL read right after
    a renewal is within milliseconds of 5 s, and the floor leaves a whole second for a slow
    read, while half a lease would read 2.5 s at most.
    """
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="100ms", retry_interval="1s")
    ttl_ms = config.lock_ttl.total_seconds() * 1000
    floor = ttl_ms - 1000
    client = shared_redis.client()
    try:

        async def ttls() -> tuple[int, int]:
            async with client.pipeline(transaction=True) as pipe:
                lock, info = await pipe.pttl(config.lock_key).pttl(config.info_key).execute()
            return lock, info

        async with LeaderElection(client, config) as election:
            assert election.is_leader
            lock, info = await ttls()
            assert floor < lock <= ttl_ms, "acquire"
            assert floor < info <= ttl_ms, "acquire"
            for _ in range(2):
                renewals = election.statistics().renewals
                await eventually(lambda r=renewals: election.statistics().renewals > r)
                lock, info = await ttls()
                assert floor < lock <= ttl_ms, f"lock PTTL {lock} ms after a renewal"
                assert floor < info <= ttl_ms, f"info PTTL {info} ms after a renewal"
            assert election.is_leader
    finally:
        await client.aclose()
