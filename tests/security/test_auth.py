"""AUTH: the election on a password-protected server and as an ACL user, and credentials kept out
of logs and error messages.

tests/integration/test_real_redis.py already shows that a wrong or missing password is refused at
start (also behind a retrying caller client) and that a missing ACL permission is; test_acl.py here
runs a whole election as a minimal ACL user, over a URL and a caller's client. These tests add the
successful paths with a password that needs quoting in a URL.
"""

from __future__ import annotations

import logging
import urllib.parse

import pytest
import redis.asyncio

from leaderelection import ConfigurationError, LeaderElection, StoreAuthenticationError
from tests.redis_harness import RedisServer, free_port
from tests.support import fast_config

from .conftest import PASSWORD, acl_rules, roomy_config, run_election_pair, set_acl_user


async def test_requirepass_via_url_and_via_a_caller_built_client(
    password_redis: RedisServer, name: str
) -> None:
    url = password_redis.url
    assert url == (
        f"redis://:{urllib.parse.quote(PASSWORD, safe='')}@"
        f"{password_redis.host}:{password_redis.port}/0"
    )
    caller_client = redis.asyncio.Redis(
        host=password_redis.host, port=password_redis.port, password=PASSWORD
    )
    try:
        await run_election_pair(url, caller_client, name)
    finally:
        await caller_client.aclose()


async def test_acl_user_and_password_in_the_url(shared_redis: RedisServer, name: str) -> None:
    user = f"app/{name}"  # quoted in the URL, like the password
    config = roomy_config(name)
    set_acl_user(shared_redis, user, PASSWORD, acl_rules(config))
    quote = urllib.parse.quote
    url = (
        f"redis://{quote(user, safe='')}:{quote(PASSWORD, safe='')}@"
        f"{shared_redis.host}:{shared_redis.port}/0"
    )
    caller_client = redis.asyncio.Redis(
        host=shared_redis.host, port=shared_redis.port, username=user, password=PASSWORD
    )
    try:
        await run_election_pair(url, caller_client, name)
    finally:
        await caller_client.aclose()


async def test_credentials_stay_out_of_logs_and_errors(
    password_redis: RedisServer, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leaderelection")
    secret = urllib.parse.quote(PASSWORD, safe="")
    wrong = "not-the-pw-" + name
    texts: list[str] = []
    # A wrong password: refused at start.
    bad_url = password_redis.url.replace(secret, wrong)
    with pytest.raises(StoreAuthenticationError) as refused:
        await LeaderElection(bad_url, fast_config(name)).start()
    texts += [str(refused.value), repr(refused.value.__cause__)]
    # A server that is down: start() returns, and the election logs its retries.
    down = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
    async with LeaderElection(down, fast_config(name)) as election:
        assert not election.is_leader
        texts.append(repr(election.statistics()))
    # A URL that cannot be used: the message shows it with the credentials blanked out.
    with pytest.raises(ConfigurationError, match=r"\*\*\*@") as unusable:
        await LeaderElection(f"redis://:{secret}@localhost:notaport/0", fast_config(name)).start()
    texts += [str(unusable.value), repr(unusable.value.__cause__)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(vars(record)) for record in caplog.records]
    assert any("Failed to acquire leadership" in text for text in texts)
    for text in texts:
        for credential in (PASSWORD, secret, wrong):
            assert credential not in text, text
