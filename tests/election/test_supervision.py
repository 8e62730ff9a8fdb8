"""Every task has an owner, and ``stop()`` is bounded from any caller.

Each test here reproduces a defect found by reading the runtime: the runner or the channel
listener dying silently, ``stop()`` hanging when awaited from a ``while_leader`` task or when user
code swallows cancellation, a release missed by a second election joining a subscribed channel,
and an async error handler accepted and never awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest

from leaderelection import ElectionConfig, LeaderElection, LeaderObserver
from tests.support import FAST, eventually

SLOW = {"lock_ttl": "30s", "heartbeat_interval": "5s", "retry_interval": "1s"}  # only a release


class ScriptedClient(fakeredis.FakeAsyncRedis):
    """A fakeredis client whose script calls a test can intercept.

    ``hook(kind, call)`` is awaited around every script call, with ``kind`` ``"acquire"``,
    ``"renew"`` or ``"release"`` and ``call`` the coroutine function sending it.
    """

    hook: Callable[[str, Callable[[], Any]], Any] | None = None

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:  # type: ignore[override]
        send = super().evalsha
        if self.hook is None:
            return await send(sha, numkeys, *args)
        return await self.hook(_kind(numkeys, args), lambda: send(sha, numkeys, *args))


def _kind(numkeys: int, args: tuple[Any, ...]) -> str:
    if numkeys == 4:
        return "acquire" if len(args) == 13 else "release"
    return "renew" if len(args) == 5 else "read"


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[[], Any]]:
    """Scripted clients of one fakeredis server, all closed at teardown."""
    server = fakeredis.FakeServer()
    clients: list[Any] = []

    def make() -> Any:
        client = ScriptedClient(server=server)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_an_unexpected_error_in_a_renewal_is_logged_and_the_election_goes_on(
    make_client: Callable[[], Any], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal that raises something unexpected (an odd reply, a client bug) is logged with
    its traceback; the election goes on campaigning and leads again."""
    client = make_client()
    raised = asyncio.Event()

    async def hook(kind: str, send: Callable[[], Any]) -> Any:
        if kind == "renew" and not raised.is_set():
            raised.set()
            raise RuntimeError("an odd reply")
        return await send()

    client.hook = hook
    config = ElectionConfig(name=name, **FAST)
    async with LeaderElection(client, config) as election:
        first = election.fencing_token
        assert first is not None
        async with asyncio.timeout(5):
            await raised.wait()
        renewals = election.statistics().renewals
        await eventually(lambda: election.statistics().renewals > renewals)
        assert election.statistics().state in ("leader", "follower")
        await election.wait_until_leader(timeout=5)
        assert election.is_leader
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert errors, "the unexpected error was not logged with its traceback"
    assert any("an odd reply" in str(r.exc_info[1]) for r in errors if r.exc_info)


