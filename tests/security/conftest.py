"""Fixtures and helpers of the security tests: ACL rules, test certificates, log searches."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection
from tests.redis_harness import RedisServer, TlsFiles
from tests.support import fast_config

HERE = Path(__file__).resolve().parent

# The commands an election's Redis user needs, in the order docs/security.md explains them.
ACL_COMMANDS = (
    "evalsha",
    "eval",
    "get",
    "set",
    "pttl",
    "pexpire",
    "del",
    "incr",
    "info",
    "time",
    "publish",
    "pubsub",
    "subscribe",
    "unsubscribe",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.redis)


def glob_escape(text: str) -> str:
    """Escape the characters that Redis ACL patterns (glob-style) treat as special."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def acl_rules(config: ElectionConfig, commands: tuple[str, ...] = ACL_COMMANDS) -> list[str]:
    """The documented minimal ACL rules of one election (without user, state and password)."""
    return [
        "resetkeys",
        f"~{glob_escape(config.key_prefix)}:{{{glob_escape(config.name)}}}:*",
        "resetchannels",
        f"&{glob_escape(config.release_channel)}",
        "-@all",
        *(f"+{command}" for command in commands),
    ]


def set_acl_user(server: RedisServer, user: str, password: str, rules: list[str]) -> str:
    """Create (or rebuild) ACL user ``user`` with ``rules``; returns its ``redis://`` URL."""
    with server.sync_client() as admin:
        admin.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
    return f"redis://{user}:{password}@{server.host}:{server.port}/0"


def acl_denials(server: RedisServer, user: str) -> list[str]:
    """What ``ACL LOG`` recorded as refused to ``user`` (command or key or channel names)."""
    with server.sync_client(decode_responses=True) as admin:
        entries = admin.execute_command("ACL", "LOG", "128")
    denied = []
    for entry in entries:
        record = (
            entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
        )
        if record["username"] == user:
            denied.append(f"{record['reason']}:{record['object']}")
    return denied


def logged(caplog: pytest.LogCaptureFixture, *fragments: str) -> bool:
    """Whether one ``leaderelection`` record's message contains every fragment."""
    return any(
        r.name == "leaderelection" and all(f in r.getMessage() for f in fragments)
        for r in caplog.records
    )


def roomy_config(name: str) -> ElectionConfig:
    """Timings with room for slow connections (a TLS handshake, through a proxy, on a busy
    machine): every Redis call gets 0.6 s instead of 0.1 s. Needs a server up for 4 s."""
    return fast_config(name, lock_ttl="2s", heartbeat_interval="600ms", retry_interval="300ms")


async def run_election_pair(url: str, caller_client: Any, name: str) -> None:
    """Two candidates, one on the URL and one on a caller's client: leadership, renewals, a
    handoff through the release channel, leader-info reads, stop."""
    config = roomy_config(name)
    async with LeaderElection(url, config) as a, LeaderElection(caller_client, config) as b:
        leader, follower = (a, b) if a.is_leader else (b, a)
        assert leader.is_leader
        assert await follower.get_leader_id() == leader.instance_id
        await leader.resign()
        await follower.wait_until_leader(timeout=5)
        assert await leader.get_leader_id() == follower.instance_id
        assert a.statistics().store_errors == 0
        assert b.statistics().store_errors == 0


# A password that must be quoted in a URL.
PASSWORD = "s3cr3t:with/odd@chars%"


@pytest.fixture(scope="session")
def password_redis(redis_server_bin: str) -> Iterator[RedisServer]:
    """One password-protected server for the session (``requirepass``), up long enough that
    restart protection lets a 2 s lease be granted. Tests on it use unique election names."""
    with RedisServer(binary=redis_server_bin, password=PASSWORD) as server:  # started, then closed
        server.wait_uptime_above(3, timeout=30)
        yield server


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="leaderelection")


# -- certificates ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    """A throwaway certificate authority (``trustme.CA``) that the test clients trust."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def other_ca() -> Any:
    """A second authority that no test client trusts."""
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tls_ca: Any, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """PEM files of a server certificate for 127.0.0.1 and localhost, and of its CA."""
    directory = tmp_path_factory.mktemp("tls")
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(
        cert_file=str(directory / "server.crt"),
        key_file=str(directory / "server.key"),
        ca_file=str(directory / "ca.crt"),
    )
    cert.cert_chain_pems[0].write_to_path(files.cert_file)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(files.cert_file, append=True)
    cert.private_key_pem.write_to_path(files.key_file)
    tls_ca.cert_pem.write_to_path(files.ca_file)
    return files


def server_context(ca: Any, *hosts: str) -> ssl.SSLContext:
    """A server-side TLS context presenting a certificate for ``hosts`` issued by ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(context)
    return context


# -- pub/sub --------------------------------------------------------------------------------


async def subscribe_confirmed(client: Any, *channels: str) -> Any:
    """A pub/sub of ``client`` whose subscription to ``channels`` the server has confirmed, so
    that everything published from now on reaches it."""
    pubsub = client.pubsub()
    await pubsub.subscribe(*channels)
    confirmed = 0
    async with asyncio.timeout(5):
        while confirmed < len(channels):
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                confirmed += 1
    return pubsub


async def messages_until_sentinel(client: Any, pubsub: Any, channel: str) -> list[bytes]:
    """Publish a sentinel on ``channel`` and return what ``pubsub`` received before it.

    Pub/sub delivery is in order, so once the sentinel arrives nothing published earlier can
    still be on its way: this bounds the wait by an event, not by a sleep.
    """
    sentinel = f"sentinel-{uuid.uuid4().hex}".encode()
    await client.publish(channel, sentinel)
    received: list[bytes] = []
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            data = message["data"]
            data = data if isinstance(data, bytes) else str(data).encode()
            if data == sentinel:
                return received
            received.append(data)
