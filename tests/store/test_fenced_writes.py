"""The fenced-write scripts of the Redis store (and their in-memory twin): the guard that lets a
term's writes through only while the fence key holds its token and the lock its lease.

Run on fakeredis (Lua), on a real redis-server (plain and decoding clients) and, for the rules
kept in Python, on the MemoryStore. ``nox -s compat`` runs them on Redis 6.2, 7 and Valkey 8.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest

from leaderelection import (
    ElectionConfig,
    ReplicasMissingError,
    StoreError,
    StoreUnavailableError,
    WrongKeyTypeError,
)
from leaderelection._store import Acquired, FencedWrite, RedisStore
from leaderelection.testing import FakeClock, MemoryServer

TTL = 5000


def _prefix(instance: str) -> str:
    record = {
        "instance_id": instance,
        "hostname": "host",
        "pid": 1,
        "started_at": "2026-01-01T00:00:00+00:00",
        "last_heartbeat": "2026-01-01T00:00:00+00:00",
        "election": "e",
    }
    return json.dumps(record)[:-1]


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


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
    return ElectionConfig(name=f"fenced-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def store(client: Any, config: ElectionConfig) -> RedisStore:
    return RedisStore.for_config(client, config)


def key(config: ElectionConfig, suffix: str) -> str:
    """An application key in the election's slot."""
    return f"app:{{{config.name}}}:{suffix}"


async def lead(store: RedisStore, token: str) -> int:
    """A term of ``token`` (restart protection off: fakeredis has no INFO); its fencing token."""
    result = await store.acquire(
        token, _prefix(token), TTL, unknown_tokens=(), min_uptime_s=0, timeout=2.0
    )
    assert isinstance(result, Acquired)
    return result.fencing_token


async def write(store: RedisStore, w: FencedWrite, token: str, fencing_token: int) -> Any:
    return await store.fenced_write(w, token=token, fencing_token=fencing_token, timeout=2.0)


