"""Defects of the runtime found by reading it, each reproduced against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection
from tests.support import fast_config


async def _connected_clients(server: Any) -> int:
    async with server.client() as probe:
        info = await probe.info("clients")
        return int(info["connected_clients"]) - 1  # less the probe itself


async def test_get_leader_info_of_an_election_never_started_leaves_no_client_open(
    shared_redis: Any, name: str
) -> None:
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    before = await _connected_clients(shared_redis)
    election = LeaderElection(shared_redis.url, config)
    assert await election.get_leader_info() is None
    assert await election.get_leader_id() is None
    assert await _connected_clients(shared_redis) == before


async def test_the_release_announces_the_terms_fencing_token_whatever_the_info_record_holds(
    shared_redis: Any, name: str
) -> None:
    """The release names the term's fencing token, given by the releaser: it does not dig it
    out of the info record, which a human, another version or a bug may have changed."""
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    async with shared_redis.client() as client:
        pubsub = client.pubsub()
        await pubsub.subscribe(config.release_channel)
        try:
            election = LeaderElection(shared_redis.url, config)
            await election.start()
            token = election.fencing_token
            assert token is not None
            await client.set(config.info_key, "not the record", keepttl=True)
            await election.stop()
            released = await _next_message(pubsub, "R ")
        finally:
            await pubsub.aclose()
    assert released.startswith(f"R {token} {election.instance_id} ")


async def _next_message(pubsub: Any, prefix: str) -> str:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                if text.startswith(prefix):
                    return text


@pytest.mark.redis
async def test_an_election_leaves_no_dead_connection_in_the_clients_pool(
    shared_redis: Any, name: str
) -> None:
    """The subscription has a pool of its own: when the last election on a client stops, its
    closed connection is not handed to the client's next command (which would reconnect)."""
    config = ElectionConfig(name=name, restart_protection=False)
    admin = shared_redis.client()
    client = shared_redis.client()
    try:
        async with LeaderElection(client, config) as election:
            assert election.is_leader
            hub = election._campaign.store.hub  # type: ignore[union-attr]
            assert await hub.wait_active(config.release_channel, timeout=5)
        before = (await admin.info("stats"))["total_connections_received"]
        await client.ping()  # the client's own connection, still open
        await client.get(config.lock_key)
        after = (await admin.info("stats"))["total_connections_received"]
        assert after == before  # no reconnect
    finally:
        await client.aclose()
        await admin.aclose()
