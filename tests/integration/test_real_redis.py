"""The election against real redis-server processes: lifecycle, clients and bad input."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio

from leaderelection import (
    ConfigurationError,
    LeaderElection,
    StoreAuthenticationError,
    StoreReadOnlyError,
    WrongKeyTypeError,
)
from tests.redis_harness import RedisServer, free_port
from tests.support import eventually, fast_config


async def test_election_and_handoff_over_urls(shared_redis: Any, name: str) -> None:
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    async with LeaderElection(shared_redis.url, config) as a:
        assert a.is_leader
        async with LeaderElection(shared_redis.url, config) as b:
            assert not b.is_leader
            assert await b.get_leader_id() == a.instance_id
            token = a.fencing_token
            assert token is not None
            await a.stop()
            await b.wait_until_leader(timeout=2.0)  # a 5 s lease: only the release is this fast
            assert b.fencing_token is not None
            assert b.fencing_token > token


async def test_a_unix_socket_url_works(make_redis_server: Any, name: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="le-sock-"))  # short: socket paths are limited
    socket_path = directory / "redis.sock"
    try:
        server = make_redis_server(
            extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
        )
        server.wait_uptime_above(3, timeout=10)  # restart protection for a 1 s lease
        config = fast_config(name)
        async with LeaderElection(f"unix://{socket_path}", config) as election:
            assert election.is_leader
            info = await election.get_leader_info()
            assert info is not None
            assert info.fencing_token == election.fencing_token
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_url_client_is_closed_and_caller_client_is_not(shared_redis: Any, name: str) -> None:
    config = fast_config(name)
    sync = shared_redis.sync_client()
    try:
        baseline = sync.info("clients")["connected_clients"]
        async with LeaderElection(shared_redis.url, config) as election:
            assert election.is_leader
            assert sync.info("clients")["connected_clients"] > baseline
        # The server notices closed sockets on its next turn: wait for it, with a deadline.
        await eventually(lambda: sync.info("clients")["connected_clients"] == baseline)
        client = shared_redis.client(decode_responses=True)
        async with LeaderElection(client, config) as election:
            assert election.is_leader
            info = await election.get_leader_info()
            assert info is not None
            assert info.instance_id == election.instance_id
        assert await client.ping()  # still usable: the election did not close it
        await client.aclose()
    finally:
        sync.close()


async def test_wrong_password_is_refused_at_start(make_redis_server: Any, name: str) -> None:
    server = make_redis_server(password="s3cret")
    url = server.url.replace("s3cret", "wrong")
    assert url != server.url
    with pytest.raises(StoreAuthenticationError, match="credentials"):
        await LeaderElection(url, fast_config(name)).start()
    no_password = f"redis://{server.host}:{server.port}/0"
    with pytest.raises(StoreAuthenticationError):
        await LeaderElection(no_password, fast_config(name)).start()


async def test_wrong_password_on_a_retrying_caller_client_is_refused(
    make_redis_server: Any, name: str
) -> None:
    """redis-py's AuthenticationError is a ConnectionError: a client that retries would hide it
    behind a timeout if the election did not look for the cause."""
    server = make_redis_server(password="s3cret")
    client = redis.asyncio.Redis(host=server.host, port=server.port, password="wrong")
    assert client.get_retry() is not None
    try:
        with pytest.raises(StoreAuthenticationError, match="credentials"):
            await LeaderElection(client, fast_config(name)).start()
    finally:
        await client.aclose()


async def test_lock_key_of_another_type_is_refused_and_kept(shared_redis: Any, name: str) -> None:
    config = fast_config(name)
    with shared_redis.sync_client() as sync:
        sync.hset(config.lock_key, "owner", "legacy")
        with pytest.raises(WrongKeyTypeError, match=config.lock_key):
            await LeaderElection(shared_redis.url, config).start()
        assert sync.hgetall(config.lock_key) == {b"owner": b"legacy"}


async def test_read_only_replica_is_refused(make_redis_server: Any, name: str) -> None:
    primary = make_redis_server()
    replica = make_redis_server(replica_of=primary)
    with pytest.raises(StoreReadOnlyError, match="primary"):
        await LeaderElection(replica.url, fast_config(name)).start()


async def test_bad_url_is_refused_at_start(name: str) -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        await LeaderElection("redis://localhost:notaport/0", fast_config(name)).start()


async def test_redis_down_at_start_is_retried_until_it_comes(
    make_redis_server: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    config = fast_config(name)
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with LeaderElection(f"redis://127.0.0.1:{port}/0", config) as election:
            assert not election.is_leader  # start() returned: the failure is not fatal
            assert election.statistics().store_errors >= 1
            assert any("Failed to acquire leadership" in r.getMessage() for r in caplog.records)
            server = RedisServer(port=port)
            try:
                server.start()
                await election.wait_until_leader(timeout=15)
                assert election.is_leader
            finally:
                await election.stop()
                server.close()


@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_stop_is_bounded_when_redis_is_gone(own_redis: Any, name: str, fault: str) -> None:
    config = fast_config(name)
    lost = asyncio.Event()
    election = LeaderElection(own_redis.url, config, on_lose_leadership=lost.set)
    await election.start()
    assert election.is_leader
    if fault == "killed":
        own_redis.stop()
    else:
        own_redis.pause()
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):  # a hang would fail here, not hang the suite
            await election.stop()
        elapsed = time.monotonic() - started
        assert not election.is_leader
        assert lost.is_set()  # the lose callback ran, even without Redis
        # The release that cannot get through has a deadline of its own (one call's, 100 ms
        # here): stop() returns well before the lease it failed to release would even expire.
        assert elapsed < config.lock_ttl.total_seconds() / 2, f"stop() took {elapsed:.3f} s"
    finally:
        if fault == "paused":
            own_redis.resume()


async def test_first_election_on_a_brand_new_server_is_held_back(
    redis_server: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Guarantee 1's exception: a fresh server may have lost a live leader's lock."""
    config = fast_config(name)  # 1 s lease: no term before the server's uptime reads 2 s
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with LeaderElection(redis_server.url, config) as election:
            assert not election.is_leader
            stats = election.statistics()
            assert stats.restart_protection
            assert stats.state == "held_back"
            assert any("holding elections back" in r.getMessage() for r in caplog.records)
            await election.wait_until_leader(timeout=10)
            assert redis_server.uptime() >= 2  # ceil(1 s) + 1: more than 1 s has passed
            assert not election.statistics().restart_protection


