"""Fenced writes on a real redis-server: the leader's writes land, a replaced leader's are refused
by Redis itself (not only by its own local check), from the asyncio and the sync election, and
from a leader process paused (SIGSTOP) past its lease in the middle of a write.

Every wait is on an event, ``wait_until_leader`` or a candidate's printed event with a deadline;
nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

from leaderelection import FenceResult, LeaderElection
from leaderelection import sync as sync_election
from leaderelection._store import FencedWrite, RedisStore
from tests.support import CROWDED, eventually, fast_config

from .conftest import MakeCandidate

WAIT = 10.0


async def test_a_replaced_leaders_fence_is_refused_by_redis_and_the_new_leaders_kept(
    shared_redis: Any, name: str
) -> None:
    config = fast_config(name)
    progress = f"app:{{{name}}}:progress"
    async with (
        shared_redis.client(decode_responses=True) as data,
        LeaderElection(shared_redis.url, config) as a,
    ):
        await a.wait_until_leader(timeout=WAIT)
        old = a.fence()
        assert await old.set(progress, "a:1") is True
        counted = await old.eval(
            "return redis.call('INCRBY', KEYS[1], ARGV[1])", [progress + ":n"], [2]
        )
        assert counted == FenceResult(True, 2)
        async with LeaderElection(shared_redis.url, config) as b:
            await a.resign()
            await b.wait_until_leader(timeout=WAIT)
            new = b.fence()
            assert new.token > old.token
            assert await new.set(progress, "b:1") is True
            # The old fence refuses locally; without that check, Redis refuses it.
            assert await old.set(progress, "a:2") is False
            old._is_current = lambda: True
            assert await old.set(progress, "a:3") is False
            assert await old.hset(progress + ":h", {"by": "a"}) is False
            assert await old.delete(progress) is False
            assert await old.eval(
                "return redis.call('INCRBY', KEYS[1], ARGV[1])", [progress + ":n"], [2]
            ) == FenceResult(False)
            assert await data.get(progress) == "b:1"
            assert await data.get(progress + ":n") == "2"
            assert await data.exists(progress + ":h") == 0
            assert await new.delete(progress, progress + ":n") is True


async def test_after_stop_the_fence_key_still_holds_the_token_but_nothing_is_written(
    shared_redis: Any, name: str
) -> None:
    config = fast_config(name)
    progress = f"app:{{{name}}}:progress"
    async with shared_redis.client(decode_responses=True) as data:
        async with LeaderElection(data, config) as a:  # a client of ours: open after stop()
            await a.wait_until_leader(timeout=WAIT)
            fence = a.fence()
        assert await data.get(config.fence_key) == str(fence.token)  # no one acquired since
        assert await fence.set(progress, "late") is False  # refused here
        fence._is_current = lambda: True
        assert await fence.set(progress, "late") is False  # and there: the lock is released
        assert await data.exists(progress) == 0


def test_the_sync_election_writes_through_a_fence_from_its_job(
    shared_redis: Any, name: str
) -> None:
    config = fast_config(name, **CROWDED)
    progress = f"app:{{{name}}}:progress"
    election = sync_election.LeaderElection(shared_redis.url, config)
    fences: list[sync_election.SyncFence] = []
    results: list[Any] = []
    wrote = threading.Event()

    @election.while_leader
    def job(term_over: threading.Event) -> None:
        fence = election.fence()
        fences.append(fence)
        for step in range(3):
            results.append(fence.set(progress, f"step {step}"))
        results.append(fence.eval("return redis.call('GET', KEYS[1])", [progress]))
        wrote.set()
        term_over.wait(WAIT)

    with election:
        election.wait_until_leader(timeout=WAIT)
        assert wrote.wait(WAIT)
    assert results[:3] == [True, True, True]
    assert results[3].written and results[3].value in (b"step 2", "step 2")
    fence = fences[0]
    assert not fence.is_current
    assert fence.set(progress, "late") is False
    with shared_redis.sync_client(decode_responses=True) as data:
        assert data.get(progress) == "step 2"


async def test_a_leader_paused_in_the_middle_of_a_write_is_refused_when_it_resumes(
    shared_redis: Any, make_candidate: MakeCandidate, name: str
) -> None:
    """The write that no local check can stop: the leader passes its fence's local check, then
    stops (SIGSTOP, sent by itself at that very point) for longer than its lease. A new leader
    is elected and writes. The old leader resumes, and its script reaches Redis: refused, and
    the new leader's value stays."""
    config = fast_config(name)
    progress = f"app:{{{name}}}:progress"
    a = await make_candidate(shared_redis.url, name)
    await a.expect("became")
    await a.send(f"fence-set {progress} from-a")
    assert (await a.expect("fenced"))["written"] is True
    await a.send(f"pause-then-fence-set {progress} late-from-a")
    paused = await a.expect("pausing")
    async with shared_redis.client(decode_responses=True) as data:
        assert await data.get(progress) == "from-a"
        await eventually(lambda: _stopped(a.proc.pid))
        async with LeaderElection(shared_redis.url, config) as b:
            await b.wait_until_leader(timeout=WAIT)
            fence = b.fence()
            assert fence.token > paused["token"]
            assert await fence.set(progress, "from-b") is True
            a.signal(signal.SIGCONT)
            late = await a.expect("fenced", after=a.events.index(paused))
            assert late["written"] is False
            assert late["local"] is True  # the local check had passed before the pause
            assert await data.get(progress) == "from-b"
            assert b.is_leader
    await a.send("stop")
    await a.expect("stopped")


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


