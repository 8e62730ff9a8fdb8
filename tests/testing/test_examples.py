"""Tests of an app and of workers that use leaderelection, written as a user would write them:
with the test doubles, without Redis and without sleeping. docs/testing.md includes the sections
of this file between its snippet markers."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

# --8<-- [start:imports]
from leaderelection import ElectionConfig, LeaderElection
from leaderelection.fastapi import get_election
from leaderelection.testing import (
    FakeClock,
    FakeElectionGroup,
    FakeLeaderElection,
    FakeSyncLeaderElection,
    MemoryServer,
)

# --8<-- [end:imports]
from tests.testing.example_app import create_app
from tests.testing.example_workers import (
    count_runs_while_leading,
    purge_while_leading,
    rebuild_reports_while_leading,
)

# --------------------------------------------------------------------------- the double


# --8<-- [start:a-term]
async def test_a_term_of_the_double() -> None:
    election = FakeLeaderElection(ElectionConfig(name="reports"))
    async with election:  # started: a follower, since no one leads
        token = await election.elect()  # become callbacks ran, while_leader tasks started
        assert election.is_leader and election.fencing_token == token
        await election.depose()  # the lease is lost: tasks cancelled, lose callbacks ran
        assert not election.is_leader
        # --8<-- [end:a-term]


# --------------------------------------------------------------------------- fixtures


# --8<-- [start:fixture]
@pytest.fixture
async def election() -> AsyncIterator[FakeLeaderElection]:
    config = ElectionConfig(name="reports", instance_id="worker-1")
    async with FakeLeaderElection(config) as fake:  # started: a follower until elect()
        yield fake
        # --8<-- [end:fixture]


# --8<-- [start:client]
@pytest.fixture
async def client(election: FakeLeaderElection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    app.dependency_overrides[get_election] = lambda: election
    transport = httpx.ASGITransport(app=app)  # no lifespan: no real election is made
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client
        # --8<-- [end:client]


# -------------------------------------------------------------------------- the app


# --8<-- [start:app-tests]
async def test_a_follower_answers_503_naming_the_leader(
    election: FakeLeaderElection, client: httpx.AsyncClient
) -> None:
    election.set_leader("worker-2", metadata={"url": "http://10.0.0.6:8000"})
    response = await client.post("/reports/rebuild")
    assert response.status_code == 503
    assert response.headers["X-Leader-URL"] == "http://10.0.0.6:8000"
    assert response.json()["detail"]["leader"]["instance_id"] == "worker-2"


async def test_the_leader_rebuilds_with_its_fencing_token(
    election: FakeLeaderElection, client: httpx.AsyncClient
) -> None:
    token = await election.elect()
    response = await client.post("/reports/rebuild")
    assert response.status_code == 200
    assert response.json() == {"rebuilt_with_token": token}

    await election.depose()  # the lease is lost
    response = await client.post("/reports/rebuild")
    assert response.status_code == 503
    # --8<-- [end:app-tests]


# --8<-- [start:lifespan]
async def test_the_app_runs_the_election_in_its_lifespan() -> None:
    election = FakeLeaderElection(ElectionConfig(name="reports"), elect_on_start=True)
    app = create_app(election=lambda: election)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/leader")
            assert response.json()["is_leader"] is True
    assert election.statistics().state == "stopped"  # the shutdown stopped it
    # --8<-- [end:lifespan]


# --8<-- [start:group]
async def test_leadership_moves_to_the_other_worker() -> None:
    group = FakeElectionGroup()  # one election: one leader at most, one token counter
    a = FakeLeaderElection(ElectionConfig(name="reports", instance_id="a"), group=group)
    b = FakeLeaderElection(ElectionConfig(name="reports", instance_id="b"), group=group)
    async with a, b:
        first = await a.elect()
        assert await b.get_leader_id() == "a"

        second = await a.hand_over(b)  # a's lose callbacks ran, then b's become callbacks
        assert group.leader is b
        assert second > first
        assert await a.get_leader_id() == "b"
        # --8<-- [end:group]


# ---------------------------------------------------------------------- the workers


# --8<-- [start:reports]
class RecordingReports:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.rebuilt = asyncio.Event()

    async def rebuild(self, *, fencing_token: int) -> None:
        self.tokens.append(fencing_token)
        self.rebuilt.set()


async def test_reports_are_rebuilt_only_while_leading(election: FakeLeaderElection) -> None:
    reports = RecordingReports()
    rebuild_reports_while_leading(election, reports)
    assert reports.tokens == []  # a follower does nothing

    first = await election.elect()
    await asyncio.wait_for(reports.rebuilt.wait(), timeout=5)
    assert reports.tokens == [first]

    await election.depose()  # the task was cancelled before depose() returned
    reports.rebuilt.clear()
    second = await election.elect()
    await asyncio.wait_for(reports.rebuilt.wait(), timeout=5)
    assert reports.tokens == [first, second]
    assert second > first
    # --8<-- [end:reports]


# --8<-- [start:purge]
def test_the_purge_thread_runs_only_while_leading() -> None:
    purged: queue.Queue[int] = queue.Queue()
    election = FakeSyncLeaderElection(ElectionConfig(name="purge"))
    purge_while_leading(election, purged.put)
    with election:
        token = election.elect()  # the purge thread started
        assert purged.get(timeout=5) == token
        election.resign()  # the thread was told to stop, and returned
    assert purged.empty()
    # --8<-- [end:purge]


# ------------------------------------------------------------------ the real election, faked time


# --8<-- [start:fake-clock]
async def test_a_follower_takes_over_when_the_leaders_store_hangs() -> None:
    clock = FakeClock()  # moves only when the test moves it
    server = MemoryServer(clock)  # the lease store's rules, in memory
    config = ElectionConfig(name="reports", lock_ttl="10s", heartbeat_interval="3s")

    def candidate() -> LeaderElection:
        return LeaderElection(None, config, clock=clock, store=server.store(config))

    async with candidate() as a, candidate() as b:
        assert a.is_leader and not b.is_leader
        await clock.advance(60)  # a minute of renewals, in no real time
        assert a.is_leader and a.statistics().renewals == 20
        server.hanging = True  # the store stops answering: renewals time out
        stepped_down = await clock.advance_until(lambda: not a.is_leader, limit=30)
        assert stepped_down <= config.renew_deadline.total_seconds()
        server.hanging = False
        await clock.advance_until(lambda: b.is_leader or a.is_leader, limit=30)
        # --8<-- [end:fake-clock]


# ------------------------------------------------------------------------- fenced writes


# --8<-- [start:fence]
async def test_the_worker_writes_through_its_fence_only_while_it_leads() -> None:
    group = FakeElectionGroup()  # the fences of its members write into group.data
    a = FakeLeaderElection(ElectionConfig(name="reports", instance_id="a"), group=group)
    b = FakeLeaderElection(ElectionConfig(name="reports", instance_id="b"), group=group)
    count_runs_while_leading(a, "myapp:{reports}:runs")
    async with a, b:
        first = await a.elect()  # the task ran until its first sleep
        assert group.data == {"myapp:{reports}:runs": {"runs": "1", "token": str(first)}}

        stale = a.fence()  # kept past the term, as a stalled task would
        second = await a.hand_over(b)
        assert await stale.hset("myapp:{reports}:runs", {"runs": 99}) is False
        assert await b.fence().set("myapp:{reports}:owner", "b") is True
        assert group.data["myapp:{reports}:runs"] == {"runs": "1", "token": str(first)}
        assert group.data["myapp:{reports}:owner"] == "b"
        assert second > first
        # --8<-- [end:fence]
