"""Worker processes of the benchmark, started by ``run.py`` through multiprocessing (forkserver).

Each worker talks to the driver over a ``multiprocessing`` pipe with small tuples. Timestamps are
``time.monotonic()``, which on Linux is CLOCK_MONOTONIC, one clock for every process on the
machine, so a time taken in one process can be subtracted from a time taken in another.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import resource
import threading
import time
import tracemalloc
from multiprocessing.connection import Connection
from typing import Any

import redis
import redis.asyncio as aioredis
from _common import commandstats, rss_bytes, stats_delta

import leaderelection
from leaderelection import ElectionConfig, LeaderElection

__all__ = [
    "election_worker",
    "herd_worker",
    "idle_worker",
    "library_worker",
    "prl_handoff_worker",
    "prl_load_worker",
]


# The directory holding the imported ``leaderelection``, left off allocation sites.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(leaderelection.__file__))) + os.sep


def _inbox(conn: Connection) -> asyncio.Queue[tuple[Any, ...]]:
    """Commands from the driver, delivered into the running event loop without a thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                queue.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            queue.put_nowait(("stop",))

    loop.add_reader(conn.fileno(), readable)
    return queue


async def _report_terms(conn: Connection, election: LeaderElection, *tag: Any) -> None:
    """Send ``("leader", monotonic time, pid, *tag)`` each time ``leader_event`` gets set."""
    while True:
        await election.leader_event.wait()
        conn.send(("leader", time.monotonic(), os.getpid(), *tag))
        await election.wait_until_follower()


def library_worker(conn: Connection) -> None:
    """Reply with the file of the ``leaderelection`` this worker imported."""
    conn.send(("library", leaderelection.__file__))


def election_worker(conn: Connection, url: str, config_fields: dict[str, Any]) -> None:
    """A candidate of one election that resigns on ``("resign",)`` and reports its terms.

    Replies ``("ready", is_leader, pid)`` once started, ``("leader", t, pid)`` whenever it becomes
    leader, ``("resigned", t_before_resign, t_after_resign)`` after a resign.
    """
    asyncio.run(_election_worker(conn, url, config_fields))


async def _election_worker(conn: Connection, url: str, config_fields: dict[str, Any]) -> None:
    inbox = _inbox(conn)
    client = aioredis.Redis.from_url(url)
    config = ElectionConfig(**config_fields)
    try:
        async with LeaderElection(client, config) as election:
            watcher = asyncio.create_task(_report_terms(conn, election))
            conn.send(("ready", election.is_leader, os.getpid()))
            while (command := await inbox.get())[0] != "stop":
                if command[0] == "resign":
                    before = time.monotonic()
                    await election.resign()
                    conn.send(("resigned", before, time.monotonic()))
            watcher.cancel()
    finally:
        await client.aclose()
    conn.send(("stopped",))


def herd_worker(
    conn: Connection, url: str, config_fields: dict[str, Any], indexes: list[int]
) -> None:
    """Candidates ``indexes`` of one election in this process, each on its own client.

    They start one after another, in the order given. Replies ``("ready", {index: is_leader},
    pid)`` once all are started, ``("leader", t, pid, index)`` whenever one becomes leader,
    ``("resigned", index, t_before_resign, t_after_resign)`` after ``("resign", index)``,
    ``("counters", {...}, cpu_s)`` (their statistics, added up, and this process's CPU time) on
    ``("report",)``.
    """
    asyncio.run(_herd_worker(conn, url, config_fields, indexes))


async def _herd_worker(
    conn: Connection, url: str, config_fields: dict[str, Any], indexes: list[int]
) -> None:
    inbox = _inbox(conn)
    config = ElectionConfig(**config_fields)
    clients: list[aioredis.Redis] = []
    elections: dict[int, LeaderElection] = {}
    watchers: list[asyncio.Task[None]] = []
    try:
        for index in indexes:
            client = aioredis.Redis.from_url(url)
            clients.append(client)
            election = LeaderElection(client, config)
            await election.start()
            elections[index] = election
            watchers.append(asyncio.create_task(_report_terms(conn, election, index)))
        conn.send(("ready", {i: e.is_leader for i, e in elections.items()}, os.getpid()))
        while (command := await inbox.get())[0] != "stop":
            if command[0] == "resign":
                index = command[1]
                before = time.monotonic()
                await elections[index].resign()
                conn.send(("resigned", index, before, time.monotonic()))
            elif command[0] == "report":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                counters = _counters(elections.values())
                conn.send(("counters", counters, usage.ru_utime + usage.ru_stime))
        for watcher in watchers:
            watcher.cancel()
        for election in elections.values():
            await election.stop()
    finally:
        for client in clients:
            await client.aclose()
    conn.send(("stopped",))


