"""The Redis store's scripts, on fakeredis (Lua) and on a real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from leaderelection import (
    CorruptLeaderInfoError,
    ElectionConfig,
    LeaderInfo,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from leaderelection._store import Acquired, Held, HeldBack, RedisStore

TTL = 5000


def _prefix(instance: str = "me") -> str:
    record = {
        "instance_id": instance,
        "hostname": "host",
        "pid": 1,
        "started_at": "2026-01-01T00:00:00+00:00",
        "last_heartbeat": "2026-01-01T00:00:00+00:00",
        "election": "e",
    }
    return json.dumps(record)[:-1]


@pytest.fixture(params=["fakeredis", "redis", "redis-decoded"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "fakeredis":
        c: Any = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    else:
        server = request.getfixturevalue("shared_redis")
        c = server.client(decode_responses=request.param == "redis-decoded")
    yield c
    await c.aclose()


@pytest.fixture
def config() -> ElectionConfig:
    return ElectionConfig(name=f"store-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(client: Any, config: ElectionConfig) -> RedisStore:
    return make_store(client, config)


def make_store(client: Any, config: ElectionConfig) -> RedisStore:
    return RedisStore.for_config(client, config)


async def acquire(
    store: RedisStore, token: str, unknown: tuple[str, ...] = (), min_uptime_s: int = 3
) -> Any:
    """Acquire with restart protection on (the shared server is up long enough for it)."""
    return await store.acquire(
        token, _prefix(token), TTL, unknown_tokens=unknown, min_uptime_s=min_uptime_s, timeout=2.0
    )


async def test_acquire_free_lock_sets_lock_info_and_fence(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    before_us = time.time_ns() // 1000
    result = await acquire(store, "tok-a")
    assert isinstance(result, Acquired)
    # Seeded from server time in microseconds: within a minute of ours.
    assert abs(result.fencing_token - before_us) < 60_000_000
    assert _s(await client.get(config.lock_key)) == "tok-a"
    assert 0 < await client.pttl(config.lock_key) <= TTL
    assert 0 < await client.pttl(config.info_key) <= TTL
    assert await client.pttl(config.fence_key) == -1  # the fence never expires
    info = await store.read_info(timeout=2.0)
    assert isinstance(info, LeaderInfo)
    assert info.instance_id == "tok-a"
    assert info.fencing_token == result.fencing_token


async def test_held_lock_reports_holder_and_remaining_ttl(store: RedisStore) -> None:
    assert isinstance(await acquire(store, "tok-a"), Acquired)
    held = await acquire(store, "tok-b")
    assert isinstance(held, Held)
    assert held.holder_id == "tok-a"
    assert 0 < held.remaining_ms <= TTL


async def test_renew_only_with_our_token(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    acquired = await acquire(store, "tok-a")
    assert isinstance(acquired, Acquired)
    await client.pexpire(config.lock_key, 1000)
    record = _prefix("tok-a") + f',"fencing_token":{acquired.fencing_token}}}'
    record = record.replace("2026-01-01T00:00:00", "2026-01-01T00:00:09", 1)
    assert await store.renew("tok-b", record, TTL, timeout=2.0) is False
    assert await client.pttl(config.lock_key) <= 1000
    assert await store.renew("tok-a", record, TTL, timeout=2.0) is True
    assert await client.pttl(config.lock_key) > 1000
    info = await store.read_info(timeout=2.0)
    assert info is not None
    assert info.started_at.second == 9


async def test_release_only_with_our_token_and_announces_it(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    result = await acquire(store, "tok-a")
    assert isinstance(result, Acquired)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(config.release_channel)
    try:
        assert await store.release(("tok-b",), "someone", timeout=2.0) is False
        assert await client.exists(config.lock_key) == 1
        assert await store.release(("tok-a",), "me", timeout=2.0) is True
        assert await client.exists(config.lock_key, config.info_key) == 0
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await pubsub.get_message(timeout=1.0)
        assert _s(message["channel"]) == config.release_channel
        # The term's fencing token and instance, then how many listen (the test's pubsub: 1)
        # and the highest priority waiting (none asked while the lock was held: "").
        assert _s(message["data"]) == f"R {result.fencing_token} me 1 "
    finally:
        await pubsub.aclose()
    assert await store.read_info(timeout=2.0) is None


async def test_fencing_tokens_strictly_increase(store: RedisStore) -> None:
    tokens = []
    for i in range(20):
        result = await acquire(store, f"t{i}")
        assert isinstance(result, Acquired)
        tokens.append(result.fencing_token)
        assert await store.release((f"t{i}",), "x", timeout=2.0)
    assert all(a < b for a, b in itertools.pairwise(tokens))


@pytest.mark.parametrize("seed", ["1999999999999999", "9007199254740993", "123456789012345678"])
async def test_fence_beyond_double_precision_stays_exact(
    store: RedisStore, client: Any, config: ElectionConfig, seed: str
) -> None:
    await client.set(config.fence_key, seed)
    result = await acquire(store, "tok")
    assert isinstance(result, Acquired)
    assert result.fencing_token == int(seed) + 1
    info = await store.read_info(timeout=2.0)
    assert info is not None
    assert info.fencing_token == int(seed) + 1


async def test_fence_reseeded_from_server_time_after_data_loss(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    first = await acquire(store, "t1")
    assert isinstance(first, Acquired)
    await client.delete(config.lock_key, config.info_key, config.fence_key)  # data lost
    second = await store.acquire(
        "t2", _prefix("t2"), TTL, unknown_tokens=(), min_uptime_s=0, timeout=2.0
    )
    assert isinstance(second, Acquired)
    assert second.fencing_token > first.fencing_token


async def test_a_lock_holding_one_of_our_unknown_tokens_is_taken_over(store: RedisStore) -> None:
    first = await acquire(store, "lost-reply")
    assert isinstance(first, Acquired)
    assert isinstance(await acquire(store, "other"), Held)
    assert isinstance(await acquire(store, "retry", unknown=("older", "lost-rep")), Held)
    second = await acquire(store, "retry", unknown=("older", "lost-reply", "newer"))
    assert isinstance(second, Acquired)
    assert second.fencing_token > first.fencing_token


async def test_release_with_several_tokens_releases_the_one_held(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    assert isinstance(await acquire(store, "b"), Acquired)
    assert await store.release(("a", "bb", "c"), "me", timeout=2.0) is False
    assert await store.release(("a", "b", "c"), "me", timeout=2.0) is True
    assert await client.exists(config.lock_key) == 0


async def test_lock_key_of_another_type_is_a_typed_error(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    await client.hset(config.lock_key, "field", "value")
    with pytest.raises(WrongKeyTypeError, match="another type"):
        await acquire(store, "tok")
    assert await client.hget(config.lock_key, "field") in (b"value", "value")  # nothing lost


async def test_fence_key_not_an_integer_is_a_typed_error(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    await client.set(config.fence_key, "not-a-number")
    with pytest.raises(WrongKeyTypeError, match="fence"):
        await acquire(store, "tok")


async def test_corrupt_info_is_reported_not_crashed_on(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    assert isinstance(await acquire(store, "tok-a"), Acquired)
    await client.set(config.info_key, "{not json", px=TTL)
    with pytest.raises(CorruptLeaderInfoError, match="not valid LeaderInfo"):
        await store.read_info(timeout=2.0)
    held = await acquire(store, "tok-b")
    assert isinstance(held, Held)
    assert held.holder_id is None


async def test_scripts_reload_after_script_flush(store: RedisStore, client: Any) -> None:
    assert isinstance(await acquire(store, "a"), Acquired)
    await client.script_flush()
    assert await store.release(("a",), "x", timeout=2.0) is True
    assert isinstance(await acquire(store, "b"), Acquired)


@pytest.mark.redis
async def test_restart_protection_holds_back_a_fresh_server(redis_server: Any) -> None:
    client = redis_server.client()
    try:
        store = make_store(client, ElectionConfig(name="fresh"))
        held_back = await acquire(store, "tok", min_uptime_s=12)
        assert isinstance(held_back, HeldBack)
        assert held_back.uptime_s < 12
        assert held_back.wait_ms == (12 - held_back.uptime_s) * 1000
        # A fence present is no proof: it may come from a snapshot older than the last term.
        await client.set(ElectionConfig(name="fresh").fence_key, "5")
        assert isinstance(await acquire(store, "tok", min_uptime_s=12), HeldBack)
        # A lock held by another is reported as held, whatever the uptime.
        await client.set(ElectionConfig(name="fresh").lock_key, "other", px=5000)
        assert isinstance(await acquire(store, "tok", min_uptime_s=12), Held)
        # Without restart protection (min_uptime_s=0) the free lock is granted.
        await client.delete(ElectionConfig(name="fresh").lock_key)
        acquired = await acquire(store, "tok", min_uptime_s=0)
        assert isinstance(acquired, Acquired)
        assert acquired.fencing_token > 5
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_paused_server_times_out_as_unavailable(redis_server: Any) -> None:
    client = redis_server.client()
    try:
        store = make_store(client, ElectionConfig(name="paused"))
        await client.ping()
        redis_server.pause()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"did not answer within 0\.2s"):
            await store.acquire("t", _prefix(), TTL, unknown_tokens=(), min_uptime_s=0, timeout=0.2)
        assert time.monotonic() - started < 2.0
    finally:
        redis_server.resume()
        await client.aclose()


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
