"""``LeaderElection.fence()`` on a fake clock and the in-memory store: a fence is bound to the term
it was made in, refuses locally once that term is over (before any round trip), and refuses at
the store once a newer term exists. The scripts themselves are tested in
``tests/store/test_fenced_writes.py``, on real servers in ``tests/integration/test_fence.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from leaderelection import (
    ElectionConfig,
    Fence,
    FenceResult,
    LeaderElectionError,
    NotLeaderError,
    StoreError,
)
from leaderelection.testing import FakeClock, MemoryServer
from tests.election.conftest import Drive, MakeElection


def data_key(config: ElectionConfig) -> str:
    return f"app:{{{config.name}}}:progress"


async def test_fence_is_refused_when_not_leading(
    make_election: MakeElection, config: ElectionConfig
) -> None:
    a = make_election(config)
    with pytest.raises(NotLeaderError, match="does not lead"):
        a.fence()  # not started
    async with a, make_election(config) as b:
        assert a.is_leader and not b.is_leader
        with pytest.raises(NotLeaderError, match=rf"{b.instance_id} does not lead"):
            b.fence()
    with pytest.raises(NotLeaderError):
        a.fence()  # stopped
    assert issubclass(NotLeaderError, LeaderElectionError)


async def test_a_fence_writes_while_its_term_holds(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer
) -> None:
    async with make_election(config) as a:
        fence = a.fence()
        assert isinstance(fence, Fence)
        assert fence.token == a.fencing_token
        assert fence.is_current
        assert repr(fence) == f"<Fence token={fence.token} current>"
        key = data_key(config)
        assert await fence.set(key, "step 1") is True
        assert server.get(key) == "step 1"
        assert await fence.set(key, 2, px=timedelta(seconds=30)) is True
        assert server.get(key) == "2"
        assert await fence.hset(key + ":h", {"done": 3, b"rate": 0.5}) is True
        assert server.hgetall(key + ":h") == {"done": "3", "rate": "0.5"}
        assert await fence.delete(key, key + ":h") is True
        assert server.get(key) is None
        with pytest.raises(StoreError, match="runs no Lua"):
            await fence.eval("return 1")


async def test_a_fence_refuses_locally_after_resign_and_stop(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer
) -> None:
    """The store would still take a write for a moment (after stop() the fence key holds the
    term's token until someone acquires): the local check refuses without a round trip."""
    key = data_key(config)
    async with make_election(config) as a:
        resigned = a.fence()
        await a.resign()
        sent = server.commands
        assert not resigned.is_current
        assert await resigned.set(key, "late") is False
        assert await resigned.hset(key, {"f": "late"}) is False
        assert await resigned.delete(key) is False
        assert await resigned.eval("return 1") == FenceResult(False)
        assert not await resigned.eval("return 1")
        assert server.commands == sent  # nothing was sent
    async with make_election(config) as b:
        stopped = b.fence()
    assert repr(stopped) == f"<Fence token={stopped.token} over>"
    assert await stopped.set(key, "late") is False
    assert server.get(key) is None


async def test_a_fence_refuses_at_the_local_deadline_even_if_the_store_would_not(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer, clock: FakeClock
) -> None:
    """The store stops answering: at renew_deadline the term ends here, while the lease still
    has a third of lock_ttl to run in the store. The fence follows the local deadline."""
    async with make_election(config) as a:
        fence = a.fence()
        server.hanging = True
        await clock.advance_until(lambda: not a.is_leader, limit=10)
        server.hanging = False
        assert server.get(config.lock_key) is not None  # the store still holds the lease
        sent = server.commands
        assert await fence.set(data_key(config), "late") is False
        assert server.commands == sent


async def test_a_fence_of_an_old_term_stays_refused_when_a_new_term_begins(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer, drive: Drive
) -> None:
    async with make_election(config) as a:
        old = a.fence()
        await a.resign()
        await drive(a.wait_until_leader(), limit=60)  # no one else: a new term after hold-back
        new = a.fence()
        assert new.token > old.token
        assert await old.set(data_key(config), "old") is False
        assert await new.set(data_key(config), "new") is True
        assert server.get(data_key(config)) == "new"


async def test_a_task_of_an_ended_term_gets_no_fence_of_the_next(
    make_election: MakeElection, config: ElectionConfig, drive: Drive
) -> None:
    """A while_leader task that ignores its cancellation lives on into the next term: fence()
    refuses it rather than hand it the new term's fence."""
    outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    second_term = asyncio.Event()
    first: list[Fence] = []

    async def stubborn() -> None:
        if first:
            return  # the next term's own task
        first.append(election.fence())
        while True:
            try:
                await second_term.wait()
                break
            except asyncio.CancelledError:
                continue  # ignores its cancellation
        try:
            outcome.set_result(election.fence())
        except NotLeaderError as exc:
            outcome.set_result(exc)

    election = make_election(config)
    election._wait_for_user_code(0.0)  # do not wait for the stubborn task
    election.while_leader(stubborn)
    async with election:
        await drive(asyncio.sleep(0), limit=1)
        assert first
        await election.resign()
        await drive(election.wait_until_leader(), limit=60)
        second_term.set()
        result = await drive(outcome, limit=1)
        assert isinstance(result, NotLeaderError)
        assert f"fencing token {first[0].token}, which has ended" in str(result)
        assert await first[0].set(data_key(config), "late") is False


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: f.set(1, "v"), TypeError, "a key is a str or bytes"),
        (lambda f: f.set("k", True), TypeError, "value must be a str, bytes, int or float"),
        (lambda f: f.set("k", None), TypeError, "value must be"),
        (lambda f: f.set("k", "v", px=0), ValueError, "at least 1"),
        (lambda f: f.set("k", "v", px=1.5), TypeError, "px is milliseconds"),
        (lambda f: f.set("k", "v", px=timedelta(microseconds=10)), ValueError, "at least 1"),
        (lambda f: f.hset("k", {}), ValueError, "mapping is empty"),
        (lambda f: f.hset("k", [("a", 1)]), TypeError, "takes a mapping"),
        (lambda f: f.hset("k", {"a": None}), TypeError, "a value must be"),
        (lambda f: f.delete(), ValueError, "at least one key"),
        (lambda f: f.eval(""), ValueError, "needs the Lua script"),
        (lambda f: f.eval("#!lua flags=no-writes\nreturn 1"), ValueError, "shebang"),
        (lambda f: f.eval("return 1", "k"), TypeError, "takes keys as a list"),
        (lambda f: f.eval("return 1", ["k"], "a"), TypeError, "takes args as a list"),
        (lambda f: f.eval("return 1", [], [object()]), TypeError, "an argument must be"),
    ],
)
async def test_bad_arguments_are_typed_errors_even_after_the_term(
    make_election: MakeElection,
    config: ElectionConfig,
    call: Any,
    error: type[Exception],
    match: str,
) -> None:
    async with make_election(config) as a:
        fence = a.fence()
        with pytest.raises(error, match=match):
            await call(fence)
        await a.resign()
        with pytest.raises(error, match=match):
            await call(fence)


async def test_the_elections_own_keys_are_refused(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer
) -> None:
    async with make_election(config) as a:
        fence = a.fence()
        for key in (config.lock_key, config.info_key, config.fence_key, config.waiting_key):
            with pytest.raises(ValueError, match="one of the election's own keys"):
                await fence.set(key, "x")
            with pytest.raises(ValueError, match="one of the election's own keys"):
                await fence.delete(data_key(config), key.encode())
        assert a.is_leader
        assert server.get(config.lock_key) is not None
