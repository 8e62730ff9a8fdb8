"""A FastAPI app whose periodic job runs once across the whole fleet.

Every uvicorn worker, on every host, is a candidate; exactly one of them leads and runs the job.
Run it from the repository root (``pip install ".[fastapi,prometheus]" uvicorn``)::

    REDIS_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app --workers 3

Then ``curl localhost:8000/leader`` says who leads, and ``redis-cli lrange example:job-runs 0 -1``
lists the job's runs: one instance at a time, each run carrying its term's fencing token.
``curl localhost:8000/metrics`` is the Prometheus scrape of the worker that answers:
``leader_election_master_status`` and the ``leaderelection_*`` metrics (docs/monitoring.md).
With ``--workers N`` each scrape reaches one worker of the N; to see every candidate, run one
worker per process or container (the usual setup under Kubernetes) and scrape each.

Environment:
    REDIS_URL: The Redis (or Valkey) URL, in any form the library takes (a cluster node's
        ``redis://``, ``redis+sentinel://...``); default ``redis://localhost:6379/0``.
    ADVERTISED_URL: Where this host serves, advertised while it leads so that followers can send
        clients to it; default ``http://<hostname>:8000``.
    JOB_INTERVAL: Seconds between two runs of the job; default 5.
    LEADER_ELECTION_*: The election's settings (``ElectionConfig.from_env``), e.g.
        ``LEADER_ELECTION_NAME`` (default here ``example-jobs``) or ``LEADER_ELECTION_LOCK_TTL``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.asyncio import Redis

from leaderelection import ElectionConfig, LeaderElection
from leaderelection.fastapi import (
    NOT_LEADER_RESPONSES,
    ElectionDep,
    LeaderToken,
    election_lifespan,
    leader_router,
)
from leaderelection.prometheus import LeaderElectionCollector

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
ADVERTISED_URL = os.environ.get("ADVERTISED_URL", f"http://{socket.gethostname()}:8000")
ELECTION_NAME = os.environ.get("LEADER_ELECTION_NAME", "example-jobs")
JOB_INTERVAL = float(os.environ.get("JOB_INTERVAL", "5"))
JOB_RUNS_KEY = "example:job-runs"
JOB_RUNS_KEPT = 10_000

# The library logs elections, terms and failures on the "leaderelection" logger at INFO.
logging.basicConfig(
    level=logging.INFO, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
)
logger = logging.getLogger("examples.fastapi_app")


async def run_job(redis: Redis, instance_id: str, fencing_token: int) -> str:
    """The job: here it only records that it ran, who ran it, and with which fencing token.

    A real job passes the token on to what it writes to, which can then refuse a stale leader.
    """
    record = f"{time.time():.6f} {instance_id} {fencing_token}"
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.rpush(JOB_RUNS_KEY, record).ltrim(JOB_RUNS_KEY, -JOB_RUNS_KEPT, -1).execute()
    logger.info("Job ran: %s (fencing token %d)", instance_id, fencing_token)
    return record


# --8<-- [start:election]
def make_election() -> LeaderElection:
    """Called once per worker process at startup: each worker is a candidate of its own."""
    config = ElectionConfig.from_env(name=ELECTION_NAME, metadata={"url": ADVERTISED_URL})
    election = LeaderElection(REDIS_URL, config)

    @election.while_leader  # started when this worker's term starts, cancelled when it ends
    async def periodic_job() -> None:
        token = election.fencing_token
        if token is None:  # the term already ended
            return
        async with Redis.from_url(REDIS_URL) as redis:
            while True:
                await run_job(redis, election.instance_id, token)
                await asyncio.sleep(JOB_INTERVAL)

    return election


app = FastAPI(title="leaderelection example", lifespan=election_lifespan(make_election))
app.include_router(leader_router())  # GET /leader and GET /leader/ready
# --8<-- [end:election]

# --8<-- [start:metrics]
# Every election of this process in each scrape: read from memory, no call to Redis.
REGISTRY.register(LeaderElectionCollector())


@app.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    # A plain function: FastAPI runs it in a thread, off the event loop.
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
    # --8<-- [end:metrics]


@app.get("/")
async def index() -> dict[str, str]:
    return {
        "app": "leaderelection example: a periodic job that runs once across the fleet",
        "leader": "GET /leader says who leads; GET /leader/ready is a readiness probe",
        "run_now": "POST /jobs/run-now runs the job at once (leader only; 503 elsewhere)",
        "metrics": "GET /metrics is the Prometheus scrape",
    }


# --8<-- [start:leader-only]
@app.post("/jobs/run-now", responses=NOT_LEADER_RESPONSES)  # the 503 in the OpenAPI schema
async def run_now(token: LeaderToken, election: ElectionDep) -> dict[str, str | int]:
    # Only the leader gets here: a follower answers 503, naming the leader and its URL.
    async with Redis.from_url(REDIS_URL) as redis:
        record = await run_job(redis, election.instance_id, token)
    return {"record": record, "fencing_token": token}
    # --8<-- [end:leader-only]
