"""Resource hygiene on a real redis-server: many lifecycles and many terms leave nothing behind.

Each long test runs 1,000 cycles of one kind, the first 200 as a warm-up (pools filled, caches
primed, lazily created structures created), and compares what the process holds after the
warm-up with what it holds at the end:

* tasks: the census of ``asyncio.all_tasks()`` by coroutine is the same;
* connections: the server's ``CLIENT LIST`` is no longer, and a caller-owned client's pool
  holds no more connections than after the warm-up;
* file descriptors: ``/proc/self/fd`` holds no more entries;
* memory: ``tracemalloc`` runs from before the warm-up; the traced memory after
  ``gc.collect()`` at the end exceeds the one after the warm-up by less than 64 KB in total;
* nothing was left for the garbage collector to complain about: no "Task was destroyed but it
  is pending" (through the loop's exception handler or the ``asyncio`` logger), no "coroutine
  ... was never awaited" nor any other warning, checked after a final ``gc.collect()``.

Once everything is closed, descriptors, server connections and tasks are back where they were
before the test. The figures (cycle times, descriptors, connections, memory) are printed for
``-s``; only the hygiene is asserted, never a duration.

The library's per-term warnings ("Failed to send heartbeat, lost leadership" once a cycle) are
counted by a handler of the test rather than kept by pytest's log capture, which would hold a
thousand records and show up as growth.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import os
import time
import tracemalloc
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest
import redis.asyncio

from leaderelection import ElectionConfig, LeaderElection
from tests.redis_harness import RedisServer, no_retry
from tests.support import fast_config

CYCLES = 1000
WARMUP = 200
MEMORY_BOUND = 64 * 1024  # bytes of traced memory gained between the warm-up and the end

# Every LeaderElection registers its client in ReleaseHub._hubs, a WeakKeyDictionary whose value
# (the hub) holds the client strongly, so the entry, the client and its pool never go away.

# The 1,000-cycle tests take 8 to 18 s each here, most of it tracemalloc's overhead; a shared
# 2-core machine can be several times slower than that.
LONG = pytest.mark.timeout(180)


# The most connections an election needs on its client at once: the release subscription, a
# renewal still on its way when its term ends, and the next acquire (or the release at stop).
PEAK_POOL = 3


class MemoryGrowthError(AssertionError):
    """The traced memory grew by more than the bound."""


# ------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Census:
    """What the process holds at one moment."""

    tasks: collections.Counter[str]
    fds: int
    server_clients: int
    pool_connections: int | None  # a caller-owned client's pool, if any

    def show(self) -> str:
        pool = "" if self.pool_connections is None else f", pool {self.pool_connections}"
        return (
            f"{sum(self.tasks.values())} tasks, {self.fds} fds, "
            f"{self.server_clients} server clients{pool}"
        )


def task_census() -> collections.Counter[str]:
    """The tasks other than the current one, by coroutine name."""
    current = asyncio.current_task()
    return collections.Counter(
        task.get_coro().__qualname__  # type: ignore[union-attr]
        for task in asyncio.all_tasks()
        if task is not current
    )


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def pool_connections(client: redis.asyncio.Redis) -> int:
    """Connections the client's pool holds, idle or in use."""
    pool: Any = client.connection_pool
    return len(pool._available_connections) + len(pool._in_use_connections)


# redis-py sends each command of a client that has a socket timeout in a short-lived task
# (asyncio.wait_for): a census is taken at a moment between sends.
TRANSIENT_TASKS = frozenset({"AbstractConnection._send_packed_command"})


async def take_census(
    monitor: redis.asyncio.Redis, client: redis.asyncio.Redis | None = None
) -> Census:
    gc.collect()
    server_clients = len(await monitor.client_list())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2.0
    tasks = task_census()
    while tasks.keys() & TRANSIENT_TASKS and loop.time() < deadline:
        await asyncio.sleep(0.001)
        tasks = task_census()
    return Census(
        tasks=tasks,
        fds=fd_count(),
        server_clients=server_clients,
        pool_connections=None if client is None else pool_connections(client),
    )


def _within(now: Census, baseline: Census, pool_limit: int | None = None) -> bool:
    pool, base_pool = now.pool_connections or 0, baseline.pool_connections or 0
    return (
        now.tasks == baseline.tasks
        and now.fds - pool <= baseline.fds - base_pool
        and now.server_clients - pool <= baseline.server_clients - base_pool
        and pool <= (base_pool if pool_limit is None else pool_limit)
    )


