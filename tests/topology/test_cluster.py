"""Redis Cluster: any node's URL, the election's slot owner, sharded release notices, clear
errors for a client that cannot follow redirections, and ``min_replicas`` on the slot's node.

Every test here runs on real cluster nodes (3 masters with a replica each) started by the
harness; the failover tests are in ``test_cluster_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.crc import key_slot

from leaderelection import (
    ConfigurationError,
    CrossSlotError,
    FenceResult,
    LeaderElection,
    LeaderObserver,
    StoreError,
)
from leaderelection._connect import UrlClient
from tests.redis_harness import ClusterServers
from tests.support import eventually, fast_config

pytestmark = pytest.mark.redis


def elsewhere(cluster: ClusterServers, key: str) -> list[Any]:
    """The nodes that do not own ``key``'s slot: masters of other slots, and every replica."""
    owner = cluster.owner_of(key)
    return [node for node in cluster.nodes if node is not owner]


@contextlib.asynccontextmanager
async def recording(observer: LeaderObserver) -> AsyncIterator[list[int | None]]:
    """The fencing token of every change the observer reports (None: no leader), as it comes."""
    seen: list[int | None] = []
    changes = observer.changes()

    async def watch() -> None:
        async for change in changes:
            seen.append(change.leader.fencing_token if change.leader else None)

    task = asyncio.get_running_loop().create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await changes.aclose()  # type: ignore[attr-defined]


