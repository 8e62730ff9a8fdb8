"""``min_replicas``: a term begins, and a renewal extends the local lease, only once that many
replicas acknowledged the write (WAIT, in the same round trip as the script).

A master with one replica, on real servers; the replica is paused (SIGSTOP) to stop its
acknowledgements and resumed to bring them back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from leaderelection import (
    ElectionConfig,
    LeaderElection,
    ReplicasMissingError,
    StoreUnavailableError,
)
from leaderelection._store import RedisStore
from tests.redis_harness import RedisServer
from tests.support import eventually, fast_config

pytestmark = pytest.mark.redis


def replicated(name: str, **overrides: Any) -> ElectionConfig:
    """A 3 s lease with a 0.5 s call deadline: room for a WAIT of 250 ms, which a server
    answers on its next cron tick (up to 100 ms late)."""
    return fast_config(
        name,
        lock_ttl="3s",
        heartbeat_interval="500ms",
        min_replicas=1,
        restart_protection=False,
        **overrides,
    )


@pytest.fixture
def pair(make_redis_server: Any) -> Iterator[tuple[RedisServer, RedisServer]]:
    master = make_redis_server()
    replica = make_redis_server(replica_of=master)
    yield master, replica
    if replica.paused:
        replica.resume()


async def test_a_term_begins_once_the_replica_acknowledged_it(
    pair: tuple[RedisServer, RedisServer], name: str
) -> None:
    master, replica = pair
    config = replicated(name)
    async with LeaderElection(master.url, config) as election:
        assert election.is_leader
        token = election.fencing_token
        async with replica.client() as client:
            # The write was acknowledged before the term began: the replica has it.
            assert await client.get(config.lock_key) is not None
        await eventually(lambda: election.statistics().renewals >= 2)
        assert election.fencing_token == token
        assert election.statistics().last_error is None


async def test_without_acknowledgements_no_term_begins_until_the_replica_is_back(
    pair: tuple[RedisServer, RedisServer], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    master, replica = pair
    config = replicated(name)
    replica.pause()
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with LeaderElection(master.url, config) as election:
            assert not election.is_leader
            await eventually(lambda: election.statistics().last_error is not None)
            stats = election.statistics()
            assert stats.last_error is not None
            assert "min_replicas=1" in stats.last_error
            assert any("replicas acknowledged" in r.getMessage() for r in caplog.records)
            replica.resume()
            await election.wait_until_leader(timeout=10)
            assert election.statistics().last_error is None


async def test_a_leader_whose_replica_stops_acknowledging_steps_down_then_leads_again(
    pair: tuple[RedisServer, RedisServer], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    master, replica = pair
    config = replicated(name)
    caplog.set_level(logging.WARNING, logger="leaderelection")
    async with LeaderElection(master.url, config) as election:
        assert election.is_leader
        first = election.fencing_token
        assert first is not None
        replica.pause()
        # Renewals reach the master but are not acknowledged: the local lease is not extended,
        # so the leader steps down at its renew deadline although Redis still holds its lock.
        await election.wait_until_follower(timeout=5)
        # Why: the renewal was not acknowledged (last_error says so until the follower's next
        # acquire, which replicas do not acknowledge either, overwrites it: the log keeps both).
        await eventually(lambda: election.statistics().renew_failures >= 1)
        heartbeats = [
            r.getMessage() for r in caplog.records if "Heartbeat failed" in r.getMessage()
        ]
        assert any("acknowledged the renewal" in message for message in heartbeats), heartbeats
        assert election.statistics().store_errors_by_kind["replicas_missing"] >= 1
        replica.resume()
        await election.wait_until_leader(timeout=10)
        second = election.fencing_token
        assert second is not None and second > first


async def test_the_store_raises_replicas_missing_with_what_to_check(
    pair: tuple[RedisServer, RedisServer], name: str
) -> None:
    master, replica = pair
    config = fast_config(name, min_replicas=1)
    async with master.client() as client:
        store = RedisStore.for_config(client, config)
        replica.pause()
        with pytest.raises(ReplicasMissingError, match="INFO replication") as missing:
            await store.acquire(
                "token-a", '{"instance_id":"a"', 1000, unknown_tokens=(), min_uptime_s=0,
                timeout=0.5,
            )  # fmt: skip
        assert isinstance(missing.value, StoreUnavailableError)  # transient: retried
        replica.resume()
        # Wait until the resumed replica has caught up and acknowledges again (a write and a
        # WAIT on one connection), so that the next WAIT counts it.
        pipe = client.pipeline(transaction=False)
        pipe.set(f"{name}:probe", 1)
        pipe.execute_command("WAIT", 1, 10_000)
        assert (await pipe.execute())[1] == 1
        two = RedisStore.for_config(client, fast_config(name, min_replicas=2))
        with pytest.raises(ReplicasMissingError, match="only 1 of min_replicas=2"):
            await two.acquire(
                "token-b", '{"instance_id":"b"', 1000, unknown_tokens=("token-a",),
                min_uptime_s=0, timeout=0.5,
            )  # fmt: skip