async def test_a_failover_that_lost_the_grant_lets_in_flight_writes_in_until_the_old_lease_ends(
    make_redis_server: Any, make_proxy: Any, name: str
) -> None:
    """The limit of fencing on an asynchronously replicated Redis, measured. A leads; its lease
    reaches the replica; then the replication link is cut. A resigns, B is granted a term and
    writes: on the primary only. The primary dies, the replica is promoted. There, the fence
    key holds A's token and the lock A's lease: a write of A's term that had passed its local
    check before the term ended (in flight, or paused) is accepted until A's lease ends on the
    promoted replica, and refused after. B's term was lost with the primary: B's fence is
    refused at once, although B reads is_leader True until its local deadline."""
    config = fast_config(name, lock_ttl="2s", heartbeat_interval="500ms")
    primary = make_redis_server()
    link = await make_proxy(primary)
    # started from a thread: the proxy needs this event loop while the replica syncs
    replica = await asyncio.to_thread(make_redis_server, replica_of=(link.host, link.port))
    await asyncio.to_thread(primary.wait_uptime_above, 3)
    progress = f"app:{{{name}}}:progress"
    async with (
        primary.client() as on_primary,
        replica.client() as on_replica,
        LeaderElection(on_primary, config) as a,
    ):
        await a.wait_until_leader(timeout=WAIT)
        term_a = a._campaign.core.term
        assert term_a is not None
        await eventually(lambda: _holds(on_replica, config.lock_key, term_a.token))
        link.blackhole()  # from here on, nothing reaches the replica
        async with LeaderElection(on_primary, config) as b:
            await a.resign()
            await b.wait_until_leader(timeout=WAIT)
            assert await b.fence().set(progress, "b") is True
            term_b = b._campaign.core.term
            assert term_b is not None
            primary.stop()  # the primary dies with the release and the grant
            await link.close()  # what the link held is lost with it
            replica.promote()
            promoted = time.monotonic()
            store = RedisStore.for_config(on_replica, config)

            async def late_write(term: Any, value: str) -> bool:
                written, _ = await store.fenced_write(
                    FencedWrite("set", (progress,), (value, "")),
                    token=term.token,
                    fencing_token=term.fencing_token,
                    timeout=1.0,
                )
                return bool(written)

            assert await late_write(term_b, "b, again") is False  # its grant is lost
            lease_left = await on_replica.pttl(config.lock_key) / 1000
            assert lease_left > 0  # A's lease, as the replica last heard of it
            assert await late_write(term_a, "a, in flight") is True  # the window
            await eventually(lambda: _refused(late_write(term_a, "a, later")), timeout=WAIT)
            window = time.monotonic() - promoted
    assert lease_left - 0.1 <= window <= config.lock_ttl.total_seconds() + 0.5
    async with replica.client() as check:
        assert (await check.get(progress)).startswith(b"a, ")  # B's write went with the primary


async def _holds(client: Any, key: str, token: str) -> bool:
    return bool(await client.get(key) == token.encode())


async def _refused(written: Any) -> bool:
    return not await written
