"""leaderelection.sync.LeaderElection: the election driven from plain threads.

Real ``redis-server`` (``shared_redis``) where several elections or processes meet; fakeredis,
through the factory form (a fakeredis async client is bound to the loop it is used on), where
a single election is enough. Every wait is on an event, a ``wait_until_*`` or a condition with a
deadline; nothing sleeps for luck.
"""

from __future__ import annotations

import ast
import inspect
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.asyncio

import leaderelection
from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    ElectionNotRunningError,
    LeaderElectionError,
    StoreAuthenticationError,
)
from leaderelection.sync import LeaderElection
from tests.redis_harness import MakeRedisServer, RedisServer
from tests.support import CROWDED, eventually_sync

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "threads_worker.py"
DOCS = ROOT / "docs" / "sync.md"
LEADING_LINE = "threads_worker: leading, fencing token "

MakeElection = Callable[..., LeaderElection]


# ------------------------------------------------------------------------------ helpers


class Worker(threading.Thread):
    """A test thread that keeps its target's exception for :meth:`finish` to raise."""

    def __init__(self, target: Callable[..., object], *args: Any, name: str | None = None) -> None:
        super().__init__(target=self._run, args=(target, *args), daemon=True, name=name)
        self.error: BaseException | None = None

    def _run(self, target: Callable[..., object], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 10.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish within {timeout}s"
        if self.error is not None:
            raise self.error


def loop_threads(name: str) -> list[threading.Thread]:
    """The election's own thread(s) for the election called ``name``."""
    return [t for t in threading.enumerate() if t.name == f"leaderelection-{name}"]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def config(name: str) -> ElectionConfig:
    return ElectionConfig(name=name, **CROWDED)


@pytest.fixture
def make_election() -> Iterator[MakeElection]:
    """Factory of elections, every one stopped at teardown (stop() is idempotent)."""
    made: list[LeaderElection] = []

    def make(target: Any, config: ElectionConfig, **options: Any) -> LeaderElection:
        election = LeaderElection(target, config, **options)
        made.append(election)
        return election

    yield make
    for election in reversed(made):
        election.stop()


@pytest.fixture
def fake() -> Callable[[], Any]:
    """A client factory on one in-process fakeredis server, called on each election's loop."""
    server = fakeredis.FakeServer()
    return lambda: fakeredis.FakeAsyncRedis(server=server)


# ------------------------------------------------------------------------------ lifecycle


@pytest.mark.redis
def test_start_returns_after_the_first_attempt_and_stop_hands_over(
    shared_redis: RedisServer, config: ElectionConfig, make_election: MakeElection
) -> None:
    a = make_election(shared_redis.url, config)
    a.start()
    assert a.is_leader
    assert a.fencing_token is not None
    b = make_election(shared_redis.url, config)
    b.start()
    assert not b.is_leader
    assert b.fencing_token is None
    assert b.get_leader_id() == a.instance_id
    info = b.get_leader_info()
    assert info is not None
    assert info.fencing_token == a.fencing_token
    token = a.fencing_token

    # Several threads stop it at once; all return once it is stopped, and b takes over
    # through the release: waiting for the lease to expire would take ~1.5 s or more.
    stoppers = [Worker(a.stop) for _ in range(4)]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.finish()
    assert not a.is_leader
    assert a.statistics().state == "stopped"
    b.wait_until_leader(timeout=1.0)
    assert b.fencing_token is not None
    assert b.fencing_token > token
    a.stop()  # idempotent
    b.stop()
    assert not loop_threads(config.name)


def test_a_thread_reusing_the_finished_loop_threads_ident_is_not_taken_for_the_loop(
    config: ElectionConfig,
) -> None:
    # A finished thread's ident is given to the next new thread (glibc reuses the stack): the
    # election must recognise its loop thread by the thread itself, or a stop() from a new
    # thread after the loop ended would be refused as if it ran on the loop.
    election = LeaderElection("redis://127.0.0.1:1/0", config)
    loop_thread = threading.Thread(target=lambda: None)
    loop_thread.start()
    loop_thread.join()
    election._loop_thread = loop_thread
    seen: list[tuple[int, BaseException | None]] = []

    def call() -> None:
        try:
            election._refuse_on_loop_thread("stop()")
        except BaseException as exc:  # recorded for the assertion
            seen.append((threading.get_ident(), exc))
        else:
            seen.append((threading.get_ident(), None))

    later = threading.Thread(target=call)
    later.start()
    later.join()
    # Alone in a process the new thread gets the finished thread's ident (glibc reuses the
    # stack), which the check by ident took for the loop; amid other threads it may not, and the
    # thread must be let through all the same.
    _ident, error = seen[0]
    assert error is None
    election._loop_thread = threading.current_thread()  # and the loop's own thread is refused
    with pytest.raises(LeaderElectionError, match="own event loop thread"):
        election._refuse_on_loop_thread("stop()")


def test_context_manager_and_lifecycle_errors(
    fake: Callable[[], Any], config: ElectionConfig
) -> None:
    election = LeaderElection(fake, config)
    assert election.statistics().state == "new"
    assert not election.is_leader
    assert election.fencing_token is None
    assert election.config is config
    instance_id = election.instance_id
    with pytest.raises(ElectionNotRunningError):
        election.async_election  # noqa: B018 - the property raises
    with pytest.raises(ElectionNotRunningError):
        election.wait_until_leader(timeout=0.1)
    election.wait_until_follower(timeout=0.1)  # not leading: returns at once

    with election as entered:
        assert entered is election
        assert election.is_leader
        assert election.instance_id == instance_id
        assert election.async_election.instance_id == instance_id
        assert isinstance(election.async_election, leaderelection.LeaderElection)
        assert election.statistics().state == "leader"
        assert [t.daemon for t in loop_threads(config.name)] == [True]
        with pytest.raises(LeaderElectionError, match="already started"):
            election.start()

    assert not election.is_leader
    assert election.statistics().state == "stopped"
    assert not loop_threads(config.name)
    with pytest.raises(LeaderElectionError, match="already started"):
        election.start()
    with pytest.raises(ElectionNotRunningError):
        election.resign()
    with pytest.raises(ElectionNotRunningError):
        election.get_leader_info()
    election.wait_until_follower()
    election.stop()

    never_started = LeaderElection(fake, config)
    never_started.stop()
    assert never_started.statistics().state == "stopped"
    with pytest.raises(LeaderElectionError, match="already started"):
        never_started.start()


def test_bad_url_raises_the_typed_error_from_start_and_leaves_no_thread(
    config: ElectionConfig,
) -> None:
    before = set(threading.enumerate())
    election = LeaderElection("http://localhost:6379", config)
    with pytest.raises(ConfigurationError, match="cannot use Redis URL"):
        election.start()
    assert set(threading.enumerate()) <= before
    assert not election.is_leader
    assert election.statistics().state == "stopped"
    with pytest.raises(LeaderElectionError, match="already started"):
        election.start()
    with pytest.raises(ElectionNotRunningError):
        election.wait_until_leader(timeout=0.1)
    election.stop()


@pytest.mark.redis
def test_wrong_password_raises_the_typed_error_from_start_and_leaves_no_thread(
    make_redis_server: MakeRedisServer, config: ElectionConfig
) -> None:
    server = make_redis_server(password="s3cret")
    before = set(threading.enumerate())
    election = LeaderElection(f"redis://{server.host}:{server.port}/0", config)  # no password
    with pytest.raises(StoreAuthenticationError):
        election.start()
    assert set(threading.enumerate()) <= before


def test_the_redis_argument_is_checked_at_construction(
    fake: Callable[[], Any], config: ElectionConfig
) -> None:
    client = redis.asyncio.Redis()  # never connects: rejected before any use
    with pytest.raises(ConfigurationError, match="not a client"):
        LeaderElection(client, config)
    with pytest.raises(ConfigurationError, match="URL or a zero-argument function"):
        LeaderElection(42, config)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be an ElectionConfig"):
        LeaderElection(fake, {"name": "x"})  # type: ignore[arg-type]

    not_a_client = LeaderElection(object, config)
    with pytest.raises(ConfigurationError, match="redis must be"):
        not_a_client.start()
    assert not loop_threads(config.name)


def test_callbacks_of_the_wrong_kind_are_refused_at_registration(
    fake: Callable[[], Any], config: ElectionConfig
) -> None:
    election = LeaderElection(fake, config)

    async def coroutine_function() -> None:
        pass

    with pytest.raises(TypeError, match="is async"):
        election.on_become_leader(coroutine_function)
    with pytest.raises(TypeError, match="with no arguments"):
        election.on_lose_leadership(lambda event: None)  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError, match="one argument"):
        election.while_leader(lambda: None)  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError, match="needs a function"):
        election.on_become_leader(None)  # type: ignore[type-var]


