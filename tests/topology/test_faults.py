"""Faults on real topologies, with candidates in separate processes (``candidate.py``).

* Redis Cluster (3 masters; 1 replica each, 2 with ``min_replicas=1`` so that the promoted
  master still has one): SIGKILL of the master that owns the election's slot; SIGSTOP of its
  replica (cut off: it neither replicates nor acknowledges) for two leases.
* Sentinel (a master, 1 replica, 2 with ``min_replicas=1``, 3 sentinels): SIGKILL of the master;
  SIGSTOP of a replica for two leases.

Each test reports one row of the failover table of docs/topologies.md (printed; run with ``-s``
to see them): the time from the fault (or its heal) to a term that the fault did not end, the
overlaps of ``is_leader`` intervals between processes (0: checked on every run), and whether the
fencing tokens of the terms increase in the order the terms began (checked on every run).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import (  # the candidate processes of the fault tests
    Candidate,
    assert_one_leader_at_a_time,
    make_candidate,
)
from tests.redis_harness import ClusterServers, RedisServer, SentinelServers

__all__ = ["make_candidate"]

pytestmark = pytest.mark.redis

TTL, HEARTBEAT, RETRY = "1s", "100ms", "200ms"  # renew_deadline 2/3 s
CUT_OFF = 2.0  # seconds a replica stays stopped


def terms(candidates: list[Candidate]) -> list[tuple[float, int]]:
    """Every term begun so far, as ``(start, fencing token)``, in the order they began."""
    return sorted(
        (record["t"], record["token"])
        for candidate in candidates
        for record in candidate.events
        if record["event"] == "became"
    )


async def first_term_after(candidates: list[Candidate], t: float, timeout: float = 30) -> float:
    """The start of the first term that began after ``t``."""
    async with asyncio.timeout(timeout):
        while True:
            later = [start for start, _ in terms(candidates) if start > t]
            if later:
                return min(later)
            waits = [asyncio.ensure_future(c.next_event()) for c in candidates]
            try:  # until any candidate prints an event
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()


def leading(candidates: list[Candidate], now: float) -> list[Candidate]:
    return [c for c in candidates if any(a <= now <= b for a, b in c.terms())]


def report(
    topology: str, fault: str, min_replicas: int, outcome: str, candidates: list[Candidate]
) -> None:
    assert_one_leader_at_a_time(*candidates)  # overlaps: 0
    tokens = [token for _, token in terms(candidates)]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    print(
        f"\nFAILOVER {topology:9} | {fault:34} | min_replicas {min_replicas} | {outcome:44} | "
        f"terms {len(tokens)} | overlaps 0 | tokens increasing"
    )


async def start_candidates(
    make_candidate: Any, urls: list[str], name: str, min_replicas: int
) -> list[Candidate]:
    candidates = [
        await make_candidate(
            url, name, ttl=TTL, heartbeat=HEARTBEAT, retry=RETRY, min_replicas=min_replicas
        )
        for url in urls
    ]
    await first_term_after(candidates, 0.0)  # a young server holds the first term ~2 s back
    return candidates


async def kill_and_measure(
    candidates: list[Candidate], kill: Callable[[], Any], wait_failover: Callable[[], Any]
) -> tuple[float, float]:
    """Kill, then the seconds to the topology's failover and to the next term."""
    killed = time.monotonic()
    kill()
    await asyncio.to_thread(wait_failover)
    failover = time.monotonic() - killed
    new_term = await first_term_after(candidates, killed)
    return failover, new_term - killed


async def cut_off_and_measure(
    candidates: list[Candidate], replica: RedisServer, min_replicas: int
) -> str:
    """Stop a replica for CUT_OFF seconds; the outcome in words."""
    stopped = time.monotonic()
    replica.pause()
    try:
        await asyncio.sleep(CUT_OFF)  # the fault's length, not a wait for an outcome
    finally:
        replica.resume()
    healed = time.monotonic()
    if min_replicas == 0:
        # Nothing waits for the replica: the term that was running goes on.
        (leader,) = leading(candidates, stopped)
        assert leading(candidates, time.monotonic()) == [leader]
        assert not [t for t, _ in terms(candidates) if t > stopped]
        return "the term goes on"
    # No acknowledgements: the leader steps down at its renew deadline, and a term begins
    # once the replica acknowledges again.
    assert not leading(candidates, stopped + 1.0)
    new_term = await first_term_after(candidates, healed)
    return f"stepped down; new term {new_term - healed:.2f} s after the heal"


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_cluster_kill_the_master_of_the_election_slot(
    make_cluster: Any, make_candidate: Any, name: str, min_replicas: int
) -> None:
    cluster: ClusterServers = make_cluster(3, 1 + min_replicas)
    key = f"leaderelection:{{{name}}}:lock"
    owner = cluster.owner_of(key)
    urls = [cluster.url_of(n) for n in cluster.masters() if n is not owner]
    candidates = await start_candidates(make_candidate, urls, name, min_replicas)
    failover, to_term = await kill_and_measure(
        candidates, lambda: cluster.kill(owner), lambda: cluster.wait_failover(owner)
    )
    report(
        "cluster",
        "SIGKILL of the slot's master",
        min_replicas,
        f"failover {failover:.2f} s, new term {to_term:.2f} s after the kill",
        candidates,
    )


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_cluster_cut_off_the_replica_of_the_election_slot(
    make_cluster: Any, make_candidate: Any, name: str, min_replicas: int
) -> None:
    cluster: ClusterServers = make_cluster(3, 1)
    key = f"leaderelection:{{{name}}}:lock"
    owner = cluster.owner_of(key)
    urls = [cluster.url_of(n) for n in cluster.masters()]
    candidates = await start_candidates(make_candidate, urls, name, min_replicas)
    (replica,) = cluster.replicas_of(owner)
    outcome = await cut_off_and_measure(candidates, replica, min_replicas)
    report(
        "cluster", f"SIGSTOP of the slot's replica {CUT_OFF:g} s", min_replicas, outcome, candidates
    )


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_sentinel_kill_the_master(
    make_sentinels: Any, make_candidate: Any, name: str, min_replicas: int
) -> None:
    servers: SentinelServers = make_sentinels(replicas=1 + min_replicas)
    candidates = await start_candidates(make_candidate, [servers.url] * 3, name, min_replicas)
    old: list[RedisServer] = []
    failover, to_term = await kill_and_measure(
        candidates,
        lambda: old.append(servers.kill_master()),
        lambda: servers.wait_failover(old[0]),
    )
    report(
        "sentinel",
        "SIGKILL of the master",
        min_replicas,
        f"failover {failover:.2f} s, new term {to_term:.2f} s after the kill",
        candidates,
    )


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_sentinel_cut_off_the_replica(
    make_sentinels: Any, make_candidate: Any, name: str, min_replicas: int
) -> None:
    servers: SentinelServers = make_sentinels()
    candidates = await start_candidates(make_candidate, [servers.url] * 3, name, min_replicas)
    replica = next(s for s in servers.servers if s is not servers.master())
    outcome = await cut_off_and_measure(candidates, replica, min_replicas)
    report("sentinel", f"SIGSTOP of the replica {CUT_OFF:g} s", min_replicas, outcome, candidates)
