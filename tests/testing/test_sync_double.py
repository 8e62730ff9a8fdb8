"""The contract of FakeSyncLeaderElection: the sync election's surface and rules, callbacks in a
worker thread, ``while_leader`` functions in threads of their own, and blocking controls that
return once the callbacks they caused have run.

Nothing here sleeps: threads are joined with deadlines and waits are on events with timeouts.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from leaderelection import (
    ElectionConfig,
    ElectionNotRunningError,
    LeaderElectionError,
    StoreUnavailableError,
    SyncElectionProtocol,
)
from leaderelection import sync as real_sync
from leaderelection.testing import (
    FakeElectionGroup,
    FakeLeaderElection,
    FakeSyncLeaderElection,
)

WAIT = 5.0  # seconds: a deadline that fails the test, never a pause


def config(instance_id: str = "me") -> ElectionConfig:
    return ElectionConfig(name="billing", instance_id=instance_id)


class Log:
    """Thread-safe event log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []

    def add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def on_error(self, exc: BaseException, context: Any) -> None:
        with self._lock:
            self.errors.append((exc, dict(context)))

    def names(self) -> list[str]:
        with self._lock:
            return [e[0] for e in self.events]


def instrumented(log: Log, **options: Any) -> FakeSyncLeaderElection:
    election = FakeSyncLeaderElection(config(), on_error=log.on_error, **options)
    main = threading.main_thread()

    @election.on_become_leader
    def become() -> None:
        log.add("become", election.fencing_token, threading.current_thread() is not main)

    @election.on_become_leader
    def become_fails() -> None:
        raise RuntimeError("become failed")

    @election.while_leader
    def job(term_over: threading.Event) -> None:
        log.add("job-start", election.fencing_token, threading.current_thread() is not main)
        term_over.wait(WAIT)
        log.add("job-end", election.is_leader)

    @election.on_lose_leadership
    def lose() -> None:
        log.add("lose", election.is_leader)

    return election


def test_it_has_the_surface_of_the_real_sync_election() -> None:
    fake = FakeSyncLeaderElection(config())
    assert isinstance(fake, SyncElectionProtocol)
    real = {n for n in dir(real_sync.LeaderElection) if not n.startswith("_")}
    assert real - set(dir(fake)) == {"async_election"}  # the one documented difference


def test_elect_runs_callbacks_in_a_worker_thread_and_starts_the_job_thread() -> None:
    log = Log()
    election = instrumented(log)
    with election:
        token = election.elect()
        assert election.is_leader
        assert election.fencing_token == token == 1
        assert ("become", 1, True) in log.events  # ran before elect() returned, off this thread
        assert election.get_leader_id() == "me"
    assert log.names().count("lose") == 1
    exc, context = log.errors[0]
    assert isinstance(exc, RuntimeError)
    assert context["kind"] == "on_become_leader"
    assert context["callback"].__name__ == "become_fails"
    assert context["fencing_token"] == token


def test_depose_ends_the_term_first_then_the_jobs_return_then_lose() -> None:
    log = Log()
    election = instrumented(log)
    with election:
        election.elect()
        election.depose()  # a lost lease: is_leader is False before the job is told
        assert not election.is_leader
        assert [e for e in log.events if e[0] in ("job-end", "lose")] == [
            ("job-end", False),
            ("lose", False),
        ]


def test_resign_and_stop_end_the_term_then_let_the_jobs_return_while_the_lock_is_held() -> None:
    log = Log()
    group = FakeElectionGroup()
    election = instrumented(log, group=group)
    held: list[bool] = []

    @election.while_leader
    def reads_the_lock(term_over: threading.Event) -> None:
        term_over.wait(10)
        held.append(group.leader is election)  # no one else may lead until this returns

    with election:
        election.elect()
        election.resign()
        assert not election.is_leader
        election.elect()
    ends = [e for e in log.events if e[0] in ("job-end", "lose")]
    assert ends == [("job-end", False), ("lose", False)] * 2
    assert held == [True, True]


def test_resign_from_a_job_returns_once_its_event_is_set() -> None:
    log = Log()
    election = FakeSyncLeaderElection(config(), on_lose_leadership=lambda: log.add("lose"))
    returned = threading.Event()

    @election.while_leader
    def quits(term_over: threading.Event) -> None:
        election.resign()
        log.add("resigned", term_over.is_set())
        returned.set()

    with election:
        election.elect()
        assert returned.wait(WAIT)
        election.wait_until_follower(timeout=WAIT)
    assert log.events == [("resigned", True), ("lose",)]


def test_stop_from_a_callback_is_refused_and_reported() -> None:
    log = Log()
    election = FakeSyncLeaderElection(config(), on_error=log.on_error)
    election.on_become_leader(election.stop)
    with election:
        election.elect()
    assert isinstance(log.errors[0][0], LeaderElectionError)


