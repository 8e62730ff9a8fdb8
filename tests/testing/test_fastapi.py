"""FakeLeaderElection in leaderelection.fastapi: election_lifespan (an instance or a factory),
get_election / ElectionDep, require_leader / LeaderToken, and leader_router, driven through
httpx's ASGITransport. No Redis; nothing sleeps."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderElectionError,
    StoreUnavailableError,
)
from leaderelection.fastapi import (
    ElectionDep,
    LeaderToken,
    election_lifespan,
    get_election,
    leader_router,
)
from leaderelection.testing import FakeLeaderElection

URL = "http://10.0.0.6:8000"


def fake(**options: Any) -> FakeLeaderElection:
    return FakeLeaderElection(ElectionConfig(name="api", instance_id="worker-1"), **options)


def make_app(election: Any, **options: Any) -> FastAPI:
    app = FastAPI(lifespan=election_lifespan(election, **options))
    app.include_router(leader_router())

    @app.post("/work")
    async def work(token: LeaderToken) -> dict[str, int]:
        return {"fencing_token": token}

    @app.get("/who")
    async def who(election: ElectionDep) -> dict[str, str]:
        return {"instance_id": election.instance_id, "type": type(election).__name__}

    return app


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_the_lifespan_runs_a_double_given_as_an_instance() -> None:
    election = fake()
    election.set_leader("worker-2", metadata={"url": URL})
    app = make_app(election)
    async with serving(app) as client:
        assert election.statistics().state == "follower"
        who = (await client.get("/who")).json()
        assert who == {"instance_id": "worker-1", "type": "FakeLeaderElection"}

        response = await client.post("/work")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "2"
        assert response.headers["X-Leader-URL"] == URL
        detail = response.json()["detail"]
        assert detail["leader"]["instance_id"] == "worker-2"
        assert detail["leader_url"] == URL
        assert "send the request to the leader, worker-2" in detail["message"]

        assert (await client.get("/leader/ready")).status_code == 200
        ready = await client.get("/leader/ready", params={"leader": "true"})
        assert ready.status_code == 503
        assert ready.json()["reason"] == "this instance is not the leader"

        token = await election.elect()
        response = await client.post("/work")
        assert response.status_code == 200
        assert response.json() == {"fencing_token": token}
        status = (await client.get("/leader")).json()
        assert status["is_leader"] is True
        assert status["fencing_token"] == token
        assert status["leader_info"]["instance_id"] == "worker-1"
        ready = await client.get("/leader/ready", params={"leader": "true"})
        assert ready.status_code == 200
        assert ready.json()["leader_id"] == "worker-1"
    assert election.statistics().state == "stopped"
    assert not election.is_leader


async def test_a_started_double_is_refused_as_a_started_election_is() -> None:
    election = fake()
    await election.start()
    app = make_app(election)
    with pytest.raises(LeaderElectionError, match="already started"):
        async with serving(app):
            pass
    await election.stop()


async def test_a_factory_makes_a_new_double_for_every_start() -> None:
    made: list[FakeLeaderElection] = []

    def factory() -> FakeLeaderElection:
        made.append(fake(elect_on_start=True))
        return made[-1]

    app = make_app(factory)
    for _ in range(2):
        async with serving(app) as client:
            assert (await client.post("/work")).status_code == 200
    assert len(made) == 2
    assert all(e.statistics().state == "stopped" for e in made)


async def test_a_store_that_cannot_be_read_gives_the_same_answers() -> None:
    election = fake()
    async with serving(make_app(election)) as client:
        election.fail_store_reads(StoreUnavailableError("Redis is down"))
        response = await client.post("/work")
        assert response.status_code == 503
        assert "could not be read from the store" in response.json()["detail"]["message"]
        assert (await client.get("/leader")).status_code == 503
        ready = await client.get("/leader/ready")
        assert ready.status_code == 503
        assert "Redis is down" in ready.json()["reason"]


async def test_dependency_overrides_need_no_lifespan() -> None:
    election = fake(leader="worker-2")
    app = make_app(lambda: pytest.fail("the lifespan must not run"))
    app.dependency_overrides[get_election] = lambda: election
    transport = httpx.ASGITransport(app=app)
    async with election, httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/work")).status_code == 503
        token = await election.elect()
        assert (await client.post("/work")).json() == {"fencing_token": token}


async def test_something_else_under_the_state_key_is_still_refused() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.leader_election = object()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/who")
    async def who(election: ElectionDep) -> str:
        return election.instance_id

    with pytest.raises(ConfigurationError, match="not a LeaderElection"):
        async with serving(app) as client:
            await client.get("/who")


async def test_the_shutdown_signal_stops_the_double() -> None:
    received: list[int] = []

    def server_handler(signum: int, frame: FrameType | None) -> None:  # as uvicorn's
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, server_handler)
    try:
        election = fake(elect_on_start=True)
        lost = asyncio.Event()
        election.on_lose_leadership(lost.set)
        async with serving(make_app(election)):
            assert election.is_leader
            signal.raise_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                await lost.wait()
            assert received == [signal.SIGTERM]  # the server's handler ran too
            assert not election.is_leader
        assert election.statistics().state == "stopped"
    finally:
        signal.signal(signal.SIGTERM, previous)