async def settled(
    monitor: redis.asyncio.Redis,
    baseline: Census,
    client: redis.asyncio.Redis | None = None,
    pool_limit: int | None = None,
    timeout: float = 5.0,
) -> Census:
    """The census once it is back within ``baseline``, or the last one seen at the deadline.

    A closed socket leaves the server's client list a moment after the client closed it, and a
    task whose term just ended finishes on its next turn: wait for that, with a deadline.
    """
    # A deadline checked in the loop, not asyncio.timeout(): on Python 3.11 redis-py's
    # asyncio.wait_for() around a send can swallow a cancellation that lands as the send
    # completes, and a swallowed timeout never fires again.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    now = await take_census(monitor, client)
    while not _within(now, baseline, pool_limit) and loop.time() < deadline:
        await asyncio.sleep(0.01)
        now = await take_census(monitor, client)
    return now


def assert_within(now: Census, baseline: Census, pool_limit: int | None = None) -> None:
    """``now`` holds nothing beyond ``baseline``: the same tasks, no more descriptors and server
    connections than the client's pool accounts for, and a pool no larger than before (or than
    ``pool_limit``)."""
    assert now.tasks == baseline.tasks, (
        f"tasks left behind: {now.tasks - baseline.tasks}, gone: {baseline.tasks - now.tasks}"
    )
    pool, base_pool = now.pool_connections or 0, baseline.pool_connections or 0
    assert now.fds - pool <= baseline.fds - base_pool, "file descriptors left open"
    assert now.server_clients - pool <= baseline.server_clients - base_pool, (
        "connections left open on the server"
    )
    assert pool <= (base_pool if pool_limit is None else pool_limit), "the client's pool grew"


class MemoryTrace:
    """``tracemalloc`` for the whole block: ``mark()`` after the warm-up, ``growth()`` at the end.

    Tracing from before the warm-up matters: a structure that replaces its entries (a cache, a
    free list) frees what it held, and only frees of traced blocks are subtracted.
    """

    def __init__(self) -> None:
        self.at_mark = 0
        self.at_end = 0
        self._snapshot: tracemalloc.Snapshot | None = None

    def __enter__(self) -> MemoryTrace:
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._snapshot = None
        tracemalloc.stop()

    @staticmethod
    def _traced() -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    def mark(self) -> None:
        # The snapshot (kept to show where growth came from) is taken first, so that it is
        # counted at the mark and at the end alike.
        self._snapshot = tracemalloc.take_snapshot()
        self.at_mark = self._traced()

    def growth(self) -> int:
        self.at_end = self._traced()
        grown = self.at_end - self.at_mark
        if grown >= MEMORY_BOUND and self._snapshot is not None:
            print(f"  memory grew by {grown} bytes; largest sources:")
            for stat in tracemalloc.take_snapshot().compare_to(self._snapshot, "lineno")[:12]:
                print("   ", stat)
        return grown


def assert_flat(grown: int) -> None:
    if grown >= MEMORY_BOUND:
        raise MemoryGrowthError(f"traced memory grew by {grown} bytes (bound {MEMORY_BOUND})")


