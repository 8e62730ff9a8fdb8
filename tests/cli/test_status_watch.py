"""``leaderelection status``, ``watch`` and ``step-down`` as processes, against real redis-servers.

The key test scripts more than 20 changes of leader among in-process candidates (handoffs by
``resign()``, stops and restarts, leases that expire because the leader's traffic is cut, with and
without a successor waiting) while a ``watch --json`` process prints them: its lines must be
exactly the initial state, then every term's token followed by "no leader", in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from leaderelection import LeaderElection
from tests.cli.conftest import FAST, StartRun, clean_env
from tests.redis_harness import MakeProxy, RedisServer, free_port
from tests.support import eventually, fast_config

pytestmark = pytest.mark.redis

HOST = socket.gethostname()  # the hostname a `run` reports by default
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass
class Result:
    code: int
    out: str
    err: str


async def cli(*argv: str, timeout: float = 20.0) -> Result:
    """Run ``python -m leaderelection ARGV`` to completion."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "leaderelection", *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"leaderelection {' '.join(argv)} did not exit in {timeout}s"
        ) from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


class Watch:
    """A ``leaderelection watch`` process and the lines it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._new = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._readers = [
            loop.create_task(self._read(proc.stdout, self.out)),
            loop.create_task(self._read(proc.stderr, self.err)),
        ]

    @classmethod
    async def start(cls, *argv: str) -> Watch:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "leaderelection", "watch", *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(),
        )  # fmt: skip
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader | None, sink: list[str]) -> None:
        assert stream is not None
        while raw := await stream.readline():
            sink.append(raw.decode().rstrip("\n"))
            self._new.set()
        self._new.set()

    def dump(self) -> str:
        return "--- watch stdout:\n" + "\n".join(self.out) + "\n--- stderr:\n" + "\n".join(self.err)

    async def until(self, done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    if all(reader.done() for reader in self._readers):
                        raise AssertionError(f"watch ended before {what}:\n{self.dump()}")
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(f"watch: no {what} within {timeout}s:\n{self.dump()}") from None

    async def lines(self, count: int, timeout: float = 10.0) -> list[str]:
        """Wait until stdout has at least ``count`` lines; return them all."""
        await self.until(lambda: len(self.out) >= count, f"{count} lines", timeout)
        return self.out

    async def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        self.proc.send_signal(signum)
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._readers)
        return code

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


@pytest.fixture
async def start_watch() -> AsyncIterator[Callable[..., Any]]:
    made: list[Watch] = []

    async def start(*argv: str) -> Watch:
        watch = await Watch.start(*argv)
        made.append(watch)
        return watch

    yield start
    for watch in made:
        await watch.close()


def target(server: RedisServer | str, name: str) -> list[str]:
    url = server if isinstance(server, str) else server.url
    return ["--redis-url", url, "--name", name, *FAST]


def parse_time(text: str) -> datetime:
    assert ISO.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------- status


async def test_status_with_and_without_a_leader(shared_redis: RedisServer, name: str) -> None:
    none = await cli("status", *target(shared_redis, name))
    assert none.code == 3, none
    assert none.out.splitlines() == [f"election  {name}", "leader    none"]
    assert none.err == ""
    none_json = await cli("status", "--json", *target(shared_redis, name))
    assert none_json.code == 3
    doc = json.loads(none_json.out)
    assert doc["election"] == name and doc["leader"] is None
    parse_time(doc["at"])

    config = fast_config(name, instance_id="host-a", hostname="vm-a")
    async with LeaderElection(shared_redis.url, config) as election:
        assert election.is_leader
        token = election.fencing_token
        text = await cli("status", *target(shared_redis, name))
        assert text.code == 0, text
        rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in text.out.splitlines())
        assert rows["election"] == name
        assert rows["leader"] == "host-a"
        assert rows["hostname"] == "vm-a"
        assert rows["pid"] == str(os.getpid())
        assert rows["fencing token"] == str(token)
        assert re.fullmatch(r"\S+Z \(\d+\.\ds ago\)", rows["leader since"]), rows
        assert re.fullmatch(r"\S+Z \(0\.\ds ago\)", rows["last heartbeat"]), rows
        assert re.fullmatch(r"[01]\.\ds", rows["lease left"]), rows

        as_json = await cli("status", "--json", *target(shared_redis, name))
        assert as_json.code == 0, as_json
        doc = json.loads(as_json.out)
        leader = doc["leader"]
        assert doc["election"] == name
        assert leader["instance_id"] == "host-a"
        assert leader["hostname"] == "vm-a"
        assert leader["pid"] == os.getpid()
        assert leader["fencing_token"] == token
        assert parse_time(leader["started_at"]) <= parse_time(leader["last_heartbeat"])
        assert parse_time(leader["last_heartbeat"]) <= parse_time(doc["at"])
        assert 0 <= leader["heartbeat_age_seconds"] < 1.0
        assert leader["leader_for_seconds"] >= leader["heartbeat_age_seconds"]
        assert 0 < leader["lease_left_seconds"] <= 1.0
    assert (await cli("status", *target(shared_redis, name))).code == 3


async def test_redis_down_is_one_clear_line_and_exit_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # allocated and closed: nothing listens
    for argv in (["status"], ["watch", "--json"], ["step-down"]):
        result = await cli(*argv, *target(url, "down"))
        assert result.code == 1, result
        assert result.out == ""
        (line,) = result.err.splitlines()
        assert line.startswith(f"leaderelection {argv[0]}: error: Redis is unavailable while ")
        assert "Connect call failed" in line or "Connection refused" in line


async def test_wrong_password_and_missing_permission_exit_1(
    shared_redis: RedisServer, name: str
) -> None:
    user = f"ops-{name}"
    async with aioredis.Redis.from_url(shared_redis.url) as admin:
        # A user that may connect but not read the election's keys.
        await admin.execute_command("ACL", "SETUSER", user, "reset", "on", ">right", "+@all")
        try:
            wrong = await cli("status", *target(f"redis://{user}:wrong@{shared_redis.host}:"
                                                f"{shared_redis.port}/0", name))  # fmt: skip
            assert wrong.code == 1, wrong
            assert wrong.err.startswith("leaderelection status: error: Redis refused the "
                                        "credentials")  # fmt: skip
            assert "wrong" not in wrong.err.replace("wrong password", "")
            no_keys = await cli("status", *target(f"redis://{user}:right@{shared_redis.host}:"
                                                  f"{shared_redis.port}/0", name))  # fmt: skip
            assert no_keys.code == 1, no_keys
            (line,) = no_keys.err.splitlines()
            assert line.startswith("leaderelection status: error: ")
            assert "permission" in line.lower(), line
        finally:
            await admin.execute_command("ACL", "DELUSER", user)


# ---------------------------------------------------------------------------------- watch


async def test_watch_prints_a_line_per_change_and_stops_with_0_on_sigterm(
    shared_redis: RedisServer, name: str, start_watch: Callable[..., Any]
) -> None:
    watch = await start_watch(*target(shared_redis, name))
    await watch.lines(1)
    config = fast_config(name, instance_id="host-a", hostname="vm-a")
    async with LeaderElection(shared_redis.url, config) as election:
        token = election.fencing_token
        await watch.lines(2)
    lines = await watch.lines(3)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  "
    assert re.fullmatch(stamp + "no leader", lines[0]), lines
    assert re.fullmatch(
        stamp + rf"leader host-a \(host vm-a, pid {os.getpid()}, fencing token {token}\)",
        lines[1],
    ), lines
    assert re.fullmatch(
        stamp + rf"no leader \(the term of host-a with fencing token {token} ended\)", lines[2]
    ), lines
    assert await watch.stop(signal.SIGTERM) == 0
    assert len(watch.out) == 3, watch.dump()
    assert watch.err == [
        f"leaderelection watch: watching election '{name}' at {shared_redis.url}; one line per "
        "change, Ctrl-C to stop",
        "leaderelection watch: got SIGTERM: stopping",
    ]


async def test_watch_exits_0_when_its_reader_goes_away(
    shared_redis: RedisServer, name: str
) -> None:
    """``watch | head -n 1``: the next line hits a closed pipe, and watch ends quietly."""
    argv = " ".join(target(shared_redis, name))
    script = f"set -o pipefail; {sys.executable} -m leaderelection watch {argv} | head -n 1"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        async with asyncio.timeout(10):
            first = await proc.stdout.readline()
        assert first.decode().endswith("  no leader\n")
        # head has exited; the next change makes watch write into the closed pipe.
        async with LeaderElection(shared_redis.url, fast_config(name)):
            async with asyncio.timeout(10):
                err = await proc.stderr.read()
                code = await proc.wait()
        assert code == 0, err
        assert "Traceback" not in err.decode() and "Exception" not in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_watch_sees_every_change_of_a_scripted_sequence(
    shared_redis: RedisServer, make_proxy: MakeProxy, name: str, start_watch: Callable[..., Any]
) -> None:
    """More than 20 changes, each seen once, in order, including "no leader" between terms."""
    terms: dict[int, str] = {}  # fencing token -> the candidate that won the term (as it saw)
    count = 0

    def candidate(url: str = shared_redis.url) -> LeaderElection:
        nonlocal count
        count += 1
        election = LeaderElection(url, fast_config(name, instance_id=f"cand-{count}"))

        @election.on_become_leader
        def won() -> None:
            # Callbacks run in a task of their own: a term that ended at once (a resign right
            # after the script saw it) has no token left here, but next_leader() recorded it.
            token = election.fencing_token
            if token is not None:
                terms[token] = election.instance_id

        return election

    async def next_leader(*elections: LeaderElection, after: int) -> LeaderElection:
        """The one of ``elections`` that leads a term newer than ``after``."""
        found: list[LeaderElection] = []

        def leads() -> bool:
            found[:] = [e for e in elections if e.is_leader and (e.fencing_token or 0) > after]
            return bool(found)

        await eventually(leads, timeout=10)
        token = found[0].fencing_token
        assert token is not None
        terms[token] = found[0].instance_id
        return found[0]

    def all_ended() -> int:
        return 1 + 2 * len(terms)  # the initial state, then each term and its end

    watch = await start_watch("--json", *target(shared_redis, name))
    await watch.lines(1)  # subscribed, and the initial state read: no leader

    running = [candidate(), candidate(), candidate()]
    for election in running:
        await election.start()
    try:
        # Handoffs by resign(): the next leader is announced right after the release.
        leader = await next_leader(*running, after=0)
        for _ in range(8):
            token = leader.fencing_token or 0
            await leader.resign()
            leader = await next_leader(*(e for e in running if e is not leader), after=token)

        # Stops and restarts: the leader stops, a follower takes over, a new candidate joins.
        for _ in range(4):
            token = leader.fencing_token or 0
            await leader.stop()
            running.remove(leader)
            leader = await next_leader(*running, after=token)
            fresh = candidate()
            await fresh.start()
            running.append(fresh)

        # Leases that expire: the leader's traffic is cut, nothing announces the end of its
        # term. Twice with a successor waiting (the next term is announced)...
        proxy = await make_proxy(shared_redis)
        cut = candidate(proxy.url)
        await cut.start()
        for election in running:
            if election is not leader:
                await election.stop()
        running = [leader, cut]
        for _ in range(2):
            token = leader.fencing_token or 0
            await leader.resign()
            await next_leader(cut, after=token)
            proxy.blackhole()
            leader = await next_leader(running[0], after=cut.fencing_token or 0)
            await cut.wait_until_follower(timeout=5)
            # Heal, dropping the attempts the blackhole held: delivered late, one could win a
            # term that no candidate knows of (and the watch would rightly print it).
            proxy.reset()
            proxy.pass_through()
        # ... and once with no one waiting: only the read at expiry can see that no one leads.
        token = leader.fencing_token or 0
        await leader.stop()
        await next_leader(cut, after=token)
        proxy.blackhole()
        await cut.wait_until_follower(timeout=5)
        await watch.lines(all_ended(), timeout=5)
        proxy.reset()
        proxy.pass_through()
        await next_leader(cut, after=token)
        running = [cut]
    finally:
        for election in running:
            await election.stop()

    lines = await watch.lines(all_ended())
    assert await watch.stop(signal.SIGINT) == 0
    records = [json.loads(line) for line in watch.out]
    expected: list[int | None] = [None]
    for token in sorted(terms):
        expected += [token, None]
    seen = [r["leader"]["fencing_token"] if r["leader"] else None for r in records]
    assert len(terms) >= 15, terms  # more than 20 changes: a term is two (it starts, it ends)
    assert seen == expected, (sorted(terms), lines)
    assert [r["initial"] for r in records] == [True] + [False] * (len(records) - 1)
    for before, after in itertools.pairwise(records):
        assert parse_time(before["at"]) <= parse_time(after["at"])
        assert after["election"] == name
        if after["leader"] is None:
            assert after["previous"] == before["leader"]
        else:
            assert after["leader"]["instance_id"] == terms[after["leader"]["fencing_token"]]
            assert after["leader"]["pid"] == os.getpid()
    assert "leaderelection watch: got SIGINT: stopping" in watch.err


# ------------------------------------------------------------------------------ step-down


async def test_step_down_hands_over_from_one_run_to_the_other(
    shared_redis: RedisServer, start_run: StartRun, name: str
) -> None:
    a = await start_run(shared_redis.url, name, "--instance-id", "host-a", label="A")
    first = await a.event("start")
    b = await start_run(shared_redis.url, name, "--instance-id", "host-b", label="B")
    await b.line(r"following \(host-a leads\)")

    # Naming an instance that does not lead does nothing.
    other = await cli("step-down", "--instance", "host-b", *target(shared_redis, name))
    assert other.code == 0, other
    assert other.err.splitlines() == [
        f"leaderelection step-down: host-b does not lead election '{name}', host-a (host "
        f"{HOST}, pid {a.proc.pid}, fencing token {first['token']}) does: nothing to do"
    ]

    result = await cli("step-down", "--instance", "host-a", *target(shared_redis, name))
    assert result.code == 0, result
    second = await b.event("start", timeout=5)
    assert second["token"] > first["token"]
    assert second["instance_id"] == "host-b"
    await a.event("sigterm")
    lines = result.err.splitlines()
    assert lines[0] == (
        f"leaderelection step-down: asked host-a (host {HOST}, pid {a.proc.pid}, "
        f"fencing token {first['token']}) to step down"
    )
    assert re.fullmatch(
        "leaderelection step-down: the term of host-a with fencing token "
        rf"{first['token']} ended \d+ms after the request",
        lines[1],
    ), lines
    assert lines[2] == (
        f"leaderelection step-down: host-b (host {HOST}, pid {b.proc.pid}, fencing "
        f"token {second['token']}) leads now"
    )
    assert len(lines) == 3 and result.out == ""
    # host-a stays a candidate, and runs its command again on its next term.
    await a.line(r"waiting for the next term to start the command again")
    b.signal(signal.SIGTERM)
    assert await b.wait() == 0
    third = await a.event("start", after=a.events.index(first) + 1, timeout=5)
    assert third["token"] > second["token"]


async def test_step_down_when_no_one_leads_exits_3(shared_redis: RedisServer, name: str) -> None:
    result = await cli("step-down", *target(shared_redis, name))
    assert result.code == 3, result
    assert result.err == (
        f"leaderelection step-down: election '{name}' has no leader: nothing to do\n"
    )


async def test_step_down_exits_1_when_no_one_hears_it_or_the_leader_ignores_it(
    shared_redis: RedisServer, name: str
) -> None:
    """A leader record whose holder does not listen (a process that is gone, or runs a version
    without step-down support), with no one subscribed, and then with a deaf subscriber."""
    config = fast_config(name)
    record = {
        "instance_id": "old-version",
        "hostname": "vm-old",
        "pid": 1,
        "started_at": "2026-11-26T17:00:00+00:00",
        "last_heartbeat": "2026-11-26T17:00:00+00:00",
        "fencing_token": 7,
        "election": name,
    }
    async with aioredis.Redis.from_url(shared_redis.url) as client:
        await client.set(config.lock_key, "someone-else", px=20_000)
        await client.set(config.info_key, json.dumps(record), px=20_000)
        try:
            unheard = await cli("step-down", *target(shared_redis, name))
            assert unheard.code == 1, unheard
            (line,) = unheard.err.splitlines()
            assert line.startswith("leaderelection step-down: error: "), line
            assert f"received the step-down request on '{config.release_channel}'" in line

            pubsub = client.pubsub()
            await pubsub.subscribe(config.release_channel)
            async with asyncio.timeout(5):
                while (await pubsub.get_message(timeout=1.0) or {}).get("type") != "subscribe":
                    pass
            started = time.monotonic()
            ignored = await cli("step-down", "--wait", "0.5s", *target(shared_redis, name))
            assert ignored.code == 1, ignored
            assert time.monotonic() - started >= 0.5
            lines = ignored.err.splitlines()
            assert lines[0].startswith("leaderelection step-down: asked old-version (host vm-old")
            assert lines[1].startswith(
                "leaderelection step-down: error: old-version did not step down within 0.5s"
            )
            await pubsub.aclose()

            sent = await cli("step-down", "--no-wait", *target(shared_redis, name))
            assert sent.code == 1  # no subscriber left: no one received it
        finally:
            await client.delete(config.lock_key, config.info_key)


@pytest.mark.parametrize("argv", [["--no-wait"], ["--wait", "5s"]])
async def test_step_down_of_an_in_process_leader(
    shared_redis: RedisServer, name: str, argv: Sequence[str]
) -> None:
    async with (
        LeaderElection(shared_redis.url, fast_config(name, instance_id="one")) as one,
        LeaderElection(shared_redis.url, fast_config(name, instance_id="two")) as two,
    ):
        leader, follower = (one, two) if one.is_leader else (two, one)
        token = leader.fencing_token
        result = await cli("step-down", *argv, *target(shared_redis, name))
        assert result.code == 0, result
        await follower.wait_until_leader(timeout=5)
        assert (follower.fencing_token or 0) > (token or 0)
        assert not leader.is_leader
        if argv == ["--no-wait"]:
            assert len(result.err.splitlines()) == 1
        else:
            assert result.err.splitlines()[-1].endswith(
                f"{follower.instance_id} (host {follower.config.hostname}, pid {os.getpid()}, "
                f"fencing token {follower.fencing_token}) leads now"
            )


async def test_step_down_stops_the_command_before_the_next_leader_starts_its_own(
    shared_redis: RedisServer, start_run: StartRun, name: str
) -> None:
    """A step-down is a handoff without overlap: the leader's `run` stops its command (which
    takes 0.3 s to exit here) before the lock is released and the other `run` starts its own."""
    timings = ("--lock-ttl", "3s", "--heartbeat-interval", "1s", "--retry-interval", "1s")
    a = await start_run(
        shared_redis.url, name, *timings, child=["--linger", "0.3"], fast=False, label="A"
    )
    first = await a.event("start")
    b = await start_run(shared_redis.url, name, *timings, fast=False, label="B")
    await b.line("following")
    result = await cli("step-down", "--redis-url", shared_redis.url, "--name", name, *timings)
    assert result.code == 0, result
    gone = await a.event("exit")
    second = await b.event("start", timeout=5)
    assert second["token"] > first["token"]
    assert second["t"] > gone["t"], (a.dump(), b.dump())