# ------------------------------------------------------------------------------ many threads


@pytest.mark.redis
def test_threads_read_and_wait_while_leadership_moves_between_three_elections(
    shared_redis: RedisServer, config: ElectionConfig, make_election: MakeElection
) -> None:
    elections = [make_election(shared_redis.url, config) for _ in range(3)]
    for election in elections:
        election.start()  # the first one leads on return, the others follow
    assert [e.is_leader for e in elections] == [True, False, False]

    # Samplers read every election's is_leader twice within 50 ms. No election can lead, stop
    # leading and lead again within 50 ms here (resign() holds it back for 200 ms), so two
    # elections seen leading in both reads led at the same instant.
    done = threading.Event()
    overlaps: list[list[bool]] = []
    seen_leading: set[int] = set()
    samples = [0, 0]

    def sample(sampler: int) -> None:
        while not done.is_set():
            samples[sampler] += 1
            started = time.monotonic()
            first = [e.is_leader for e in elections]
            second = [e.is_leader for e in elections]
            if time.monotonic() - started < 0.05:
                both = [x and y for x, y in zip(first, second, strict=True)]
                if sum(both) > 1:
                    overlaps.append(both)
                seen_leading.update(i for i, leading in enumerate(both) if leading)
            done.wait(0.001)

    # Eight waiters, spread over the three elections, each reading is_leader and then waiting.
    results: dict[int, tuple[bool, bool, int | None]] = {}

    def wait(waiter: int) -> None:
        election = elections[waiter % 3]
        before = election.is_leader
        election.wait_until_leader(timeout=30)
        results[waiter] = (before, election.is_leader, election.fencing_token)

    samplers = [Worker(sample, n, name=f"sampler-{n}") for n in range(2)]
    waiters = {n: Worker(wait, n, name=f"waiter-{n}") for n in range(8)}
    for thread in [*samplers, *waiters.values()]:
        thread.start()

    led: list[int] = []  # the elections in the order they led

    def current_leader() -> int:
        eventually_sync(lambda: sum(e.is_leader for e in elections) == 1, timeout=10)
        leader = next(i for i, e in enumerate(elections) if e.is_leader)
        if not led or led[-1] != leader:
            led.append(leader)
        return leader

    while len(results) < len(waiters):
        leader = current_leader()
        for n, waiter in waiters.items():
            if n % 3 == leader:
                waiter.finish()  # its election leads: every waiter on it returns
        if len(led) == 1:
            elections[leader].resign()  # the first hand-over; it stays a candidate
            assert elections[leader].statistics().state in ("held_back", "follower")
        else:
            elections[leader].stop()
    current_leader()  # the last one, whose waiters returned as it took over

    done.set()
    for thread in [*samplers, *waiters.values()]:
        thread.finish()
    assert not overlaps, f"two elections led at once: {overlaps[:5]}"
    assert len(seen_leading) >= 2
    assert sorted(set(led)) == [0, 1, 2]
    for waiter, (_, leading, token) in results.items():
        assert leading, f"waiter {waiter} returned while its election did not lead"
        assert token is not None
    tokens = [results[n][2] for n in sorted(results, key=lambda n: led.index(n % 3))]
    assert tokens == sorted(tokens)  # fencing tokens grew with every hand-over
    print(  # shown with pytest -s
        f"\nsync threads: leaders in order {led}; 8 waiters returned, each while its election "
        f"led, with tokens {sorted(set(tokens))}; {sum(samples)} samples of all three is_leader "
        f"by 2 threads, {len(overlaps)} with two leaders"
    )