async def test_the_url_of_any_node_finds_the_cluster_and_elects(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    urls = [cluster.url_of(node) for node in elsewhere(cluster, config.lock_key)]
    assert len(urls) == 5  # two other masters, three replicas
    elections = [LeaderElection(url, config) for url in urls]
    try:
        for election in elections:
            await election.start()
        leaders = [e for e in elections if e.is_leader]
        assert len(leaders) == 1
        for election in elections:
            assert await election.get_leader_id() == leaders[0].instance_id
        client = elections[0]._client
        assert isinstance(client, UrlClient) and client.kind == "cluster"
    finally:
        for election in elections:
            await election.stop()


async def test_a_release_reaches_followers_on_the_shard_channel_at_once(
    cluster: ClusterServers, name: str
) -> None:
    """With a 10 s lease, a follower that leads within a second of the resign was woken by the
    release notice (SSUBSCRIBE on the slot's node; SUBSCRIBE on 6.2), not by the lease."""
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    a_url, b_url = (cluster.url_of(node) for node in elsewhere(cluster, config.lock_key)[:2])
    async with LeaderElection(a_url, config) as a, LeaderElection(b_url, config) as b:
        assert a.is_leader and not b.is_leader
        hub = b._campaign.store.hub if b._campaign.store is not None else None
        assert hub is not None
        assert await hub.wait_active(config.release_channel, timeout=5)
        with cluster.nodes[0].sync_client() as node:
            major = int(str(node.info("server")["redis_version"]).split(".")[0])
        assert hub._sharded == (major >= 7)  # shard channels where the server has them
        for _ in range(3):
            leader, follower = (a, b) if a.is_leader else (b, a)
            token = leader.fencing_token
            assert token is not None
            resigned = time.monotonic()
            await leader.resign()
            await follower.wait_until_leader(timeout=1.0)
            assert time.monotonic() - resigned < 1.0
            assert follower.fencing_token is not None and follower.fencing_token > token


async def test_an_observer_on_another_node_sees_every_term(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    nodes = elsewhere(cluster, config.lock_key)
    async with (
        LeaderObserver(cluster.url_of(nodes[-1]), config) as observer,
        recording(observer) as seen,
    ):
        await eventually(lambda: seen == [None])
        async with LeaderElection(cluster.url_of(nodes[0]), config) as a:
            await eventually(lambda: seen[-1] == a.fencing_token)
        await eventually(lambda: seen[-1] is None)


async def test_a_cluster_client_passed_in_works_and_is_not_closed(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    async with cluster.client() as client:
        async with LeaderElection(client, config) as a, LeaderElection(client, config) as b:
            assert a.is_leader != b.is_leader
            leader, follower = (a, b) if a.is_leader else (b, a)
            await leader.resign()
            await follower.wait_until_leader(timeout=1.0)
        assert await client.ping()  # still open: the caller owns it


async def test_a_plain_client_on_a_node_without_the_slot_gets_a_clear_error(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, restart_protection=False)
    node = next(n for n in cluster.masters() if n is not cluster.owner_of(config.lock_key))
    async with redis.asyncio.Redis(host=node.host, port=node.port) as plain:
        with pytest.raises(StoreError, match="redirected the call") as refused:
            await LeaderElection(plain, config).start()
    message = str(refused.value)
    assert "MOVED" in message and "RedisCluster client" in message
    assert str(key_slot(config.lock_key.encode())) in message


async def test_min_replicas_waits_on_the_node_of_the_election_slot(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(
        name, lock_ttl="3s", heartbeat_interval="500ms", min_replicas=1, restart_protection=False
    )
    owner = cluster.owner_of(config.lock_key)
    (replica,) = cluster.replicas_of(owner)
    async with LeaderElection(cluster.url_of(owner), config) as election:
        assert election.is_leader
        replica.pause()
        try:
            await election.wait_until_follower(timeout=5)
            await eventually(lambda: "replicas" in (election.statistics().last_error or ""))
        finally:
            replica.resume()
        await election.wait_until_leader(timeout=10)


async def test_fenced_writes_go_to_the_node_of_the_election_slot(
    cluster: ClusterServers, name: str
) -> None:
    """Keys with the election's hash tag, written through fences from an election on another
    node's URL (and, with min_replicas, acknowledged by the slot's replica); a replaced
    leader's fence is refused there."""
    config = fast_config(
        name, lock_ttl="10s", heartbeat_interval="1s", min_replicas=1, restart_protection=False
    )
    progress = f"myapp:{{{config.name}}}:progress"
    url = cluster.url_of(elsewhere(cluster, config.lock_key)[0])
    async with (
        cluster.client(decode_responses=True) as data,
        LeaderElection(url, config) as a,
        LeaderElection(url, config) as b,
    ):
        leader, follower = (a, b) if a.is_leader else (b, a)
        old = leader.fence()
        assert await old.set(progress, "first") is True
        assert await old.hset(progress + ":h", {"step": 1}) is True
        counted = await old.eval(
            "return redis.call('INCRBY', KEYS[1], ARGV[1])", [progress + ":n"], [3]
        )
        assert counted == FenceResult(True, 3)
        await leader.resign()
        await follower.wait_until_leader(timeout=5)
        new = follower.fence()
        assert await new.set(progress, "second") is True
        old._is_current = lambda: True  # leave the refusal to the slot's node
        assert await old.set(progress, "stale") is False
        assert await data.get(progress) == "second"
        assert await data.hgetall(progress + ":h") == {"step": "1"}
        assert await new.delete(progress, progress + ":h", progress + ":n") is True


async def test_a_key_outside_the_election_slot_is_a_cross_slot_error(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    async with cluster.client() as client, LeaderElection(client, config) as election:
        assert election.is_leader
        fence = election.fence()
        outside = "myapp:progress"
        assert key_slot(outside.encode()) != key_slot(config.lock_key.encode())
        for write in (
            fence.set(outside, "x"),
            fence.delete(f"myapp:{{{config.name}}}:ok", outside),
            fence.eval("return 1", [f"myapp:{{{config.name}}}:ok", outside]),
        ):
            with pytest.raises(CrossSlotError) as refused:
                await write
        message = str(refused.value)
        assert "'myapp:progress' is not in the election's Redis Cluster hash slot" in message
        assert f"'myapp:{{{config.name}}}:progress'" in message
        assert isinstance(refused.value, ConfigurationError)
        assert await client.exists(outside) == 0
        assert election.is_leader  # a refused write costs the term nothing


async def test_a_plain_client_on_the_slot_owner_gets_the_cross_slot_error_too(
    cluster: ClusterServers, name: str
) -> None:
    """A client that does not know the cluster sends the script; the node answers CROSSSLOT."""
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False)
    owner = cluster.owner_of(config.lock_key)
    async with (
        redis.asyncio.Redis(host=owner.host, port=owner.port) as plain,
        LeaderElection(plain, config) as election,
    ):
        assert election.is_leader
        with pytest.raises(CrossSlotError, match=r"myapp:\{" + config.name + r"\}:progress"):
            await election.fence().set("myapp:progress", "x")
        assert await election.fence().set(f"myapp:{{{config.name}}}:progress", "x") is True


async def test_a_cluster_url_with_a_database_number_is_refused_at_start(
    cluster: ClusterServers, name: str
) -> None:
    config = fast_config(name, restart_protection=False)
    with pytest.raises(ConfigurationError, match="only database 0"):
        await LeaderElection(cluster.url_of(cluster.nodes[0]) + "/1", config).start()


def move_slot(cluster: ClusterServers, key: str, target: Any) -> None:
    """Move ``key``'s slot, with its keys, to the master ``target`` (what resharding does)."""
    source = cluster.owner_of(key)
    slot = key_slot(key.encode())
    src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
    with source.sync_client() as src, target.sync_client() as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        for master in cluster.masters():
            with master.sync_client() as node:
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_the_election_follows_a_slot_move(make_cluster: Any, name: str) -> None:
    """Resharding moves the election's slot: renewals follow the MOVED replies, the term goes on
    with its token, and a release still reaches the follower at once (its subscription moves
    with the slot: the server ends a shard subscription with ``sunsubscribe``)."""
    cluster: ClusterServers = make_cluster(3, 0)
    config = fast_config(name, lock_ttl="10s", heartbeat_interval="200ms", restart_protection=False)
    a_url, b_url = (cluster.url_of(node) for node in cluster.masters()[:2])
    async with LeaderElection(a_url, config) as a, LeaderElection(b_url, config) as b:
        leader, follower = (a, b) if a.is_leader else (b, a)
        token = leader.fencing_token
        old = cluster.owner_of(config.lock_key)
        target = next(n for n in cluster.masters() if n is not old)
        await asyncio.to_thread(move_slot, cluster, config.lock_key, target)
        assert cluster.owner_of(config.lock_key) is target
        renewals = leader.statistics().renewals
        await eventually(lambda: leader.statistics().renewals >= renewals + 3)
        assert leader.is_leader and leader.fencing_token == token
        with target.sync_client() as node:
            assert node.get(config.lock_key) is not None
        started = time.monotonic()
        await leader.resign()
        await follower.wait_until_leader(timeout=2.0)
        assert time.monotonic() - started < 2.0  # woken by the release, not the 10 s lease


async def test_an_observer_follows_a_failover_of_the_slot_master(
    make_cluster: Any, name: str
) -> None:
    """The observer's subscription was on the master that dies: it subscribes again on the
    promoted replica, and reports the term that began there."""
    cluster: ClusterServers = make_cluster(3, 1)
    config = fast_config(name, lock_ttl="1s", heartbeat_interval="100ms")
    owner = cluster.owner_of(config.lock_key)
    others = [n for n in cluster.masters() if n is not owner]
    async with (
        LeaderObserver(cluster.url_of(others[0]), config) as observer,
        LeaderElection(cluster.url_of(others[1]), config) as election,
        recording(observer) as seen,
    ):
        await election.wait_until_leader(timeout=10)  # a young cluster holds it ~2 s back
        first = election.fencing_token
        await eventually(lambda: first in seen)
        cluster.kill(owner)
        await asyncio.to_thread(cluster.wait_failover, owner)
        await eventually(lambda: election.is_leader and election.fencing_token != first, timeout=10)
        second = election.fencing_token
        assert second is not None and first is not None and second > first
        await eventually(lambda: second in seen, timeout=10)
        assert seen.index(first) < seen.index(second)
