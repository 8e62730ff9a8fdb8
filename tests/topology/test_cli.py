"""The command line on real topologies: ``status``, ``watch`` and ``run`` given the ``redis://``
URL of a Redis Cluster node that does not own the election's slot, or a ``redis+sentinel://``
URL; with every sentinel down, one clear error line naming them; a sentinel URL without a
service name, a usage error before anything is contacted.

Each command is a real process (``python -m leaderelection``); the candidates it reads are
in-process elections or other ``run`` processes. The cluster (3 masters with a replica each) and
the Sentinel deployment (a master, a replica, 3 sentinels) are shared by the module's tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from leaderelection import ElectionConfig, LeaderElection
from leaderelection.cli._common import ExitCode
from tests.cli import conftest as cli_fixtures
from tests.cli import test_status_watch as cli_helpers
from tests.cli.conftest import RunProcess, clean_env
from tests.cli.test_status_watch import Result, Watch, cli
from tests.redis_harness import ClusterServers, SentinelServers
from tests.support import fast_config
from tests.topology.test_cluster import elsewhere

pytestmark = pytest.mark.redis

# The fixtures of tests/cli, shared rather than copied: `run` and `watch` processes, each killed
# at teardown.
start_run = cli_fixtures.start_run
start_watch = cli_helpers.start_watch

# The candidates' timings, given to every command: a 10 s lease (a handoff seen within it came
# from the release notice) and call deadlines of 1 s (a cluster client's first call also
# discovers the slots).
TIMINGS = ("--lock-ttl", "10s", "--heartbeat-interval", "1s", "--retry-interval", "200ms")


def config(name: str, **overrides: Any) -> ElectionConfig:
    """An in-process candidate with :data:`TIMINGS`; no restart hold-back on the new servers."""
    return fast_config(
        name, lock_ttl="10s", heartbeat_interval="1s", restart_protection=False, **overrides
    )


@dataclass
class Deployment:
    """Where the candidates and the command line connect, for one election."""

    kind: str
    first: str
    """The first candidate's URL."""
    second: str
    """The second candidate's URL."""
    reader: str
    """The URL given to ``status`` and ``watch``."""


@pytest.fixture(params=["cluster", "sentinel"])
def deployment(request: pytest.FixtureRequest, name: str) -> Deployment:
    """For a cluster, three different nodes that do not own the election's slot (the reader is
    a replica); for Sentinel, the deployment's one ``redis+sentinel://`` URL."""
    if request.param == "cluster":
        cluster: ClusterServers = request.getfixturevalue("cluster")
        nodes = elsewhere(cluster, config(name).lock_key)
        assert nodes[-1] in cluster.replicas()
        first, second, reader = (cluster.url_of(node) for node in (nodes[0], nodes[1], nodes[-1]))
        return Deployment("cluster", first, second, reader)
    sentinels: SentinelServers = request.getfixturevalue("sentinels")
    assert sentinels.url.startswith("redis+sentinel://")
    return Deployment("sentinel", sentinels.url, sentinels.url, sentinels.url)


def target(url: str, name: str) -> list[str]:
    return ["--redis-url", url, "--name", name, *TIMINGS]


