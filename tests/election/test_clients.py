"""LeaderElection and its ``redis`` argument: what it accepts, refuses and never closes.

These are about Redis clients themselves, so they run on an in-process fakeredis server (or no
server at all); nothing in them waits for time to pass. The election's behaviour over time is
tested on the fake clock in ``test_election.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.cluster

from leaderelection import ConfigurationError, LeaderElection
from tests.support import fast_config


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (redis.Redis(), "asyncio client"),
        # a synchronous cluster client connects when constructed: an instance made without
        # __init__ is enough for the type check
        (
            redis.cluster.RedisCluster.__new__(redis.cluster.RedisCluster),
            r"asyncio client: pass redis.asyncio.RedisCluster",
        ),
        (object(), "redis.asyncio.Redis or RedisCluster"),
        (42, "redis.asyncio.Redis or RedisCluster"),
    ],
)
def test_bad_redis_argument(bad: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LeaderElection(bad)


async def test_bad_url_is_a_configuration_error() -> None:
    election = LeaderElection("http://localhost:6379")
    with pytest.raises(ConfigurationError, match="redis://"):
        await election.start()


async def test_caller_owned_client_is_not_closed(make_client: Any, name: str) -> None:
    client = make_client()
    async with LeaderElection(client, fast_config(name)):
        pass
    assert await client.ping()