def test_wait_until_leader_blocks_until_elected_from_another_thread() -> None:
    election = FakeSyncLeaderElection(config())
    with election:
        with pytest.raises(TimeoutError):
            election.wait_until_leader(timeout=0.01)
        result: list[BaseException | None] = []

        def wait() -> None:
            try:
                election.wait_until_leader(timeout=WAIT)
                result.append(None)
            except BaseException as exc:
                result.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        election.elect()
        waiter.join(WAIT)
        assert result == [None]
        with pytest.raises(TimeoutError):
            election.wait_until_follower(timeout=0.01)


def test_wait_until_leader_raises_when_the_election_stops() -> None:
    election = FakeSyncLeaderElection(config())
    election.start()
    raised: list[BaseException] = []
    started = threading.Event()

    def wait() -> None:
        started.set()
        try:
            election.wait_until_leader(timeout=WAIT)
        except BaseException as exc:
            raised.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert started.wait(WAIT)
    election.stop()
    waiter.join(WAIT)
    # Either it was waiting when the stop came or it started after: both raise the same.
    assert len(raised) == 1
    assert isinstance(raised[0], ElectionNotRunningError)


def test_hand_over_in_a_group_and_tokens_increase() -> None:
    group = FakeElectionGroup()
    log = Log()
    a = FakeSyncLeaderElection(config("a"), group=group, on_lose_leadership=lambda: log.add("a"))
    b = FakeSyncLeaderElection(config("b"), group=group, on_become_leader=lambda: log.add("b"))
    with a, b:
        first = a.elect()
        assert b.get_leader_id() == "a"
        with pytest.raises(RuntimeError):
            b.elect()
        second = a.hand_over(b)
        assert second > first
        assert group.leader is b
        assert log.names() == ["a", "b"]
        assert a.get_leader_id() == "b"


def test_reads_need_a_running_election_as_the_real_one() -> None:
    election = FakeSyncLeaderElection(config(), leader="other")
    with pytest.raises(ElectionNotRunningError):
        election.get_leader_info()
    with election:
        assert election.get_leader_id() == "other"
        election.fail_store_reads(StoreUnavailableError("down"))
        with pytest.raises(StoreUnavailableError):
            election.get_leader_info()
    election.stop()  # idempotent
    assert election.statistics().state == "stopped"
    with pytest.raises(LeaderElectionError, match="already started"):
        election.start()


@pytest.mark.parametrize(
    ("register", "func"),
    [
        ("on_become_leader", lambda x: None),
        ("while_leader", lambda: None),
        ("on_lose_leadership", "not callable"),
    ],
)
def test_registration_refuses_what_cannot_run(register: str, func: Any) -> None:
    election = FakeSyncLeaderElection(config())
    with pytest.raises(TypeError):
        getattr(election, register)(func)


def test_async_functions_are_refused() -> None:
    election = FakeSyncLeaderElection(config())

    async def callback() -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        election.on_become_leader(callback)


def test_a_failing_job_is_reported_and_a_late_job_starts_at_once() -> None:
    log = Log()
    election = FakeSyncLeaderElection(config(), on_error=log.on_error)
    late_started = threading.Event()

    def broken(term_over: threading.Event) -> None:
        raise KeyError("job failed")

    def late(term_over: threading.Event) -> None:
        late_started.set()
        term_over.wait(WAIT)

    election.while_leader(broken)
    with election:
        token = election.elect()
        election.while_leader(late)
        assert late_started.wait(WAIT)
    exc, context = log.errors[0]
    assert isinstance(exc, KeyError)
    assert context["kind"] == "while_leader"
    assert context["callback"] is broken
    assert context["fencing_token"] == token


def test_concurrent_stops_all_return_once_stopped() -> None:
    election = FakeSyncLeaderElection(config())
    gate = threading.Event()
    entered = threading.Event()

    def slow_lose() -> None:
        entered.set()
        gate.wait(WAIT)

    election.on_lose_leadership(slow_lose)
    election.start()
    election.elect()
    stoppers: list[threading.Thread] = [threading.Thread(target=election.stop) for _ in range(3)]
    for stopper in stoppers:
        stopper.start()
    assert entered.wait(WAIT)
    assert election.statistics().state == "stopping"
    gate.set()
    for stopper in stoppers:
        stopper.join(WAIT)
        assert not stopper.is_alive()
    assert election.statistics().state == "stopped"


async def test_a_group_can_mix_sync_and_asyncio_doubles() -> None:
    group = FakeElectionGroup()
    watcher = FakeLeaderElection(config("watcher"), group=group)
    worker = FakeSyncLeaderElection(config("worker"), group=group)
    async with watcher:
        changes = watcher.changes()
        assert (await anext(changes)).leader is None
        worker.start()
        token = await asyncio.to_thread(worker.elect)  # from another thread
        async with asyncio.timeout(WAIT):
            change = await anext(changes)
        assert change.leader is not None
        assert change.leader.instance_id == "worker"
        assert change.fencing_token == token
        assert await watcher.get_leader_id() == "worker"
        with pytest.raises(RuntimeError, match="worker leads"):
            await watcher.elect()
        await asyncio.to_thread(worker.stop)
        async with asyncio.timeout(WAIT):
            assert (await anext(changes)).leader is None
        await changes.aclose()
