"""Sentinel by URL: ``redis+sentinel://`` finds the master, finds it again after a failover or a
graceful switch (a demoted master's READONLY leads to rediscovery), and says which sentinels it
tried when none answers.

Every test runs on real processes: a master, a replica and 3 sentinels started by the harness.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from leaderelection import (
    ConfigurationError,
    LeaderElection,
    LeaderObserver,
    StoreUnavailableError,
)
from leaderelection._connect import UrlClient
from tests.redis_harness import SentinelServers
from tests.support import eventually, fast_config

pytestmark = pytest.mark.redis


def lease(name: str, **overrides: Any) -> Any:
    """A 2 s lease: a sentinel failover (about 2 s here) fits in a few of them."""
    return fast_config(
        name, lock_ttl="2s", heartbeat_interval="300ms", retry_interval="200ms", **overrides
    )


async def test_the_sentinel_url_finds_the_master_and_elects(
    sentinels: SentinelServers, name: str
) -> None:
    config = lease(name, restart_protection=False)
    async with (
        LeaderElection(sentinels.url, config) as a,
        LeaderElection(sentinels.url, config) as b,
    ):
        assert a.is_leader != b.is_leader
        leader, follower = (a, b) if a.is_leader else (b, a)
        client = leader._client
        assert isinstance(client, UrlClient) and client.kind == "sentinel"
        assert await follower.get_leader_id() == leader.instance_id
        with sentinels.master().sync_client() as master:
            assert master.get(config.lock_key) is not None  # written on the master
        started = time.monotonic()
        await leader.resign()
        await follower.wait_until_leader(timeout=1.0)  # the release notice, not the lease
        assert time.monotonic() - started < 1.0


async def test_a_graceful_switch_demotes_the_master_and_the_leader_follows_the_new_one(
    make_sentinels: Any, name: str
) -> None:
    """``SENTINEL FAILOVER``: the old master stays up as a replica and answers writes with
    READONLY; the election's connection finds the new master instead of retrying the old one,
    and the term goes on there (the lock was replicated)."""
    servers: SentinelServers = make_sentinels()
    config = lease(name, restart_protection=False)
    async with LeaderElection(servers.url, config) as election:
        assert election.is_leader
        old = servers.master()
        with servers.sentinels[0].sync_client() as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", "mymaster")
        new = servers.wait_failover(old)
        assert new is not old and old.running
        renewals = election.statistics().renewals
        await eventually(lambda: election.statistics().renewals >= renewals + 3, timeout=10)
        await eventually(lambda: election.is_leader, timeout=10)
        with new.sync_client() as master:
            assert master.get(config.lock_key) is not None
            assert master.info("replication")["role"] == "master"


async def test_no_sentinel_reachable_is_a_clear_retried_error_naming_the_sentinels(
    make_sentinels: Any, name: str
) -> None:
    servers: SentinelServers = make_sentinels()
    servers.stop_sentinels()
    config = lease(name, restart_protection=False)
    async with LeaderObserver(servers.url, config) as observer:
        with pytest.raises(StoreUnavailableError, match="no Sentinel") as refused:
            await observer.current()
    message = str(refused.value)
    for host, port in servers.sentinel_addresses:
        assert f"{host}:{port}" in message
    async with LeaderElection(servers.url, config) as election:
        assert not election.is_leader  # transient: start() returns and the election retries
        await eventually(lambda: "no Sentinel" in (election.statistics().last_error or ""))
        servers.start_sentinels()
        await election.wait_until_leader(timeout=10)


def test_the_threaded_facade_takes_the_sentinel_url(sentinels: SentinelServers, name: str) -> None:
    from leaderelection.sync import LeaderElection as SyncLeaderElection

    config = lease(name, restart_protection=False)
    with SyncLeaderElection(sentinels.url, config) as election:
        assert election.is_leader
        assert election.get_leader_id() == election.instance_id
    with pytest.raises(ConfigurationError, match="name the service"):
        SyncLeaderElection("redis+sentinel://127.0.0.1:1/", config).start()
