"""Benchmark of leaderelection against raw Redis round trips and the Python peers.

Usage::

    python benchmarks/run.py [--quick] [--only 7,8] [--json FILE] [--charts DIR]

It starts its own ``redis-server`` with the test suite's harness (``tests/redis_harness.py``: the
binary ``find_redis_server`` finds, a free loopback port, persistence off), measures the figures
of DESIGN.md's "Performance" section and the scale figures after them (a herd of followers, a
rolling deploy, 10,000 idle candidates, a crash failover with 100 followers) and the cost of a
fenced write, prints them beside their targets with PASS/MISS, and kills the server at the end.
See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The checkout's library, unless PYTHONPATH names a directory holding another ``leaderelection``
# (e.g. a snapshot of one commit, so that edits in progress do not leak into a long run).
_ON_PYTHONPATH = any(
    Path(p, "leaderelection", "__init__.py").is_file()
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if p
)
for _path in (str(HERE),) if _ON_PYTHONPATH else (str(HERE), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# The repository root, for the test suite's redis-server harness; last, so that it does not
# shadow a ``leaderelection`` named by PYTHONPATH.
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import _workers  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from _common import commandstats, redis_cpu_s, stats_delta, summarize  # noqa: E402

import leaderelection  # noqa: E402
from leaderelection import ElectionConfig, LeaderElection  # noqa: E402
from tests.redis_harness import RedisServer  # noqa: E402

# Commands a client sends itself (round trips); everything else in commandstats during the load
# window was run by a script (redis.call) and is counted there too. INFO is our own snapshots.
CLIENT_COMMANDS = frozenset(
    {
        "evalsha", "evalsha_ro", "eval", "eval_ro", "subscribe", "unsubscribe", "psubscribe",
        "punsubscribe", "ping", "client", "hello", "script", "select", "auth",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """How much of each measurement one run does."""

    evalsha_calls: int
    elections: int
    handoffs: int
    kills: int
    load_window_s: float
    prl_load_window_s: float
    idle_window_s: float
    idle_candidates: int = 1000
    load_candidates: int = 100
    warmup: int = 20
    herd_followers: tuple[int, ...] = (1, 10, 50, 100)
    herd_handoffs: int = 40
    deploy_runs: int = 10
    big_idle_candidates: int = 10_000
    herd_crash_followers: int = 100
    herd_crashes: int = 8


FULL = Plan(2000, 300, 200, 25, 60.0, 30.0, 15.0)
QUICK = Plan(
    1000,
    100,
    60,
    8,
    20.0,
    12.0,
    6.0,
    herd_followers=(1, 10, 50),
    herd_handoffs=20,
    deploy_runs=2,
    big_idle_candidates=2_000,
    herd_crash_followers=50,
    herd_crashes=3,
)
FIGURES = range(1, 12)


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    measured: str
    target: str
    verdict: str  # PASS, MISS or "-" (reference figure, no target)


@dataclass
class Report:
    """Everything a run measured: the table rows and the raw figures behind them."""

    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, measured: str, target: str = "", ok: bool | None = None) -> None:
        verdict = "-" if ok is None else ("PASS" if ok else "MISS")
        self.rows.append(Row(figure, measured, target or "-", verdict))


def log(message: str) -> None:
    """Progress goes to stderr; the table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 10 else f"{value:.1f} ms"


def dist(s: dict[str, float], keys: Iterable[str] = ("p50", "p99")) -> str:
    return ", ".join(f"{k} {ms(s[f'{k}_ms'])}" for k in keys)


# ------------------------------------------------------------------------------ processes