def _counters(elections: Any) -> dict[str, int]:
    """The statistics of ``elections`` that explain a herd's traffic, added up."""
    out: collections.Counter[str] = collections.Counter()
    for election in elections:
        st = election.statistics()
        out["acquire_attempts"] += st.acquire_attempts
        out["renewals"] += st.renewals
        out["terms_won"] += st.terms_won
        out["release_notices"] += st.release_notices
        out["follower_wakeups"] += st.follower_wakeups
        for result, count in st.acquire_results.items():
            out[f"acquire_{result}"] += count
    return dict(out)


def prl_handoff_worker(
    conn: Connection, url: str, name: str, lead_first: bool, rearm_s: float
) -> None:
    """python-redis-lock in a plain synchronous process: hold, release on command, wait again.

    Replies ``("ready",)`` (followers, before blocking in acquire), ``("leader", t, pid)`` each
    time ``acquire(blocking=True)`` returns, ``("released", t_before, t_after)`` after a release.
    After a release it sleeps ``rearm_s`` and then blocks in ``acquire`` again, so it never races
    the waiting process for the lock it just gave away.
    """
    import redis_lock

    # No socket timeout: a waiter blocks in BLPOP for up to ``expire`` (10 s), longer than
    # redis-py 8's default socket_timeout of 5 s.
    client = redis.Redis.from_url(url, socket_timeout=None)
    lock = redis_lock.Lock(client, name, expire=10)
    if not lead_first:
        conn.send(("ready",))
    lock.acquire(blocking=True)
    conn.send(("leader", time.monotonic(), os.getpid()))
    while True:
        command = conn.recv()
        if command[0] == "release":
            before = time.monotonic()
            lock.release()
            conn.send(("released", before, time.monotonic()))
            time.sleep(rearm_s)
            lock.acquire(blocking=True)
            conn.send(("leader", time.monotonic(), os.getpid()))
        elif command[0] == "stop":
            lock.release()
            break
    client.close()
    conn.send(("stopped",))


