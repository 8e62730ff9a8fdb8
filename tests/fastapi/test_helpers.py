"""leaderelection.fastapi: the lifespan, the dependencies and the leader router, driven through
httpx's ASGITransport with the app's lifespan run by asgi_lifespan.LifespanManager.

Most tests run on an in-process fakeredis server; one runs two apps against a real redis-server.
Nothing sleeps for luck: waits are on events or ``wait_until_leader`` with timeouts.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    ElectionNotRunningError,
    LeaderElection,
    LeaderElectionError,
    StoreUnavailableError,
)
from leaderelection.fastapi import (
    DEFAULT_STATE_KEY,
    LEADER_URL_KEY,
    NOT_LEADER_RESPONSES,
    ElectionDep,
    LeaderToken,
    election_lifespan,
    get_election,
    leader_router,
)
from tests.redis_harness import free_port
from tests.support import CROWDED, eventually

URL_A = "http://10.0.0.5:8000"
URL_B = "http://10.0.0.6:8000"


# ----------------------------------------------------------------------------------- helpers


def make_config(name: str, url: str | None = None, **extra: Any) -> ElectionConfig:
    metadata = {LEADER_URL_KEY: url} if url is not None else {}
    return ElectionConfig(name=name, metadata=metadata, **{**CROWDED, **extra})


class Factory:
    """An election factory that remembers every election it made."""

    def __init__(self, make: Callable[[], LeaderElection]) -> None:
        self._make = make
        self.made: list[LeaderElection] = []

    def __call__(self) -> LeaderElection:
        election = self._make()
        self.made.append(election)
        return election

    @property
    def last(self) -> LeaderElection:
        return self.made[-1]


@pytest.fixture
def factory(make_client: Callable[[], Any], name: str) -> Callable[..., Factory]:
    """``factory(url=...)``: a Factory of elections on the fakeredis server, same name."""

    def make(url: str | None = None, **extra: Any) -> Factory:
        return Factory(lambda: LeaderElection(make_client(), make_config(name, url, **extra)))

    return make


def make_app(
    election: LeaderElection | Callable[[], LeaderElection],
    lifespan: Any = None,
    **options: Any,
) -> FastAPI:
    """An app with the election lifespan, the leader router and a leader-only endpoint."""
    app = FastAPI(lifespan=election_lifespan(election, lifespan=lifespan, **options))
    app.include_router(leader_router())

    @app.post("/work", responses=NOT_LEADER_RESPONSES)
    async def work(token: LeaderToken) -> dict[str, int]:
        return {"fencing_token": token}

    @app.get("/who")
    async def who(election: ElectionDep, request: Request) -> dict[str, Any]:
        return {
            "instance_id": election.instance_id,
            "same_as_app_state": election is getattr(request.app.state, DEFAULT_STATE_KEY, None),
        }

    return app


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an HTTP client talking to it in process."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def failing_read(self: LeaderElection) -> None:
    raise StoreUnavailableError("Redis did not answer within 0.5s while reading the leader info")


# -------------------------------------------------------------------------------- lifespan


def recording_lifespan(
    events: list[str], shape: str
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]] | Any:
    """The app's own lifespan, as a context-manager factory or as a bare async generator."""

    async def body(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        election: LeaderElection = getattr(app.state, DEFAULT_STATE_KEY)
        events.append(f"app enter: election {election.statistics().state}")
        started = asyncio.Event()

        @election.while_leader  # registering from the app's lifespan works too
        async def job() -> None:
            started.set()
            await asyncio.Event().wait()

        await asyncio.wait_for(started.wait(), timeout=5)
        yield {"db": "connection"}
        events.append(f"app exit: election {election.statistics().state}")

    return asynccontextmanager(body) if shape == "context manager" else body


@pytest.mark.parametrize("shape", ["context manager", "async generator"])
async def test_app_lifespan_runs_inside_the_election_and_its_state_is_merged(
    factory: Callable[..., Factory], shape: str
) -> None:
    events: list[str] = []
    elections = factory()
    app = make_app(elections, lifespan=recording_lifespan(events, shape))

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {
            "db": request.state.db,
            "election": getattr(request.state, DEFAULT_STATE_KEY).instance_id,
        }

    async with running(app) as client:
        election = elections.last
        assert events == ["app enter: election leader"]
        assert getattr(app.state, DEFAULT_STATE_KEY) is election
        response = await client.get("/state")
        assert response.json() == {"db": "connection", "election": election.instance_id}
        response = await client.get("/who")
        assert response.json() == {"instance_id": election.instance_id, "same_as_app_state": True}
    # The app's lifespan exited while the election still led; then the election stopped.
    assert events == ["app enter: election leader", "app exit: election leader"]
    assert election.statistics().state == "stopped"
    assert not hasattr(app.state, DEFAULT_STATE_KEY)


async def test_shutdown_releases_leadership_at_once(factory: Callable[..., Factory]) -> None:
    elections = factory()
    async with running(make_app(elections)):
        assert elections.last.is_leader
    # Released, not left to expire: a new candidate leads on its first attempt.
    async with elections() as successor:
        assert successor.is_leader


async def test_a_factory_lets_the_same_app_start_twice(factory: Callable[..., Factory]) -> None:
    elections = factory()
    app = make_app(elections)
    tokens = []
    for cycle in range(2):
        async with running(app) as client:
            assert len(elections.made) == cycle + 1
            response = await client.post("/work")
            assert response.status_code == 200
            tokens.append(response.json()["fencing_token"])
            assert tokens[-1] == elections.last.fencing_token
        assert elections.last.statistics().state == "stopped"
    assert elections.made[0] is not elections.made[1]
    assert tokens[1] > tokens[0]


async def test_an_election_object_starts_the_app_once_and_says_to_pass_a_factory(
    factory: Callable[..., Factory],
) -> None:
    election = factory()()
    app = make_app(election)
    async with running(app):
        assert election.is_leader
    with pytest.raises(LeaderElectionError, match="pass a function that makes a new one"):
        async with running(app):
            pass
    assert election.statistics().state == "stopped"


async def test_a_failing_app_lifespan_leaves_no_running_election(
    factory: Callable[..., Factory],
) -> None:
    @asynccontextmanager
    async def broken(app: FastAPI) -> AsyncIterator[None]:
        assert getattr(app.state, DEFAULT_STATE_KEY).is_leader
        raise RuntimeError("the database is down")
        yield

    elections = factory()
    app = make_app(elections, lifespan=broken)
    with pytest.raises(RuntimeError, match="the database is down"):
        async with running(app):
            pass
    assert elections.last.statistics().state == "stopped"
    assert not elections.last.is_leader
    assert not hasattr(app.state, DEFAULT_STATE_KEY)
    async with elections() as successor:  # the lock was released, not left to expire
        assert successor.is_leader


async def test_an_app_state_that_reuses_the_state_key_is_refused(
    factory: Callable[..., Factory],
) -> None:
    @asynccontextmanager
    async def clashing(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {DEFAULT_STATE_KEY: "something else"}

    elections = factory()
    with pytest.raises(ConfigurationError, match="pass another state_key"):
        async with running(make_app(elections, lifespan=clashing)):
            pass
    assert elections.last.statistics().state == "stopped"


async def test_bad_election_arguments_are_refused(factory: Callable[..., Factory]) -> None:
    with pytest.raises(TypeError, match="LeaderElection or a zero-argument function"):
        election_lifespan(42)  # type: ignore[arg-type]
    app = make_app(lambda: "not an election")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="returned 'not an election', not a LeaderElection"):
        async with running(app):
            pass


async def test_a_custom_state_key_is_found_by_the_dependencies(
    factory: Callable[..., Factory],
) -> None:
    elections = factory()
    app = make_app(elections, state_key="billing_election")

    @app.get("/raw")
    async def raw(request: Request) -> dict[str, str]:
        return {"instance_id": request.state.billing_election.instance_id}

    async with running(app) as client:
        election = elections.last
        assert app.state.billing_election is election
        assert (await client.get("/raw")).json() == {"instance_id": election.instance_id}
        response = await client.post("/work")
        assert response.json() == {"fencing_token": election.fencing_token}
        status = (await client.get("/leader")).json()
        assert status["instance_id"] == election.instance_id


async def test_get_election_without_the_lifespan_says_how_to_fix_it() -> None:
    app = FastAPI()

    @app.get("/who")
    async def who(election: ElectionDep) -> str:
        return election.instance_id

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(ElectionNotRunningError, match=r"lifespan=election_lifespan\(\.\.\.\)"):
            await client.get("/who")


async def test_get_election_refuses_a_state_key_holding_something_else() -> None:
    app = FastAPI()
    setattr(app.state, DEFAULT_STATE_KEY, "not an election")

    @app.get("/who")
    async def who(election: ElectionDep) -> str:
        return election.instance_id

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(ConfigurationError, match="holds a str, not a LeaderElection"):
            await client.get("/who")


# ----------------------------------------------------------------- leader and follower views


@asynccontextmanager
async def leader_and_follower(
    factory: Callable[..., Factory],
) -> AsyncIterator[tuple[httpx.AsyncClient, LeaderElection, httpx.AsyncClient, LeaderElection]]:
    leaders, followers = factory(url=URL_A), factory(url=URL_B)
    async with running(make_app(leaders)) as a, running(make_app(followers)) as b:
        assert leaders.last.is_leader
        assert not followers.last.is_leader
        yield a, leaders.last, b, followers.last


async def test_leader_status_on_the_leader_and_on_a_follower(
    factory: Callable[..., Factory], name: str
) -> None:
    async with leader_and_follower(factory) as (a, leader, b, follower):
        on_leader = (await a.get("/leader")).json()
        on_follower = (await b.get("/leader")).json()
    assert on_leader["is_leader"] is True
    assert on_leader["instance_id"] == leader.instance_id
    assert on_leader["election"] == name
    assert on_leader["fencing_token"] == on_leader["leader_info"]["fencing_token"]
    assert on_leader["leader_info"]["instance_id"] == leader.instance_id
    assert on_leader["leader_info"]["metadata"] == {"url": URL_A}
    assert on_follower["is_leader"] is False
    assert on_follower["instance_id"] == follower.instance_id
    assert on_follower["fencing_token"] is None
    assert on_follower["leader_info"] == on_leader["leader_info"]


async def test_require_leader_hands_the_leader_its_token(factory: Callable[..., Factory]) -> None:
    async with leader_and_follower(factory) as (a, leader, _, _):
        response = await a.post("/work")
        assert response.status_code == 200
        assert response.json() == {"fencing_token": leader.fencing_token}


async def test_require_leader_on_a_follower_answers_503_naming_the_leader(
    factory: Callable[..., Factory], name: str
) -> None:
    async with leader_and_follower(factory) as (_, leader, b, follower):
        response = await b.post("/work")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"  # retry_interval 200ms, rounded up
    assert response.headers["x-leader-url"] == URL_A
    detail = response.json()["detail"]
    assert detail["error"] == "not_leader"
    assert detail["instance_id"] == follower.instance_id
    assert detail["leader"]["instance_id"] == leader.instance_id
    assert detail["leader"]["metadata"] == {"url": URL_A}
    assert detail["leader_url"] == URL_A
    message = detail["message"]
    assert f"This instance ({follower.instance_id}) is not the leader of election '{name}'" in (
        message
    )
    assert f"send the request to the leader, {leader.instance_id} at {URL_A}" in message


async def test_not_leader_without_an_advertised_url_has_no_header(
    factory: Callable[..., Factory],
) -> None:
    leaders, followers = factory(), factory(retry_interval="1.5s")
    async with running(make_app(leaders)), running(make_app(followers)) as b:
        response = await b.post("/work")
    assert response.status_code == 503
    assert "x-leader-url" not in response.headers
    assert response.headers["retry-after"] == str(math.ceil(1.5))
    detail = response.json()["detail"]
    assert detail["leader_url"] is None
    assert detail["leader"]["instance_id"] == leaders.last.instance_id
    assert detail["message"].endswith(f"{leaders.last.instance_id}, or retry in 2s.")


async def test_not_leader_while_no_one_leads(factory: Callable[..., Factory]) -> None:
    elections = factory()
    async with running(make_app(elections)) as client:
        await elections.last.resign()  # stays a candidate, held back for retry_interval
        response = await client.post("/work")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail["leader"] is None
    assert detail["leader_url"] is None
    assert "no instance leads it right now" in detail["message"]


async def test_an_advertised_url_unfit_for_a_header_is_not_passed_on(
    factory: Callable[..., Factory],
) -> None:
    bad = "http://10.0.0.5:8000\r\nSet-Cookie: session=evil"
    leaders, followers = factory(url=bad), factory()
    async with running(make_app(leaders)), running(make_app(followers)) as b:
        response = await b.post("/work")
    assert response.status_code == 503
    assert "x-leader-url" not in response.headers
    assert "set-cookie" not in response.headers
    detail = response.json()["detail"]
    assert detail["leader_url"] is None
    assert detail["leader"]["metadata"] == {"url": bad}  # the record itself, as stored


async def test_a_non_ascii_advertised_url_is_not_put_in_a_header(
    factory: Callable[..., Factory],
) -> None:
    url = "http://h\u00e9te.example:8000/\u20ac"  # HTTP headers are latin-1: not sent as one
    leaders, followers = factory(url=url), factory()
    async with running(make_app(leaders)), running(make_app(followers)) as b:
        response = await b.post("/work")
    assert response.status_code == 503
    assert "x-leader-url" not in response.headers
    assert response.json()["detail"]["leader"]["metadata"] == {"url": url}


@pytest.mark.parametrize("prefix", ["", "leader", "/leader/"])
def test_a_bad_prefix_is_refused_with_the_fix(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="must start with '/' and not end with one"):
        leader_router(prefix=prefix)


async def test_the_openapi_schema_documents_the_endpoints(factory: Callable[..., Factory]) -> None:
    async with running(make_app(factory())) as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    assert paths["/leader"]["get"]["tags"] == ["leader election"]
    ok = paths["/leader"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/LeaderStatus"}
    assert "503" in paths["/leader"]["get"]["responses"]
    ready = paths["/leader/ready"]["get"]
    assert [p["name"] for p in ready["parameters"]] == ["leader"]
    assert set(ready["responses"]) >= {"200", "503"}
    assert "503" in paths["/work"]["post"]["responses"]
    components = schema["components"]["schemas"]
    assert {"LeaderStatus", "Readiness", "NotLeaderDetail", "LeaderInfo"} <= set(components)


async def test_a_custom_prefix_and_tags(factory: Callable[..., Factory]) -> None:
    app = FastAPI(lifespan=election_lifespan(factory()))
    app.include_router(leader_router(prefix="/internal/election", tags=("ops",)))
    async with running(app) as client:
        assert (await client.get("/internal/election")).json()["is_leader"] is True
        assert (await client.get("/internal/election/ready")).status_code == 200
        schema = (await client.get("/openapi.json")).json()
    assert schema["paths"]["/internal/election"]["get"]["tags"] == ["ops"]


# -------------------------------------------------------------------------------- readiness


async def test_ready_on_leader_and_follower_and_leader_only(
    factory: Callable[..., Factory],
) -> None:
    async with leader_and_follower(factory) as (a, leader, b, follower):
        on_leader = await a.get("/leader/ready")
        on_follower = await b.get("/leader/ready")
        leader_only_on_leader = await a.get("/leader/ready", params={"leader": "true"})
        leader_only_on_follower = await b.get("/leader/ready", params={"leader": "true"})
    assert on_leader.status_code == 200
    assert on_leader.json() == {
        "ready": True,
        "reason": None,
        "is_leader": True,
        "state": "leader",
        "instance_id": leader.instance_id,
        "election": leader.config.name,
        "leader_id": leader.instance_id,
    }
    assert on_follower.status_code == 200
    body = on_follower.json()
    assert (body["ready"], body["is_leader"], body["state"]) == (True, False, "follower")
    assert body["leader_id"] == leader.instance_id
    assert leader_only_on_leader.status_code == 200
    assert leader_only_on_leader.json()["ready"] is True
    assert leader_only_on_follower.status_code == 503
    body = leader_only_on_follower.json()
    assert body["ready"] is False
    assert body["reason"] == "this instance is not the leader"
    assert body["instance_id"] == follower.instance_id
    assert body["leader_id"] == leader.instance_id  # the same leader as GET /leader names


async def test_ready_is_503_once_the_election_stopped(factory: Callable[..., Factory]) -> None:
    elections = factory()
    async with running(make_app(elections)) as client:
        assert (await client.get("/leader/ready")).status_code == 200
        await elections.last.stop()
        response = await client.get("/leader/ready")
        work = await client.post("/work")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["state"] == "stopped"
    assert body["reason"] == "the election is not running (state stopped)"
    assert work.status_code == 503


async def test_an_election_never_started_is_reported_not_read(name: str) -> None:
    app = FastAPI()
    app.include_router(leader_router())
    # Put there by hand, without election_lifespan; reading would make a client nothing closes.
    setattr(app.state, DEFAULT_STATE_KEY, LeaderElection(f"redis://127.0.0.1:{free_port()}/0"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        status = await client.get("/leader")
        ready = await client.get("/leader/ready")
    assert status.status_code == 503
    assert "the election has not been started" in status.json()["detail"]["message"]
    assert ready.status_code == 503
    assert ready.json()["reason"] == "the election is not running (state new)"
    assert ready.json()["state"] == "new"


async def test_store_read_failures_answer_503(
    factory: Callable[..., Factory], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with leader_and_follower(factory) as (a, leader, b, follower):
        monkeypatch.setattr(LeaderElection, "get_leader_info", failing_read)
        status = await b.get("/leader")
        ready = await b.get("/leader/ready")
        work = await b.post("/work")
        # The leader needs no read to know it leads: require_leader still lets it through.
        leader_work = await a.post("/work")
        token = leader.fencing_token
        monkeypatch.undo()
    assert status.status_code == 503
    detail = status.json()["detail"]
    assert detail["error"] == "store_unavailable"
    assert detail["instance_id"] == follower.instance_id
    assert detail["is_leader"] is False
    assert "could not be read from the store" in detail["message"]
    assert "did not answer within 0.5s" in detail["message"]
    assert ready.status_code == 503
    assert ready.json()["ready"] is False
    assert ready.json()["reason"].startswith("the store could not be read: Redis did not answer")
    assert work.status_code == 503
    assert "x-leader-url" not in work.headers
    assert work.headers["retry-after"] == "1"
    detail = work.json()["detail"]
    assert detail["leader"] is None
    assert detail["leader_url"] is None
    assert "could not be read from the store (StoreUnavailableError)" in detail["message"]
    assert leader_work.status_code == 200
    assert leader_work.json() == {"fencing_token": token}


async def test_an_unreachable_store_makes_the_instance_unready(name: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    elections = Factory(lambda: LeaderElection(url, make_config(name)))
    async with running(make_app(elections)) as client:
        election = elections.last
        assert not election.is_leader
        assert election.statistics().state in ("follower", "held_back")
        ready = await client.get("/leader/ready")
        status = await client.get("/leader")
        work = await client.post("/work")
    assert ready.status_code == 503
    assert ready.json()["reason"].startswith("the store could not be read: Redis is unavailable")
    assert status.status_code == 503
    assert status.json()["detail"]["error"] == "store_unavailable"
    assert work.status_code == 503
    assert work.json()["detail"]["leader"] is None
    assert elections.last.statistics().state == "stopped"


# -------------------------------------------------------------------------------- packaging


def test_importing_without_fastapi_says_how_to_install_it() -> None:
    module = sys.modules["leaderelection.fastapi"]
    with pytest.MonkeyPatch.context() as patch:
        patch.delitem(sys.modules, "leaderelection.fastapi")
        patch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
        with pytest.raises(
            ImportError, match=r'pip install "leaderelection-redis\[fastapi\]"'
        ) as err:
            importlib.import_module("leaderelection.fastapi")
    assert err.value.name == "fastapi"
    assert isinstance(err.value.__cause__, ImportError)
    assert sys.modules["leaderelection.fastapi"] is module
    assert importlib.import_module("leaderelection.fastapi").get_election is get_election


def test_importing_leaderelection_does_not_import_fastapi() -> None:
    code = "import sys, leaderelection; assert 'fastapi' not in sys.modules, 'fastapi imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# ------------------------------------------------------------------------ real redis-server


@pytest.mark.redis
async def test_two_apps_on_real_redis_agree_and_hand_over(shared_redis: Any, name: str) -> None:
    # A 5 s lease renewed every second: a takeover within 3 s can only come from the release.
    def candidates(url: str) -> Factory:
        config = make_config(name, url, lock_ttl="5s", heartbeat_interval="1s")
        return Factory(lambda: LeaderElection(shared_redis.url, config))

    factories = {url: candidates(url) for url in (URL_A, URL_B)}
    async with AsyncExitStack() as outer:
        apps: dict[str, AsyncExitStack] = {}
        clients: dict[str, httpx.AsyncClient] = {}
        for url, elections in factories.items():
            apps[url] = AsyncExitStack()
            outer.push_async_callback(apps[url].aclose)
            clients[url] = await apps[url].enter_async_context(running(make_app(elections)))
        leading = [url for url, f in factories.items() if f.last.is_leader]
        assert len(leading) == 1
        leader_url = leading[0]
        follower_url = URL_B if leader_url == URL_A else URL_A
        leader, follower = factories[leader_url].last, factories[follower_url].last
        assert not follower.is_leader

        views = {url: (await client.get("/leader")).json() for url, client in clients.items()}
        assert views[leader_url]["is_leader"] is True
        assert views[leader_url]["instance_id"] == leader.instance_id
        assert views[follower_url]["is_leader"] is False
        assert views[follower_url]["instance_id"] == follower.instance_id
        assert views[leader_url]["leader_info"] == views[follower_url]["leader_info"]
        info = views[follower_url]["leader_info"]
        assert info["instance_id"] == leader.instance_id
        assert info["metadata"] == {"url": leader_url}

        refused = await clients[follower_url].post("/work")
        assert refused.status_code == 503
        assert refused.headers["x-leader-url"] == leader_url
        detail = refused.json()["detail"]
        assert detail["leader"]["instance_id"] == leader.instance_id
        assert detail["leader_url"] == leader_url
        assert f"{leader.instance_id} at {leader_url}" in detail["message"]
        old_token = leader.fencing_token
        assert old_token is not None

        await apps[leader_url].aclose()  # the leader's app shuts down; the other keeps running
        assert leader.statistics().state == "stopped"
        await follower.wait_until_leader(timeout=3)
        assert follower.fencing_token is not None
        assert follower.fencing_token > old_token
        now = (await clients[follower_url].get("/leader")).json()
        assert now["is_leader"] is True
        assert now["leader_info"]["instance_id"] == follower.instance_id
        assert now["leader_info"]["metadata"] == {"url": follower_url}
        accepted = await clients[follower_url].post("/work")
        assert accepted.json() == {"fencing_token": follower.fencing_token}


# ------------------------------------------------------------------------- shutdown signals


@pytest.fixture
def server_handler() -> Iterator[list[int]]:
    """A stand-in for the ASGI server's SIGTERM handler (uvicorn installs one); records calls."""
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        received.append(signum)

    before = signal.signal(signal.SIGTERM, handle)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, before)


async def test_a_shutdown_signal_leaves_the_election_before_the_drain(
    factory: Callable[..., Factory], server_handler: list[int]
) -> None:
    server_handle = signal.getsignal(signal.SIGTERM)
    leaders, followers = factory(), factory()
    async with running(make_app(leaders)) as a, running(make_app(followers)):
        assert leaders.last.is_leader
        assert signal.getsignal(signal.SIGTERM) is not server_handle  # chained in front
        os.kill(os.getpid(), signal.SIGTERM)
        # Both apps still serve (the server has not shut them down), yet the signal alone made
        # their elections leave: neither is left to take over the other's release.
        await eventually(lambda: leaders.last.statistics().state == "stopped")
        await eventually(lambda: followers.last.statistics().state == "stopped")
        assert not followers.last.is_leader
        assert server_handler == [signal.SIGTERM]  # the server's own handler still ran
        ready = await a.get("/leader/ready")
        assert ready.status_code == 503  # a load balancer stops sending work here
    assert signal.getsignal(signal.SIGTERM) is server_handle  # put back at shutdown


async def test_leave_on_signal_false_and_default_handlers_are_left_alone(
    factory: Callable[..., Factory],
) -> None:
    before_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    before_term = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        async with running(make_app(factory())):
            # No server handler to chain to: nothing is installed (Ctrl-C still interrupts).
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before_int)
        signal.signal(signal.SIGTERM, before_term)

    def handle(signum: int, frame: Any) -> None:
        raise AssertionError("not sent")

    before = signal.signal(signal.SIGTERM, handle)
    try:
        async with running(make_app(factory(), leave_on_signal=False)):
            assert signal.getsignal(signal.SIGTERM) is handle
    finally:
        signal.signal(signal.SIGTERM, before)