class Worker:
    """A worker process and its end of the pipe, with messages kept until asked for."""

    def __init__(self, ctx: ForkServerContext, target: Callable[..., None], *args: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.pending: deque[tuple[Any, ...]] = deque()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, *message: Any) -> None:
        self.conn.send(message)

    def pump(self) -> None:
        """Move every message that has arrived into ``pending``."""
        with contextlib.suppress(EOFError, OSError):
            while self.conn.poll():
                self.pending.append(self.conn.recv())

    def take(self, kind: str) -> tuple[Any, ...] | None:
        for message in self.pending:
            if message[0] == kind:
                self.pending.remove(message)
                return message
        return None

    def expect(self, kind: str, timeout: float = 30.0) -> tuple[Any, ...]:
        """The next message of ``kind`` (other messages stay pending)."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            message = self.take(kind)
            if message is not None:
                return message
            left = deadline - time.monotonic()
            if left <= 0 or (not self.proc.is_alive() and not self.conn.poll()):
                raise TimeoutError(f"worker {self.pid} sent no {kind!r} within {timeout}s")
            self.conn.poll(min(left, 0.5))

    def kill(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        self.proc.join(5)
        self.conn.close()


def expect_any(workers: list[Worker], kind: str, timeout: float) -> tuple[Worker, tuple[Any, ...]]:
    """The first message of ``kind`` from any of ``workers``."""
    deadline = time.monotonic() + timeout
    while True:
        for worker in workers:
            worker.pump()
            message = worker.take(kind)
            if message is not None:
                return worker, message
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {kind!r} from any worker within {timeout}s")
        multiprocessing.connection.wait([w.conn for w in workers], min(left, 0.5))


# ----------------------------------------------------------------------- 1. raw EVALSHA


async def bench_evalsha(server: RedisServer, plan: Plan, report: Report) -> float:
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    try:
        sha = await client.script_load("return 1")
        samples = []
        for i in range(plan.warmup * 10 + plan.evalsha_calls):
            started = time.perf_counter()
            await client.evalsha(sha, 0)
            if i >= plan.warmup * 10:
                samples.append(time.perf_counter() - started)
    finally:
        await client.aclose()
    s = summarize(samples)
    report.data["evalsha"] = s
    report.add(f"1. raw async EVALSHA round trip (n={s['n']})", dist(s, ("p50", "p90", "p99")), "-")
    return s["p50_ms"]


# ---------------------------------------------------------------------- 2. election time


async def bench_redis_py_lock(server: RedisServer, plan: Plan) -> dict[str, float]:
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    run = secrets.token_hex(3)
    samples = []
    try:
        for i in range(plan.warmup + plan.elections):
            lock = client.lock(f"bench:redis-py-lock:{run}:{i}", timeout=10)
            await client.ping()
            started = time.perf_counter()
            acquired = await lock.acquire()
            elapsed = time.perf_counter() - started
            if not acquired:
                raise RuntimeError("an uncontended redis-py Lock was not acquired")
            await lock.release()
            if i >= plan.warmup:
                samples.append(elapsed)
    finally:
        await client.aclose()
    return summarize(samples)


async def bench_election(server: RedisServer, plan: Plan, variant: str) -> dict[str, float]:
    """Enter-to-leader of ``async with LeaderElection(client, config)`` on a fresh election.

    Variants: ``ping`` (a PING before each, so the client's pooled connection is live: the
    headline), ``cold`` (back to back, no PING), ``hub`` (another election on the same client is
    running, so the release subscription already exists).
    """
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    run = secrets.token_hex(3)
    samples = []
    background: LeaderElection | None = None
    try:
        if variant == "hub":
            background = LeaderElection(client, ElectionConfig(name=f"bench-bg-{run}"))
            await background.start()
        for i in range(plan.warmup + plan.elections):
            config = ElectionConfig(name=f"bench-enter-{variant}-{run}-{i}")
            if variant != "cold":
                await client.ping()
            started = time.perf_counter()
            async with LeaderElection(client, config) as election:
                elapsed = time.perf_counter() - started
                leader = election.is_leader
            if not leader:
                raise RuntimeError(f"a free election did not lead on return: {config.name}")
            if i >= plan.warmup:
                samples.append(elapsed)
    finally:
        if background is not None:
            await background.stop()
        await client.aclose()
    return summarize(samples)


async def figure_election(server: RedisServer, plan: Plan, report: Report, raw: float) -> None:
    log("2. election enter-to-leader")
    results = {v: await bench_election(server, plan, v) for v in ("ping", "cold", "hub")}
    lock = report.data["redis_py_lock"]
    report.data["election"] = results
    head = results["ping"]
    ratio = head["p50_ms"] / raw
    report.add(
        f"2. election enter->leader (n={head['n']}, fresh name, warm client)",
        f"{dist(head)}; p50 = {ratio:.2f}x EVALSHA",
        "p50 <= 2x raw EVALSHA p50",
        ratio <= 2.0,
    )
    for variant, label in (("cold", "back to back, no PING"), ("hub", "release hub already up")):
        s = results[variant]
        report.add(
            f"   election enter->leader ({label})",
            f"{dist(s)}; p50 = {s['p50_ms'] / raw:.2f}x EVALSHA",
        )
    report.add(
        f"   redis-py asyncio Lock.acquire, uncontended (n={lock['n']})",
        f"{dist(lock)}; p50 = {lock['p50_ms'] / raw:.2f}x EVALSHA",
    )


# -------------------------------------------------------------------- 3. graceful handoff


def bench_handoff_election(
    ctx: ForkServerContext, server: RedisServer, plan: Plan
) -> dict[str, Any]:
    """Ping-pong leadership between two processes with ``resign()``."""
    hold = 0.05  # retry_interval: how long resign() holds the old leader back
    fields = {
        "name": f"bench-handoff-{secrets.token_hex(3)}",
        "lock_ttl": 10,
        "heartbeat_interval": 3,
        "retry_interval": hold,
    }
    a = Worker(ctx, _workers.election_worker, server.url, fields)
    b: Worker | None = None
    samples, resign_calls = [], []
    try:
        if not a.expect("ready")[1]:
            raise RuntimeError("the first handoff worker did not lead")
        a.expect("leader")
        b = Worker(ctx, _workers.election_worker, server.url, fields)
        if b.expect("ready")[1]:
            raise RuntimeError("the second handoff worker led while the first held the lock")
        time.sleep(0.5)  # the follower's release subscription is set up in the background
        leader, follower = a, b
        for _ in range(plan.handoffs):
            leader.send("resign")
            _, before, after = leader.expect("resigned", 30)
            _, became, _ = follower.expect("leader", 30)
            samples.append(became - before)
            resign_calls.append(after - before)
            # Past the old leader's hold-back and its one acquire attempt at its end.
            time.sleep(hold + 0.05)
            leader, follower = follower, leader
        for worker in (leader, follower):
            worker.send("stop")
        for worker in (leader, follower):
            worker.expect("stopped", 10)
    finally:
        a.kill()
        if b is not None:
            b.kill()
    return {
        "handoff": summarize(samples),
        "resign_call": summarize(resign_calls),
        "samples_ms": [round(v * 1000, 3) for v in samples],
    }


def bench_handoff_prl(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    """The same ping-pong with python-redis-lock: release() here, acquire() returns there."""
    rearm = 0.02
    name = f"bench-prl-handoff-{secrets.token_hex(3)}"
    a = Worker(ctx, _workers.prl_handoff_worker, server.url, name, True, rearm)
    b: Worker | None = None
    samples = []
    try:
        a.expect("leader")
        b = Worker(ctx, _workers.prl_handoff_worker, server.url, name, False, rearm)
        b.expect("ready")
        time.sleep(0.3)  # b is blocked in BLPOP
        leader, follower = a, b
        for _ in range(plan.handoffs):
            leader.send("release")
            _, before, _ = leader.expect("released", 30)
            _, became, _ = follower.expect("leader", 30)
            samples.append(became - before)
            time.sleep(rearm + 0.03)  # the releaser is blocked in acquire again
            leader, follower = follower, leader
        leader.send("stop")
        leader.expect("stopped", 10)
        follower.expect("leader", 15)
        follower.send("stop")
        follower.expect("stopped", 10)
    finally:
        for worker in (a, b):
            if worker is not None:
                worker.kill()
    return {"handoff": summarize(samples), "samples_ms": [round(v * 1000, 3) for v in samples]}


def figure_handoff(report: Report) -> None:
    ours = report.data["handoff"]["handoff"]
    prl = report.data["handoff_prl"]["handoff"]
    report.add(
        f"3. graceful handoff, resign() -> follower leader_event (n={ours['n']}, 2 processes)",
        dist(ours, ("p50", "p99", "max")),
        "p50 < 1 ms",
        ours["p50_ms"] < 1.0,
    )
    report.add("", "", "p99 < 3 ms", ours["p99_ms"] < 3.0)
    call = report.data["handoff"]["resign_call"]
    report.add("   resign() call itself (leader side)", dist(call, ("p50", "p99", "max")))
    report.add(
        f"   python-redis-lock release -> acquire returns (n={prl['n']})",
        dist(prl, ("p50", "p99", "max")),
    )


# ---------------------------------------------------------------------- 4. crash failover


def kill_and_read_expiry(leader: Worker, sync: Any, lock_key: str) -> tuple[float, float, int]:
    """SIGKILL ``leader``; return when it was killed, when its lease expires (monotonic) and the
    PTTL read. The lease is read only once the process is reaped: a renewal it sent just before
    the kill can still land after a PTTL read taken before it, moving the expiry by one
    heartbeat."""
    os.kill(leader.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    leader.proc.join(5)
    t_before = time.monotonic()
    pttl = int(sync.pttl(lock_key))
    t_after = time.monotonic()
    if pttl < 0:
        raise RuntimeError(f"no lease to expire (PTTL {pttl}) after the kill")
    return killed_at, (t_before + t_after) / 2 + pttl / 1000, pttl


def bench_failover(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    """SIGKILL the leader; time from its lease's expiry to a follower's ``leader_event``."""
    followers = 3
    fields = {
        "name": f"bench-failover-{secrets.token_hex(3)}",
        "lock_ttl": 1,
        "heartbeat_interval": 0.2,
        "retry_interval": 0.3,
    }
    lock_key = ElectionConfig(**fields).lock_key
    sync = server.sync_client(socket_timeout=10)
    workers: list[Worker] = []
    after_expiry, after_kill, pttls = [], [], []
    early = renewed = 0
    try:
        first = Worker(ctx, _workers.election_worker, server.url, fields)
        workers.append(first)
        if not first.expect("ready")[1]:
            raise RuntimeError("the first failover worker did not lead")
        first.expect("leader")
        leader = first
        for _ in range(followers):
            worker = Worker(ctx, _workers.election_worker, server.url, fields)
            workers.append(worker)
            worker.expect("ready")
        rng = random.Random(7)
        for _ in range(plan.kills):
            time.sleep(rng.uniform(0.3, 0.7))  # a random phase against the heartbeat
            before_kill = time.monotonic()
            pttl_before = int(sync.pttl(lock_key))
            killed_at, expiry, pttl = kill_and_read_expiry(leader, sync, lock_key)
            renewed += expiry > before_kill + pttl_before / 1000 + 0.005
            others = [w for w in workers if w is not leader]
            new_leader, message = expect_any(others, "leader", 10)
            became = message[1]
            after_expiry.append(became - expiry)
            after_kill.append(became - killed_at)
            pttls.append(pttl)
            early += became < expiry
            leader.kill()
            workers.remove(leader)
            leader = new_leader
            replacement = Worker(ctx, _workers.election_worker, server.url, fields)
            workers.append(replacement)
            if replacement.expect("ready")[1]:
                raise RuntimeError("a replacement follower led while a leader was alive")
    finally:
        for worker in workers:
            worker.kill()
        sync.close()
    return {
        "after_expiry": summarize(after_expiry),
        "after_kill": summarize(after_kill),
        "pttl_at_kill_ms": summarize(p / 1000 for p in pttls),
        "after_expiry_samples_ms": [round(v * 1000, 3) for v in after_expiry],
        "became_leader_before_expiry": early,
        "renewed_between_pttl_read_and_kill": renewed,
        "followers": followers,
        "timings": {k: v for k, v in fields.items() if k != "name"},
    }


def figure_failover(report: Report) -> None:
    f = report.data["failover"]
    s = f["after_expiry"]
    report.add(
        f"4. crash failover, lease expiry -> new leader (n={s['n']}, 3 followers, ttl 1s)",
        dist(s, ("p50", "p99", "max")),
        "p99 < 25 ms after expiry",
        s["p99_ms"] < 25.0,
    )
    k = f["after_kill"]
    report.add("   SIGKILL -> new leader (includes the rest of the lease)", dist(k))


# ------------------------------------------------------------------------- 5. Redis load


async def bench_load(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """100 candidates with default timings on one shared client; rates over an idle window."""
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    sync = server.sync_client(socket_timeout=10)
    config = ElectionConfig(name=f"bench-load-{secrets.token_hex(3)}")
    elections: list[LeaderElection] = []
    try:
        for _ in range(plan.load_candidates):
            election = LeaderElection(client, config)
            await election.start()
            elections.append(election)
        leaders = [e for e in elections if e.is_leader]
        if len(leaders) != 1:
            raise RuntimeError(f"expected one leader among the load candidates, got {len(leaders)}")
        leader = leaders[0]
        followers = [e for e in elections if e is not leader]
        # The followers' first attempts after their start all fall due one lease later; wait
        # past that burst (it grows the shared client's pool) so the window shows steady state.
        await asyncio.sleep(config.lock_ttl.total_seconds() + 1.0)

        # Sample the public statistics every 50 ms to time each round trip of each candidate.
        def sent(e: LeaderElection) -> int:
            st = e.statistics()
            return st.acquire_attempts + st.renewals + st.renew_failures

        last = [sent(e) for e in elections]
        first = list(last)
        times: list[list[float]] = [[] for _ in elections]
        per_tick: list[int] = []
        before = commandstats(sync)
        start = time.monotonic()
        while time.monotonic() - start < plan.load_window_s:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            tick = 0
            for i, e in enumerate(elections):
                n = sent(e)
                if n != last[i]:
                    times[i].extend([now] * (n - last[i]))
                    tick += n - last[i]
                    last[i] = n
            per_tick.append(tick)
        window = time.monotonic() - start
        delta = stats_delta(before, commandstats(sync))
        if not leader.is_leader:
            raise RuntimeError("leadership moved during the load window")
        pool = client.connection_pool
        connections = len(getattr(pool, "_available_connections", ())) + len(
            getattr(pool, "_in_use_connections", ())
        )
    finally:
        for election in elections:
            await election.stop()
        await client.aclose()
        sync.close()

    delta.pop("info", None)
    trips = {k: v for k, v in delta.items() if k in CLIENT_COMMANDS}
    in_script = {k: v for k, v in delta.items() if k not in CLIENT_COMMANDS}
    index = elections.index(leader)

    def mean_gap(ts: list[float]) -> float:
        return (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else math.nan

    follower_gaps = [
        mean_gap(times[i]) for i, e in enumerate(elections) if e is not leader and len(times[i]) > 1
    ]
    return {
        "window_s": window,
        "candidates": len(elections),
        "client": "one shared redis.asyncio.Redis for all candidates",
        "commands": delta,
        "round_trip_commands": trips,
        "in_script_commands": in_script,
        "total_per_s": sum(delta.values()) / window,
        "round_trips_per_s": sum(trips.values()) / window,
        "in_script_per_s": sum(in_script.values()) / window,
        "evalsha_per_s": (delta.get("evalsha", 0) + delta.get("eval", 0)) / window,
        "leader_per_s": (last[index] - first[index]) / window,
        "leader_mean_gap_s": mean_gap(times[index]),
        "follower_per_s": sum(last[i] - first[i] for i, e in enumerate(elections) if e in followers)
        / len(followers)
        / window,
        "follower_mean_gap_s": sum(follower_gaps) / len(follower_gaps)
        if follower_gaps
        else math.nan,
        "peak_round_trips_in_50ms": max(per_tick, default=0),
        "pool_connections": connections,
        "library_round_trips": sum(last) - sum(first),
    }


def bench_load_prl(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    """One python-redis-lock holder and 99 threads blocked in acquire, in another process."""
    waiters = plan.load_candidates - 1
    sync = server.sync_client(socket_timeout=10)
    worker = Worker(
        ctx, _workers.prl_load_worker, server.url, f"bench-prl-load-{secrets.token_hex(3)}", waiters
    )
    try:
        worker.expect("ready", 60)
        time.sleep(1.0)
        worker.send("report")
        counts0 = worker.expect("counts")[1]
        before = commandstats(sync)
        start = time.monotonic()
        time.sleep(plan.prl_load_window_s)
        worker.send("report")
        counts1 = worker.expect("counts")[1]
        window = time.monotonic() - start
        delta = stats_delta(before, commandstats(sync))
    finally:
        worker.kill()
        sync.close()
    delta.pop("info", None)
    waiter_calls = counts1.get("waiter", 0) - counts0.get("waiter", 0)
    holder_calls = counts1.get("holder", 0) - counts0.get("holder", 0)
    return {
        "window_s": window,
        "waiters": waiters,
        "commands": delta,
        "total_per_s": sum(delta.values()) / window,
        "waiter_round_trips_per_s": waiter_calls / waiters / window,
        "holder_round_trips_per_s": holder_calls / window,
    }


def figure_load(report: Report) -> None:
    load = report.data["load"]
    hb, ttl = 3.0, 10.0
    report.add(
        f"5. Redis load, 1 leader + 99 followers, defaults ({load['window_s']:.0f}s window)",
        f"{load['total_per_s']:.2f} cmds/s in all: {load['round_trips_per_s']:.2f} round trips/s "
        f"(EVALSHA {load['evalsha_per_s']:.2f}/s) + {load['in_script_per_s']:.2f}/s in scripts",
    )
    gap = load["leader_mean_gap_s"]
    report.add(
        "   leader round trips (1 / mean gap; count / window)",
        f"{1 / gap:.3f}/s, one per {gap:.2f} s; {load['leader_per_s']:.3f}/s",
        f"<= 1/heartbeat = {1 / hb:.3f}/s",
        gap >= hb * 0.98,
    )
    fgap = load["follower_mean_gap_s"]
    report.add(
        "   follower round trips, each (1 / mean gap; count / window)",
        f"{1 / fgap:.3f}/s, one per {fgap:.2f} s; {load['follower_per_s']:.3f}/s",
        f"<= 1/lock_ttl = {1 / ttl:.3f}/s",
        fgap >= ttl * 0.98,
    )
    report.add(
        "   herd: most round trips in one 50 ms tick; shared client's pool size",
        f"{load['peak_round_trips_in_50ms']} round trips; {load['pool_connections']} connections",
    )
    prl = report.data.get("load_prl")
    if prl:
        report.add(
            f"   python-redis-lock: 1 holder + {prl['waiters']} blocked waiters "
            f"({prl['window_s']:.0f}s)",
            f"{prl['total_per_s']:.2f} cmds/s in all; "
            f"{prl['waiter_round_trips_per_s']:.3f} round trips/s per waiter",
        )


# ----------------------------------------------------------------------- 6. idle candidates


def bench_idle(
    ctx: ForkServerContext, server: RedisServer, plan: Plan, count: int | None = None
) -> dict[str, Any]:
    """``count`` idle candidates (figure 6: ``plan.idle_candidates``) in a fresh process, twice:
    RSS and CPU, then tracemalloc."""
    count = plan.idle_candidates if count is None else count
    results = {}
    for trace in (False, True):
        worker = Worker(
            ctx,
            _workers.idle_worker,
            server.url,
            f"bench-idle-{secrets.token_hex(3)}",
            {
                "count": count,
                "window_s": 0.0 if trace else plan.idle_window_s,
                "trace": trace,
            },
        )
        try:
            results["traced" if trace else "rss"] = worker.expect("result", 300 * count / 1000)[1]
        finally:
            worker.kill()
    return results


def figure_idle(report: Report) -> None:
    idle_rows(report, report.data["idle"], "6")


def idle_rows(report: Report, idle: dict[str, Any], number: str) -> None:
    """The rows of an idle-candidates figure (6 and 9)."""
    rss, traced = idle["rss"], idle["traced"]
    n = rss["count"]
    kb = traced["traced_per_candidate_b"] / 1024
    report.add(
        f"{number}. {n} idle candidates, one client: memory (tracemalloc)",
        f"{kb:.2f} KB per candidate",
        "< 10 KB",
        kb < 10,
    )
    rkb = rss["rss_per_candidate_b"] / 1024
    report.add("   memory (RSS delta)", f"{rkb:.2f} KB per candidate", "< 10 KB", rkb < 10)
    cpu = rss["cpu"]
    per = cpu["process_cpu_s"] / cpu["window_s"] / n * 1e6
    share = cpu["process_cpu_s"] / cpu["window_s"] * 100
    report.add(
        f"   CPU over {cpu['window_s']:.0f}s idle",
        f"{per:.3f} us/s per candidate ({share:.3f}% of a core for all {n})",
        f"near zero (< 10 us/s each, < {n / 1000:g}% core)",
        per < 10,
    )
    cmds = sum(rss["idle_commands"].values()) / cpu["window_s"]
    report.add("   Redis commands/s from them while idle", f"{cmds:.2f}")
    report.add(
        "   reference: redis-py asyncio Lock (acquired) / python-redis-lock Lock",
        f"{traced['redis_py_lock_traced_b'] / 1024:.2f} KB / "
        f"{traced['prl_lock_traced_b'] / 1024:.2f} KB per lock (tracemalloc)",
    )


# ------------------------------------------------------------------------------- 7. the herd

HERD_PROCESSES = 10  # worker processes the candidates are spread over (fewer for fewer)
HERD_SETTLE_S = 0.25  # pause after each handoff: the herd's answers and the resigner's retry
HERD_IDLE_S = 2.0  # window for Redis's idle CPU, subtracted from the handoffs' CPU
# No lease expires during a run; retry_interval is how long a resigned leader sits out.
HERD_TIMINGS = {"lock_ttl": 10, "heartbeat_interval": 3, "retry_interval": 0.05}


def no_more_terms(workers: list[Worker], what: str) -> None:
    """Raise if any of ``workers`` reported a term that was not waited for."""
    extra = 0
    for worker in workers:
        worker.pump()
        while worker.take("leader") is not None:
            extra += 1
    if extra:
        raise RuntimeError(f"{extra} terms began {what}")


def stop_all(workers: list[Worker]) -> None:
    """Stop ``workers`` and wait until each has stopped."""
    for worker in workers:
        worker.send("stop")
    for worker in workers:
        worker.expect("stopped", 30)


def bench_herd_one(
    ctx: ForkServerContext, server: RedisServer, followers: int, handoffs: int
) -> dict[str, Any]:
    """One leader and ``followers`` followers, each on its own client, in up to 10 processes;
    the leader resigns ``handoffs`` times, each time after the previous handoff settled."""
    fields = {"name": f"bench-herd-{followers}-{secrets.token_hex(3)}", **HERD_TIMINGS}
    candidates = followers + 1
    processes = min(HERD_PROCESSES, candidates)
    # Candidate i lives in process i % processes; process 0 starts candidate 0 first, so it leads.
    groups = [list(range(p, candidates, processes)) for p in range(processes)]
    sync = server.sync_client(socket_timeout=10)
    workers: list[Worker] = []
    samples, resign_calls, winners = [], [], []
    same_process = 0
    try:
        first = Worker(ctx, _workers.herd_worker, server.url, fields, groups[0])
        workers.append(first)
        ready: dict[int, bool] = dict(first.expect("ready", 120)[1])
        if first.expect("leader", 10)[3] != 0:
            raise RuntimeError("the herd's first candidate did not lead")
        others = [Worker(ctx, _workers.herd_worker, server.url, fields, g) for g in groups[1:]]
        workers.extend(others)
        for worker in others:
            ready.update(worker.expect("ready", 120)[1])
        if [i for i, leads in ready.items() if leads] != [0] or len(ready) != candidates:
            raise RuntimeError(f"expected candidate 0 alone to lead, got {ready}")
        owner = {i: w for w, group in zip(workers, groups, strict=True) for i in group}
        time.sleep(0.5)  # each follower's second look, once its subscription is live, is done

        cpu_a, idle_a = redis_cpu_s(sync), time.monotonic()
        time.sleep(HERD_IDLE_S)
        idle_rate = (redis_cpu_s(sync) - cpu_a) / (time.monotonic() - idle_a)

        for worker in workers:
            worker.send("report")
        reports0 = [w.expect("counters") for w in workers]
        stats0, cpu0, t0 = commandstats(sync), redis_cpu_s(sync), time.monotonic()
        leader = 0
        for _ in range(handoffs):
            worker = owner[leader]
            worker.send("resign", leader)
            _, _, before, after = worker.expect("resigned", 30)
            new_worker, message = expect_any(workers, "leader", 30)
            _, became, _, new_leader = message
            if new_leader == leader:
                raise RuntimeError("the resigned leader won again within its hold-back")
            samples.append(became - before)
            resign_calls.append(after - before)
            same_process += new_worker is worker
            winners.append(new_leader)
            time.sleep(HERD_SETTLE_S)
            leader = new_leader
        t1, cpu1 = time.monotonic(), redis_cpu_s(sync)
        delta = stats_delta(stats0, commandstats(sync))
        for worker in workers:
            worker.send("report")
        reports1 = [w.expect("counters") for w in workers]
        no_more_terms(workers, "that no handoff accounts for")
        stop_all(workers)
    finally:
        for worker in workers:
            worker.kill()
        sync.close()

    # The window's INFO calls: the benchmark's own three (commandstats at the start, cpu at both
    # ends), the rest from the acquire script (restart protection reads the uptime whenever it
    # finds the lock free).
    in_script_info = delta.pop("info", 0) - 3
    counters = {
        key: sum(r[1].get(key, 0) for r in reports1) - sum(r[1].get(key, 0) for r in reports0)
        for key in sorted({k for r in reports1 for k in r[1]})
    }
    client_cpu = sum(r[2] for r in reports1) - sum(r[2] for r in reports0)
    window = t1 - t0
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    cpu = cpu1 - cpu0
    return {
        "followers": followers,
        "candidates": candidates,
        "processes": processes,
        "handoffs": handoffs,
        "window_s": window,
        "handoff": summarize(samples),
        "resign_call": summarize(resign_calls),
        "samples_ms": [round(v * 1000, 3) for v in samples],
        "scripts": scripts,
        "scripts_per_handoff": scripts / handoffs,
        "commands": delta,
        "commands_per_handoff": sum(delta.values()) / handoffs,
        "info_in_scripts": in_script_info,
        "redis_cpu_s": cpu,
        "redis_idle_cpu_per_s": idle_rate,
        "redis_cpu_ms_per_handoff": cpu / handoffs * 1000,
        "redis_cpu_ms_per_handoff_less_idle": (cpu - idle_rate * window) / handoffs * 1000,
        "client_cpu_s": client_cpu,
        "client_cpu_ms_per_handoff": client_cpu / handoffs * 1000,
        "winner_in_resigners_process": same_process,
        "distinct_winners": len(set(winners)),
        "candidate_counters": counters,
    }


def bench_herd(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    runs = []
    for followers in plan.herd_followers:
        log(f"7. herd: 1 leader + {followers} followers, {plan.herd_handoffs} handoffs")
        runs.append(bench_herd_one(ctx, server, followers, plan.herd_handoffs))
    return {
        "timings": HERD_TIMINGS,
        "settle_s": HERD_SETTLE_S,
        "runs": runs,
    }


def figure_herd(report: Report) -> None:
    herd = report.data["herd"]
    runs = herd["runs"]
    handoffs = runs[0]["handoffs"]
    report.add(
        f"7. herd: leader resigns, F followers race ({handoffs} handoffs each, own clients)",
        "per handoff: scripts, CPU; resign() -> next leader_event",
    )
    for run in runs:
        s = run["handoff"]
        report.add(
            f"   F={run['followers']:<3} ({run['processes']} processes)",
            f"{run['scripts_per_handoff']:.1f} scripts, Redis "
            f"{run['redis_cpu_ms_per_handoff']:.2f} ms CPU "
            f"({run['redis_cpu_ms_per_handoff_less_idle']:.2f} net of idle), clients "
            f"{run['client_cpu_ms_per_handoff']:.1f} ms CPU; {dist(s, ('p50', 'p90', 'max'))}",
        )
    one = next((r for r in runs if r["followers"] == 1), None)
    big = max(runs, key=lambda r: r["followers"])
    if big["followers"] > 1:
        f = big["followers"]
        report.add(
            f"   F={f}: scripts per handoff",
            f"{big['scripts_per_handoff']:.1f}",
            "<= 4",
            big["scripts_per_handoff"] <= 4.0,
        )
        if one is not None:
            ratio = big["handoff"]["p50_ms"] / one["handoff"]["p50_ms"]
            report.add(
                f"   F={f}: handoff p50 against F=1",
                f"{ratio:.2f}x ({ms(big['handoff']['p50_ms'])} / {ms(one['handoff']['p50_ms'])})",
                "<= 2x the 1-follower p50",
                ratio <= 2.0,
            )


# ----------------------------------------------------------------------- 8. rolling deploy

DEPLOY_SIZE = 6
DEPLOY_TIMINGS = {"lock_ttl": 2, "heartbeat_interval": 0.6}  # retry_interval: the default


def deploy_once(ctx: ForkServerContext, server: RedisServer, with_priority: bool) -> dict[str, Any]:
    """Six candidates, each in its own process, restarted oldest first; every term start is
    reported by its process, so each change of leader is seen."""
    base = {"name": f"bench-deploy-{secrets.token_hex(3)}", **DEPLOY_TIMINGS}
    old_fields = {**base, "priority": 0}
    new_fields = {**base, "priority": 1 if with_priority else 0}
    slots: list[Worker] = []
    names: dict[int, str] = {}  # pid -> "old 3" / "new 3"
    retired: list[Worker] = []
    stop_sent: dict[int, float] = {}  # pid -> when the driver asked it to stop
    try:
        for i in range(DEPLOY_SIZE):
            worker = Worker(ctx, _workers.election_worker, server.url, old_fields)
            slots.append(worker)
            names[worker.pid] = f"old {i}"
            if worker.expect("ready", 30)[1] != (i == 0):
                raise RuntimeError("the first deploy candidate alone should lead at the start")
        slots[0].expect("leader", 10)
        time.sleep(0.3)
        started = time.monotonic()
        for i in range(DEPLOY_SIZE):
            old = slots[i]
            stop_sent[old.pid] = time.monotonic()
            old.send("stop")
            old.expect("stopped", 30)
            retired.append(old)
            new = Worker(ctx, _workers.election_worker, server.url, new_fields)
            names[new.pid] = f"new {i}"
            new.expect("ready", 30)  # running, its first attempt made
            slots[i] = new
        finished = time.monotonic()
        time.sleep(0.5)  # a move the last restart started shows up
        terms: list[tuple[float, int]] = []
        for worker in (*retired, *slots):
            worker.pump()
            while (message := worker.take("leader")) is not None:
                terms.append((message[1], message[2]))
        for worker in slots:
            worker.send("stop")
        for worker in slots:
            worker.expect("stopped", 30)
    finally:
        for worker in (*retired, *slots):
            worker.kill()
    terms.sort()
    timeline = []
    moves = 0
    leaderless = 0.0
    previous: int | None = None
    for at, pid in terms:
        if at < started:
            previous = pid
            continue
        if pid != previous:
            moves += 1
            if previous is not None and previous in stop_sent:
                leaderless += at - stop_sent[previous]
        timeline.append((round(at - started, 4), names[pid]))
        previous = pid
    return {
        "moves": moves,
        "leaderless_s": leaderless,
        "deploy_s": finished - started,
        "final_leader": names[previous] if previous is not None else None,
        "timeline": timeline,
    }


def bench_deploy(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {"no_priority": [], "priority": []}
    for run in range(plan.deploy_runs):
        for variant, runs in results.items():  # interleaved: drift affects both alike
            log(f"8. rolling deploy {run + 1}/{plan.deploy_runs}, {variant.replace('_', ' ')}")
            runs.append(deploy_once(ctx, server, variant == "priority"))
    return {
        "candidates": DEPLOY_SIZE,
        "timings": {
            key: ElectionConfig(**DEPLOY_TIMINGS).model_dump()[key].total_seconds()
            for key in ("lock_ttl", "heartbeat_interval", "retry_interval")
        },
        "order": "oldest first: stop the old instance, start its replacement, wait for ready",
        "runs": results,
    }


def figure_deploy(report: Report) -> None:
    deploy = report.data["deploy"]
    runs = deploy["runs"]
    report.add(
        f"8. rolling deploy of {deploy['candidates']}, oldest first, lock_ttl 2s "
        f"(n={len(runs['no_priority'])} each)",
        "leadership moves per deploy: mean (min, max); time without a leader",
    )
    for variant, label in (
        ("no_priority", "all priority 0"),
        ("priority", "replacements priority 1"),
    ):
        moves = [r["moves"] for r in runs[variant]]
        gap = sum(r["leaderless_s"] for r in runs[variant]) / len(moves) * 1000
        report.add(
            f"   {label}",
            f"{sum(moves) / len(moves):.1f} moves (min {min(moves)}, max {max(moves)}); "
            f"{ms(gap)} leaderless per deploy",
        )


# ------------------------------------------------------------------- 9. 10,000 idle candidates


def figure_big_idle(report: Report) -> None:
    idle_rows(report, report.data["idle_big"], "9")


# ------------------------------------------------------------------------- 10. fenced writes

FENCE_SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])"


async def bench_fence(server: RedisServer, plan: Plan) -> dict[str, Any]:
    """A leader's fenced writes beside plain commands on the same client, interleaved call by
    call so that all variants share the same moments of the run.

    Variants: ``SET`` (plain), ``EVALSHA`` of a one-line script doing that SET (what any script
    costs), ``fence.set`` and ``fence.eval`` of that script (the guard: two GETs and a string
    comparison in the same script, plus the local check).
    """
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    config = ElectionConfig(name=f"bench-fence-{secrets.token_hex(3)}")
    key = f"bench:{{{config.name}}}:progress"
    samples: dict[str, list[float]] = {v: [] for v in ("SET", "EVALSHA", "fence.set", "fence.eval")}
    try:
        sha = await client.script_load(FENCE_SCRIPT)
        async with LeaderElection(client, config) as election:
            if not election.is_leader:
                raise RuntimeError(f"a free election did not lead on return: {config.name}")
            fence = election.fence()

            async def fenced_set(i: int) -> None:
                if not await fence.set(key, i):
                    raise RuntimeError("a fenced write of the leader was refused")

            async def fenced_eval(i: int) -> None:
                if not await fence.eval(FENCE_SCRIPT, [key], [i]):
                    raise RuntimeError("a fenced eval of the leader was refused")

            async def plain_set(i: int) -> None:
                await client.set(key, i)

            async def plain_script(i: int) -> None:
                await client.evalsha(sha, 1, key, i)

            calls = {
                "SET": plain_set,
                "EVALSHA": plain_script,
                "fence.set": fenced_set,
                "fence.eval": fenced_eval,
            }
            for i in range(plan.warmup * 10 + plan.evalsha_calls):
                for variant, call in calls.items():
                    started = time.perf_counter()
                    await call(i)
                    if i >= plan.warmup * 10:
                        samples[variant].append(time.perf_counter() - started)
            if not election.is_leader or fence.token != election.fencing_token:
                raise RuntimeError("the term ended during the measurement")
    finally:
        await client.aclose()
    return {variant: summarize(values) for variant, values in samples.items()}


def figure_fence(report: Report) -> None:
    results = report.data["fence"]
    plain = results["SET"]["p50_ms"]
    for variant, label in (
        ("SET", f"10. a leader's writes, plain SET (n={results['SET']['n']} each)"),
        ("EVALSHA", "    EVALSHA of a script doing that SET"),
        ("fence.set", "    fence.set() (guard + SET in one script)"),
        ("fence.eval", "    fence.eval() of that script"),
    ):
        s = results[variant]
        report.add(label, f"{dist(s)}; p50 = {s['p50_ms'] / plain:.2f}x SET")


# ----------------------------------------------------------- 11. crash failover with a herd

HERD_CRASH_TIMINGS = {"lock_ttl": 1, "heartbeat_interval": 0.2, "retry_interval": 0.3}


def herd_crash_once(
    ctx: ForkServerContext, server: RedisServer, followers: int, seed: int
) -> dict[str, Any]:
    """A leader in a process of its own and ``followers`` followers in up to 10 others; the
    leader is SIGKILLed, and the time from its lease's expiry to the next ``leader_event`` is
    taken, with the scripts Redis ran from just before the expiry until the herd settled."""
    fields = {"name": f"bench-herd-crash-{secrets.token_hex(3)}", **HERD_CRASH_TIMINGS}
    lock_key = ElectionConfig(**fields).lock_key
    processes = min(HERD_PROCESSES, followers)
    groups = [list(range(1 + p, followers + 1, processes)) for p in range(processes)]
    sync = server.sync_client(socket_timeout=10)
    workers: list[Worker] = []
    try:
        leader = Worker(ctx, _workers.election_worker, server.url, fields)
        workers.append(leader)
        if not leader.expect("ready")[1]:
            raise RuntimeError("the crash herd's leader did not lead")
        leader.expect("leader")
        herd = [Worker(ctx, _workers.herd_worker, server.url, fields, g) for g in groups]
        workers.extend(herd)
        for worker in herd:
            if any(worker.expect("ready", 120)[1].values()):
                raise RuntimeError("a follower of the crash herd led while the leader was alive")
        # Past one lease: every follower has found the lock held at least once more and sleeps
        # until the lease it saw can have expired; then a random phase against the heartbeat.
        time.sleep(fields["lock_ttl"] + random.Random(seed).uniform(0.1, 0.3))
        killed_at, expiry, _ = kill_and_read_expiry(leader, sync, lock_key)
        # The herd's traffic at the expiry, not the followers' regular looks before it.
        time.sleep(max(expiry - 0.002 - time.monotonic(), 0.0))
        stats0 = commandstats(sync)
        _, message = expect_any(herd, "leader", 10)
        became = message[1]
        time.sleep(0.3)  # the herd's attempts after the expiry have all come back
        delta = stats_delta(stats0, commandstats(sync))
        no_more_terms(herd, "after the crash failover")
        stop_all(herd)
    finally:
        for worker in workers:
            worker.kill()
        sync.close()
    scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
    return {
        "after_expiry_s": became - expiry,
        "after_kill_s": became - killed_at,
        "scripts": scripts,
    }


def bench_herd_crash(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    followers = plan.herd_crash_followers
    runs = []
    for i in range(plan.herd_crashes):
        log(f"11. crash failover with {followers} followers, {i + 1}/{plan.herd_crashes}")
        runs.append(herd_crash_once(ctx, server, followers, seed=i))
    return {
        "followers": followers,
        "timings": HERD_CRASH_TIMINGS,
        "after_expiry": summarize(r["after_expiry_s"] for r in runs),
        "after_kill": summarize(r["after_kill_s"] for r in runs),
        "scripts": [r["scripts"] for r in runs],
        "after_expiry_samples_ms": [round(r["after_expiry_s"] * 1000, 3) for r in runs],
    }


def figure_herd_crash(report: Report) -> None:
    crash = report.data["herd_crash"]
    s = crash["after_expiry"]
    scripts = crash["scripts"]
    report.add(
        f"11. crash failover, {crash['followers']} followers: lease expiry -> leader (n={s['n']})",
        dist(s, ("p50", "max")),
        "<= 25 ms",
        s["max_ms"] <= 25.0,
    )
    report.add(
        "    scripts from 2 ms before the expiry until the herd settled",
        f"mean {sum(scripts) / len(scripts):.1f} (min {min(scripts)}, max {max(scripts)})",
    )


# ------------------------------------------------------------------------------- driver


def print_table(report: Report) -> None:
    rows = [Row("figure", "measured", "target", "verdict"), *report.rows]
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("figure", "measured", "target")]
    widths[0] = min(widths[0], 78)
    for i, row in enumerate(rows):
        print(
            f"{row.figure:<{widths[0]}}  {row.measured:<{widths[1]}}  "
            f"{row.target:<{widths[2]}}  {row.verdict}"
        )
        if i == 0:
            print("-" * (sum(widths) + 14))


def library_source() -> str:
    """Where the benchmarked ``leaderelection`` comes from: the checkout's commit, or a path."""
    package = Path(leaderelection.__file__).resolve().parent
    if package != ROOT / "leaderelection":
        return str(package)

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "leaderelection")
    except (OSError, subprocess.CalledProcessError):
        return "checkout"
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def start_forkserver() -> ForkServerContext:
    """A forkserver that preloads this benchmark's workers and the library the driver imported.

    Python 3.11's forkserver starts with the current directory first on ``sys.path`` and does
    not take the driver's ``sys.path``; start it from this directory, with the library's
    directory first on PYTHONPATH, so its children import the same library as the driver.
    """
    library_root = str(Path(leaderelection.__file__).resolve().parent.parent)
    paths = [
        library_root,
        str(HERE),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["_workers", "leaderelection", "redis_lock"])
    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        os.chdir(cwd)
    probe = Worker(ctx, _workers.library_worker)
    try:
        used = probe.expect("library", 30)[1]
    finally:
        probe.kill()
    if Path(used).resolve() != Path(leaderelection.__file__).resolve():
        raise RuntimeError(f"workers import {used}, the driver {leaderelection.__file__}")
    return ctx


