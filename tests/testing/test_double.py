"""The contract of FakeLeaderElection and FakeElectionGroup: the election's surface and rules,
and controls that return once the callbacks they caused have run.

Nothing here sleeps: every wait is on an event, a control, or a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    ElectionNotRunningError,
    ElectionProtocol,
    ElectionStatistics,
    LeaderElection,
    LeaderElectionError,
    LeaderInfo,
    StoreUnavailableError,
)
from leaderelection.testing import FakeElectionGroup, FakeLeaderElection
from tests.testing.recorder import Recorder


def config(instance_id: str | None = "me", **extra: Any) -> ElectionConfig:
    return ElectionConfig(name="billing", instance_id=instance_id, **extra)


def instrumented(rec: Recorder, **options: Any) -> FakeLeaderElection:
    """A double whose callbacks and leader task record what they see."""
    election = FakeLeaderElection(config(), on_error=rec.on_error, **options)

    def seen(name: str) -> None:
        rec.add(name, election.is_leader, election.leader_event.is_set(), election.fencing_token)

    @election.on_become_leader
    def become_sync() -> None:
        seen("become-1")

    @election.on_become_leader
    async def become_async() -> None:
        await asyncio.sleep(0)
        seen("become-2")
        raise RuntimeError("become failed")

    @election.while_leader
    async def work() -> None:
        seen("work-start")
        try:
            await asyncio.Event().wait()
        finally:
            seen("work-cancelled")

    @election.on_lose_leadership
    def lose_raises() -> None:
        seen("lose-1")
        raise ValueError("lose failed")

    @election.on_lose_leadership
    async def lose_async() -> None:
        seen("lose-2")

    return election


# ------------------------------------------------------------------------------ the surface


def test_it_has_the_surface_of_the_real_election() -> None:
    fake = FakeLeaderElection(config())
    assert isinstance(fake, ElectionProtocol)
    real_names = {n for n in dir(LeaderElection) if not n.startswith("_")}
    assert real_names <= set(dir(fake)), real_names - set(dir(fake))
    assert fake.config.name == "billing"
    assert fake.instance_id == "me"
    assert not fake.is_leader
    assert fake.fencing_token is None
    assert not fake.leader_event.is_set()
    stats = fake.statistics()
    assert isinstance(stats, ElectionStatistics)
    assert stats.state == "new"


def test_an_instance_id_is_made_when_the_config_has_none() -> None:
    group = FakeElectionGroup()
    cfg = config(instance_id=None)
    a = FakeLeaderElection(cfg, group=group)
    b = FakeLeaderElection(cfg, group=group)
    assert a.instance_id != b.instance_id
    assert a.instance_id.startswith(f"{cfg.hostname}-")


def test_a_config_that_is_not_a_config_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        FakeLeaderElection({"name": "billing"})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ terms


async def test_elect_starts_a_term_and_returns_once_the_callbacks_ran() -> None:
    rec = Recorder()
    election = instrumented(rec)
    async with election:
        assert election.statistics().state == "follower"
        token = await election.elect()
        assert token == 1
        assert election.is_leader
        assert election.leader_event.is_set()
        assert election.fencing_token == token
        assert election.statistics().state == "leader"
        # Every become callback ran, in order, and saw the term; the leader task started.
        assert rec.events == [
            ("work-start", True, True, 1),
            ("become-1", True, True, 1),
            ("become-2", True, True, 1),
        ]
        info = await election.get_leader_info()
        assert info is not None
        assert info.instance_id == "me"
        assert info.fencing_token == token
        assert info.election == "billing"
        assert await election.get_leader_id() == "me"


async def test_elect_returns_after_the_tasks_ran_until_they_first_waited() -> None:
    election = FakeLeaderElection(config())  # no become callbacks: nothing else to wait for
    steps: list[str] = []

    @election.while_leader
    async def work() -> None:
        steps.append("started")
        await asyncio.Event().wait()

    async with election:
        await election.elect()
        assert steps == ["started"]


async def test_depose_ends_the_term_cancelling_the_tasks_before_the_lose_callbacks() -> None:
    rec = Recorder()
    election = instrumented(rec)
    async with election:
        await election.elect()
        rec.events.clear()
        await election.depose()
        assert not election.is_leader
        assert not election.leader_event.is_set()
        assert election.fencing_token is None
        assert rec.events == [
            ("work-cancelled", False, False, None),
            ("lose-1", False, False, None),
            ("lose-2", False, False, None),
        ]
        assert await election.get_leader_info() is None
        assert election.statistics().state == "follower"


async def test_callbacks_are_isolated_and_reported_with_the_real_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    election = instrumented(rec)
    with caplog.at_level(logging.ERROR, logger="leaderelection"):
        async with election:
            token = await election.elect()
            await election.resign()
    assert [type(exc) for exc, _ in rec.errors] == [RuntimeError, ValueError]
    for (_, context), kind, name in zip(
        rec.errors,
        ["on_become_leader", "on_lose_leadership"],
        ["become_async", "lose_raises"],
        strict=True,
    ):
        assert set(context) == {"kind", "callback", "election", "instance_id", "fencing_token"}
        assert context["kind"] == kind
        assert context["callback"].__name__ == name
        assert context["election"] == "billing"
        assert context["instance_id"] == "me"
        assert context["fencing_token"] == token
    assert rec.names().count("lose-2") == 1  # the callback after the failing one still ran
    logged = [r for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 2


async def test_fencing_tokens_strictly_increase_and_a_term_never_resumes() -> None:
    election = FakeLeaderElection(config())
    async with election:
        first = await election.elect()
        with pytest.raises(RuntimeError, match="never resumes"):
            await election.elect()
        await election.depose()
        second = await election.elect()
        assert second > first
        await election.resign()
        with pytest.raises(ValueError, match="strictly increase"):
            await election.elect(fencing_token=second)
        assert not election.is_leader
        assert await election.elect(fencing_token=41) == 41
        await election.depose()
        assert await election.elect() == 42
        stats = election.statistics()
        assert stats.terms_won == 4
        assert stats.transitions == 7


async def test_every_become_is_followed_by_exactly_one_lose() -> None:
    rec = Recorder()
    election = instrumented(rec)
    async with election:
        for end in ("depose", "resign", "depose"):
            await election.elect()
            await getattr(election, end)()
        await election.elect()
    # the fourth term ended with the stop
    names = [n for n in rec.names() if n in ("become-1", "lose-2")]
    assert names == ["become-1", "lose-2"] * 4


async def test_a_while_leader_task_registered_during_a_term_starts_at_once() -> None:
    rec = Recorder()
    election = FakeLeaderElection(config())
    async with election:
        await election.elect()

        @election.while_leader
        async def late() -> None:
            rec.add("late-start")
            try:
                await asyncio.Event().wait()
            finally:
                rec.add("late-cancelled")

        await rec.wait_for(lambda: rec.count("late-start") == 1)
        await election.depose()
        assert rec.names() == ["late-start", "late-cancelled"]


async def test_a_failing_while_leader_task_is_reported_and_the_term_goes_on() -> None:
    rec = Recorder()
    election = FakeLeaderElection(config(), on_error=rec.on_error)

    @election.while_leader
    async def broken() -> None:
        raise KeyError("task failed")

    async with election:
        token = await election.elect()
        await rec.wait_for(lambda: rec.errors)
        assert election.is_leader
    exc, context = rec.errors[0]
    assert isinstance(exc, KeyError)
    assert context["kind"] == "while_leader"
    assert context["callback"] is broken
    assert context["fencing_token"] == token


async def test_resign_ends_the_term_and_is_a_no_op_for_a_follower() -> None:
    rec = Recorder()
    election = instrumented(rec)
    async with election:
        await election.resign()  # not leading: nothing happens
        assert rec.events == []
        await election.elect()
        await election.resign()
        assert not election.is_leader
        assert rec.count("lose-2") == 1


async def test_resign_from_a_while_leader_task_ends_its_own_term() -> None:
    rec = Recorder()
    election = FakeLeaderElection(config(), on_lose_leadership=lambda: rec.add("lose"))

    @election.while_leader
    async def quits() -> None:
        try:
            await election.resign()
        finally:
            rec.add("task-ended", election.is_leader)

    async with election:
        await election.elect()
        await rec.wait_for(lambda: rec.count("lose") == 1)
        assert rec.events == [("task-ended", False), ("lose",)]
        assert not election.is_leader


async def test_stop_from_a_while_leader_task_completes() -> None:
    election = FakeLeaderElection(config())
    stopped = asyncio.Event()
    election.on_lose_leadership(stopped.set)

    @election.while_leader
    async def stops() -> None:
        await election.stop()

    await election.start()
    await election.elect()
    async with asyncio.timeout(5):
        await stopped.wait()
        await election.stop()  # waits for the shutdown the task began
    assert election.statistics().state == "stopped"


# ------------------------------------------------------------------------------- lifecycle


async def test_stop_ends_the_term_waits_for_the_lose_callbacks_and_is_idempotent() -> None:
    rec = Recorder()
    election = instrumented(rec)
    await election.start()
    await election.elect()
    await election.stop()
    assert rec.count("lose-2") == 1
    assert election.statistics().state == "stopped"
    await election.stop()
    assert rec.count("lose-2") == 1
    with pytest.raises(ElectionNotRunningError):
        await election.wait_until_leader()
    with pytest.raises(ElectionNotRunningError):
        await election.resign()
    with pytest.raises(ElectionNotRunningError):
        election.changes()
    with pytest.raises(ElectionNotRunningError):
        await election.elect()
    with pytest.raises(LeaderElectionError, match="already started"):
        await election.start()
    await election.wait_until_follower()  # not leading: returns at once


async def test_before_start_the_election_is_not_running() -> None:
    election = FakeLeaderElection(config())
    with pytest.raises(ElectionNotRunningError):
        await election.elect()
    with pytest.raises(ElectionNotRunningError):
        await election.wait_until_leader()
    assert await election.get_leader_info() is None  # a read works in any state, as the real one
    await election.stop()  # never started: stopped at once
    assert election.statistics().state == "stopped"


async def test_stop_called_in_a_become_callback_completes_after_it() -> None:
    rec = Recorder()
    election = FakeLeaderElection(config())

    @election.on_become_leader
    async def become() -> None:
        rec.add("become-start")
        await election.stop()  # returns at once: the stop waits for this callback
        rec.add("become-end", election.statistics().state)

    election.on_lose_leadership(lambda: rec.add("lose"))
    await election.start()
    await election.elect()
    await election.stop()
    assert rec.events == [("become-start",), ("become-end", "stopping"), ("lose",)]
    assert election.statistics().state == "stopped"


async def test_elect_on_start_leads_a_free_election_only() -> None:
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group, elect_on_start=True)
    b = FakeLeaderElection(config("b"), group=group, elect_on_start=True)
    async with a, b:
        assert a.is_leader
        assert not b.is_leader
        assert await b.get_leader_id() == "a"
    outside = FakeLeaderElection(config("c"), leader="someone", elect_on_start=True)
    async with outside:
        assert not outside.is_leader


# --------------------------------------------------------------------------------- waiting


async def test_wait_until_leader_and_follower_follow_the_controls() -> None:
    election = FakeLeaderElection(config())
    async with election:
        with pytest.raises(TimeoutError):
            await election.wait_until_leader(timeout=0.01)
        waiting = asyncio.create_task(election.wait_until_leader(timeout=5))
        await asyncio.sleep(0)  # one turn of the loop: the waiter starts and blocks
        assert not waiting.done()
        await election.elect()
        await waiting
        following = asyncio.create_task(election.wait_until_follower(timeout=5))
        await asyncio.sleep(0)
        assert not following.done()
        await election.depose()
        await following
        await election.elect()
        with pytest.raises(TimeoutError):
            await election.wait_until_follower(timeout=0.01)


async def test_wait_until_leader_raises_when_the_election_stops() -> None:
    election = FakeLeaderElection(config())
    await election.start()
    waiting = asyncio.create_task(election.wait_until_leader(timeout=5))
    await asyncio.sleep(0)
    await election.stop()
    with pytest.raises(ElectionNotRunningError):
        await waiting


# --------------------------------------------------------------------------- groups, leaders


async def test_a_group_has_one_leader_and_one_token_counter() -> None:
    group = FakeElectionGroup()
    rec = Recorder()
    a = FakeLeaderElection(config("a"), group=group, on_lose_leadership=lambda: rec.add("a-lose"))
    b = FakeLeaderElection(
        config("b"),
        group=group,
        on_become_leader=lambda: rec.add("b-become", b.fencing_token, a.is_leader),
    )
    async with a, b:
        first = await a.elect()
        assert group.leader is a
        with pytest.raises(RuntimeError, match="a leads"):
            await b.elect()
        assert await b.get_leader_id() == "a"
        assert b.statistics().leader_id == "a"
        second = await a.hand_over(b)
        assert second > first
        assert group.leader is b
        assert group.last_fencing_token == second
        assert rec.events == [("a-lose",), ("b-become", second, False)]
        assert not a.is_leader
        assert await a.get_leader_id() == "b"
        with pytest.raises(ValueError, match="same FakeElectionGroup"):
            await b.hand_over(FakeLeaderElection(config("c")))
        with pytest.raises(RuntimeError, match="does not lead"):
            await a.hand_over(b)
    assert group.candidates == (a, b)
    assert group.leader is None


def test_members_of_a_group_share_the_election_and_have_distinct_ids() -> None:
    group = FakeElectionGroup()
    FakeLeaderElection(config("a"), group=group)
    with pytest.raises(ConfigurationError, match="taken"):
        FakeLeaderElection(config("a"), group=group)
    with pytest.raises(ConfigurationError, match="one election"):
        FakeLeaderElection(ElectionConfig(name="other", instance_id="b"), group=group)


async def test_hand_over_from_a_while_leader_task_completes() -> None:
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group)
    b = FakeLeaderElection(config("b"), group=group)
    took_over = asyncio.Event()
    b.on_become_leader(took_over.set)

    @a.while_leader
    async def passes_on() -> None:
        await a.hand_over(b)

    async with a, b:
        await a.elect()
        async with asyncio.timeout(5):
            await took_over.wait()
        assert b.is_leader
        assert not a.is_leader


async def test_a_follower_names_the_leader_it_was_given() -> None:
    election = FakeLeaderElection(
        config(metadata={"url": "http://10.0.0.5:8000"}), leader="worker-2"
    )
    async with election:
        info = await election.get_leader_info()
        assert info is not None
        assert info.instance_id == "worker-2"
        assert info.election == "billing"
        assert info.fencing_token == 1
        assert election.statistics().leader_id == "worker-2"
        record = election.set_leader("worker-3", metadata={"url": "http://10.0.0.6:8000"})
        assert record is not None
        assert record.fencing_token == 2
        assert record.metadata == {"url": "http://10.0.0.6:8000"}
        assert await election.get_leader_id() == "worker-3"
        # The outside leader's lease ends and this instance wins the next term.
        assert await election.elect() == 3
        with pytest.raises(RuntimeError, match="depose"):
            election.set_leader("worker-4")
        info = await election.get_leader_info()
        assert info is not None
        assert info.metadata == {"url": "http://10.0.0.5:8000"}
        await election.depose()
        election.set_leader(None)
        assert await election.get_leader_info() is None


async def test_set_leader_takes_a_record_with_a_higher_token() -> None:
    election = FakeLeaderElection(config())
    first = election.set_leader("x", fencing_token=10)
    assert first is not None
    record = LeaderInfo.model_validate(
        {**first.model_dump(), "instance_id": "y", "fencing_token": 12}
    )
    assert election.set_leader(record) == record
    assert election.set_leader(record) == record  # the same record again: no new term
    with pytest.raises(ValueError, match="strictly increase"):
        election.set_leader(first)
    with pytest.raises(TypeError):
        election.set_leader(record, fencing_token=13)
    async with election:
        assert await election.elect() == 13


async def test_changes_show_every_change_with_no_leader_between_terms() -> None:
    group = FakeElectionGroup()
    a = FakeLeaderElection(config("a"), group=group, leader="outside")
    b = FakeLeaderElection(config("b"), group=group)
    async with a, b:
        changes = a.changes()
        initial = await anext(changes)
        assert initial.initial
        assert initial.leader is not None
        assert initial.leader.instance_id == "outside"
        await a.elect()
        await a.hand_over(b)
        await b.depose()
        seen = [
            (change.previous.instance_id if change.previous else None, change.fencing_token)
            for change in [await anext(changes) for _ in range(5)]
        ]
        assert seen == [("outside", None), (None, 2), ("a", None), (None, 3), ("b", None)]
        await changes.aclose()


async def test_fail_store_reads_makes_reads_raise_until_cleared() -> None:
    election = FakeLeaderElection(config(), leader="other")
    async with election:
        election.fail_store_reads(StoreUnavailableError("Redis is down"))
        with pytest.raises(StoreUnavailableError):
            await election.get_leader_info()
        with pytest.raises(StoreUnavailableError):
            await election.get_leader_id()
        election.fail_store_reads(None)
        assert await election.get_leader_id() == "other"


async def test_controls_refuse_what_the_election_cannot_do() -> None:
    election = FakeLeaderElection(config())
    async with election:
        with pytest.raises(RuntimeError, match="does not lead"):
            await election.depose()
        with pytest.raises(TypeError):
            await election.elect(fencing_token="7")  # type: ignore[arg-type]
    assert "stopped" in repr(election)