@pytest.mark.redis
def test_waits_time_out_with_the_builtin_error_and_end_when_the_election_stops(
    shared_redis: RedisServer, config: ElectionConfig, make_election: MakeElection
) -> None:
    leader = make_election(shared_redis.url, config)
    leader.start()
    client_name = f"sync-follower-{uuid.uuid4().hex[:8]}"
    follower = make_election(
        lambda: redis.asyncio.Redis.from_url(shared_redis.url, client_name=client_name), config
    )
    follower.start()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        follower.wait_until_leader(timeout=0.2)
    assert time.monotonic() - started >= 0.19
    with pytest.raises(TimeoutError):
        leader.wait_until_follower(timeout=0.2)
    leader.wait_until_leader(timeout=0)
    follower.wait_until_follower(timeout=0)

    # Threads still waiting when the election stops get ElectionNotRunningError.
    waiting = threading.Barrier(4)

    def wait_forever() -> None:
        waiting.wait(5)
        with pytest.raises(ElectionNotRunningError):
            follower.wait_until_leader()

    waiters = [Worker(wait_forever) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    with shared_redis.sync_client() as admin:
        assert any(c["name"] == client_name for c in admin.client_list())
        waiting.wait(5)
        # Stop only once all three are blocked on the loop (an asyncio.Event keeps a future per
        # waiter), so that they are woken by the stop, not refused before they waited.
        leader_event = follower.async_election.leader_event
        eventually_sync(lambda: len(leader_event._waiters) >= 3)
        follower.stop()
        for waiter in waiters:
            waiter.finish()
        # The client the factory made is closed with the election.
        assert not any(c["name"] == client_name for c in admin.client_list())


def test_callbacks_registered_while_running(
    fake: Callable[[], Any], config: ElectionConfig, make_election: MakeElection
) -> None:
    election = make_election(fake, config)
    election.start()
    assert election.is_leader
    job_started, became = threading.Event(), threading.Event()

    @election.while_leader  # during a term: starts at once
    def job(term_over: threading.Event) -> None:
        job_started.set()
        term_over.wait(30)

    election.on_become_leader(became.set)  # from the next term on
    assert job_started.wait(5)
    assert not became.is_set()
    election.resign()
    election.wait_until_leader(timeout=5)
    assert became.wait(5)


# ------------------------------------------------------------------------------ callbacks


def test_callbacks_run_in_order_in_worker_threads_and_errors_are_reported(
    fake: Callable[[], Any], config: ElectionConfig, make_election: MakeElection
) -> None:
    calls: list[tuple[str, int]] = []
    errors: list[tuple[BaseException, Mapping[str, Any], int]] = []
    second_term = threading.Event()
    lock = threading.Lock()

    def record(label: str) -> Callable[[], None]:
        def callback() -> None:
            with lock:
                calls.append((label, threading.get_ident()))
            if label == "b4" and sum(c[0] == "b4" for c in calls) == 2:
                second_term.set()

        return callback

    def on_error(exc: BaseException, context: Mapping[str, Any]) -> None:
        errors.append((exc, context, threading.get_ident()))

    election = make_election(
        fake,
        config,
        on_become_leader=record("b1"),
        on_lose_leadership=record("l1"),
        on_error=on_error,
    )
    election.on_become_leader(record("b2"))

    @election.on_become_leader
    def b3() -> None:
        raise RuntimeError("b3 fails")

    election.on_become_leader(record("b4"))
    election.on_lose_leadership(record("l2"))

    election.start()
    loop_ident = loop_threads(config.name)[0].ident
    election.resign()  # ends the first term; the second starts after the 200 ms hold-back
    election.wait_until_leader(timeout=5)
    assert second_term.wait(5)
    election.stop()

    order = [label for label, _ in calls]
    assert order == ["b1", "b2", "b4", "l1", "l2", "b1", "b2", "b4", "l1", "l2"]
    idents = {ident for _, ident in calls}
    assert threading.get_ident() not in idents
    assert loop_ident not in idents
    assert len(errors) == 2
    for exc, context, ident in errors:
        assert isinstance(exc, RuntimeError)
        assert context["callback"] is b3  # your function, not the wrapper
        assert context["kind"] == "on_become_leader"
        assert context["election"] == config.name
        assert ident == loop_ident  # on_error runs on the election's loop thread


def test_a_slow_become_callback_does_not_delay_heartbeats(
    fake: Callable[[], Any], config: ElectionConfig, make_election: MakeElection
) -> None:
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> None:
        entered.set()
        release.wait(30)
        order.append("slow returned")

    election = make_election(fake, config, on_become_leader=slow)
    election.on_become_leader(lambda: order.append("next become"))
    election.on_lose_leadership(lambda: order.append("lose"))
    election.start()
    assert entered.wait(5)
    renewals = election.statistics().renewals
    # A heartbeat every 500 ms goes on while the callback blocks its worker thread.
    eventually_sync(lambda: election.statistics().renewals >= renewals + 3, timeout=5)
    assert election.is_leader
    assert order == []  # the next callback waits for this one
    release.set()
    election.stop()
    assert order == ["slow returned", "next become", "lose"]


def test_while_leader_gets_its_event_when_the_term_ends_and_lose_waits_for_it(
    config: ElectionConfig, make_election: MakeElection
) -> None:
    server = fakeredis.FakeServer()
    order: list[object] = []
    started, saw_end, may_return, lost = (threading.Event() for _ in range(4))

    election = make_election(lambda: fakeredis.FakeAsyncRedis(server=server), config)

    @election.while_leader
    def job(term_over: threading.Event) -> None:
        if started.is_set():
            term_over.wait(30)  # a later term: ends with the stop below
            return
        order.append(("start", election.fencing_token))
        started.set()
        term_over.wait(30)
        order.append("saw end")
        saw_end.set()
        may_return.wait(30)
        order.append("returned")

    @election.on_lose_leadership
    def on_lose() -> None:
        order.append("lose")
        lost.set()

    election.start()
    assert started.wait(5)
    token = election.fencing_token
    assert order == [("start", token)]
    # Take the lock away: the next renewal finds it gone, and the term ends (lease lost).
    with fakeredis.FakeRedis(server=server) as client:
        client.delete(config.lock_key)
    assert saw_end.wait(5)
    assert token != election.fencing_token
    renewals = election.statistics().renewals
    # The election goes on: it takes the free lock again and renews that new term, half a second
    # later. All that time the lose callback of the first term waits for its function to return.
    eventually_sync(
        lambda: (stats := election.statistics()).terms_won == 2 and stats.renewals > renewals
    )
    assert not lost.is_set()
    assert order == [("start", token), "saw end"]
    may_return.set()
    assert lost.wait(5)
    assert order[:4] == [("start", token), "saw end", "returned", "lose"]


@pytest.mark.redis
def test_stop_lets_while_leader_return_before_it_releases(
    shared_redis: RedisServer, config: ElectionConfig, make_election: MakeElection
) -> None:
    order: list[str] = []
    started, saw_end, may_return = (threading.Event() for _ in range(3))
    leader = make_election(shared_redis.url, config)

    @leader.while_leader
    def job(term_over: threading.Event) -> None:
        started.set()
        term_over.wait(30)
        order.append("saw end")
        saw_end.set()
        may_return.wait(30)
        order.append("returned")

    @leader.while_leader
    def waits_for_the_end_of_its_term(term_over: threading.Event) -> None:
        leader.wait_until_follower()  # returns when told to finish, not at the term's end
        assert term_over.is_set()

    leader.on_lose_leadership(lambda: order.append("lose"))
    leader.start()
    assert started.wait(5)
    follower = make_election(shared_redis.url, config)
    follower.start()

    stopper = Worker(leader.stop)
    stopper.start()
    assert saw_end.wait(5)
    # The term has ended, in the asyncio election's order: is_leader is False before the
    # function is told to finish. It still runs, and the lock stays held in Redis until it
    # returns: the follower reads the leader's record and does not lead.
    assert not leader.is_leader
    info = follower.get_leader_info()
    assert info is not None
    assert info.instance_id == leader.instance_id
    with shared_redis.sync_client() as sync:
        assert sync.get(config.lock_key) is not None
    assert not follower.is_leader
    assert order == ["saw end"]
    may_return.set()
    stopper.finish()
    follower.wait_until_leader(timeout=1.0)  # released: a follower leads at once
    assert order == ["saw end", "returned", "lose"]


@pytest.mark.redis
def test_resign_from_while_leader_returns_at_once_and_hands_over(
    shared_redis: RedisServer, config: ElectionConfig, make_election: MakeElection
) -> None:
    resigned = threading.Event()
    follower_started = threading.Event()
    leader = make_election(shared_redis.url, config)

    @leader.while_leader
    def job(term_over: threading.Event) -> None:
        if resigned.is_set():
            term_over.wait(30)
            return
        # With the follower campaigning, the resign hands over to it (else this election could
        # lead again once its hold-back ended, before a slow follower's start()).
        assert follower_started.wait(10)
        # Returns once this function is told to finish, without waiting for it to return;
        # the term ends, and the lock is released, once it returned.
        leader.resign()
        assert term_over.is_set()
        resigned.set()

    leader.start()
    follower = make_election(shared_redis.url, config)
    follower.start()
    follower_started.set()
    assert resigned.wait(5)
    follower.wait_until_leader(timeout=1.0)
    assert not leader.is_leader


def test_blocking_calls_that_would_deadlock_fail_with_a_clear_error(
    fake: Callable[[], Any], config: ElectionConfig, make_election: MakeElection
) -> None:
    outcomes: dict[str, object] = {}
    reported = threading.Event()
    election: LeaderElection

    def become() -> None:
        outcomes["leader id from a callback"] = election.get_leader_id()  # fine: a worker thread
        try:
            election.stop()  # would wait for this very callback
        except LeaderElectionError as exc:
            outcomes["stop"] = exc
        raise RuntimeError("for on_error")

    def on_error(exc: BaseException, context: Mapping[str, Any]) -> None:
        try:
            election.get_leader_id()  # on the loop thread: would wait for that loop
        except LeaderElectionError as error:
            outcomes["on the loop"] = error
        reported.set()

    election = make_election(fake, config, on_become_leader=become, on_error=on_error)
    election.start()
    assert reported.wait(5)
    assert outcomes["leader id from a callback"] == election.instance_id
    assert type(outcomes["stop"]) is LeaderElectionError
    assert "own callback or while_leader" in str(outcomes["stop"])
    assert type(outcomes["on the loop"]) is LeaderElectionError
    assert "event loop thread" in str(outcomes["on the loop"])
    assert election.is_leader  # nothing broke
    election.stop()


# ------------------------------------------------------------------------------ processes


def run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.redis
def test_an_election_never_stopped_is_released_at_exit(
    shared_redis: RedisServer, name: str, make_election: MakeElection
) -> None:
    lease = {"lock_ttl": "5s", "heartbeat_interval": "1s", "retry_interval": "200ms"}
    code = """
        import gc, sys
        from leaderelection import ElectionConfig
        from leaderelection.sync import LeaderElection

        def start_and_forget():
            config = ElectionConfig(name=sys.argv[2], lock_ttl="5s", heartbeat_interval="1s")
            election = LeaderElection(sys.argv[1], config)
            election.on_lose_leadership(lambda: print("lose ran", flush=True))
            election.start()
            print("leading" if election.is_leader else "following", flush=True)

        def start_and_forget_without_callbacks():
            config = ElectionConfig(name=sys.argv[3], lock_ttl="5s", heartbeat_interval="1s")
            election = LeaderElection(sys.argv[1], config)
            election.start()
            print("leading" if election.is_leader else "following", flush=True)

        start_and_forget()  # no reference to the elections is left
        start_and_forget_without_callbacks()  # nothing of it reachable from its loop either
        gc.collect()
        # the program ends without stop()
    """
    started = time.monotonic()
    other = f"{name}-b"
    child = run_python(code, shared_redis.url, name, other)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["leading", "leading", "lose", "ran"]
    assert time.monotonic() - started < 20
    # Released, not left to expire (they were renewed within the last second of a 5 s lease):
    # a new candidate leads on its first attempt.
    for election_name in (name, other):
        successor = make_election(shared_redis.url, ElectionConfig(name=election_name, **lease))
        successor.start()
        assert successor.is_leader


@pytest.mark.redis
def test_a_forked_child_never_reports_the_parents_leadership(
    shared_redis: RedisServer, config: ElectionConfig
) -> None:
    code = """
        import os, sys
        from leaderelection import ElectionConfig, ElectionNotRunningError
        from leaderelection.sync import LeaderElection

        config = ElectionConfig(name=sys.argv[2], lock_ttl="2s", heartbeat_interval="500ms")
        election = LeaderElection(sys.argv[1], config)
        election.start()
        assert election.is_leader
        pid = os.fork()
        if pid == 0:
            try:
                election.get_leader_id()
                error = "none"
            except ElectionNotRunningError as exc:
                error = "before a fork" if "before a fork" in str(exc) else str(exc)
            election.stop()
            print("child", election.is_leader, election.fencing_token,
                  election.statistics().is_leader, error, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        print("parent", election.is_leader, flush=True)
        election.stop()
    """
    result = run_python(code, shared_redis.url, config.name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "child False None False before a fork",
        "parent True",
    ]


@pytest.mark.redis
def test_ctrl_c_ends_a_blocking_wait_and_the_election_still_stops(
    shared_redis: RedisServer, config: ElectionConfig
) -> None:
    code = """
        import sys
        from leaderelection import ElectionConfig
        from leaderelection.sync import LeaderElection

        config = ElectionConfig(name=sys.argv[2], lock_ttl="2s", heartbeat_interval="500ms")
        leader = LeaderElection(sys.argv[1], config)
        follower = LeaderElection(sys.argv[1], config)
        with leader, follower:
            try:
                print("waiting", flush=True)
                follower.wait_until_leader()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
        print("stopped", leader.is_leader, follower.is_leader, flush=True)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), shared_redis.url, config.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "waiting\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert out.splitlines() == ["interrupted", "stopped False False"]


def read_lines(proc: subprocess.Popen[str], into: queue.Queue[str | None]) -> Worker:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.put(line.rstrip("\n"))
        into.put(None)

    reader = Worker(read)
    reader.start()
    return reader


def lines_until(lines: queue.Queue[str | None], prefix: str, timeout: float) -> list[str]:
    """Lines read until one starting with ``prefix`` (included); fails at the deadline."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} within {timeout}s; printed: {seen}") from None
        assert line is not None, f"the program ended before printing {prefix!r}: {seen}"
        seen.append(line)
        if line.startswith(prefix):
            return seen


