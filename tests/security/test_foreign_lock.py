"""Renew and release never touch a lock held by another token, on a real redis-server.

tests/store/test_store.py shows that renew and release with a wrong token return False, that the
lock then still exists and that its lease was not extended. These tests add what a holder needs
to trust: the lock's value, the lease of the lock *and* of the leader-info record, the record
itself and the fence are all left as they were, and nothing is announced on the release channel
(checked with a sentinel message, not by waiting for luck). Also for tokens that are near misses
of the holder's, for a lock that is gone, and for a whole election whose lock was taken over.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection
from leaderelection._store import Acquired, RedisStore
from tests.support import fast_config

from .conftest import messages_until_sentinel, subscribe_confirmed

THEIR_TTL_MS = 30_000
OUR_TTL_MS = 600_000  # a renewal that went through would push the lease far above THEIR_TTL_MS


def info_json(instance_id: str, election: str, fencing_token: int | None = None) -> str:
    record: dict[str, Any] = {
        "instance_id": instance_id,
        "hostname": "host",
        "pid": 1,
        "started_at": "2026-01-01T00:00:00+00:00",
        "last_heartbeat": "2026-01-01T00:00:00+00:00",
        "election": election,
    }
    if fencing_token is not None:
        record["fencing_token"] = fencing_token
    return json.dumps(record, separators=(",", ":"))


@pytest.fixture
async def client(shared_redis: Any) -> AsyncIterator[Any]:
    c = shared_redis.client()
    yield c
    await c.aclose()


async def snapshot(client: Any, config: ElectionConfig) -> dict[str, Any]:
    lock, info, fence = config.lock_key, config.info_key, config.fence_key
    return {
        "lock": await client.get(lock),
        "lock_pttl": await client.pttl(lock),
        "info": await client.get(info),
        "info_pttl": await client.pttl(info),
        "fence": await client.get(fence),
        "fence_pttl": await client.pttl(fence),
    }


def assert_untouched(before: dict[str, Any], after: dict[str, Any]) -> None:
    for field in ("lock", "info", "fence", "fence_pttl"):
        assert after[field] == before[field], field
    # A lease only runs down unless someone extends it: not extended means not longer.
    for field in ("lock_pttl", "info_pttl"):
        assert 0 < after[field] <= before[field], (field, before[field], after[field])


def near_misses(theirs: str) -> dict[str, tuple[str, ...]]:
    return {
        "unrelated": (secrets.token_hex(16),),
        "prefix": (theirs[:-1],),
        "extension": (theirs + "0",),
        "infix": (theirs[1:-1],),
        "upper-case": (theirs.upper(),),
        "all-at-once": (theirs[:-1], theirs + "0", theirs[1:-1], theirs.upper(), ""),
    }


@pytest.mark.parametrize(
    "relation", ["unrelated", "prefix", "extension", "infix", "upper-case", "all-at-once"]
)
async def test_renew_and_release_leave_another_holders_lock_alone(
    client: Any, name: str, relation: str
) -> None:
    config = ElectionConfig(name=name)
    theirs = secrets.token_hex(16)
    holder = RedisStore.for_config(client, config)
    acquired = await holder.acquire(
        theirs,
        info_json("them", name)[:-1],
        THEIR_TTL_MS,
        unknown_tokens=(),
        min_uptime_s=0,
        timeout=2.0,
    )
    assert isinstance(acquired, Acquired)
    ours = near_misses(theirs)[relation]
    us = RedisStore.for_config(client, config)
    pubsub = await subscribe_confirmed(client, config.release_channel)
    try:
        before = await snapshot(client, config)
        assert before["lock"] == theirs.encode()
        for token in ours:
            renewed = await us.renew(
                token, info_json("us", name, acquired.fencing_token), OUR_TTL_MS, timeout=2.0
            )
            assert renewed is False
        assert await us.release(ours, "us", timeout=2.0) is False
        after = await snapshot(client, config)
        published = await messages_until_sentinel(client, pubsub, config.release_channel)
    finally:
        await pubsub.aclose()
    assert_untouched(before, after)
    assert published == []
    info = await us.read_info(timeout=2.0)
    assert info is not None
    assert info.instance_id == "them"


async def test_renew_and_release_do_not_resurrect_a_lock_that_is_gone(
    client: Any, name: str
) -> None:
    config = ElectionConfig(name=name)
    us = RedisStore.for_config(client, config)
    token = secrets.token_hex(16)
    pubsub = await subscribe_confirmed(client, config.release_channel)
    try:
        assert await us.renew(token, info_json("us", name, 1), OUR_TTL_MS, timeout=2.0) is False
        assert await us.release((token,), "us", timeout=2.0) is False
        published = await messages_until_sentinel(client, pubsub, config.release_channel)
    finally:
        await pubsub.aclose()
    assert published == []
    assert await client.exists(config.lock_key, config.info_key, config.fence_key) == 0


class StoreSpy:
    """Records what the election's renew and release calls answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.renewed: list[bool] = []
        self.released: list[tuple[tuple[str, ...], bool]] = []
        renew, release = RedisStore.renew, RedisStore.release

        async def spy_renew(store: RedisStore, *args: Any, **kwargs: Any) -> bool:
            result = await renew(store, *args, **kwargs)
            self.renewed.append(result)
            return result

        async def spy_release(
            store: RedisStore, tokens: tuple[str, ...], *args: Any, **kwargs: Any
        ) -> bool:
            result = await release(store, tokens, *args, **kwargs)
            self.released.append((tokens, result))
            return result

        monkeypatch.setattr(RedisStore, "renew", spy_renew)
        monkeypatch.setattr(RedisStore, "release", spy_release)


