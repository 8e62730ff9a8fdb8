"""Benchmark of leaderelection against raw Redis round trips and the Python peers.

Usage::

    python benchmarks/run.py [--quick] [--json FILE]

It starts its own ``redis-server`` with the test suite's harness (``tests/redis_harness.py``: the
binary ``find_redis_server`` finds, a free loopback port, persistence off), measures the figures
of DESIGN.md's "Performance" section, prints them beside their targets with PASS/MISS, and kills
the server at the end. See benchmarks/README.md for what each figure means.
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
from _common import commandstats, stats_delta, summarize  # noqa: E402

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


FULL = Plan(2000, 300, 200, 25, 60.0, 30.0, 15.0)
QUICK = Plan(1000, 100, 60, 8, 20.0, 12.0, 6.0)


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
            os.kill(leader.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            # Read the lease only once the process is reaped: a renewal it sent just before the
            # kill can still land after a PTTL read taken before it, moving the expiry by one
            # heartbeat.
            leader.proc.join(5)
            t_before = time.monotonic()
            pttl = int(sync.pttl(lock_key))
            t_after = time.monotonic()
            if pttl < 0:
                raise RuntimeError(f"no lease to expire (PTTL {pttl}) after the kill")
            expiry = (t_before + t_after) / 2 + pttl / 1000
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


def bench_idle(ctx: ForkServerContext, server: RedisServer, plan: Plan) -> dict[str, Any]:
    results = {}
    for trace in (False, True):
        worker = Worker(
            ctx,
            _workers.idle_worker,
            server.url,
            f"bench-idle-{secrets.token_hex(3)}",
            {
                "count": plan.idle_candidates,
                "window_s": 0.0 if trace else plan.idle_window_s,
                "trace": trace,
            },
        )
        try:
            results["traced" if trace else "rss"] = worker.expect("result", 300)[1]
        finally:
            worker.kill()
    return results


def figure_idle(report: Report) -> None:
    idle = report.data["idle"]
    rss, traced = idle["rss"], idle["traced"]
    n = rss["count"]
    kb = traced["traced_per_candidate_b"] / 1024
    report.add(
        f"6. {n} idle candidates, one client: memory (tracemalloc)",
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
        "near zero (< 10 us/s each, < 1% core)",
        per < 10,
    )
    cmds = sum(rss["idle_commands"].values()) / cpu["window_s"]
    report.add("   Redis commands/s from them while idle", f"{cmds:.2f}")
    report.add(
        "   reference: redis-py asyncio Lock (acquired) / python-redis-lock Lock",
        f"{traced['redis_py_lock_traced_b'] / 1024:.2f} KB / "
        f"{traced['prl_lock_traced_b'] / 1024:.2f} KB per lock (tracemalloc)",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    run_started = time.monotonic()

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
        log("1. raw EVALSHA")
        raw = asyncio.run(bench_evalsha(server, plan, report))
        log("2. redis-py Lock reference")
        report.data["redis_py_lock"] = asyncio.run(bench_redis_py_lock(server, plan))
        # python-redis-lock needs no uptime: measure it while the server's uptime grows.
        log("3. python-redis-lock handoff")
        report.data["handoff_prl"] = bench_handoff_prl(ctx, server, plan)

        bound = math.ceil(ElectionConfig().lock_ttl.total_seconds()) + 1
        waited = server.wait_uptime_above(bound)
        note = (
            f"restart protection: waited {waited:.1f}s more (polling INFO) until the server's "
            f"uptime_in_seconds > ceil(lock_ttl)+1 = {bound} (default lock_ttl) before the "
            "first election; every election starts on a fresh name (fence key missing); in 6 "
            "the lock is held by a key the benchmark sets (PX 600s) instead of by a leader"
        )
        report.notes.append(note)
        log(note)

        asyncio.run(figure_election(server, plan, report, raw))
        log("3. election handoff")
        report.data["handoff"] = bench_handoff_election(ctx, server, plan)
        figure_handoff(report)
        log("4. crash failover")
        report.data["failover"] = bench_failover(ctx, server, plan)
        figure_failover(report)
        log(f"5. Redis load, leaderelection ({plan.load_window_s:.0f}s)")
        report.data["load"] = asyncio.run(bench_load(server, plan))
        log(f"5. Redis load, python-redis-lock ({plan.prl_load_window_s:.0f}s)")
        report.data["load_prl"] = bench_load_prl(ctx, server, plan)
        figure_load(report)
        log(f"6. {plan.idle_candidates} idle candidates")
        report.data["idle"] = bench_idle(ctx, server, plan)
        figure_idle(report)
    finally:
        server.close()

    elapsed = time.monotonic() - run_started
    report.data["meta"]["elapsed_s"] = elapsed
    meta = report.data["meta"]
    print()
    print(
        f"leaderelection {meta['leaderelection']} ({meta['library']}), Python {meta['python']}, "
        f"redis-py {meta['redis_py']} (hiredis {meta['hiredis']}), Redis {meta['redis_server']}, "
        f"{meta['cpus']} CPUs, {meta['mode']} run in {elapsed:.0f}s"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