@contextlib.contextmanager
def loop_problems() -> Iterator[list[str]]:
    """Record what the event loop, the ``asyncio`` logger and the warnings machinery report
    inside the block (destroyed pending tasks, never-awaited coroutines, unretrieved task
    exceptions, ...), after a final ``gc.collect()``. Every warning is recorded, not just these:
    the list must stay empty."""
    loop = asyncio.get_running_loop()
    problems: list[str] = []

    def on_exception(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        problems.append(f"loop: {context.get('message')} {context.get('task') or ''}")

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(f"asyncio log: {record.getMessage()}")

    recorder = Recorder(logging.WARNING)
    asyncio_logger = logging.getLogger("asyncio")
    previous = loop.get_exception_handler()
    loop.set_exception_handler(on_exception)
    asyncio_logger.addHandler(recorder)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield problems
            finally:
                gc.collect()
                problems.extend(f"warning: {w.category.__name__}: {w.message}" for w in caught)
    finally:
        asyncio_logger.removeHandler(recorder)
        loop.set_exception_handler(previous)


@contextlib.contextmanager
def library_log_counts() -> Iterator[collections.Counter[str]]:
    """Count the library's log records by message template instead of letting them pile up."""
    counts: collections.Counter[str] = collections.Counter()

    class Counting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            counts[f"{record.levelname} {record.msg}"] += 1

    logger = logging.getLogger("leaderelection")
    handler = Counting(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield counts
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)


async def run_cycles(cycle: Callable[[int], Awaitable[None]], start: int, stop: int) -> float:
    """Run ``cycle(i)`` for ``start <= i < stop``; returns the mean seconds per cycle."""
    began = time.perf_counter()
    for i in range(start, stop):
        await cycle(i)
    return (time.perf_counter() - began) / (stop - start)


@pytest.fixture
async def monitor(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client straight to the server that reads its client list and cleans up keys."""
    client = shared_redis.client(retry=no_retry())
    await client.ping()  # its own connection is open before any census counts descriptors
    yield client
    await client.aclose()


async def delete_keys(monitor: redis.asyncio.Redis, pattern: str) -> None:
    keys = [key async for key in monitor.scan_iter(match=pattern, count=1000)]
    if keys:
        await monitor.delete(*keys)


def report(title: str, **figures: object) -> None:
    print(f"\n{title}")
    for key, value in figures.items():
        print(f"  {key}: {value}")


def cycle_config(prefix: str, i: int) -> ElectionConfig:
    """A start/stop cycle's election: a name of its own, a 1 s call deadline (so a release is
    never cut on a busy machine), and no renewal due within a cycle (heartbeat 1 s)."""
    return fast_config(
        f"c{i}", key_prefix=prefix, lock_ttl="3s", heartbeat_interval="1s", retry_interval="1s"
    )


# ------------------------------------------------------------------------ start/stop cycles


@LONG
@pytest.mark.parametrize("owner", ["url", "caller"])
async def test_start_stop_cycles_leave_nothing_behind(
    shared_redis: RedisServer, monitor: redis.asyncio.Redis, name: str, owner: str
) -> None:
    """1,000 elections entered and left, each leading on entry and releasing on exit.

    ``url``: each election creates its client (two connections: commands and the release
    subscription) and must close it. ``caller``: every election shares one caller-owned client,
    which the election must not close, and starts and stops the release listener on it each
    time. Each cycle has an election name of its own, so no cycle depends on the previous one's
    release (checked through ``store_errors`` instead), and the per-channel bookkeeping of the
    release hub is exercised a thousand times.
    """
    prefix = f"hygiene-{name}"
    client = shared_redis.client() if owner == "caller" else None
    target: Any = client if client is not None else shared_redis.url

    async def cycle(i: int) -> None:
        election = LeaderElection(target, cycle_config(prefix, i))
        async with election:
            assert election.is_leader
        stats = election.statistics()
        assert stats.state == "stopped"
        assert not stats.is_leader
        assert stats.store_errors == 0  # the release was answered, not left to expire

    try:
        before = await take_census(monitor)  # the caller's client has no connection yet
        with loop_problems() as problems, library_log_counts() as logs, MemoryTrace() as memory:
            warmup = await run_cycles(cycle, 0, WARMUP)
            baseline = await settled(monitor, before, client)
            memory.mark()
            measured = await run_cycles(cycle, WARMUP, CYCLES)
            end = await settled(monitor, baseline, client)
            grown = memory.growth()
        report(
            f"start/stop, {owner}-owned client, {CYCLES} cycles",
            warmup_ms_per_cycle=f"{warmup * 1000:.2f} (traced)",
            measured_ms_per_cycle=f"{measured * 1000:.2f} (traced)",
            before=before.show(),
            after_warmup=baseline.show(),
            end=end.show(),
            traced_memory=f"{memory.at_mark} after the warm-up, {memory.at_end} at the end",
            memory_growth_bytes=grown,
            library_logs=dict(logs),
        )
        assert problems == []
        assert_within(end, baseline)
        # Every lock was released; only the fence counters (which never expire) remain.
        assert [key async for key in monitor.scan_iter(match=f"{prefix}:*:lock")] == []
        if client is not None:
            assert await client.ping()  # the caller's client was not closed
            await client.aclose()
        final = await settled(monitor, before)
        print(f"  after closing everything: {final.show()}")
        assert_within(final, before)
        assert_flat(grown)
    finally:
        if client is not None:
            await client.aclose()
        await delete_keys(monitor, f"{prefix}:*")


# ------------------------------------------------------------------- lost and regained terms


@LONG
async def test_lost_and_regained_terms_leave_nothing_behind(
    shared_redis: RedisServer, monitor: redis.asyncio.Redis, name: str
) -> None:
    """1,000 terms, each lost and regained: another connection deletes the lock, the leader's
    next renewal finds it gone and steps down (lose callback), and its next acquire wins a new
    term (become callback) with a greater fencing token. Each term starts and ends a heartbeat,
    a watchdog and a ``while_leader`` task and queues two callbacks: none of them may linger.

    Each cycle waits on the callbacks' events, never on a sleep. A 5 ms heartbeat keeps a cycle
    short (the loss is seen at the next renewal); lock_ttl 200 ms gives a 133 ms renew deadline,
    and the calls get a 5 ms deadline: one cut on a busy machine is retried, which is part of
    what must leave nothing behind.

    The client's pool may end with one connection more than the warm-up happened to need, never
    more than ``PEAK_POOL``; descriptors and server connections beyond the pool must not grow.
    """
    config = fast_config(name, lock_ttl="200ms", heartbeat_interval="5ms", retry_interval="20ms")
    client = shared_redis.client()
    intruder = shared_redis.client()
    won, lost = asyncio.Event(), asyncio.Event()
    counts = {"become": 0, "lose": 0, "work": 0, "not_increasing": 0, "last_token": 0}

    def on_become() -> None:
        counts["become"] += 1
        token = election.fencing_token
        if token is not None:  # None only if the term already ended again
            if token <= counts["last_token"]:
                counts["not_increasing"] += 1
            counts["last_token"] = token
        won.set()

    def on_lose() -> None:
        counts["lose"] += 1
        lost.set()

    election = LeaderElection(
        client, config, on_become_leader=on_become, on_lose_leadership=on_lose
    )

    @election.while_leader
    async def work() -> None:
        counts["work"] += 1
        await asyncio.Event().wait()

    async def cycle(_: int) -> None:
        async with asyncio.timeout(5):
            while True:
                # A term is up and its lock written. (A loop blocked between two cycles, by the
                # census or tracemalloc's snapshot, can end a term on its own: its next acquire
                # may then be in flight, and a delete landing before it would delete nothing.)
                await election.wait_until_leader()
                won.clear()
                lost.clear()
                if await intruder.delete(config.lock_key):
                    break
            await lost.wait()
            await won.wait()

    try:
        before = await take_census(monitor)  # the two clients have no connection yet
        with loop_problems() as problems, library_log_counts() as logs, MemoryTrace() as memory:
            await election.start()  # its first acquire may miss its 5 ms deadline: no assert
            async with asyncio.timeout(5):
                await won.wait()  # the first term's become callback
            warmup = await run_cycles(cycle, 0, WARMUP)
            baseline = await take_census(monitor, client)
            memory.mark()
            measured = await run_cycles(cycle, WARMUP, CYCLES)
            end = await settled(monitor, baseline, client, PEAK_POOL)
            grown = memory.growth()
            stats = election.statistics()
            await election.stop()
            # The election's tasks are all gone; the client's idle connections stay pooled.
            expected = dataclasses.replace(baseline, tasks=before.tasks)
            stopped = await settled(monitor, expected, client, PEAK_POOL)
        report(
            f"lost and regained terms, {CYCLES} cycles",
            warmup_ms_per_cycle=f"{warmup * 1000:.2f} (traced)",
            measured_ms_per_cycle=f"{measured * 1000:.2f} (traced)",
            before_start=before.show(),
            after_warmup=baseline.show(),
            end=end.show(),
            after_stop=stopped.show(),
            traced_memory=f"{memory.at_mark} after the warm-up, {memory.at_end} at the end",
            memory_growth_bytes=grown,
            terms_won=stats.terms_won,
            renew_failures=stats.renew_failures,
            store_errors=stats.store_errors,
            library_logs=dict(logs),
        )
        assert problems == []
        assert_within(end, baseline, PEAK_POOL)
        assert_within(stopped, expected, PEAK_POOL)
        assert stats.terms_won >= CYCLES + 1
        assert counts["become"] == counts["lose"] == counts["work"] == stats.terms_won
        assert counts["not_increasing"] == 0
        assert await monitor.exists(config.lock_key) == 0
        await client.aclose()
        await intruder.aclose()
        final = await settled(monitor, before)
        print(f"  after closing everything: {final.show()}")
        assert_within(final, before)
        assert_flat(grown)
    finally:
        await election.stop()
        await client.aclose()
        await intruder.aclose()
        await delete_keys(monitor, f"leaderelection:{{{name}}}:*")


# --------------------------------------------------------------- clients are freed (short)


@pytest.mark.parametrize("owner", ["url", "caller"])
async def test_clients_are_freed_once_their_elections_end(
    shared_redis: RedisServer, monitor: redis.asyncio.Redis, name: str, owner: str
) -> None:
    """The short form of the leak the ``url`` start/stop case measures: once its elections have
    stopped and its owner has closed and dropped it, a client is garbage like any other object.

    ``url``: 20 elections on URLs leave no ``redis.asyncio.Redis`` alive. ``caller``: a
    caller-owned client, closed and dropped after one election, is collected.
    """
    prefix = f"freed-{name}"

    def live_clients() -> int:
        gc.collect()
        return sum(isinstance(obj, redis.asyncio.Redis) for obj in gc.get_objects())

    try:
        if owner == "url":
            before = live_clients()
            for i in range(20):
                async with LeaderElection(shared_redis.url, cycle_config(prefix, i)) as election:
                    assert election.is_leader
            del election
            assert live_clients() == before
        else:
            client = shared_redis.client()
            async with LeaderElection(client, cycle_config(prefix, 0)) as election:
                assert election.is_leader
            del election
            await client.aclose()
            ref = weakref.ref(client)
            del client
            gc.collect()
            assert ref() is None, "the closed, dropped client is still alive"
    finally:
        await delete_keys(monitor, f"{prefix}:*")
