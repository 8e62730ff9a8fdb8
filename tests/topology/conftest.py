"""Fixtures for the topology tests: one Redis Cluster and one Sentinel deployment per module, for
the tests that do not break them (fault tests make their own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_harness import ClusterServers, SentinelServers


@pytest.fixture(scope="module")
def cluster(redis_server_bin: str) -> Iterator[ClusterServers]:
    """3 masters with a replica each, shared by a module's tests (unique election names)."""
    with ClusterServers(binary=redis_server_bin) as servers:
        yield servers


@pytest.fixture(scope="module")
def sentinels(redis_server_bin: str) -> Iterator[SentinelServers]:
    """A master, one replica and 3 sentinels, shared by a module's tests."""
    with SentinelServers(binary=redis_server_bin) as servers:
        yield servers
