"""``leaderelection run`` against real redis-servers: the command runs only on the leader, is
stopped when leadership ends, moves with a failover, and sees increasing fencing tokens.

Each ``run`` is a real process (``python -m leaderelection run``), reaching Redis through a
:class:`TcpProxy` of its own, so that one instance can be cut off. The command is ``child.py``,
which reports its environment and the signals it gets, with monotonic timestamps.
"""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.cli.conftest import StartRun
from tests.redis_harness import MakeProxy, MakeRedisServer, RedisServer

pytestmark = pytest.mark.redis

RENEW_DEADLINE = 1.0 * 2 / 3  # with the fast timings: lock_ttl 1s
SLACK = 0.5  # scheduling slack on a shared machine, on top of a guaranteed bound


async def test_only_the_leader_runs_the_command_and_it_moves_with_a_failover(
    shared_redis: RedisServer, make_proxy: MakeProxy, start_run: StartRun, name: str
) -> None:
    proxy_a, proxy_b = await make_proxy(shared_redis), await make_proxy(shared_redis)
    a = await start_run(proxy_a.url, name, "--grace", "2s", label="A")
    await a.line(r"leading with fencing token \d+: starting .*child\.py")
    await a.line(r"started pid \d+")
    first = await a.event("start")
    b = await start_run(proxy_b.url, name, "--grace", "2s", label="B")
    await b.line(r"following \(.* leads\); the command starts when this instance leads")

    # (a) Only the leader's command runs.
    assert first["name"] == name
    assert b.count("start") == 0, b.dump()

    # (b) Cut the leader off: its command gets SIGTERM within renew_deadline, and is gone
    # within the grace period after that.
    cut = time.monotonic()
    proxy_a.blackhole()
    term = await a.event("sigterm", timeout=5)
    assert cut <= term["t"] <= cut + RENEW_DEADLINE + SLACK, (term["t"] - cut, a.dump())
    gone = await a.event("exit")
    assert gone["t"] - term["t"] < 2.0
    await a.line(r"no longer the leader \(the term with fencing token \d+ ended\): sending SIGTERM")
    await a.line(rf"pid {first['pid']} exited with status 0")

    # (c) The other instance's command starts after the failover, (d) with a higher token,
    # and never while the first one ran.
    second = await b.event("start", timeout=5)
    assert second["instance_id"] != first["instance_id"]
    assert second["token"] > first["token"]
    assert second["t"] > gone["t"] > term["t"], (a.dump(), b.dump())

    # The cut-off instance campaigns again (--on-loss restart) once it can reach Redis. When the
    # new leader stops, it takes over and starts its command again, with a higher token still.
    await a.line(r"waiting for the next term to start the command again \(--on-loss restart\)")
    proxy_a.pass_through()
    b.signal(signal.SIGTERM)
    assert await b.wait() == 0  # the command exited 0 on the forwarded SIGTERM
    third = await a.event("start", after=a.events.index(gone) + 1, timeout=5)
    assert third["token"] > second["token"]
    assert third["instance_id"] == first["instance_id"]
    assert a.count("start") == 2 and b.count("start") == 1


@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["exits", "ignores-sigterm"])
async def test_sigterm_is_forwarded_and_leadership_released_at_once(
    shared_redis: RedisServer,
    start_run: StartRun,
    name: str,
    ignores_sigterm: bool,
) -> None:
    # A 5 s lease: the follower taking over within 2 s can only come from the release.
    slow = ("--lock-ttl", "5s", "--heartbeat-interval", "1s", "--retry-interval", "1s")
    child = ["--ignore-term"] if ignores_sigterm else []
    grace = 0.5
    a = await start_run(
        shared_redis.url, name, *slow, "--grace", f"{grace}s", child=child, fast=False, label="A"
    )
    first = await a.event("start")
    b = await start_run(shared_redis.url, name, *slow, fast=False, label="B")
    await b.line(r"following")

    a.signal(signal.SIGTERM)
    term = await a.event("sigterm")
    await a.line(rf"got SIGTERM: forwarding it to pid {first['pid']} \(SIGKILL after 0.5s\)")
    code = await a.wait()
    assert a.exited_at is not None
    if ignores_sigterm:
        await a.line(rf"pid {first['pid']} is still running 0.5s after SIGTERM: sending SIGKILL")
        assert code == 128 + signal.SIGKILL  # the command's status: killed by SIGKILL
        assert a.exited_at - term["t"] >= grace - 0.1
        assert a.count("exit") == 0
    else:
        assert code == 0  # the command's status: it exited 0 on SIGTERM
        assert "SIGKILL" not in a.stderr.replace("(SIGKILL after 0.5s)", "")
    await a.line("releasing leadership")
    await a.line(rf"exiting with status {code}")

    second = await b.event("start", timeout=5)
    assert second["token"] > first["token"]
    assert second["t"] - a.exited_at < 2.0, "the follower waited for the lease to expire"