async def take_over(client: Any, config: ElectionConfig, token: str) -> None:
    """Another holder's term, as if our lease had run out and they had won: lock and info."""
    fence = int(await client.get(config.fence_key))
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(config.lock_key, token, px=THEIR_TTL_MS)
        pipe.set(config.info_key, info_json("them", config.name, fence + 1), px=THEIR_TTL_MS)
        await pipe.execute()


async def test_an_election_whose_heartbeat_finds_the_lock_taken_over_leaves_it_alone(
    shared_redis: Any, client: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = StoreSpy(monkeypatch)
    config = fast_config(name)
    election = LeaderElection(shared_redis.url, config)
    pubsub = await subscribe_confirmed(client, config.release_channel)
    try:
        await election.start()
        assert election.is_leader
        await take_over(client, config, secrets.token_hex(16))
        before = await snapshot(client, config)
        await election.wait_until_follower(timeout=5)  # the next renewal found the lock not ours
        assert spy.renewed[-1] is False
        assert await election.get_leader_id() == "them"
        await election.stop()
        after = await snapshot(client, config)
        published = await messages_until_sentinel(client, pubsub, config.release_channel)
    finally:
        await election.stop()
        await pubsub.aclose()
    assert_untouched(before, after)
    assert releases(published) == []  # only the announcement of its own term, at start
    assert election.statistics().terms_won == 1  # it never took the lock back


async def test_an_election_stopping_after_its_lock_was_taken_over_leaves_it_alone(
    shared_redis: Any, client: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() releases the token of the term it ends; the script finds another token there."""
    spy = StoreSpy(monkeypatch)
    # A heartbeat far away, so that stop() comes before any renewal notices the takeover.
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="2s", retry_interval="1s")
    election = LeaderElection(shared_redis.url, config)
    pubsub = await subscribe_confirmed(client, config.release_channel)
    try:
        await election.start()
        assert election.is_leader
        ours = (await client.get(config.lock_key)).decode()
        await take_over(client, config, secrets.token_hex(16))
        before = await snapshot(client, config)
        await election.stop()
        after = await snapshot(client, config)
        published = await messages_until_sentinel(client, pubsub, config.release_channel)
    finally:
        await election.stop()
        await pubsub.aclose()
    assert spy.released == [((ours,), False)]
    assert_untouched(before, after)
    assert releases(published) == []  # only the announcement of its own term, at start


async def test_acquire_leaves_a_lock_holding_an_empty_value_alone(client: Any, name: str) -> None:
    config = ElectionConfig(name=name)
    await client.set(config.lock_key, "", px=THEIR_TTL_MS)
    us = RedisStore.for_config(client, config)
    result = await us.acquire(
        secrets.token_hex(16),
        info_json("us", name)[:-1],
        OUR_TTL_MS,
        unknown_tokens=(),
        min_uptime_s=0,
        timeout=2.0,
    )
    assert not isinstance(result, Acquired)
    assert await client.get(config.lock_key) == b""


def releases(published: list[bytes]) -> list[bytes]:
    """The release announcements ("R <fencing token> <instance id>") among ``published``; the
    others announce new terms ("A <leader info>")."""
    assert all(m.startswith((b"R ", b"A ")) for m in published), published
    return [m for m in published if m.startswith(b"R ")]
