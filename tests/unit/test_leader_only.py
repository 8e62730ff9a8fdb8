"""leader_only: calls pass through only while leading, with the term's token when asked."""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

import fakeredis
import pytest

from leaderelection import ElectionConfig, LeaderElection, leader_only


class Switch:
    """A stand-in election whose leadership the test flips."""

    def __init__(self) -> None:
        self.is_leader = False
        self.fencing_token: int | None = None

    def lead(self, token: int) -> None:
        self.is_leader, self.fencing_token = True, token

    def follow(self) -> None:
        self.is_leader, self.fencing_token = False, None


def test_a_function_runs_only_while_leading(caplog: pytest.LogCaptureFixture) -> None:
    election = Switch()
    calls: list[int] = []

    @leader_only(election)
    def job(x: int) -> int:
        """Doc."""
        calls.append(x)
        return x * 2

    with caplog.at_level(logging.DEBUG, logger="leaderelection"):
        assert job(1) is None
    assert calls == []
    assert "Skipped test_a_function_runs_only_while_leading.<locals>.job: not the leader" in (
        caplog.messages
    )
    election.lead(7)
    assert job(2) == 4
    assert calls == [2]
    election.follow()
    assert job(3) is None
    assert calls == [2]
    assert job.__name__ == "job"
    assert job.__doc__ == "Doc."


async def test_a_coroutine_function_runs_only_while_leading() -> None:
    election = Switch()
    calls: list[str] = []

    @leader_only(election, default="skipped")
    async def job(name: str) -> str:
        calls.append(name)
        return name.upper()

    assert await job("a") == "skipped"
    election.lead(1)
    assert await job("b") == "B"
    assert calls == ["b"]


async def test_the_fencing_token_is_passed_in_when_asked() -> None:
    election = Switch()
    seen: list[tuple[str, int]] = []

    @leader_only(election, pass_token=True)
    async def write(row: str, *, fencing_token: int) -> None:
        seen.append((row, fencing_token))

    @leader_only(election, pass_token="token")
    def write_sync(row: str, *, token: int) -> None:
        seen.append((row, token))

    await write("skipped")
    write_sync("skipped")
    election.lead(41)
    await write("a")
    election.lead(42)
    write_sync("b")
    assert seen == [("a", 41), ("b", 42)]


@pytest.mark.parametrize("bad", ["", "not a name", 3])
def test_a_bad_pass_token_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="pass_token"):
        leader_only(Switch(), pass_token=bad)


async def test_with_a_real_election() -> None:
    config = ElectionConfig(
        name=f"e-{uuid.uuid4().hex[:8]}", lock_ttl="2s", heartbeat_interval="500ms"
    )
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        async with LeaderElection(client, config) as election:

            @leader_only(election, pass_token=True)
            async def job(*, fencing_token: int) -> int:
                return fencing_token

            assert election.is_leader
            assert await job() == election.fencing_token
            await election.resign()
            assert not election.is_leader
            assert await job() is None
    finally:
        await client.aclose()


async def test_partials_and_callable_objects_are_skipped_the_same_way() -> None:
    election = Switch()

    class AsyncJob:
        async def __call__(self, x: int) -> int:
            return x + 1

    class SyncJob:
        def __call__(self, x: int) -> int:
            return x - 1

    async def add(x: int, y: int) -> int:
        return x + y

    skip_async = leader_only(election, default=-1)(AsyncJob())
    skip_sync = leader_only(election, default=-1)(SyncJob())
    skip_partial = leader_only(election, default=-1)(functools.partial(add, 10))
    assert await skip_async(1) == -1  # awaitable even when skipped
    assert skip_sync(1) == -1
    assert await skip_partial(1) == -1
    election.lead(3)
    assert await skip_async(1) == 2
    assert skip_sync(1) == 0
    assert await skip_partial(1) == 11
