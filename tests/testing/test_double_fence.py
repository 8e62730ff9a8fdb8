"""The fences of the test doubles: the real ``Fence`` and ``SyncFence``, writing into the group's
``data`` while their term is the group's latest and refusing once it is over, as the real ones.

Nothing here sleeps: threads are joined with deadlines and waits are on events with timeouts.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from leaderelection import ElectionConfig, Fence, FenceResult, NotLeaderError, WrongKeyTypeError
from leaderelection.sync import SyncFence
from leaderelection.testing import (
    FakeElectionGroup,
    FakeLeaderElection,
    FakeSyncLeaderElection,
    FencedEval,
)
from tests.support import eventually_sync

WAIT = 5.0


def config(instance_id: str) -> ElectionConfig:
    return ElectionConfig(name="billing", instance_id=instance_id)


async def test_a_fence_writes_into_the_groups_data_while_its_term_holds() -> None:
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group)
    async with a:
        with pytest.raises(NotLeaderError, match="a does not lead"):
            a.fence()
        token = await a.elect()
        fence = a.fence()
        assert isinstance(fence, Fence)
        assert fence.token == token
        assert await fence.set("app:{billing}:progress", 3) is True
        assert await fence.hset("app:{billing}:stats", {"done": 3, b"rate": 0.5}) is True
        result = await fence.eval("return 1", ["app:{billing}:n"], [5])
        assert result == FenceResult(True, None)
        assert group.data == {
            "app:{billing}:progress": "3",
            "app:{billing}:stats": {"done": "3", "rate": "0.5"},
        }
        assert group.evals == [FencedEval("return 1", ("app:{billing}:n",), ("5",), token)]
        with pytest.raises(WrongKeyTypeError):
            await fence.hset("app:{billing}:progress", {"f": "v"})
        assert await fence.delete("app:{billing}:progress") is True
        assert "app:{billing}:progress" not in group.data
        with pytest.raises(ValueError, match="election's own keys"):
            await fence.set(a.config.lock_key, "x")


async def test_a_fence_is_refused_once_its_term_is_over() -> None:
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group)
    b = FakeLeaderElection(config("b"), group=group)
    async with a, b:
        await a.elect()
        old = a.fence()
        await a.hand_over(b)
        new = b.fence()
        assert not old.is_current and new.is_current
        assert await new.set("k", "b") is True
        assert await old.set("k", "a") is False
        assert not await old.eval("return 1")
        await b.depose()
        assert await new.set("k", "after") is False
        group.set_leader("outside")
        assert group.data == {"k": "b"}


async def test_the_group_refuses_a_fence_whose_token_is_not_the_latest() -> None:
    """The group's own check, as the script's: a term that the test moved past (a newer token
    granted to an outside leader) is refused even if the fence's local check passed."""
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group)
    async with a:
        await a.elect()
        fence = a.fence()
        fence._is_current = lambda: True  # only the group's check is left
        await a.depose()
        group.set_leader("outside")
        assert await fence.set("k", "late") is False
        assert group.data == {}


def test_a_sync_fence_writes_from_a_job_thread_and_refuses_after_the_term() -> None:
    group = FakeElectionGroup()
    a = FakeSyncLeaderElection(config("a"), group=group)
    fences: list[SyncFence] = []
    wrote = threading.Event()
    results: list[Any] = []

    @a.while_leader
    def job(term_over: threading.Event) -> None:
        fence = a.fence()
        fences.append(fence)
        results.append(fence.set("app:{billing}:progress", "running"))
        results.append(fence.hset("app:{billing}:h", {"f": 1}))
        results.append(fence.eval("return 1"))
        wrote.set()
        term_over.wait(WAIT)

    with a:
        with pytest.raises(NotLeaderError):
            a.fence()
        token = a.elect()
        assert wrote.wait(WAIT)
        assert results == [True, True, FenceResult(True, None)]
        fence = fences[0]
        assert fence.token == token and fence.is_current
        assert repr(fence) == f"<SyncFence token={token} current>"
        a.depose()
        assert not fence.is_current
        assert fence.set("app:{billing}:progress", "late") is False
        assert fence.delete("app:{billing}:progress") is False
    assert group.data == {"app:{billing}:progress": "running", "app:{billing}:h": {"f": "1"}}


def test_a_sync_job_of_an_ended_term_gets_no_fence_of_the_next() -> None:
    """A lost lease lets the group go at once while the job still runs; a new term begins; the
    old job then asks for a fence: refused, rather than handed the new term's."""
    group = FakeElectionGroup()
    a = FakeSyncLeaderElection(config("a"), group=group)
    release = threading.Event()
    outcome: list[BaseException | SyncFence] = []
    started = threading.Event()

    @a.while_leader
    def job(term_over: threading.Event) -> None:
        if started.is_set():
            return  # the next term's job
        started.set()
        release.wait(WAIT)  # ignores term_over
        try:
            outcome.append(a.fence())
        except NotLeaderError as exc:
            outcome.append(exc)

    with a:
        first = a.elect()
        assert started.wait(WAIT)
        controls = [threading.Thread(target=a.depose)]  # returns once the job returned
        controls[0].start()
        eventually_sync(lambda: not a.is_leader)
        controls.append(threading.Thread(target=a.elect))
        controls[1].start()
        eventually_sync(lambda: a.is_leader)
        assert a.fencing_token is not None and a.fencing_token > first
        release.set()
        for control in controls:
            control.join(WAIT)
            assert not control.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], NotLeaderError), outcome
    assert f"token {first}, which has ended" in str(outcome[0])