def prl_load_worker(conn: Connection, url: str, name: str, waiters: int) -> None:
    """One python-redis-lock holder (auto renewal) and ``waiters`` threads blocked in acquire.

    Every ``redis.Redis.execute_command`` is counted client side, per role, so the driver can
    report round trips per waiting locker. On ``("report",)`` replies ``("counts", {...})``.
    The driver kills this process at the end (the waiters block for good).
    """
    import redis_lock

    counts: collections.Counter[str] = collections.Counter()
    guard = threading.Lock()
    role = threading.local()
    original = redis.Redis.execute_command

    def counting(self: redis.Redis, *args: Any, **options: Any) -> Any:
        with guard:
            counts[getattr(role, "name", "holder")] += 1
        return original(self, *args, **options)  # type: ignore[no-untyped-call]

    redis.Redis.execute_command = counting  # type: ignore[method-assign]
    client = redis.Redis.from_url(url, max_connections=waiters + 10, socket_timeout=None)
    holder = redis_lock.Lock(client, name, expire=10, auto_renewal=True)
    holder.acquire(blocking=True)

    def wait_for_lock() -> None:
        role.name = "waiter"
        redis_lock.Lock(client, name, expire=10).acquire(blocking=True)

    threads = [threading.Thread(target=wait_for_lock, daemon=True) for _ in range(waiters)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    conn.send(("ready",))
    while True:
        command = conn.recv()
        if command[0] == "report":
            with guard:
                conn.send(("counts", dict(counts)))


def idle_worker(conn: Connection, url: str, name: str, spec: dict[str, Any]) -> None:
    """``spec["count"]`` idle followers in this process on one shared client: memory and CPU.

    With ``spec["trace"]`` the memory is measured with tracemalloc (and no CPU window: tracing
    slows Python down); without it, RSS and CPU over an idle window of ``spec["window_s"]``.
    """
    result = asyncio.run(_idle(url, name, spec["count"], spec["window_s"], spec["trace"]))
    conn.send(("result", result))


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def _idle(url: str, name: str, count: int, window_s: float, trace: bool) -> dict[str, Any]:
    if trace:
        tracemalloc.start()
    long_timings: dict[str, Any] = {
        "lock_ttl": 600,
        "heartbeat_interval": 200,
        "retry_interval": 100,
    }
    config = ElectionConfig(name=name, **long_timings)  # one config serves every candidate
    sync = redis.Redis.from_url(url)
    # The lock is held by a key set here, standing in for a leader in another process: the
    # library's restart protection would not grant a 600 s lease on a server younger than that,
    # and a leader in this process would add its own tasks to the measured set.
    sync.set(config.lock_key, f"bench-holder-{os.getpid()}", px=600_000)
    # Warm up on another client: lazy imports and caches of a first election are not per
    # candidate.
    warm_client = aioredis.Redis.from_url(url)
    async with LeaderElection(warm_client, config):
        pass
    await warm_client.aclose()
    client = aioredis.Redis.from_url(url)
    await client.ping()

    gc.collect()
    rss0, traced0 = rss_bytes(), _traced()
    snap0 = tracemalloc.take_snapshot() if trace else None
    elections: list[LeaderElection] = []
    started = time.monotonic()
    for _ in range(count):
        election = LeaderElection(client, config)
        await election.start()
        elections.append(election)
    start_s = time.monotonic() - started
    await asyncio.sleep(1.0)  # every campaign loop reaches its long sleep
    gc.collect()
    rss1, traced1 = rss_bytes(), _traced()
    top: list[str] = []
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        for stat in snap1.compare_to(snap0, "lineno")[:12]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].removeprefix(_CHECKOUT)
            top.append(f"{stat.size_diff / count:8.0f} B/candidate  {where}:{frame.lineno}")
    followers = sum(1 for e in elections if not e.is_leader)
    pool = client.connection_pool
    connections = len(getattr(pool, "_available_connections", ())) + len(
        getattr(pool, "_in_use_connections", ())
    )

    cpu: dict[str, float] = {}
    commands: dict[str, int] = {}
    if window_s > 0:
        stats0 = commandstats(sync)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(window_s)
        cpu1, wall1 = time.process_time(), time.monotonic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        commands = stats_delta(stats0, commandstats(sync))
        commands.pop("info", None)
        cpu = {
            "window_s": wall1 - wall0,
            "process_cpu_s": cpu1 - cpu0,
            "user_s": usage1.ru_utime - usage0.ru_utime,
            "system_s": usage1.ru_stime - usage0.ru_stime,
            "voluntary_switches": usage1.ru_nvcsw - usage0.ru_nvcsw,
        }

    # Reference: redis-py asyncio Lock objects (created and acquired) and python-redis-lock
    # objects (created), the same number, measured the same way.
    import redis_lock

    gc.collect()
    rss2, traced2 = rss_bytes(), _traced()
    locks = [client.lock(f"{name}:redis-py:{i}", timeout=600) for i in range(count)]
    for lock in locks:
        await lock.acquire()
    gc.collect()
    rss3, traced3 = rss_bytes(), _traced()
    prl_locks = [redis_lock.Lock(sync, f"{name}:prl:{i}", expire=600) for i in range(count)]
    gc.collect()
    rss4, traced4 = rss_bytes(), _traced()

    stop_started = time.monotonic()
    for election in elections:
        await election.stop()
    stop_s = time.monotonic() - stop_started
    del prl_locks
    sync.delete(config.lock_key)
    # The redis-py locks' keys (600 s leases) would outlive this worker: drop them.
    names = [lock.name for lock in locks]
    for at in range(0, len(names), 1000):
        sync.delete(*names[at : at + 1000])
    await client.aclose()
    sync.close()
    if trace:
        tracemalloc.stop()
    return {
        "library_file": leaderelection.__file__,
        "count": count,
        "followers": followers,
        "pool_connections": connections,
        "start_all_s": start_s,
        "stop_all_s": stop_s,
        "rss_per_candidate_b": (rss1 - rss0) / count,
        "traced_per_candidate_b": (traced1 - traced0) / count,
        "top_allocations": top,
        "cpu": cpu,
        "idle_commands": commands,
        "redis_py_lock_rss_b": (rss3 - rss2) / count,
        "redis_py_lock_traced_b": (traced3 - traced2) / count,
        "prl_lock_rss_b": (rss4 - rss3) / count,
        "prl_lock_traced_b": (traced4 - traced3) / count,
    }