async def test_an_unexpected_error_in_the_runner_is_logged_and_the_campaign_starts_over(
    make_client: Callable[[], Any], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An acquire that raises something unexpected escapes the runner's loop: the runner's
    supervisor logs it with its traceback and campaigns again after a backoff."""
    config = ElectionConfig(name=name, **FAST)
    a = LeaderElection(make_client(), config)
    client = make_client()
    raised = asyncio.Event()

    async def hook(kind: str, send: Callable[[], Any]) -> Any:
        if kind == "acquire" and a.is_leader and not raised.is_set():
            raised.set()  # B's second attempt, while A leads
            raise RuntimeError("a client bug")
        return await send()

    b = LeaderElection(client, config)
    async with a, b:
        assert a.is_leader
        client.hook = hook
        async with asyncio.timeout(5):
            await raised.wait()
        await a.stop()  # B must still be campaigning to take over
        await b.wait_until_leader(timeout=5)
        assert b.statistics().state == "leader"
    failures = [r for r in caplog.records if "runner failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "a client bug" in str(failures[0].exc_info[1])


async def test_a_raising_channel_listener_does_not_silence_the_channel(
    make_client: Callable[[], Any], name: str
) -> None:
    """One listener that raises is reported; the others still hear every release."""
    from leaderelection._store import RedisStore

    client = make_client()
    config = ElectionConfig(name=name, **SLOW)  # 30 s lease: only a release is this fast
    hub = RedisStore.for_config(client, config).hub
    assert hub is not None

    def broken(message: Any) -> None:
        raise RuntimeError("a listener bug")

    async with LeaderElection(client, config) as a, LeaderElection(client, config) as b:
        await hub.add(config.release_channel, broken)
        try:
            assert a.is_leader
            await a.resign()
            await b.wait_until_leader(timeout=3)
            # A's hold-back ends, A tries, finds B's lock and sleeps out B's 30 s lease...
            await eventually(lambda: a.statistics().leader_id == b.instance_id)
            await b.resign()  # ...unless B's release reaches it
            await a.wait_until_leader(timeout=3)
        finally:
            await hub.remove(config.release_channel, broken)


async def test_stop_awaited_from_a_while_leader_task_is_bounded(
    make_client: Callable[[], Any], name: str
) -> None:
    """The shutdown cancels the very task that awaits stop(): it must neither wait for itself
    nor for the shutdown's own bounds (11.5 s with these timings)."""
    election = LeaderElection(make_client(), ElectionConfig(name=name, **SLOW))
    lost, returned = asyncio.Event(), asyncio.Event()
    election.on_lose_leadership(lost.set)

    @election.while_leader
    async def stop_from_inside() -> None:
        try:
            await election.stop()
        finally:
            returned.set()

    await election.start()
    async with asyncio.timeout(3):
        await returned.wait()
        await lost.wait()
        await election.stop()
    assert election.statistics().state == "stopped"


async def test_a_while_leader_task_that_swallows_cancellation_does_not_freeze_stop(
    make_client: Callable[[], Any], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    election = LeaderElection(make_client(), ElectionConfig(name=name, **FAST))
    events: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    @election.while_leader
    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                events.append("swallowed")

    election.on_lose_leadership(lambda: events.append("lose"))
    await election.start()
    try:
        async with asyncio.timeout(5):
            await started.wait()
            await election.stop()
        assert election.statistics().state == "stopped"
        assert "lose" in events
        assert any("did not finish" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


async def test_a_lose_callback_that_never_returns_does_not_freeze_stop(
    make_client: Callable[[], Any], name: str, caplog: pytest.LogCaptureFixture
) -> None:
    election = LeaderElection(make_client(), ElectionConfig(name=name, **FAST))
    release = asyncio.Event()

    @election.on_lose_leadership
    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # it swallows cancellation
                await release.wait()

    await election.start()
    try:
        async with asyncio.timeout(5):
            await election.stop()
        assert election.statistics().state == "stopped"
        assert any("did not finish" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


async def test_a_second_election_on_a_subscribed_channel_hears_a_release_during_its_attempt(
    make_client: Callable[[], Any], name: str
) -> None:
    """B joins a channel its client already listens to; A releases while B's first attempt is on
    its way back. B must take over at once, not after A's 30 s lease."""
    client = make_client()
    config = ElectionConfig(name=name, **SLOW)
    a = LeaderElection(client, config)
    await a.start()
    observer = LeaderObserver(client, config)  # subscribes the client to the channel
    changes = observer.changes()
    first = await anext(changes)
    assert first.leader is not None

    async def hook(kind: str, send: Callable[[], Any]) -> Any:
        reply = await send()
        if kind == "acquire" and client.hook is not None:
            client.hook = None
            await a.stop()  # released while B's answer ("held by A") is on its way
            async with asyncio.timeout(5):  # the release reached the client's listeners
                while (await anext(changes)).leader is not None:
                    pass
        return reply

    b = LeaderElection(client, config)
    client.hook = hook
    try:
        await b.start()
        assert not b.is_leader  # its attempt saw A's lock
        await b.wait_until_leader(timeout=3)
    finally:
        await changes.aclose()
        await b.stop()
        await a.stop()


def test_an_async_error_handler_is_refused_when_registered(name: str) -> None:
    async def handler(exc: BaseException, context: Any) -> None:
        pass

    with pytest.raises(TypeError, match="on_error"):
        LeaderElection("redis://localhost", ElectionConfig(name=name), on_error=handler)