async def status_from_env(url: str, name: str) -> Result:
    """``leaderelection status --json --name NAME`` with the URL in ``$REDIS_URL`` only."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leaderelection", "status", "--json", "--name", name, *TIMINGS,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(REDIS_URL=url),
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def rows(text: str) -> dict[str, str]:
    """The block ``status`` prints for a person, as a dict."""
    return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.splitlines())


# --------------------------------------------------------------------------------- status


async def test_status_names_the_leader(deployment: Deployment, name: str) -> None:
    async with LeaderElection(deployment.first, config(name)) as election:
        assert election.is_leader
        token = election.fencing_token

        text = await cli("status", *target(deployment.reader, name))
        assert text.code == ExitCode.OK, text
        assert rows(text.out)["leader"] == election.instance_id, text
        assert rows(text.out)["fencing token"] == str(token), text
        assert text.err == ""

        as_json = await cli("status", "--json", *target(deployment.reader, name))
        assert as_json.code == ExitCode.OK, as_json
        leader = json.loads(as_json.out)["leader"]
        assert leader["instance_id"] == election.instance_id
        assert leader["fencing_token"] == token
        assert 0 < leader["lease_left_seconds"] <= 10.0

        from_env = await status_from_env(deployment.reader, name)  # $REDIS_URL, no flag
        assert from_env.code == ExitCode.OK, from_env
        assert json.loads(from_env.out)["leader"]["instance_id"] == election.instance_id

    # stop() released the lock: no one leads, long before the 10 s lease would have expired.
    none = await cli("status", *target(deployment.reader, name))
    assert none.code == ExitCode.NO_LEADER, none
    assert none.out.splitlines() == [f"election  {name}", "leader    none"]


# ---------------------------------------------------------------------------------- watch


async def test_watch_prints_the_initial_leader_then_the_next_term(
    deployment: Deployment, name: str, start_watch: Any
) -> None:
    a = LeaderElection(deployment.first, config(name, instance_id="in-process-a"))
    b = LeaderElection(deployment.second, config(name, instance_id="in-process-b"))
    try:
        await a.start()
        assert a.is_leader
        first = a.fencing_token
        watch: Watch = await start_watch("--json", *target(deployment.reader, name))
        await watch.lines(1)  # the initial state: a leads
        await b.start()
        assert not b.is_leader
        await a.resign()
        await b.wait_until_leader(timeout=5)
        second = b.fencing_token
        assert first is not None and second is not None and second > first
        await watch.lines(3)
        await b.stop()
        await watch.lines(4)
    finally:
        await a.stop()
        await b.stop()
    assert await watch.stop(signal.SIGINT) == 0
    records = [json.loads(line) for line in watch.out]
    assert [r["initial"] for r in records] == [True, False, False, False], watch.dump()
    assert [r["election"] for r in records] == [name] * 4
    seen = [(r["leader"]["instance_id"], r["leader"]["fencing_token"]) if r["leader"] else None
            for r in records]  # fmt: skip
    assert seen == [("in-process-a", first), None, ("in-process-b", second), None], watch.dump()
    assert records[1]["previous"]["fencing_token"] == first
    assert records[3]["previous"]["fencing_token"] == second
    assert watch.err[0] == (
        f"leaderelection watch: watching election '{name}' at {deployment.reader}; one line per "
        "change, Ctrl-C to stop"
    ), watch.dump()
    assert watch.err[1:] == ["leaderelection watch: got SIGINT: stopping"], watch.dump()


# ------------------------------------------------------------------------------------ run


async def test_run_leads_runs_its_command_and_hands_over_on_sigterm(
    deployment: Deployment, name: str, start_run: cli_fixtures.StartRun
) -> None:
    options = (*TIMINGS, "--restart-protection", "no")
    a: RunProcess = await start_run(
        deployment.first, name, *options, "--instance-id", "run-a", fast=False, label="A"
    )
    await a.line(
        rf"campaigning in election '{re.escape(name)}' as run-a at {re.escape(deployment.first)}$"
    )
    first = await a.event("start", timeout=15)
    assert first["instance_id"] == "run-a" and first["name"] == name
    await a.line(rf"leading with fencing token {first['token']}: starting .*child\.py")
    b = await start_run(
        deployment.second, name, *options, "--instance-id", "run-b", fast=False, label="B"
    )
    await b.line(r"following \(run-a leads\); the command starts when this instance leads")

    status = await cli("status", "--json", *target(deployment.reader, name))
    assert status.code == ExitCode.OK, status
    leader = json.loads(status.out)["leader"]
    assert leader["instance_id"] == "run-a"
    assert leader["fencing_token"] == first["token"]
    assert leader["pid"] == a.proc.pid

    # SIGTERM: A stops its command, releases, and B starts its own within the 10 s lease.
    a.signal(signal.SIGTERM)
    assert await a.wait() == 0, a.dump()
    await a.line("releasing leadership")
    second = await b.event("start", timeout=5)
    assert second["instance_id"] == "run-b"
    assert second["token"] > first["token"]
    assert b.count("start") == 1 and a.count("start") == 1

    b.signal(signal.SIGTERM)
    assert await b.wait() == 0, b.dump()
    after = await cli("status", *target(deployment.reader, name))
    assert after.code == ExitCode.NO_LEADER, after
    for run in (a, b):
        assert "Traceback" not in run.stderr, run.dump()


# ----------------------------------------------------------------------------- failures


async def test_no_sentinel_reachable_is_one_error_line_naming_each_sentinel(
    make_sentinels: Any, name: str
) -> None:
    servers: SentinelServers = make_sentinels()
    servers.stop_sentinels()
    for argv in (["status"], ["watch", "--json"], ["step-down"]):
        result = await cli(*argv, *target(servers.url, name))
        assert result.code == ExitCode.ERROR, result
        assert result.out == ""
        assert "Traceback" not in result.err, result
        (line,) = result.err.splitlines()
        assert line.startswith(f"leaderelection {argv[0]}: error: "), line
        assert "no Sentinel" in line, line
        for host, port in servers.sentinel_addresses:
            assert f"{host}:{port}" in line, line
        # What a person reads: the sentinels and their errors, not redis-py's client objects.
        assert "<redis." not in line and " object at 0x" not in line, line


@pytest.mark.parametrize(
    "argv",
    [["status"], ["watch"], ["step-down"], ["run", "--", sys.executable, "-c", "pass"]],
    ids=["status", "watch", "step-down", "run"],
)
async def test_a_sentinel_url_without_a_service_name_is_a_usage_error(
    argv: list[str], name: str
) -> None:
    url = "redis+sentinel://ops:s3cret@127.0.0.1:1/"  # port 1: never contacted
    command, *rest = argv
    result = await cli(command, "--redis-url", url, "--name", name, *rest)
    assert result.code == ExitCode.USAGE, result
    assert result.out == ""
    (line,) = result.err.splitlines()
    assert line.startswith(f"leaderelection {command}: error: cannot use Redis URL "), line
    assert "redis+sentinel://ops:***@127.0.0.1:1/" in line, line
    assert "s3cret" not in result.err
