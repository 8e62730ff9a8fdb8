"""URL forms (``_connect``): what each parses to, and the clear error of one that cannot work."""

from __future__ import annotations

import pytest

from leaderelection import ConfigurationError
from leaderelection._connect import SentinelTarget, UrlClient, check_url, redact


def test_a_sentinel_url_names_the_sentinels_the_service_the_db_and_both_credentials() -> None:
    target = SentinelTarget(
        "redis+sentinel://app:data-pw@10.0.0.5:26379,[::1]:26380/billing/2"
        "?sentinel_username=watch&sentinel_password=s-pw&socket_timeout=1.5"
    )
    assert target.sentinels == [("10.0.0.5", 26379), ("::1", 26380)]
    assert target.service == "billing"
    assert target.options["db"] == 2
    assert (target.options["username"], target.options["password"]) == ("app", "data-pw")
    assert target.options["socket_timeout"] == 1.5
    assert target.sentinel_options == {
        "socket_timeout": 1.5,
        "username": "watch",
        "password": "s-pw",
    }
    assert target.describe() == "10.0.0.5:26379, ::1:26380"


def test_rediss_sentinel_turns_tls_on_for_the_data_nodes_and_the_sentinels() -> None:
    target = SentinelTarget("rediss+sentinel://h:26379/mymaster?ssl_cert_reqs=none")
    assert target.options["ssl"] is True
    assert target.sentinel_options["ssl_cert_reqs"] == "none"
    assert target.options["db"] == 0


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://h:26379", "name the service"),
        ("redis+sentinel://h:26379/", "name the service"),
        ("redis+sentinel://h/mymaster", "each sentinel needs host:port"),
        ("redis+sentinel://h:1,h2:notaport/mymaster", "each sentinel needs host:port"),
        ("redis+sentinel://h:26379/svc/0/extra", "name the service"),
        ("http://user:secret@h:6379", "unknown scheme 'http'"),
        ("localhost:6379", "no scheme"),
        ("redis://h:port/0", "Port could not be cast"),
    ],
)
def test_a_url_that_cannot_work_is_refused_at_once_saying_why(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match="cannot use Redis URL") as refused:
        check_url(url)
    assert why in str(refused.value)
    assert "redis+sentinel://" in str(refused.value)  # the accepted forms are shown
    assert "secret" not in str(refused.value)
    with pytest.raises(ConfigurationError):
        UrlClient(url, 1.0)


def test_redact_hides_the_password_of_every_form() -> None:
    assert redact("redis://u:pw@h:6379/0") == "redis://u:***@h:6379/0"
    assert redact("redis+sentinel://:pw@a:1,b:2/svc") == "redis+sentinel://:***@a:1,b:2/svc"
    assert redact("redis://h:6379") == "redis://h:6379"


async def test_a_url_client_connects_on_first_use_only_and_says_what_it_became() -> None:
    client = UrlClient("redis://127.0.0.1:1/0", 0.2)
    assert client.kind == "unknown" and client.resolved is None
    sentinel = UrlClient("redis+sentinel://127.0.0.1:1/mymaster", 0.2)
    assert sentinel.kind == "sentinel"
    await client.aclose()
    await sentinel.aclose()


async def test_a_sentinel_url_may_set_the_options_the_library_defaults() -> None:
    url = "redis+sentinel://h:1/svc?socket_connect_timeout=2&health_check_interval=5"
    check_url(url)
    client = UrlClient(url, 0.5)
    assert client.kind == "sentinel"
    await client.aclose()


async def test_a_closed_url_client_refuses_to_connect_as_a_connection_error() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = UrlClient("redis://127.0.0.1:1/0", 0.2)
    await client.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.resolve()