async def test_each_kind_of_write_goes_through_while_the_term_holds(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    k, h, gone = key(config, "k"), key(config, "h"), key(config, "gone")
    await client.set(gone, "x")
    assert await write(store, FencedWrite("set", (k,), ("v1", "")), "term-a", fencing) == (
        True,
        None,
    )
    assert _s(await client.get(k)) == "v1"
    assert await client.pttl(k) == -1
    assert (await write(store, FencedWrite("set", (k,), ("v2", 4000)), "term-a", fencing))[0]
    assert _s(await client.get(k)) == "v2"
    assert 0 < await client.pttl(k) <= 4000
    hset = FencedWrite("hset", (h,), ("a", 1, "b", "two"))
    assert (await write(store, hset, "term-a", fencing))[0]
    assert {_s(f): _s(v) for f, v in (await client.hgetall(h)).items()} == {"a": "1", "b": "two"}
    assert (
        await write(store, FencedWrite("delete", (gone, key(config, "none"))), "term-a", fencing)
    )[0]
    assert await client.exists(gone) == 0


async def test_eval_sees_only_the_callers_keys_and_args_and_returns_its_value(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    k = key(config, "n")
    script = "redis.call('SET', KEYS[1], ARGV[1])\nreturn {#KEYS, #ARGV, KEYS[1], ARGV[2]}"
    written, value = await write(
        store, FencedWrite("eval", (k,), ("7", "second"), script), "term-a", fencing
    )
    assert written is True
    assert [_s(v) for v in value] == [1, 2, k, "second"]
    assert _s(await client.get(k)) == "7"
    # No keys and no arguments: the guard's own are cut off all the same.
    none = FencedWrite("eval", (), (), "return {#KEYS, #ARGV}")
    assert await write(store, none, "term-a", fencing) == (True, [0, 0])
    # Nothing returned: written, with no value.
    assert await write(store, FencedWrite("eval", (), (), "local x = 1"), "term-a", fencing) == (
        True,
        None,
    )


async def test_every_write_is_refused_once_a_newer_term_exists(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    old = await lead(store, "term-a")
    k = key(config, "k")
    assert (await write(store, FencedWrite("set", (k,), ("old", "")), "term-a", old))[0]
    assert await store.release(("term-a",), "a", timeout=2.0)
    new = await lead(store, "term-b")
    assert new > old
    assert (await write(store, FencedWrite("set", (k,), ("new", "")), "term-b", new))[0]
    for stale in (
        FencedWrite("set", (k,), ("stale", "")),
        FencedWrite("hset", (key(config, "h"),), ("f", "stale")),
        FencedWrite("delete", (k,)),
        FencedWrite("eval", (k,), (), "redis.call('SET', KEYS[1], 'stale') return 1"),
    ):
        assert await write(store, stale, "term-a", old) == (False, None), stale.kind
    assert _s(await client.get(k)) == "new"
    assert await client.exists(key(config, "h")) == 0


async def test_a_write_is_refused_when_the_lease_ended_before_any_successor(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    """Released (stop, resign) or expired: the fence key still holds the term's token, but the
    lock no longer holds the term, so the write is refused."""
    fencing = await lead(store, "term-a")
    k = key(config, "k")
    assert await store.release(("term-a",), "a", timeout=2.0)
    assert _s(await client.get(config.fence_key)) == str(fencing)
    assert await write(store, FencedWrite("set", (k,), ("late", "")), "term-a", fencing) == (
        False,
        None,
    )
    assert await client.exists(k) == 0


async def test_a_lock_taken_by_someone_else_refuses_even_with_the_fence_key_unchanged(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    await client.set(config.lock_key, "not-term-a", px=TTL)
    k = key(config, "k")
    assert (await write(store, FencedWrite("set", (k,), ("v", "")), "term-a", fencing))[0] is False


async def test_a_missing_fence_key_holds_no_term(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    """A server that lost its data (here only the fence key) refuses every term's writes."""
    fencing = await lead(store, "term-a")
    await client.delete(config.fence_key)
    k = key(config, "k")
    assert (await write(store, FencedWrite("set", (k,), ("v", "")), "term-a", fencing))[0] is False
    assert await client.exists(k) == 0


@pytest.mark.parametrize(
    ("stored", "mine"),
    [
        ("9007199254740993", 9007199254740992),  # equal as Lua numbers (doubles), not as text
        ("1796421715017084", 1796421715017085),
        ("123456789012345678", 123456789012345679),
    ],
)
async def test_tokens_are_compared_exactly_as_text(
    store: RedisStore, client: Any, config: ElectionConfig, stored: str, mine: int
) -> None:
    await lead(store, "term-a")
    await client.set(config.fence_key, stored)
    k = key(config, "k")
    assert (await write(store, FencedWrite("set", (k,), ("v", "")), "term-a", mine))[0] is False
    assert (await write(store, FencedWrite("set", (k,), ("v", "")), "term-a", int(stored)))[0]


async def test_an_error_in_an_eval_script_is_a_store_error(
    store: RedisStore, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    for script in ("return redis.error_reply('no such order')", "this is not Lua"):
        with pytest.raises(StoreError, match="writing through the fence"):
            await write(store, FencedWrite("eval", (), (), script), "term-a", fencing)


async def test_a_script_that_closes_its_function_early_still_runs_after_the_guard(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    # The guard is the wrapped script's first statement: code escaping the body function (an
    # unbalanced ``end ... do``) runs only once the guard passed, never for a stale term.
    old = await lead(store, "term-a")
    assert await store.release(("term-a",), "a", timeout=2.0)
    new = await lead(store, "term-b")
    k = key(config, "k")
    escaping = "return 1 end redis.call('SET', KEYS[1], 'escaped') do"
    assert await write(store, FencedWrite("eval", (k,), (), escaping), "term-a", old) == (
        False,
        None,
    )
    assert await client.exists(k) == 0
    assert (await write(store, FencedWrite("eval", (k,), (), escaping), "term-b", new))[0]


async def test_a_binary_key_is_named_with_escapes(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    k = f"app:{{{config.name}}}:".encode() + b"\xff"
    await client.set(k, "a string")
    with pytest.raises(WrongKeyTypeError, match=r"\\xff"):
        await write(store, FencedWrite("hset", (k,), ("f", "v")), "term-a", fencing)


async def test_a_key_of_another_type_is_named(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    k = key(config, "k")
    await client.set(k, "a string")
    with pytest.raises(WrongKeyTypeError, match=r"written through the fence \(app:\{"):
        await write(store, FencedWrite("hset", (k,), ("f", "v")), "term-a", fencing)


async def test_a_script_flushed_from_the_server_is_sent_again(
    store: RedisStore, client: Any, config: ElectionConfig
) -> None:
    fencing = await lead(store, "term-a")
    k = key(config, "k")
    eval_write = FencedWrite("eval", (k,), ("1",), "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await write(store, eval_write, "term-a", fencing) == (True, 1)
    await client.script_flush()
    assert await write(store, eval_write, "term-a", fencing) == (True, 2)
    assert (await write(store, FencedWrite("set", (k,), ("9", "")), "term-a", fencing))[0]


@pytest.mark.redis
async def test_min_replicas_reports_a_write_no_replica_acknowledged(
    shared_redis: Any, config: ElectionConfig
) -> None:
    """With min_replicas=1 on a server without replicas, the write happened on the primary,
    and the caller is told that no replica has it."""
    async with shared_redis.client() as client:
        store = RedisStore.for_config(client, config.model_copy(update={"min_replicas": 1}))
        plain = RedisStore.for_config(client, config)
        fencing = await lead(plain, "term-a")
        k = key(config, "k")
        with pytest.raises(ReplicasMissingError, match="applied on the primary, but only 0 of"):
            await store.fenced_write(
                FencedWrite("set", (k,), ("v", "")),
                token="term-a",
                fencing_token=fencing,
                timeout=0.3,
            )
        assert _s(await client.get(k)) == "v"
        # A refused write waits for no replica: nothing to acknowledge.
        assert await store.fenced_write(
            FencedWrite("set", (k,), ("w", "")), token="term-b", fencing_token=fencing, timeout=0.3
        ) == (False, None)


# ----------------------------------------------------------------------- the memory store


async def test_the_memory_store_keeps_the_same_rules() -> None:
    clock = FakeClock()
    server = MemoryServer(clock)
    config = ElectionConfig(name="memory")
    store = server.store(config)
    result = await store.acquire(
        "term-a", _prefix("a"), TTL, unknown_tokens=(), min_uptime_s=0, timeout=1.0
    )
    assert isinstance(result, Acquired)
    fencing = result.fencing_token

    async def mwrite(w: FencedWrite, token: str = "term-a", fencing_token: int = fencing) -> Any:
        return await store.fenced_write(w, token=token, fencing_token=fencing_token, timeout=1.0)

    assert await mwrite(FencedWrite("set", ("k",), ("v", 2000))) == (True, None)
    assert server.get("k") == "v"
    pickled = b"\x80\x04\x95"  # not UTF-8: kept, as Redis keeps it
    assert await mwrite(FencedWrite("set", ("b",), (pickled, ""))) == (True, None)
    assert server.get("b").encode(errors="surrogateescape") == pickled
    assert await mwrite(FencedWrite("hset", ("h",), ("a", 1, "b", 2.5))) == (True, None)
    assert server.hgetall("h") == {"a": "1", "b": "2.5"}
    with pytest.raises(WrongKeyTypeError):
        await mwrite(FencedWrite("hset", ("k",), ("a", 1)))
    with pytest.raises(StoreError, match="runs no Lua"):
        await mwrite(FencedWrite("eval", (), (), "return 1"))
    await clock.advance(2.0)
    assert server.get("k") is None  # px applied on the memory server's clock
    assert await mwrite(FencedWrite("set", ("k",), ("v", ""))) == (True, None)
    assert await mwrite(FencedWrite("set", ("k",), ("v", "")), fencing_token=fencing + 1) == (
        False,
        None,
    )
    assert await mwrite(FencedWrite("delete", ("k", "h"))) == (True, None)
    assert server.get("k") is None and server.hgetall("h") == {}
    server.restart()  # the fence counter is lost with the data
    assert await mwrite(FencedWrite("set", ("k",), ("v", ""))) == (False, None)
    server.unavailable = True
    with pytest.raises(StoreUnavailableError):
        await mwrite(FencedWrite("set", ("k",), ("v", "")))