# --------------------------------------------------------------------------------- charts


def write_charts(report: Report, directory: Path) -> list[str]:
    """Draw ``herd.png`` (figure 7) and ``peers.png`` (figures 2 and 3) into ``directory``, from
    this run's figures; returns a line per chart, drawn or not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    data = report.data
    meta = data["meta"]
    footer = (
        f"leaderelection {meta['leaderelection']} ({meta['library']}), Redis "
        f"{meta['redis_server']}, redis-py {meta['redis_py']}, Python {meta['python']}, "
        f"{meta['cpus']} CPUs, loopback; {meta['mode']} run"
    )
    lines = []

    if "herd" in data:
        runs = data["herd"]["runs"]
        x = [r["followers"] for r in runs]
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        ax.plot(x, [r["handoff"]["p50_ms"] for r in runs], "o-", color="C0", label="handoff p50")
        ax.plot(
            x,
            [r["handoff"]["p90_ms"] for r in runs],
            "s--",
            color="C0",
            alpha=0.6,
            label="handoff p90",
        )
        one = next((r for r in runs if r["followers"] == 1), None)
        if one is not None:
            ax.axhline(
                2 * one["handoff"]["p50_ms"],
                color="C0",
                lw=0.8,
                ls=":",
                label="target: p50 <= 2x the 1-follower p50",
            )
        ax.set_xscale("log")
        ax.set_xticks(x, [str(v) for v in x])
        ax.minorticks_off()
        ax.set_xlabel("followers waiting (each on its own client)")
        ax.set_ylabel("resign() -> next leader_event (ms)")
        ax.set_ylim(bottom=0)
        scripts = ax.twinx()
        scripts.plot(
            x,
            [r["scripts_per_handoff"] for r in runs],
            "d-",
            color="C3",
            label="Lua scripts per handoff",
        )
        scripts.axhline(4, color="C3", lw=0.8, ls=":", label="target: <= 4 scripts (100 followers)")
        scripts.set_ylabel("Lua scripts Redis ran per handoff", color="C3")
        scripts.set_ylim(bottom=0)
        handles = ax.get_legend_handles_labels()
        more = scripts.get_legend_handles_labels()
        ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left", fontsize=8)
        ax.set_title(
            f"Figure 7, the herd: one election, {data['herd']['runs'][0]['handoffs']} "
            "handoffs per point",
            fontsize=10,
        )
        fig.text(0.01, 0.01, footer, fontsize=6.5, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / "herd.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        lines.append(f"chart written to {path}")
    else:
        lines.append("herd.png not drawn: figure 7 was not run")

    if all(k in data for k in ("election", "redis_py_lock", "handoff", "handoff_prl")):
        keys = ("p50", "p90", "p99")
        panels = (
            (
                "Figure 2: enter -> leader, uncontended",
                ("leaderelection\n`async with`", data["election"]["ping"]),
                ("redis-py asyncio\nLock.acquire", data["redis_py_lock"]),
            ),
            (
                "Figure 3: graceful handoff between 2 processes",
                ("leaderelection\nresign() -> leader_event", data["handoff"]["handoff"]),
                ("python-redis-lock\nrelease -> acquire", data["handoff_prl"]["handoff"]),
            ),
        )
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
        width = 0.38
        for ax, (title, ours, peer) in zip(axes, panels, strict=True):
            for offset, (label, dist_ms), color in (
                (-width / 2, ours, "C0"),
                (width / 2, peer, "C7"),
            ):
                values = [dist_ms[f"{k}_ms"] for k in keys]
                positions = [i + offset for i in range(len(keys))]
                bars = ax.bar(positions, values, width, label=label, color=color)
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
            if "evalsha" in data and title.startswith("Figure 2"):
                ax.axhline(
                    data["evalsha"]["p50_ms"], color="C3", lw=0.8, ls=":", label="raw EVALSHA p50"
                )
            ax.set_xticks(range(len(keys)), list(keys))
            ax.set_ylabel("ms")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7.5, loc="upper left")
            ax.margins(y=0.15)
        fig.text(0.01, 0.01, footer, fontsize=6.5, color="0.4")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = directory / "peers.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        lines.append(f"chart written to {path}")
    else:
        lines.append("peers.png not drawn: figures 2 and 3 were not both run")
    return lines


# lock_ttl of each figure whose elections a young server's restart protection would hold back
# (2, 3 and 5 use 10 s, 4 uses 1 s: see their functions).
LEASE_S = {
    2: 10.0,
    3: 10.0,
    4: 1.0,
    5: 10.0,
    7: float(HERD_TIMINGS["lock_ttl"]),
    8: float(DEPLOY_TIMINGS["lock_ttl"]),
    10: 10.0,
    11: float(HERD_CRASH_TIMINGS["lock_ttl"]),
}


def parse_only(text: str | None) -> list[int]:
    """The figures ``--only`` names (``"7,8"``, ``"2-4"``), all of them without it."""
    if not text:
        return list(FIGURES)
    chosen: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a figure number or range: {part!r}") from None
        if low not in FIGURES or high not in FIGURES or low > high:
            raise argparse.ArgumentTypeError(f"figures are {FIGURES[0]} to {FIGURES[-1]}: {part!r}")
        chosen.update(range(low, high + 1))
    return sorted(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    parser.add_argument(
        "--only",
        metavar="LIST",
        help="run only these figures, e.g. 7,8 or 2-4 (figure 2 brings figure 1, its yardstick)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--charts",
        metavar="DIR",
        help="also draw herd.png (figure 7) and peers.png (figures 2 and 3) into DIR",
    )
    args = parser.parse_args(argv)
    try:
        figures = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if 2 in figures and 1 not in figures:
        figures = [1, *figures]  # figure 2 is read against the raw round trip
    plan = QUICK if args.quick else FULL
    run_started = time.monotonic()

    def wanted(*numbers: int) -> bool:
        return any(n in figures for n in numbers)

    ctx = start_forkserver()
    report = Report()
    server = RedisServer(extra_args=("--loglevel", "warning"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server.start()
        with server.sync_client() as client:
            version = str(client.info("server")["redis_version"])
        log(f"redis-server {version} on 127.0.0.1:{server.port} ({server.binary})")
        report.data["meta"] = {
            "mode": "quick" if args.quick else "full",
            "figures": figures,
            "plan": asdict(plan),
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "hiredis": bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False)),
            "redis_server": version,
            "redis_server_binary": server.binary,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "leaderelection": leaderelection.__version__,
            "library": library_source(),
        }
        gc.collect()
        raw = math.nan
        if wanted(1):
            log("1. raw EVALSHA")
            raw = asyncio.run(bench_evalsha(server, plan, report))
        if wanted(2):
            log("2. redis-py Lock reference")
            report.data["redis_py_lock"] = asyncio.run(bench_redis_py_lock(server, plan))
        # python-redis-lock and the idle candidates of figure 9 (the lock held by a key the
        # benchmark sets) need no uptime: measure them while the server's uptime grows.
        if wanted(3):
            log("3. python-redis-lock handoff")
            report.data["handoff_prl"] = bench_handoff_prl(ctx, server, plan)
        if wanted(9):
            log(f"9. {plan.big_idle_candidates} idle candidates")
            report.data["idle_big"] = bench_idle(ctx, server, plan, plan.big_idle_candidates)

        leases = [LEASE_S[n] for n in figures if n in LEASE_S]
        if leases:
            bound = math.ceil(max(leases)) + 1
            waited = server.wait_uptime_above(bound)
            note = (
                f"restart protection: waited {waited:.1f}s more (polling INFO) until the server's "
                f"uptime_in_seconds > ceil(lock_ttl)+1 = {bound} (longest lock_ttl of the figures "
                "run) before the first election; every election starts on a fresh name (fence "
                "key missing); in 6 and 9 the lock is held by a key the benchmark sets (PX 600s) "
                "instead of by a leader"
            )
            report.notes.append(note)
            log(note)

        if wanted(2):
            asyncio.run(figure_election(server, plan, report, raw))
        if wanted(3):
            log("3. election handoff")
            report.data["handoff"] = bench_handoff_election(ctx, server, plan)
            figure_handoff(report)
        if wanted(4):
            log("4. crash failover")
            report.data["failover"] = bench_failover(ctx, server, plan)
            figure_failover(report)
        if wanted(5):
            log(f"5. Redis load, leaderelection ({plan.load_window_s:.0f}s)")
            report.data["load"] = asyncio.run(bench_load(server, plan))
            log(f"5. Redis load, python-redis-lock ({plan.prl_load_window_s:.0f}s)")
            report.data["load_prl"] = bench_load_prl(ctx, server, plan)
            figure_load(report)
        if wanted(6):
            log(f"6. {plan.idle_candidates} idle candidates")
            report.data["idle"] = bench_idle(ctx, server, plan)
            figure_idle(report)
        if wanted(7):
            report.data["herd"] = bench_herd(ctx, server, plan)
            figure_herd(report)
        if wanted(8):
            report.data["deploy"] = bench_deploy(ctx, server, plan)
            figure_deploy(report)
        if wanted(9):
            figure_big_idle(report)
        if wanted(10):
            log("10. fenced writes")
            report.data["fence"] = asyncio.run(bench_fence(server, plan))
            figure_fence(report)
        if wanted(11):
            report.data["herd_crash"] = bench_herd_crash(ctx, server, plan)
            figure_herd_crash(report)
    finally:
        server.close()

    elapsed = time.monotonic() - run_started
    report.data["meta"]["elapsed_s"] = elapsed
    meta = report.data["meta"]
    chosen = "" if len(figures) == len(FIGURES) else f" of figures {','.join(map(str, figures))}"
    print()
    print(
        f"leaderelection {meta['leaderelection']} ({meta['library']}), Python {meta['python']}, "
        f"redis-py {meta['redis_py']} (hiredis {meta['hiredis']}), Redis {meta['redis_server']}, "
        f"{meta['cpus']} CPUs, {meta['mode']} run{chosen} in {elapsed:.0f}s"
    )
    print()
    print_table(report)
    print()
    for note in report.notes:
        print(f"note: {note}")
    if args.json:
        payload = {"rows": [asdict(r) for r in report.rows], "notes": report.notes, **report.data}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"JSON written to {args.json}")
    if args.charts:
        for line in write_charts(report, Path(args.charts)):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
