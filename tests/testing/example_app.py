"""The app that docs/testing.md tests, included there by section: a FastAPI service whose report
rebuild runs on the leader only. It is an ordinary app: nothing in it is there for the tests."""

from __future__ import annotations

import os
from collections.abc import Callable

from fastapi import FastAPI

from leaderelection import ElectionConfig, ElectionProtocol, LeaderElection
from leaderelection.fastapi import (
    NOT_LEADER_RESPONSES,
    LeaderToken,
    election_lifespan,
    leader_router,
)


# --8<-- [start:app]
def make_election() -> ElectionProtocol:
    config = ElectionConfig.from_env(name="reports")
    return LeaderElection(os.environ.get("REDIS_URL", "redis://localhost:6379/0"), config)


def create_app(election: Callable[[], ElectionProtocol] = make_election) -> FastAPI:
    app = FastAPI(lifespan=election_lifespan(election))
    app.include_router(leader_router())  # GET /leader and GET /leader/ready

    @app.post("/reports/rebuild", responses=NOT_LEADER_RESPONSES)
    async def rebuild(token: LeaderToken) -> dict[str, int]:
        # Only the leader gets here; a follower answers 503 naming the leader.
        return {"rebuilt_with_token": token}

    return app
    # --8<-- [end:app]
