"""FastAPI integration: run an election for the life of the app, and serve who leads.

Install with ``pip install "leaderelection-redis[fastapi]"``. Every uvicorn worker process is a
candidate; exactly one worker across all hosts leads::

    import asyncio
    import os

    from fastapi import FastAPI

    from leaderelection import ElectionConfig, LeaderElection
    from leaderelection.fastapi import LeaderToken, election_lifespan, leader_router


    def make_election() -> LeaderElection:
        config = ElectionConfig.from_env(name="billing", metadata={"url": os.environ["PUBLIC_URL"]})
        election = LeaderElection(os.environ["REDIS_URL"], config)

        @election.while_leader  # one scheduler across the whole fleet
        async def scheduler() -> None:
            while True:
                await run_due_jobs(fencing_token=election.fencing_token)
                await asyncio.sleep(60)

        return election


    app = FastAPI(lifespan=election_lifespan(make_election))
    app.include_router(leader_router())  # GET /leader and GET /leader/ready


    @app.post("/reports/rebuild")
    async def rebuild(token: LeaderToken) -> dict[str, int]:
        # Only the leader gets here; a follower answers 503 naming the leader and its URL.
        await rebuild_reports(fencing_token=token)
        return {"fencing_token": token}

The pieces:

- :func:`election_lifespan` starts the election when the app starts (the app's own lifespan runs
  inside it) and stops it, releasing leadership, when the server is told to shut down.
- :func:`get_election` / :data:`ElectionDep` hand the running election to a path operation.
- :func:`require_leader` / :data:`LeaderToken` let only the leader run a path operation, and give
  it the term's fencing token.
- :func:`leader_router` serves ``GET /leader`` (who leads, as this worker sees it) and
  ``GET /leader/ready`` (a readiness probe).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import FrameType
from typing import Annotated, Any, Final, Literal, TypeAlias, TypeGuard, cast

from pydantic import BaseModel, Field

try:
    from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
    from starlette.types import Lifespan
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise ImportError(
        "leaderelection.fastapi needs FastAPI, which could not be imported "
        f'({exc}); install it with: pip install "leaderelection-redis[fastapi]"',
        name=exc.name,
    ) from exc

from ._election import LeaderElection
from ._exceptions import ConfigurationError, ElectionNotRunningError, LeaderElectionError
from ._info import LeaderInfo
from ._protocol import ElectionProtocol

__all__ = [
    "DEFAULT_STATE_KEY",
    "LEADER_URL_KEY",
    "NOT_LEADER_RESPONSES",
    "ElectionDep",
    "LeaderStatus",
    "LeaderToken",
    "NotLeaderDetail",
    "Readiness",
    "election_lifespan",
    "get_election",
    "leader_router",
    "require_leader",
]

logger = logging.getLogger("leaderelection")

LEADER_URL_KEY: Final = "url"
"""The ``ElectionConfig.metadata`` key under which a leader advertises the URL it serves at.

