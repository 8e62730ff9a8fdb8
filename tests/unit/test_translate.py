"""Redis errors of the topologies, translated into the library's own with what to do."""

from __future__ import annotations

import pytest
from redis import exceptions as rx
from redis.asyncio.sentinel import MasterNotFoundError

from leaderelection import (
    StoreAuthenticationError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailableError,
)
from leaderelection._store import translate

KEYS = ("app:{x}:lock", "app:{x}:info", "app:{x}:fence")


@pytest.mark.parametrize(
    ("exc", "kind", "says"),
    [
        (rx.MovedError("5258 127.0.0.1:7002"), StoreError, "MOVED 5258 127.0.0.1:7002"),
        (rx.AskError("5258 127.0.0.1:7002"), StoreError, "RedisCluster client"),
        (rx.ResponseError("MOVED 5258 127.0.0.1:7002"), StoreError, "redirected the call"),
        (rx.ClusterDownError("CLUSTERDOWN The cluster is down"), StoreUnavailableError, "promoted"),
        (rx.ResponseError("CLUSTERDOWN Hash slot not served"), StoreUnavailableError, "promoted"),
        (rx.TryAgainError("TRYAGAIN Multiple keys"), StoreUnavailableError, "being moved"),
        (
            rx.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
            StoreError,
            "one hash tag",
        ),
        (rx.ReadOnlyError("READONLY You can't write"), StoreReadOnlyError, "redis+sentinel://"),
        (
            rx.ResponseError("LEADERELECTION-NOINFO ERR The user can't run this command"),
            StoreAuthenticationError,
            "restart_protection=False",
        ),
        (
            MasterNotFoundError(
                "No master found for 'svc' : <redis.asyncio.client.Redis(<ConnectionPool(...)>)> "
                "- network:ConnectionError: Error 111 connecting to 10.0.0.5:26379."
            ),
            StoreUnavailableError,
            "for 'svc' while acquiring the lock: ConnectionError: Error 111 connecting to "
            "10.0.0.5:26379",
        ),
    ],
)
def test_each_topology_error_says_what_happened_and_what_to_do(
    exc: Exception, kind: type[StoreError], says: str
) -> None:
    error = translate(exc, "acquiring the lock", KEYS)
    assert type(error) is kind
    assert says in str(error)
    assert "<redis." not in str(error)  # no client internals
