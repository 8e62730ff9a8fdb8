"""Lock tokens and instance ids come from ``secrets``: a term's token is unguessable."""

from __future__ import annotations

import re
import secrets
from types import SimpleNamespace
from typing import Any

import pytest

import leaderelection._campaign as campaign_module
import leaderelection._config as config_module
from leaderelection import LeaderElection, LeaderInfo
from tests.support import fast_config

from .conftest import messages_until_sentinel, subscribe_confirmed

TERMS = 4


async def test_lock_token_is_the_one_secrets_made_128_bits_and_never_published(
    shared_redis: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[tuple[int | None, str]] = []

    def recording_token_hex(nbytes: int | None = None) -> str:
        value = secrets.token_hex(nbytes)
        made.append((nbytes, value))
        return value

    # The modules' only use of randomness for tokens (the campaign's) and ids (the config's);
    # anything else they took from `secrets` would fail here with an AttributeError.
    recording = SimpleNamespace(token_hex=recording_token_hex)
    monkeypatch.setattr(campaign_module, "secrets", recording)
    monkeypatch.setattr(config_module, "secrets", recording)
    config = fast_config(name)
    watcher = shared_redis.client()
    pubsub = await subscribe_confirmed(watcher, config.release_channel)
    lock_values: list[str] = []
    infos: list[bytes] = []
    try:
        async with (
            LeaderElection(shared_redis.url, config) as a,
            LeaderElection(shared_redis.url, config) as b,
        ):
            # Instance ids: hostname-pid-<secrets.token_hex(4)>.
            suffixes = [value for nbytes, value in made if nbytes == 4]
            assert [a.instance_id.rsplit("-", 1)[1], b.instance_id.rsplit("-", 1)[1]] == suffixes
            leader, follower = (a, b) if a.is_leader else (b, a)
            assert leader.is_leader
            for _ in range(TERMS):
                lock_values.append((await watcher.get(config.lock_key)).decode())
                infos.append(await watcher.get(config.info_key))
                await leader.resign()
                await follower.wait_until_leader(timeout=5)
                leader, follower = follower, leader
            lock_values.append((await watcher.get(config.lock_key)).decode())
            infos.append(await watcher.get(config.info_key))
        announced = await messages_until_sentinel(watcher, pubsub, config.release_channel)
    finally:
        await pubsub.aclose()
        await watcher.aclose()

    term_tokens = [value for nbytes, value in made if nbytes == 16]
    # Every term's lock holds a token that secrets.token_hex(16) made: 128 bits, 32 hex digits.
    assert all(value in term_tokens for value in lock_values), (lock_values, term_tokens)
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in term_tokens)
    # One fresh token per attempt: no two attempts, let alone two terms, share one.
    assert len(set(term_tokens)) == len(term_tokens)
    assert len(set(lock_values)) == TERMS + 1
    # The token is only ever in the lock key: not in the leader-info record that anyone with
    # read access sees, not in the release announcements, and not derived from the instance id.
    for value, info in zip(lock_values, infos, strict=True):
        assert value.encode() not in info
        assert all(value.encode() not in message for message in announced)
        assert value not in (a.instance_id, b.instance_id)
    # Each release announced the term's fencing token and the releasing instance's id; each new
    # term, the public leader record. Nothing else.
    # "R <fencing token> <instance id> <subscribers> <highest priority waiting>"
    released = [m.decode().split(" ")[:3] for m in announced if m.startswith(b"R ")]
    started = [m.decode()[2:] for m in announced if m.startswith(b"A ")]
    assert len(released) == len(started) == TERMS + 1
    assert len(announced) == 2 * (TERMS + 1)
    assert {instance for _, _, instance in released} == {a.instance_id, b.instance_id}
    assert [int(token) for _, token, _ in released] == sorted(
        LeaderInfo.model_validate_json(info).fencing_token for info in started
    )