Set it on every candidate, each with its own address (``metadata={"url":
"http://10.0.0.5:8000"}``, or ``LEADER_ELECTION_METADATA=url=http://10.0.0.5:8000``): followers
then name the leader's URL in :func:`require_leader`'s 503 (``leader_url`` and the
``X-Leader-URL`` header).
"""

DEFAULT_STATE_KEY: Final = "leader_election"
"""The default key of the election in the lifespan state and on ``app.state``."""

# Where election_lifespan records its state key on app.state, so that get_election finds the
# election under a custom key too.
_STATE_KEY_ATTR: Final = "leaderelection_state_key"
_RUNNING_STATES: Final = frozenset({"follower", "leader", "held_back"})

_ElectionSource: TypeAlias = ElectionProtocol | Callable[[], ElectionProtocol]
# What FastAPI(lifespan=...) takes: a context-manager factory, or an async generator function.
_AppLifespan: TypeAlias = Lifespan[FastAPI] | Callable[[FastAPI], AsyncIterator[Any]]
_ContextFactory: TypeAlias = Callable[
    [FastAPI], AbstractAsyncContextManager[Mapping[str, Any] | None]
]


# ---------------------------------------------------------------------------------- lifespan


def election_lifespan(
    election: ElectionProtocol | Callable[[], ElectionProtocol],
    *,
    lifespan: _AppLifespan | None = None,
    state_key: str = DEFAULT_STATE_KEY,
    leave_on_signal: bool = True,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    """Make a FastAPI lifespan that runs ``election`` for as long as the app runs.

    Use it as ``FastAPI(lifespan=election_lifespan(...))``. On startup it enters the election
    (``async with``: it returns once the first acquisition attempt has finished, so
    ``is_leader`` is meaningful by the time the app serves), puts it on ``app.state``, then
    enters the app's own ``lifespan`` inside it, and yields the lifespan state
    ``{state_key: election, **the app's lifespan state}``. The election stops, releasing
    leadership so that a candidate in another worker takes over within milliseconds, as soon as
    the server gets SIGTERM or SIGINT (``leave_on_signal``), else when the app's lifespan has
    exited at shutdown. If anything in startup fails, the election is stopped before the error
    propagates.

    Args:
        election: A :class:`LeaderElection`, or a zero-argument callable returning a new one
            each time it is called. A stopped election cannot be started again, so pass a
            factory if the same app object may start more than once (tests, for example).
            Anything with the election's surface (:class:`ElectionProtocol`), such as the test
            double ``leaderelection.testing.FakeLeaderElection``, is taken too.
        lifespan: The app's own lifespan (what you would otherwise pass to ``FastAPI``): a
            callable taking the app and returning an async context manager, or an async
            generator function. It may read the election from ``app.state.<state_key>``, for
            example to register ``while_leader`` tasks. The state it yields is merged into the
            lifespan state.
        state_key: The name of the election in the lifespan state (``request.state``) and on
            ``app.state``; :func:`get_election` finds it there.
        leave_on_signal: Stop the election as soon as the server is told to shut down (SIGTERM
            or SIGINT), rather than after open requests have drained. Without it, when a whole
            host stops, the leader's release can hand leadership to a worker of the same host
            that is itself shutting down, and so on through that host's workers. It chains in
            front of the server's own handler (uvicorn's, gunicorn's), which still runs; it
            is installed only in the main thread, and only where such a handler is in place,
            and removed at shutdown.

    Returns:
        The lifespan: a callable taking the app and returning an async context manager that
        yields the lifespan state.

    Raises:
        TypeError: ``election`` is neither a LeaderElection nor a callable (raised at once), or
            the factory returned something else (raised at startup).
        ConfigurationError: at startup, the app's lifespan state already has ``state_key``.
        LeaderElectionError: at startup, a LeaderElection (not a factory) was already started.
            ``start()``'s own errors (a wrong password, a read-only replica, ...) also fail the
            startup.
    """
    if not _is_election(election) and not callable(election):
        raise TypeError(
            "election_lifespan needs a LeaderElection or a zero-argument function returning one, "
            f"got {election!r}"
        )
    app_lifespan = _as_context_factory(lifespan)

    @asynccontextmanager
    async def run_election(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        current = _resolve(election)
        async with current:
            setattr(app.state, _STATE_KEY_ATTR, state_key)
            setattr(app.state, state_key, current)
            restore = _leave_on_shutdown_signal(current) if leave_on_signal else _nothing
            try:
                if app_lifespan is None:
                    yield {state_key: current}
                else:
                    async with app_lifespan(app) as app_state:
                        yield _merge_state(state_key, current, app_state)
            finally:
                restore()
                if getattr(app.state, state_key, None) is current:
                    delattr(app.state, state_key)

    return run_election


_SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
_stopping: set[asyncio.Task[None]] = set()  # stops begun by a signal, referenced until done


def _nothing() -> None:
    return None


def _leave_on_shutdown_signal(election: ElectionProtocol) -> Callable[[], None]:
    """Chain a handler in front of the server's SIGTERM / SIGINT handlers that starts stopping
    ``election`` at once; return the function that puts the server's handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return _nothing  # signal handlers can only be set from the main thread
    loop = asyncio.get_running_loop()
    previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def begin_stop() -> None:
        if election.statistics().state in ("stopping", "stopped"):
            return
        logger.info(
            "Shutdown signal received: leaving the election now",
            extra={"election": election.config.name, "instance_id": election.instance_id},
        )
        task = loop.create_task(election.stop())
        _stopping.add(task)
        task.add_done_callback(_stopping.discard)

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(begin_stop)
        previous[signum](signum, frame)

    for signum in _SHUTDOWN_SIGNALS:
        current = signal.getsignal(signum)
        # Only a server's own handler: not the default (SIG_DFL, SIG_IGN, or Python's SIGINT
        # handler that raises KeyboardInterrupt), where no graceful shutdown would follow.
        if callable(current) and current is not signal.default_int_handler:
            previous[signum] = current
            signal.signal(signum, handler)

    def restore() -> None:
        for signum, server_handler in previous.items():
            if signal.getsignal(signum) is handler:
                signal.signal(signum, server_handler)

    return restore


def _is_election(obj: object) -> TypeGuard[ElectionProtocol]:
    """Whether ``obj`` is a LeaderElection or has its surface (a test double)."""
    return isinstance(obj, LeaderElection | ElectionProtocol)


def _resolve(election: _ElectionSource) -> ElectionProtocol:
    """The election to run for this start of the app: the one given, or a new one."""
    if _is_election(election):
        state = election.statistics().state
        if state != "new":
            raise LeaderElectionError(
                f"the LeaderElection given to election_lifespan was already started (state "
                f"{state}) and cannot be started again: pass a function that makes a new one, "
                "e.g. election_lifespan(lambda: LeaderElection(url, config))"
            )
        return election
    made = cast("Callable[[], object]", election)()  # not an election: the factory
    if not _is_election(made):
        raise TypeError(
            f"the election factory given to election_lifespan returned {made!r}, not a "
            "LeaderElection"
        )
    return made


def _as_context_factory(lifespan: _AppLifespan | None) -> _ContextFactory | None:
    """The app's lifespan as a context-manager factory (FastAPI also takes async generators)."""
    if lifespan is not None and inspect.isasyncgenfunction(lifespan):
        return asynccontextmanager(lifespan)
    return cast("_ContextFactory | None", lifespan)


def _merge_state(
    state_key: str, election: ElectionProtocol, app_state: Mapping[str, Any] | None
) -> dict[str, Any]:
    if app_state is None:
        return {state_key: election}
    if state_key in app_state:
        raise ConfigurationError(
            f"the app's lifespan state already has the key {state_key!r}, where "
            "election_lifespan puts the election: pass another state_key"
        )
    return {state_key: election, **app_state}


# ------------------------------------------------------------------------------ dependencies


def get_election(request: Request) -> LeaderElection:
    """The app's election, for path operations and other dependencies.

    Looks in the lifespan state (``request.state``) first, then on ``app.state``, under the
    ``state_key`` given to :func:`election_lifespan`. Use it as ``Depends(get_election)`` or
    through :data:`ElectionDep`. The election is returned in whatever state it is in; it is not
    required to lead, nor to be running. In tests, it is the double given to
    :func:`election_lifespan` (``leaderelection.testing.FakeLeaderElection``), with the same
    surface.

    Raises:
        ElectionNotRunningError: no election was found: the app was not created with
            ``FastAPI(lifespan=election_lifespan(...))``, or its lifespan has not run (an ASGI
            server or test client that skips the lifespan).
    """
    app_state = request.app.state
    key = getattr(app_state, _STATE_KEY_ATTR, DEFAULT_STATE_KEY)
    election = getattr(request.state, key, None)
    if election is None:
        election = getattr(app_state, key, None)
    if election is None:
        raise ElectionNotRunningError(
            f"no LeaderElection found in the request state or on app.state under {key!r}: create "
            "the app with FastAPI(lifespan=election_lifespan(...)) and run it with its lifespan "
            "(uvicorn does; in tests, use asgi_lifespan.LifespanManager or "
            "`with TestClient(app)`)"
        )
    if not _is_election(election):
        raise ConfigurationError(
            f"the state key {key!r} holds a {type(election).__name__}, not a LeaderElection: "
            "pass election_lifespan a state_key that nothing else uses"
        )
    # Typed as the real election for path operations; a test double has the same surface.
    return cast(LeaderElection, election)


ElectionDep = Annotated[LeaderElection, Depends(get_election)]
"""``election: ElectionDep`` in a path operation's parameters receives the app's election."""


class NotLeaderDetail(BaseModel):
    """The ``detail`` of the 503 that :func:`require_leader` answers on a follower.

    Attributes:
        error: Always ``"not_leader"``.
        message: A sentence saying which instance answered, and where to send the request.
        instance_id: The instance that answered (a follower).
        leader: The leader's record as read from the store, or None when no instance leads or
            the store could not be read.
        leader_url: The leader's ``metadata["url"]`` (:data:`LEADER_URL_KEY`), or None.
    """

    error: Literal["not_leader"] = "not_leader"
    message: str
    instance_id: str
    leader: LeaderInfo | None
    leader_url: str | None


class _NotLeaderResponse(BaseModel):
    detail: NotLeaderDetail


NOT_LEADER_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    503: {
        "model": _NotLeaderResponse,
        "description": "This instance is not the leader; `detail.leader_url` and the "
        "`X-Leader-URL` header name the leader when it advertises a URL.",
    }
}
"""Pass as ``responses=NOT_LEADER_RESPONSES`` to a path operation that uses
:func:`require_leader`, so that its OpenAPI schema documents the 503."""


async def require_leader(election: ElectionDep) -> int:
    """Let only the leader run a path operation; return the current term's fencing token.

    Use it as ``token: LeaderToken`` (or ``Depends(require_leader)`` in a decorator's
    ``dependencies``). The token is the one to pass to the resources the handler writes to.
    Leadership can end while the handler runs: the token, not a second ``is_leader`` check, is
    what lets those resources reject a stale leader.

    On a follower it reads the leader's record from the store and answers 503 with
    :class:`NotLeaderDetail` as the ``detail``, a ``Retry-After`` header (``retry_interval``
    rounded up to whole seconds) and, when the leader advertises a URL in its metadata, an
    ``X-Leader-URL`` header. If the store cannot be read, the 503 says so, with ``leader`` null.

    Raises:
        HTTPException: 503, this instance does not lead.
        ElectionNotRunningError: the app has no election (see :func:`get_election`).
    """
    token = election.fencing_token
    if token is not None:
        return token
    raise await _not_leader(election)


LeaderToken = Annotated[int, Depends(require_leader)]
"""``token: LeaderToken`` in a path operation's parameters: only the leader runs the operation,
and receives the term's fencing token."""


async def _not_leader(election: LeaderElection) -> HTTPException:
    config = election.config
    me = election.instance_id
    retry_after = max(1, math.ceil(config.retry_interval.total_seconds()))
    headers = {"Retry-After": str(retry_after)}
    opening = f"This instance ({me}) is not the leader of election '{config.name}'"
    info: LeaderInfo | None = None
    url: str | None = None
    try:
        info = await _read_leader(election)
    except LeaderElectionError as exc:
        logger.warning(
            "Could not read the leader of election %r for a 503: %s",
            config.name,
            exc,
            extra={"election": config.name, "instance_id": me},
        )
        message = (
            f"{opening}, and the leader could not be read from the store "
            f"({type(exc).__name__}); retry in {retry_after}s."
        )
    else:
        if info is None:
            message = f"{opening}, and no instance leads it right now; retry in {retry_after}s."
        elif info.instance_id == me:
            message = f"{opening}: its term is ending; retry in {retry_after}s."
        else:
            url = _leader_url(info)
            where = f" at {url}" if url is not None else ""
            message = (
                f"{opening}; send the request to the leader, {info.instance_id}{where}, or "
                f"retry in {retry_after}s."
            )
    if url is not None:
        headers["X-Leader-URL"] = url
    detail = NotLeaderDetail(message=message, instance_id=me, leader=info, leader_url=url)
    return HTTPException(503, detail=detail.model_dump(mode="json"), headers=headers)


def _leader_url(info: LeaderInfo) -> str | None:
    """The URL the leader advertises, if it is fit for a header: printable ASCII (HTTP headers
    are latin-1, and a control character could split the header)."""
    url = info.metadata.get(LEADER_URL_KEY)
    return url if url and url.isascii() and url.isprintable() else None


async def _read_leader(election: LeaderElection) -> LeaderInfo | None:
    """The leader's record, from the store.

    Raises:
        ElectionNotRunningError: the election was never started (reading would make a client
            that nothing closes).
        LeaderElectionError: the store could not be read.
    """
    if election.statistics().state == "new":
        raise ElectionNotRunningError("the election has not been started")
    return await election.get_leader_info()


# ------------------------------------------------------------------------------------ router


class LeaderStatus(BaseModel):
    """What ``GET /leader`` answers: this worker's view of the election.

    Attributes:
        is_leader: Whether the instance that answered leads.
        instance_id: The instance that answered (each worker has its own).
        election: The election's name.
        fencing_token: The current term's token if this instance leads, else None.
        leader_info: The leader's record, read from the store; None when no instance leads.
            Every worker reads the same record.
    """

    is_leader: bool
    instance_id: str
    election: str
    fencing_token: int | None
    leader_info: LeaderInfo | None


class Readiness(BaseModel):
    """What ``GET /leader/ready`` answers, with 200 when ready and 503 when not.

    Attributes:
        ready: Whether this instance is ready.
        reason: Why it is not ready; None when it is.
        is_leader: Whether this instance leads.
        state: The election's ``statistics().state``: ``"follower"``, ``"leader"``,
            ``"held_back"``, ``"new"``, ``"stopping"`` or ``"stopped"``.
        instance_id: The instance that answered.
        election: The election's name.
        leader_id: The leader's instance id as just read from the store; None when no instance
            leads or the store was not read.
    """

    ready: bool
    reason: str | None = None
    is_leader: bool
    state: str
    instance_id: str
    election: str
    leader_id: str | None = None


class _ErrorDetail(BaseModel):
    error: str = Field(examples=["store_unavailable"])
    message: str
    instance_id: str
    election: str
    is_leader: bool


class _ErrorResponse(BaseModel):
    detail: _ErrorDetail


def leader_router(
    *, prefix: str = "/leader", tags: tuple[str, ...] = ("leader election",)
) -> APIRouter:
    """Make a router serving the election's status and a readiness probe.

    Include it with ``app.include_router(leader_router())``. Both endpoints answer for the
    worker that receives the request, read the leader's record from the store (one ``GET``), and
    need the app's election (see :func:`election_lifespan`).

    - ``GET {prefix}``: :class:`LeaderStatus`. 503 if the store cannot be read.
    - ``GET {prefix}/ready``: :class:`Readiness`, 200 while this instance's election is running
      and the store answered; 503 when the election is not running (not started, stopping,
      stopped) or the store cannot be read. With ``?leader=true`` it is also 503 unless this
      instance leads, so that a load balancer can route to the leader only.

    Args:
        prefix: The path of the status endpoint; the probe is at ``{prefix}/ready``. Must start
            with ``/`` and not end with one.
        tags: OpenAPI tags of both endpoints.

    Returns:
        A new ``APIRouter``.

    Raises:
        ConfigurationError: ``prefix`` does not start with ``/``, or ends with one.
    """
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigurationError(
            f"leader_router prefix must start with '/' and not end with one, got {prefix!r} "
            "(for example '/leader' or '/internal/election')"
        )
    router = APIRouter(prefix=prefix, tags=list(tags))

    @router.get(
        "",
        response_model=LeaderStatus,
        summary="Who leads the election",
        responses={503: {"model": _ErrorResponse, "description": "The store cannot be read"}},
    )
    async def leader_status(election: ElectionDep) -> LeaderStatus:
        """This worker's view of the election: whether it leads, and the leader's record."""
        try:
            info = await _read_leader(election)
        except LeaderElectionError as exc:
            raise HTTPException(
                503,
                detail=_ErrorDetail(
                    error="store_unavailable",
                    message=f"The leader could not be read from the store: {exc}",
                    instance_id=election.instance_id,
                    election=election.config.name,
                    is_leader=election.is_leader,
                ).model_dump(mode="json"),
            ) from exc
        return LeaderStatus(
            is_leader=election.is_leader,
            instance_id=election.instance_id,
            election=election.config.name,
            fencing_token=election.fencing_token,
            leader_info=info,
        )

    @router.get(
        "/ready",
        response_model=Readiness,
        summary="Readiness probe",
        responses={503: {"model": Readiness, "description": "Not ready; `reason` says why"}},
    )
    async def leader_ready(
        election: ElectionDep,
        response: Response,
        leader: Annotated[
            bool, Query(description="Also answer 503 unless this instance leads.")
        ] = False,
    ) -> Readiness:
        """200 while the election runs and the store answers; 503 with a reason otherwise."""
        state = election.statistics().state
        reason: str | None = None
        leader_id: str | None = None
        if state not in _RUNNING_STATES:
            reason = f"the election is not running (state {state})"
        else:
            # Read on leader and follower alike, so that the body names the leader that
            # GET /leader names.
            try:
                info = await _read_leader(election)
            except LeaderElectionError as exc:
                reason = f"the store could not be read: {exc}"
            else:
                leader_id = info.instance_id if info is not None else None
            if leader and not election.is_leader:
                reason = "this instance is not the leader"
        if reason is not None:
            response.status_code = 503
        stats = election.statistics()
        return Readiness(
            ready=reason is None,
            reason=reason,
            is_leader=stats.is_leader,
            state=stats.state,
            instance_id=election.instance_id,
            election=election.config.name,
            leader_id=leader_id,
        )

    return router