def drain(lines: queue.Queue[str | None]) -> list[str]:
    out: list[str] = []
    while (line := lines.get(timeout=10)) is not None:
        out.append(line)
    return out


@pytest.mark.redis
def test_the_threads_worker_example_leads_in_exactly_one_of_two_processes(
    shared_redis: RedisServer, name: str
) -> None:
    env = {
        **os.environ,
        "REDIS_URL": shared_redis.url,
        "LEADER_ELECTION_LOCK_TTL": "2s",
        "LEADER_ELECTION_HEARTBEAT_INTERVAL": "500ms",
        "LEADER_ELECTION_RETRY_INTERVAL": "200ms",
    }

    def launch(seconds: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--seconds", seconds, "--name", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )

    first_lines: queue.Queue[str | None] = queue.Queue()
    first = launch("30")  # ended early by SIGTERM below
    try:
        first_reader = read_lines(first, first_lines)
        before = lines_until(first_lines, LEADING_LINE, timeout=20)
        # The second one runs its whole time while the first leads: it only follows.
        second = launch("2")
        second_out, second_err = second.communicate(timeout=30)
        assert second.returncode == 0, second_err
        assert first.poll() is None, "the first program ended before the second one"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        after = drain(first_lines)
        first_reader.finish()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        assert first.stderr is not None
        first_err = first.stderr.read()
        print(first_err, file=sys.stderr)  # shown when the test fails
        first.stderr.close()
        if first.stdout is not None:
            first.stdout.close()
    first_out = [*before, *after]
    second_lines = second_out.splitlines()
    reports = [
        out
        for out in (first_out, second_lines)
        if any(line.startswith(LEADING_LINE) for line in out)
    ]
    assert reports == [first_out], (first_out, second_lines, first_err)
    assert second_lines[0].startswith("threads_worker: started as follower")
    assert second_lines[-1] == "threads_worker: stopped"
    assert any(line.startswith("threads_worker: started as leader") for line in first_out)
    assert "threads_worker: interrupted" in first_out
    assert first_out[-1] == "threads_worker: stopped"
    assert first_out.index("threads_worker: term ended") < first_out.index(
        "threads_worker: stopped"
    )


def test_the_module_documents_every_public_name() -> None:
    from leaderelection import sync

    assert sync.__doc__ is not None
    assert "with election:" in sync.__doc__
    assert set(sync.__all__) == {"LeaderElection", "RedisFactory", "SyncFence"}
    for cls in (LeaderElection, sync.SyncFence):
        assert cls.__doc__
        for member_name, member in vars(cls).items():
            if member_name.startswith("_"):
                continue
            doc = member.__doc__ if not isinstance(member, property) else member.fget.__doc__
            assert doc, member_name
            if inspect.isfunction(member):
                assert inspect.getdoc(member)


def test_the_docs_include_the_example_and_their_code_parses() -> None:
    text = DOCS.read_text()
    included = re.findall(r'--8<-- "([\w/.]+):([\w-]+)"', text)
    assert [path for path, _ in included] == ["examples/threads_worker.py"]
    for path, section in included:
        source = (ROOT / path).read_text()
        start, end = f"# --8<-- [start:{section}]", f"# --8<-- [end:{section}]"
        assert start in source and end in source, f"{path} has no section {section!r}"
        shown = source.split(start)[1].split(end)[0]
        assert "@election.while_leader" in shown and "election.is_leader" in shown
    blocks = re.findall(r"```python\n(.*?)\n```", text, re.S)
    assert len(blocks) >= 8
    for block in blocks:
        ast.parse(textwrap.dedent(block))