async def test_restart_protection_off_grants_at_once_on_a_brand_new_server(
    redis_server: Any, name: str
) -> None:
    """``restart_protection=False``: a young server grants a free lock at once."""
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", restart_protection=False)
    async with LeaderElection(redis_server.url, config) as election:
        assert election.is_leader
        assert redis_server.uptime() < 6  # the protection would have held it back
        assert not election.statistics().restart_protection


@pytest.mark.parametrize(
    "rules",
    [
        ("+@all", "-evalsha", "-eval"),  # cannot run scripts at all
        ("+@all", "-set"),  # the script itself is refused a command
    ],
    ids=["no-scripts", "no-set-in-script"],
)
async def test_missing_acl_permission_is_refused_at_start(
    shared_redis: Any, name: str, rules: tuple[str, ...]
) -> None:
    with shared_redis.sync_client() as sync:
        sync.execute_command("ACL", "SETUSER", f"app-{name}", "on", ">pw", "~*", "&*", *rules)
    config = fast_config(name)
    url = f"redis://app-{name}:pw@{shared_redis.host}:{shared_redis.port}/0"
    for _ in range(5):  # a start that hung on its way out once did so about one time in three
        async with asyncio.timeout(5):
            with pytest.raises(StoreAuthenticationError, match="permission"):
                await LeaderElection(url, config).start()


def test_stop_in_a_cancelled_scope_releases_before_the_loop_ends(
    shared_redis: Any, name: str
) -> None:
    """Leaving a cancelled scope and then asyncio.run() must not strand the lease."""
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")

    lost: list[str] = []

    async def main() -> None:
        # What a Starlette lifespan or an anyio task group does on shutdown.
        with anyio.CancelScope() as scope:
            async with LeaderElection(shared_redis.url, config) as election:
                election.on_lose_leadership(lambda: lost.append("lose"))
                assert election.is_leader
                scope.cancel()
                await anyio.sleep(1)  # cancelled at once; asyncio.run() ends right after

    asyncio.run(main())
    gc.collect()  # an unclosed client connection would warn now, in this test (an error here)
    with shared_redis.sync_client() as sync:
        assert sync.exists(config.lock_key) == 0
    assert lost == ["lose"]


async def test_cancelled_start_leaves_no_lock_behind(shared_redis: Any, name: str) -> None:
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    proxy_free = LeaderElection(shared_redis.url, config)
    task = asyncio.ensure_future(proxy_free.start())
    await asyncio.sleep(0)  # the first attempt is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with shared_redis.sync_client() as sync:
        assert sync.exists(config.lock_key) == 0
    async with LeaderElection(shared_redis.url, config) as other:
        assert other.is_leader  # at once, not after the 5 s lease


async def test_release_is_seen_after_the_subscription_was_killed(
    shared_redis: Any, name: str
) -> None:
    """A retrying client would reconnect its subscription silently and miss releases."""
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    client = shared_redis.client()  # caller-owned, with redis-py's default retries
    try:
        async with (
            LeaderElection(shared_redis.url, config) as a,
            LeaderElection(client, config) as b,
        ):
            assert a.is_leader
            with shared_redis.sync_client() as sync:

                def subscribers() -> int:
                    return int(sync.pubsub_numsub(config.release_channel)[0][1])

                await eventually(lambda: subscribers() == 2)  # a's client and b's client
                assert sync.client_kill_filter(_type="pubsub") == 2
                await eventually(lambda: subscribers() == 2)  # both noticed and resubscribed
            await a.stop()
            await b.wait_until_leader(timeout=2.0)  # a 5 s lease: only the release is fast
    finally:
        await client.aclose()
