"""The minimal Redis ACL of docs/security.md: enough for a whole election, and nothing spare.

The user may run only the documented commands, on only the election's keys and release channel.
A whole election runs as that user (two candidates, renewals, a handoff through the release
channel, leader-info reads, stop) and the server's ACL LOG shows nothing refused that the
library needs. Then each command is taken away in turn, and the test shows where the election
needs it and what the user sees without it; the ACL LOG names the refused command each time.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from leaderelection import ElectionConfig, LeaderElection, StoreAuthenticationError
from leaderelection._store import RedisStore
from tests.support import eventually, fast_config

from .conftest import (
    ACL_COMMANDS,
    acl_denials,
    acl_rules,
    glob_escape,
    logged,
    set_acl_user,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
# redis-py sends CLIENT SETINFO on every new connection and ignores a refusal; servers that know
# the command (Redis 7.2+, Valkey) or accept rules for unknown subcommands (6.2) log it.
IGNORED_BY_REDIS_PY = {"command:client", "command:client|setinfo"}


@pytest.fixture
async def admin(shared_redis: Any) -> AsyncIterator[Any]:
    client = shared_redis.client()
    yield client
    await client.aclose()


def test_the_documented_acl_is_the_one_tested() -> None:
    lines = [line for line in DOCS.read_text().splitlines() if line.startswith("ACL SETUSER")]
    assert lines, "docs/security.md shows no ACL SETUSER line"
    words = shlex.split(lines[0], posix=False)
    config = ElectionConfig(name="billing")
    assert words == [
        "ACL",
        "SETUSER",
        "election",
        "reset",
        "on",
        ">PASSWORD",
        *acl_rules(config),
    ]


def test_the_key_pattern_and_channel_escape_glob_characters() -> None:
    config = ElectionConfig(name="jobs[eu]*", key_prefix="app?")
    rules = acl_rules(config)
    assert rules[1] == r"~app\?:{jobs\[eu\]\*}:*"
    assert rules[3] == "&" + glob_escape(config.release_channel)


async def test_a_whole_election_runs_with_only_the_minimal_acl(
    shared_redis: Any, admin: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    # A 3 s lease and a follower that would wait for it: only the release wakes it sooner.
    config = fast_config(name, lock_ttl="3s", heartbeat_interval="200ms", retry_interval="1s")
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config))
    await admin.script_flush()  # so that the scripts are loaded with EVAL, as on a new server
    caller_client = redis.asyncio.Redis(
        host=shared_redis.host, port=shared_redis.port, username=user, password="pw"
    )
    try:
        async with (
            LeaderElection(url, config) as a,
            LeaderElection(caller_client, config) as b,
        ):
            assert a.is_leader
            assert not b.is_leader
            assert await b.get_leader_id() == a.instance_id
            await eventually(
                lambda: a.statistics().renewals >= 3 and b.statistics().leader_id is not None
            )
            numsub = await admin.pubsub_numsub(config.release_channel)
            assert numsub[0][1] == 2  # a's and b's clients listen for releases
            token = a.fencing_token
            assert token is not None
            resigned = time.monotonic()
            await a.resign()
            await b.wait_until_leader(timeout=1.5)  # well inside the 3 s lease
            assert time.monotonic() - resigned < 1.5
            assert b.fencing_token is not None
            assert b.fencing_token > token
            info = await a.get_leader_info()
            assert info is not None
            assert info.instance_id == b.instance_id
        assert a.statistics().store_errors == 0
        assert b.statistics().store_errors == 0
    finally:
        await caller_client.aclose()
    assert await admin.exists(config.lock_key) == 0  # b released on stop
    assert set(acl_denials(shared_redis, user)) <= IGNORED_BY_REDIS_PY
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r.getMessage() for r in warnings if r.name == "leaderelection"]


def without(command: str) -> tuple[str, ...]:
    assert command in ACL_COMMANDS
    return tuple(c for c in ACL_COMMANDS if c != command)


# The commands every start() on a free or held lock runs; without one, start() says so.
@pytest.mark.parametrize(
    ("command", "setup"),
    [
        ("evalsha", "free"),
        ("eval", "free"),  # the script cache is empty: EVALSHA answers NOSCRIPT
        ("get", "free"),
        ("time", "free"),  # a new fencing token is at least the server time in microseconds
        ("set", "free"),
        ("pttl", "held"),  # a follower learns how long the lease has left
        ("incr", "fence-ahead"),  # a fence ahead of the server clock is incremented
    ],
)
async def test_without_a_command_that_start_needs_start_refuses_clearly(
    shared_redis: Any, admin: Any, name: str, command: str, setup: str
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without(command)))
    await admin.script_flush()
    if setup == "held":
        await admin.set(config.lock_key, "someone-else", px=10_000)
    elif setup == "fence-ahead":
        await admin.set(config.fence_key, "9" * 17)
    with pytest.raises(StoreAuthenticationError, match="permission") as refused:
        await LeaderElection(url, config).start()
    assert "Grant" in str(refused.value)
    assert f"command:{command}" in acl_denials(shared_redis, user)


async def test_without_info_start_names_the_restart_protection_switch_which_lifts_the_need(
    shared_redis: Any, admin: Any, name: str
) -> None:
    """Restart protection reads the server's uptime with INFO inside the acquire script; a
    server that refuses it (an ACL, a managed service's renamed command) gets a message that
    names the switch, and with the switch off the election runs without INFO."""
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without("info")))
    await admin.script_flush()
    with pytest.raises(StoreAuthenticationError, match="restart_protection=False") as refused:
        await LeaderElection(url, config).start()
    assert "INFO" in str(refused.value)
    assert "command:info" in acl_denials(shared_redis, user)
    unprotected = fast_config(name, restart_protection=False)
    async with LeaderElection(url, unprotected) as election:
        assert election.is_leader


async def test_without_pexpire_the_leader_loses_its_term_at_the_first_renewal(
    shared_redis: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without("pexpire")))
    async with LeaderElection(url, config) as election:
        assert election.is_leader  # start() cannot tell: renewals come later
        await election.wait_until_follower(timeout=5)
        assert logged(caplog, "Heartbeat failed", "permission")
        assert logged(caplog, "Failed to send heartbeat, lost leadership")
    assert "command:pexpire" in acl_denials(shared_redis, user)


async def test_without_del_the_release_fails_and_says_so(
    shared_redis: Any, admin: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without("del")))
    async with LeaderElection(url, config) as election:
        assert election.is_leader
    assert logged(caplog, "Could not release the lock", "permission")
    assert "command:del" in acl_denials(shared_redis, user)
    assert await admin.exists(config.lock_key) == 1  # left to expire with its lease


async def test_without_publish_the_lock_is_released_unannounced_and_a_warning_says_so(
    shared_redis: Any, admin: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without("publish")))
    async with LeaderElection(url, config) as election:
        assert election.is_leader  # announcing a new term is best effort
    assert logged(caplog, "refused to announce", "PUBLISH")
    assert "command:publish" in acl_denials(shared_redis, user)
    assert await admin.exists(config.lock_key) == 0  # released; followers see it at their next try


async def test_without_subscribe_followers_are_not_woken_and_a_warning_says_why(
    shared_redis: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config, without("subscribe")))
    async with LeaderElection(url, config) as election:
        assert election.is_leader
        await eventually(lambda: logged(caplog, "Release channel subscription refused"))
    assert "command:subscribe" in acl_denials(shared_redis, user)


async def test_without_the_channel_permission_subscribe_and_publish_are_refused(
    shared_redis: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    rules = [rule for rule in acl_rules(config) if not rule.startswith("&")]
    url = set_acl_user(shared_redis, user, "pw", rules)
    async with LeaderElection(url, config) as election:
        assert election.is_leader
        await eventually(lambda: logged(caplog, "Release channel subscription refused"))
    assert logged(caplog, "refused to announce", "channel")
    assert f"channel:{config.release_channel}" in acl_denials(shared_redis, user)


async def test_without_the_key_pattern_start_refuses_clearly(shared_redis: Any, name: str) -> None:
    user = f"election-{name}"
    config = fast_config(name)
    rules = ["~someone-else:*" if rule.startswith("~") else rule for rule in acl_rules(config)]
    url = set_acl_user(shared_redis, user, "pw", rules)
    with pytest.raises(StoreAuthenticationError, match="permission"):
        await LeaderElection(url, config).start()
    assert f"key:{config.lock_key}" in acl_denials(shared_redis, user)


async def test_unsubscribe_is_needed_when_one_client_serves_several_elections(
    shared_redis: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The shared release subscription unsubscribes from the channel of an election that
    stopped while others on the same client go on; a refusal breaks the subscription."""
    user = f"election-{name}"
    first, second = fast_config(name + "-1"), fast_config(name + "-2")
    rules = [
        "resetkeys",
        *(f"~{c.key_prefix}:{{{c.name}}}:*" for c in (first, second)),
        "resetchannels",
        *(f"&{c.release_channel}" for c in (first, second)),
        "-@all",
        *(f"+{command}" for command in without("unsubscribe")),
    ]
    set_acl_user(shared_redis, user, "pw", rules)
    client = redis.asyncio.Redis(
        host=shared_redis.host, port=shared_redis.port, username=user, password="pw"
    )
    try:
        hub = RedisStore.for_config(client, first).hub
        assert hub is not None
        async with LeaderElection(client, first) as one:
            async with LeaderElection(client, second) as two:
                assert one.is_leader
                assert two.is_leader
                # Both channels subscribed on the client's one connection, before two leaves.
                await eventually(
                    lambda: (
                        hub.is_active(first.release_channel)
                        and hub.is_active(second.release_channel)
                    )
                )
            await eventually(lambda: logged(caplog, "Release channel subscription refused"))
    finally:
        await client.aclose()
    assert "command:unsubscribe" in acl_denials(shared_redis, user)


async def test_ping_is_not_needed_even_when_the_first_attempt_times_out(
    shared_redis: Any, admin: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When the first attempt times out, start() probes the server with PING on a fresh
    connection, to tell a wrong password hidden by the client's retries from a slow server. A
    user without PING is still only retried, not refused: the probe's refusal is ignored."""
    user = f"election-{name}"
    config = fast_config(name)
    url = set_acl_user(shared_redis, user, "pw", acl_rules(config))
    # Writes (and scripts) wait while PING is still answered: a server that is slow to write.
    await admin.client_pause(5_000, all=False)
    election = LeaderElection(url, config)
    try:
        try:
            await election.start()
        finally:
            await admin.client_unpause()
        assert not election.is_leader
        assert logged(caplog, "Failed to acquire leadership", "did not answer")
        await election.wait_until_leader(timeout=5)
    finally:
        await election.stop()
    assert "command:ping" in acl_denials(shared_redis, user)  # the probe was sent, and refused


def documented_acl_setuser() -> Any:
    """The ``acl_setuser`` function that docs/security.md shows, defined from its code block."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    source = next(block for block in blocks if "def acl_setuser" in block)
    namespace: dict[str, Any] = {"print": lambda *args: None}
    exec(compile(source, str(DOCS), "exec"), namespace)
    return namespace["acl_setuser"]


async def test_the_documented_acl_function_confines_overridden_keys(
    shared_redis: Any, admin: Any, name: str
) -> None:
    """For keys from a lock_key override, with a name that needs escaping in ACL patterns."""
    acl_setuser = documented_acl_setuser()
    config = fast_config(name, lock_key=f"app:{name}[*]:leader")
    user = f"election-{name}"
    words = acl_setuser(config, user, "pw").split()
    assert words[:3] == ["ACL", "SETUSER", user]
    await admin.execute_command(*words)
    url = f"redis://{user}:pw@{shared_redis.host}:{shared_redis.port}/0"
    async with LeaderElection(url, config) as a, LeaderElection(url, config) as b:
        assert a.is_leader
        await a.resign()
        await b.wait_until_leader(timeout=5)
    # Unescaped, the pattern's "[*]" would match the key "app:<name>*:leader"; escaped, it does not.
    look_alike = fast_config(name, lock_key=f"app:{name}*:leader")
    with pytest.raises(StoreAuthenticationError, match="permission"):
        await LeaderElection(url, look_alike).start()
    assert set(acl_denials(shared_redis, user)) - IGNORED_BY_REDIS_PY == {
        f"key:{look_alike.lock_key}"
    }


async def test_fenced_writes_need_the_write_commands_on_the_applications_keys(
    shared_redis: Any, admin: Any, name: str
) -> None:
    """The minimal ACL plus the application's keys: fence.set works (the election needs SET
    anyway), fence.hset without HSET is refused with a message naming the fence and its key,
    and nothing is written."""
    user = f"fenced-{name}"
    config = fast_config(name)
    url = set_acl_user(
        shared_redis, user, "pw", [*acl_rules(config), f"~myapp:{{{glob_escape(name)}}}:*"]
    )
    progress = f"myapp:{{{name}}}:progress"
    async with LeaderElection(url, config) as election:
        await election.wait_until_leader(timeout=10)
        fence = election.fence()
        assert await fence.set(progress, "step 1") is True
        with pytest.raises(StoreAuthenticationError, match="may not write through the fence") as e:
            await fence.hset(progress + ":h", {"done": 1})
        assert progress + ":h" in str(e.value)
        with pytest.raises(StoreAuthenticationError, match="may not write through the fence"):
            await fence.eval("return redis.call('RPUSH', KEYS[1], 'x')", [progress + ":list"])
        assert election.is_leader
    assert await admin.get(progress) == b"step 1"
    assert await admin.exists(progress + ":h", progress + ":list") == 0
    assert {"command:hset", "command:rpush"} <= set(acl_denials(shared_redis, user))