async def test_on_loss_exit_kills_a_command_that_ignores_sigterm_after_the_grace_period(
    shared_redis: RedisServer, make_proxy: MakeProxy, start_run: StartRun, name: str
) -> None:
    proxy = await make_proxy(shared_redis)
    grace = 0.5
    run = await start_run(
        proxy.url, name, "--on-loss", "exit", "--grace", f"{grace}s", child=["--ignore-term"]
    )
    started = await run.event("start")
    cut = time.monotonic()
    proxy.blackhole()
    term = await run.event("sigterm", timeout=5)
    assert term["t"] <= cut + RENEW_DEADLINE + SLACK
    assert await run.wait() == 4
    assert run.exited_at is not None
    assert grace - 0.1 <= run.exited_at - term["t"] <= grace + 2.0
    await run.line(rf"pid {started['pid']} is still running 0.5s after SIGTERM: sending SIGKILL")
    await run.line(rf"pid {started['pid']} was ended by SIGKILL \(status 137\)")
    await run.line(r"leadership lost and the command stopped: exiting \(--on-loss exit\)")
    await run.line(r"warning: Failed to send heartbeat, lost leadership")
    assert run.count("start") == 1


@pytest.mark.parametrize(("how", "status"), [("3", 3), ("0", 0), ("SIGUSR1", 128 + signal.SIGUSR1)])
async def test_the_command_s_exit_status_ends_the_run_and_releases_leadership(
    shared_redis: RedisServer, start_run: StartRun, name: str, how: str, status: int
) -> None:
    run = await start_run(shared_redis.url, name, child=["--exit", how])
    assert await run.wait() == status
    started = await run.event("start")
    campaign = await run.line(rf"campaigning in election '{name}' as (\S+) at redis://")
    assert f" as {started['instance_id']} at " in campaign[2]
    assert started["name"] == name
    await run.line(rf"the command ended on its own with status {status}")
    await run.line("releasing leadership")
    async with aioredis.Redis.from_url(shared_redis.url) as client:
        assert await client.exists(f"leaderelection:{{{name}}}:lock") == 0


async def test_shell_runs_the_words_with_sh(
    shared_redis: RedisServer, start_run: StartRun, name: str
) -> None:
    run = await start_run(
        shared_redis.url,
        name,
        "--shell",
        command=[
            'echo "token=$LEADER_ELECTION_FENCING_TOKEN name=$LEADER_ELECTION_NAME";',
            "exit 5",
        ],
    )
    assert await run.wait() == 5
    (text,) = [e["text"] for e in run.events]
    _, _, line = await run.line(r"leading with fencing token (\d+): starting echo")
    token = line.split("fencing token ")[1].split(":")[0]
    assert text == f"token={token} name={name}"


@pytest.mark.parametrize("case", ["not-found", "not-executable"])
async def test_a_command_that_cannot_run_ends_the_run(
    shared_redis: RedisServer, start_run: StartRun, name: str, tmp_path: Path, case: str
) -> None:
    program = tmp_path / "job.sh"
    if case == "not-executable":
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(stat.S_IRUSR | stat.S_IWUSR)
    run = await start_run(shared_redis.url, name, command=[str(program), "--flag"])
    expected = 127 if case == "not-found" else 126
    assert await run.wait() == expected
    reason = "No such file or directory" if case == "not-found" else "Permission denied"
    await run.line(rf"leaderelection run: error: cannot run '{program}': {reason}")
    await run.line("releasing leadership")
    async with aioredis.Redis.from_url(shared_redis.url) as client:
        assert await client.exists(f"leaderelection:{{{name}}}:lock") == 0


async def test_a_wrong_password_is_a_clear_error(
    make_redis_server: MakeRedisServer, start_run: StartRun, name: str
) -> None:
    server = make_redis_server(password="right")
    url = f"redis://:wrong@{server.host}:{server.port}/0"
    run = await start_run(url, name)
    assert await run.wait() == 1
    _, _, line = await run.line(r"error:")
    assert line.startswith("leaderelection run: error: Redis refused the credentials"), run.dump()
    assert "Traceback" not in run.stderr
    assert "wrong" not in run.stderr  # the password is not printed
    assert run.events == []
