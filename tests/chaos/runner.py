"""The chaos runner: candidates, real redis-servers, proxies, and a seeded schedule of faults.

Topology: one lease server (AOF on, ``appendfsync always``), a ``redis-server`` process on a free
loopback port, which also holds the fenced resource (a list in the election's hash slot that the
leaders append to through their :class:`~leaderelection.Fence`); 3 to 5 candidate processes
(:mod:`tests.chaos.agent`), each behind its own :class:`~tests.redis_harness.TcpProxy`, so that a
network fault on a candidate cuts its election and its fenced writes alike, as a real partition
would.

The schedule is random but seeded: faults come in rounds, each round every fault type once in a
shuffled order, so even a short run covers every type. Before each fault the runner waits until a
candidate leads (the leader is read from the histories, the same files the checker reads), then
injects the fault, heals it, and records both times in ``faults.jsonl``. At the end the agents
are stopped and the fenced list is saved as ``resource.jsonl``. A restart without persistence
empties the list: the runner reads it just before every restart, and the saved log is those
readings and the last one, each record once, in order (a write applied in the instant between
the last reading and a volatile restart is lost with the data, and missing from the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import redis.asyncio

from tests.chaos.agent import resource_key
from tests.redis_harness import RedisServer, TcpProxy

ROOT = str(Path(__file__).resolve().parents[2])

FAULTS: tuple[str, ...] = (
    "kill_leader",
    "pause_leader_0.5x",
    "pause_leader_1x",
    "pause_leader_3x",
    "block_loop",
    "net_delay",
    "net_blackhole",
    "net_reset",
    "net_drop_replies",
    "redis_pause",
    "redis_restart_volatile",
    "redis_restart_aof",
    "redis_restart_shutdown",
    "redis_down_long",
)

# Faults after which the lease server has just started: a free lock is granted only once its
# uptime passed the restart protection (ceil(lock_ttl) + 1 s).
RESTARTS = frozenset(
    {"redis_restart_volatile", "redis_restart_aof", "redis_restart_shutdown", "redis_down_long"}
)


@dataclass
class ChaosSettings:
    """One chaos run. ``faults`` or ``minutes`` bounds it, whichever comes first."""

    seed: int = 1
    faults: int = 28
    minutes: float = 60.0
    candidates: int = 3
    ttl: float = 1.0
    heartbeat: float = 0.1
    retry: float = 0.2
    liveness_timeout: float = 20.0
    types: tuple[str, ...] = FAULTS
    name: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:6]}")


class Agent:
    """One candidate slot: its proxy and the current process (a new one after a kill)."""

    def __init__(self, index: int, lease: TcpProxy) -> None:
        self.index = index
        self.lease = lease
        self.proc: asyncio.subprocess.Process | None = None
        self.instance_id = ""
        self.incarnation = 0
        self.history: Path | None = None
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self.until: float | None = None  # the open term's lease deadline, else None

    @property
    def proxies(self) -> tuple[TcpProxy]:
        return (self.lease,)

    def read_new(self) -> None:
        """Read the history lines appended since the last call."""
        if self.history is None or not self.history.exists():
            return
        with open(self.history, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            event = json.loads(line)
            self.events.append(event)
            if event["e"] in ("acquired", "lease"):
                self.until = event["until"]
            elif event["e"] == "lost":
                self.until = None

    def leads(self, now: float) -> bool:
        return self.alive and self.until is not None and now < self.until

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class ChaosRun:
    """Runs one chaos schedule and writes its histories to ``out``."""

    def __init__(self, settings: ChaosSettings, out: Path) -> None:
        self.s = settings
        self.out = out
        self.rng = random.Random(settings.seed)
        self.agents: list[Agent] = []
        self.lease_server: RedisServer | None = None
        self.resource_log: list[bytes] = []  # the fenced list's records, each once, in order
        self._faults = open(out / "faults.jsonl", "w")  # noqa: SIM115 (closed in run())
        self.injected = 0

    # -- bookkeeping ----------------------------------------------------------------------

    def record(self, **fields: Any) -> None:
        self._faults.write(json.dumps(fields) + "\n")
        self._faults.flush()

    def log(self, message: str) -> None:
        self.record(note=message, t=time.monotonic())

    def refresh(self) -> None:
        for agent in self.agents:
            agent.read_new()

    def leader(self) -> Agent | None:
        self.refresh()
        now = time.monotonic()
        leaders = [a for a in self.agents if a.leads(now)]
        return leaders[0] if leaders else None

    async def wait_for(self, condition: Callable[[], Any], timeout: float) -> Any:
        """Poll the histories every 10 ms until ``condition()`` is truthy; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.refresh()
            value = condition()
            if value or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(0.01)

    # -- processes ------------------------------------------------------------------------

    async def spawn(self, agent: Agent) -> None:
        agent.incarnation += 1
        agent.instance_id = f"a{agent.index}-{agent.incarnation}-{uuid.uuid4().hex[:4]}"
        agent.history = self.out / f"agent-{agent.instance_id}.jsonl"
        agent._offset, agent._partial, agent.until = 0, b"", None
        settings = {
            "history": str(agent.history),
            "name": self.s.name,
            "instance_id": agent.instance_id,
            "ttl": self.s.ttl,
            "heartbeat": self.s.heartbeat,
            "retry": self.s.retry,
            "lease_url": agent.lease.url,
        }
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with _open(self.out / f"agent-{agent.instance_id}.log") as log:
            agent.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.chaos.agent",
                json.dumps(settings),
                stdin=asyncio.subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=env,
                cwd=ROOT,
            )
        self.record(spawn=agent.instance_id, t=time.monotonic(), pid=agent.proc.pid)

    async def send(self, agent: Agent, command: str) -> None:
        assert agent.proc is not None and agent.proc.stdin is not None
        agent.proc.stdin.write(command.encode() + b"\n")
        await agent.proc.stdin.drain()

    # -- faults ---------------------------------------------------------------------------

    def target(self, leader: Agent) -> Agent:
        """The leader three times in four, else another candidate."""
        others = [a for a in self.agents if a is not leader and a.alive]
        if others and self.rng.random() < 0.25:
            return self.rng.choice(others)
        return leader

    async def inject(self, fault: str, leader: Agent) -> dict[str, Any]:
        """Inject ``fault`` and heal it; returns what happened (times on the monotonic clock)."""
        rng, ttl = self.rng, self.s.ttl
        server = self.lease_server
        assert server is not None
        rec: dict[str, Any] = {"fault": fault, "target": leader.instance_id}
        if fault == "kill_leader":
            rec["inject"] = rec["heal"] = time.monotonic()
            assert leader.proc is not None
            leader.proc.kill()
            await leader.proc.wait()
            await self.spawn(leader)
        elif fault.startswith("pause_leader_"):
            factor = float(fault.removeprefix("pause_leader_").removesuffix("x"))
            assert leader.proc is not None
            rec["inject"] = time.monotonic()
            leader.proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(factor * ttl)
            leader.proc.send_signal(signal.SIGCONT)
            rec["heal"] = time.monotonic()
            rec["seconds"] = factor * ttl
        elif fault == "block_loop":
            rec["seconds"] = seconds = 3 * ttl
            rec["inject"] = time.monotonic()
            await self.send(leader, f"block {seconds}")
            start = len(leader.events)
            ended = await self.wait_for(
                lambda: any(e["e"] == "block_end" for e in leader.events[start:]),
                seconds + 10,
            )
            rec["heal"] = time.monotonic()
            rec["blocked"] = bool(ended)
        elif fault.startswith("net_"):
            agent = self.target(leader)
            rec["target"] = agent.instance_id
            rec["target_led"] = agent is leader
            rec["inject"] = time.monotonic()
            if fault == "net_reset":
                for proxy in agent.proxies:
                    proxy.reset()
                rec["heal"] = rec["inject"]
            else:
                if fault == "net_delay":
                    rec["delay"] = delay = round(rng.uniform(0.05, 2.0), 3)
                    rec["seconds"] = seconds = rng.uniform(1.0, 3.0) * ttl
                    for proxy in agent.proxies:
                        proxy.delay(delay)
                elif fault == "net_blackhole":
                    rec["seconds"] = seconds = rng.uniform(1.0, 2.5) * ttl
                    for proxy in agent.proxies:
                        proxy.blackhole()
                else:
                    rec["seconds"] = seconds = rng.uniform(0.5, 2.0) * ttl
                    for proxy in agent.proxies:
                        proxy.drop_replies()
                await asyncio.sleep(seconds)
                for proxy in agent.proxies:
                    proxy.pass_through()
                rec["heal"] = time.monotonic()
        elif fault == "redis_pause":
            rec["target"] = "redis"
            rec["seconds"] = seconds = rng.uniform(0.5, 2.0) * ttl
            rec["inject"] = time.monotonic()
            server.pause()
            await asyncio.sleep(seconds)
            server.resume()
            rec["heal"] = time.monotonic()
        else:
            rec["target"] = "redis"
            await self.read_resource_log()  # a restart without persistence empties it
            rec["inject"] = time.monotonic()
            if fault == "redis_restart_shutdown":
                await asyncio.to_thread(server.shutdown)  # AOF is fsynced: nothing is lost
            else:
                await asyncio.to_thread(server.stop)  # SIGKILL
            if fault == "redis_restart_volatile":
                wipe_persistence(server)
            if fault == "redis_down_long":
                rec["seconds"] = seconds = rng.uniform(1.5, 2.5) * ttl
                await asyncio.sleep(seconds)
            await asyncio.to_thread(server.start)
            rec["heal"] = time.monotonic()
        return rec

    # -- the run --------------------------------------------------------------------------

    def schedule(self) -> list[str]:
        faults: list[str] = []
        while len(faults) < self.s.faults:
            batch = list(self.s.types)
            self.rng.shuffle(batch)
            faults += batch
        return faults[: self.s.faults]

    async def run(self) -> None:
        s = self.s
        end_by = time.monotonic() + s.minutes * 60
        self.lease_server = RedisServer(appendonly=True)
        self.record(meta={**asdict(self.s), "types": list(s.types)}, t=time.monotonic())
        try:
            await asyncio.to_thread(self.lease_server.start)
            # Restart protection holds a free lock back until the server has been up this long.
            need = math.ceil(s.ttl) + 1
            await asyncio.to_thread(self.lease_server.wait_uptime_above, need)
            for index in range(s.candidates):
                lease = TcpProxy.for_server(self.lease_server)
                await lease.start()
                self.agents.append(Agent(index, lease))
            for agent in self.agents:
                await self.spawn(agent)
            self.record(started=time.monotonic())
            for fault in self.schedule():
                if time.monotonic() >= end_by:
                    break
                # Let a leader settle for a random while, so faults land anywhere in a term.
                leader = None
                while leader is None and time.monotonic() < end_by:
                    if await self.wait_for(self.leader, s.liveness_timeout) is None:
                        break
                    await asyncio.sleep(self.rng.uniform(0.2, 0.8) * s.ttl)
                    leader = self.leader()
                if leader is None:
                    self.log("no leader before the next fault: liveness lost")
                    break
                rec = await self.inject(fault, leader)
                self.injected += 1
                self.record(**rec)
                found = await self.wait_for(self.leader, s.liveness_timeout)
                if found is None:
                    self.log(f"no leader within {s.liveness_timeout}s after {fault}")
            await self.wait_for(self.leader, s.liveness_timeout)
            self.record(finished=time.monotonic())
            await self.shutdown_agents()
            await self.save_resource_log()
        finally:
            for agent in self.agents:
                await kill(agent)
                for proxy in agent.proxies:
                    await proxy.close()
            self.lease_server.close()
            self._faults.close()

    async def shutdown_agents(self) -> None:
        for agent in self.agents:
            if agent.alive:
                await self.send(agent, "stop")
        for agent in self.agents:
            if agent.proc is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(15):
                        await agent.proc.wait()
        self.refresh()

    async def read_resource_log(self) -> None:
        """Add the fenced list's records not read before (each record names its term's token,
        its writer and its sequence number, so a record is never taken twice)."""
        assert self.lease_server is not None
        client = redis.asyncio.Redis(host="127.0.0.1", port=self.lease_server.port)
        async with client:
            entries = await client.lrange(resource_key(self.s.name), 0, -1)
        self.resource_log = merge_records(self.resource_log, entries)

    async def save_resource_log(self) -> None:
        await self.read_resource_log()
        with _open(self.out / "resource.jsonl") as f:
            f.writelines(entry + b"\n" for entry in self.resource_log)


def merge_records(known: list[bytes], read: list[bytes]) -> list[bytes]:
    """``known`` followed by the records of ``read`` not in it, in order."""
    seen = {_record_id(entry) for entry in known}
    return known + [entry for entry in read if _record_id(entry) not in seen]


def _record_id(entry: bytes) -> tuple[str, str, int]:
    """The token, writer and sequence number of a fenced record (a writer numbers its writes
    across its terms; the token too keeps two terms' records apart regardless)."""
    token, writer, seq, _sent = json.loads(entry)
    return str(token), writer, int(seq)


def _open(path: Path) -> BinaryIO:
    return open(path, "wb")


def wipe_persistence(server: RedisServer) -> None:
    """Delete the stopped server's AOF and RDB files: the next start begins empty."""
    for path in server.directory.iterdir():
        if path.name.startswith("appendonly") or path.name.endswith(".rdb"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


async def kill(agent: Agent) -> None:
    proc = agent.proc
    if proc is not None and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()


async def run_chaos(settings: ChaosSettings, out: Path) -> ChaosRun:
    """Run one chaos schedule; the histories land in ``out`` (created if needed)."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    run = ChaosRun(settings, out)
    await run.run()
    return run
