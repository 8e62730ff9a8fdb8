"""Conformance: the same scenarios, run against the real LeaderElection (on an in-process
fakeredis server, real clock, short timings) and against FakeLeaderElection, must record the same
history on the shared surface; likewise leaderelection.sync.LeaderElection and
FakeSyncLeaderElection.

Only the way a term starts and ends differs, through a driver: the real election wins a free lock
and loses its lease when the test takes its lock; the double is told so with ``elect()`` and
``depose()``. Everything else (callback order and isolation, become/lose balance, ``while_leader``
cancelled before lose, tokens increasing, ``is_leader`` / ``leader_event`` / ``fencing_token`` in
step, ``changes()``, ``ElectionNotRunningError``) is the code under test, called the same way.
Every wait is on an event, a control or ``wait_until_*`` with a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import fakeredis
import pytest

from leaderelection import (
    ElectionConfig,
    ElectionNotRunningError,
    ElectionProtocol,
    LeaderElection,
    SyncElectionProtocol,
)
from leaderelection import sync as real_sync
from leaderelection.testing import (
    FakeElectionGroup,
    FakeLeaderElection,
    FakeSyncLeaderElection,
)
from tests.testing.recorder import Recorder

FAST = {"lock_ttl": "1s", "heartbeat_interval": "100ms", "retry_interval": "200ms"}
WAIT = 5.0


class Driver(Protocol):
    """Makes candidates of one election and starts and ends their terms."""

    def make(self, instance_id: str, **options: Any) -> ElectionProtocol: ...

    async def lead(self, election: ElectionProtocol) -> None:
        """Return once ``election`` leads (a started election, on a free lock)."""

    async def lose_lease(self, election: ElectionProtocol) -> None:
        """End the leader's term as a lost lease does; return once it follows."""

    async def hand_over(self, leader: ElectionProtocol, follower: ElectionProtocol) -> None:
        """Let ``follower`` take over from ``leader``; return once it leads."""


class RealDriver:
    def __init__(self, server: fakeredis.FakeServer, name: str) -> None:
        self._server = server
        self._name = name
        self.clients: list[Any] = []

    def make(self, instance_id: str, **options: Any) -> ElectionProtocol:
        client = fakeredis.FakeAsyncRedis(server=self._server)
        self.clients.append(client)
        config = ElectionConfig(name=self._name, instance_id=instance_id, **FAST)
        return LeaderElection(client, config, **options)

    async def lead(self, election: ElectionProtocol) -> None:
        await election.wait_until_leader(timeout=WAIT)

    async def lose_lease(self, election: ElectionProtocol) -> None:
        # Someone else's token in our lock: the next renewal finds it and the term ends.
        await self.clients[0].set(election.config.lock_key, "someone-else", px=300)
        await election.wait_until_follower(timeout=WAIT)

    async def hand_over(self, leader: ElectionProtocol, follower: ElectionProtocol) -> None:
        await leader.resign()
        await follower.wait_until_leader(timeout=WAIT)


class FakeDriver:
    def __init__(self, name: str) -> None:
        self._name = name
        self._group = FakeElectionGroup()

    def make(self, instance_id: str, **options: Any) -> ElectionProtocol:
        config = ElectionConfig(name=self._name, instance_id=instance_id, **FAST)
        return FakeLeaderElection(config, group=self._group, **options)

    async def lead(self, election: ElectionProtocol) -> None:
        assert isinstance(election, FakeLeaderElection)
        await election.elect()

    async def lose_lease(self, election: ElectionProtocol) -> None:
        assert isinstance(election, FakeLeaderElection)
        await election.depose()

    async def hand_over(self, leader: ElectionProtocol, follower: ElectionProtocol) -> None:
        assert isinstance(leader, FakeLeaderElection)
        assert isinstance(follower, FakeLeaderElection)
        await leader.hand_over(follower)


@pytest.fixture(params=["real", "fake"])
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[Driver]:
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    if request.param == "fake":
        yield FakeDriver(name)
        return
    real = RealDriver(fakeredis.FakeServer(), name)
    yield real
    for client in real.clients:
        await client.aclose()


def instrument(election: ElectionProtocol, rec: Recorder, who: str = "") -> None:
    """Callbacks and a leader task that record what they see, two of them failing."""

    def seen(name: str) -> None:
        rec.add(
            who + name,
            election.is_leader,
            election.leader_event.is_set(),
            election.fencing_token,
        )

    @election.on_become_leader
    def become_1() -> None:
        seen("become-1")
        raise RuntimeError("become failed")

    @election.on_become_leader
    async def become_2() -> None:
        await asyncio.sleep(0)
        seen("become-2")

    @election.while_leader
    async def work() -> None:
        seen("work-start")
        try:
            await asyncio.Event().wait()
        finally:
            seen("work-cancelled")
            with anyio.CancelScope(shield=True):
                await asyncio.sleep(0)  # a cleanup step that takes a turn of the loop
            seen("work-cleaned")
            # Unshielded, an await in the cleanup is cancelled again: the task runs in a
            # cancel scope (anyio's level cancellation), in the real election as in the double.
            await asyncio.sleep(0)
            seen("work-unreachable")

    @election.on_lose_leadership
    async def lose_1() -> None:
        seen("lose-1")
        raise ValueError("lose failed")

    @election.on_lose_leadership
    def lose_2() -> None:
        seen("lose-2")


def normalized(rec: Recorder, tokens: list[int]) -> dict[str, Any]:
    """The history with fencing tokens replaced by the term's number (1, 2, ...).

    ``work-start`` is left out of the sequence: a leader task and the become callbacks start
    together, and which runs first is the event loop's business. It is checked on its own.
    """
    term = {token: number for number, token in enumerate(tokens, 1)}
    events = [(n, lead, ev, term.get(tok, tok)) for n, lead, ev, tok in rec.events]
    errors = [
        (type(exc).__name__, ctx["kind"], ctx["callback"].__name__, term[ctx["fencing_token"]])
        for exc, ctx in rec.errors
    ]
    return {
        "sequence": [e for e in events if not e[0].endswith("work-start")],
        "work-start": [e for e in events if e[0].endswith("work-start")],
        "errors": errors,
    }


async def run_one_candidate(driver: Driver) -> dict[str, Any]:
    rec = Recorder()
    election = driver.make("a", on_error=rec.on_error)
    instrument(election, rec)
    tokens: list[int] = []

    async def a_term_began(n: int) -> None:
        await driver.lead(election)
        await rec.wait_for(lambda: rec.count("become-2") == n and rec.count("work-start") == n)
        assert election.is_leader
        assert election.leader_event.is_set()
        assert election.fencing_token is not None
        assert election.statistics().is_leader
        assert election.statistics().state == "leader"
        assert await election.get_leader_id() == "a"
        tokens.append(election.fencing_token)

    def following() -> None:
        assert not election.is_leader
        assert not election.leader_event.is_set()
        assert election.fencing_token is None

    async with election:
        await a_term_began(1)
        await driver.lose_lease(election)  # the lease is lost
        await rec.wait_for(lambda: rec.count("lose-2") == 1)
        following()
        await a_term_began(2)
        await election.resign()  # handed over, with no one to take it: this one again
        await rec.wait_for(lambda: rec.count("lose-2") == 2)
        following()
        await a_term_began(3)
    assert rec.count("lose-2") == 3  # stop() returned after the lose callbacks
    following()
    assert election.statistics().state == "stopped"
    await election.stop()  # idempotent
    with pytest.raises(ElectionNotRunningError):
        await election.wait_until_leader(timeout=WAIT)
    with pytest.raises(ElectionNotRunningError):
        await election.resign()
    assert tokens == sorted(set(tokens)), tokens  # strictly increasing
    assert election.statistics().terms_won == 3
    return normalized(rec, tokens)


async def test_one_candidate_records_the_same_history(driver: Driver) -> None:
    history = await run_one_candidate(driver)
    term = [
        ("become-1", True, True),
        ("become-2", True, True),
        ("work-cancelled", False, False),
        ("work-cleaned", False, False),
        ("lose-1", False, False),
        ("lose-2", False, False),
    ]
    expected = [(name, lead, ev, n if lead else None) for n in (1, 2, 3) for name, lead, ev in term]
    assert history["sequence"] == expected
    assert history["work-start"] == [("work-start", True, True, n) for n in (1, 2, 3)]
    assert history["errors"] == [
        (error, kind, callback, n)
        for n in (1, 2, 3)
        for error, kind, callback in (
            ("RuntimeError", "on_become_leader", "become_1"),
            ("ValueError", "on_lose_leadership", "lose_1"),
        )
    ]


async def test_two_candidates_hand_over_the_same_way(driver: Driver) -> None:
    rec = Recorder()
    a = driver.make("a", on_error=rec.on_error)
    b = driver.make("b", on_error=rec.on_error)
    instrument(a, rec, "a:")
    instrument(b, rec, "b:")
    async with a:
        await driver.lead(a)
        first = a.fencing_token
        assert first is not None
        async with b:
            assert not b.is_leader
            assert not b.leader_event.is_set()
            assert b.fencing_token is None
            assert await b.get_leader_id() == "a"
            assert b.statistics().leader_id == "a"
            assert b.statistics().state == "follower"
            with pytest.raises(TimeoutError):
                await b.wait_until_leader(timeout=0.05)
            changes = b.changes()
            initial = await anext(changes)
            assert initial.initial
            assert initial.fencing_token == first
            await rec.wait_for(lambda: rec.count("a:become-2") == 1)

            await driver.hand_over(a, b)
            second = b.fencing_token
            assert second is not None
            assert second > first
            assert not a.is_leader
            await rec.wait_for(lambda: rec.count("a:lose-2") == 1)
            await rec.wait_for(lambda: rec.count("b:become-2") == 1)
            assert await a.get_leader_id() == "b"
            async with asyncio.timeout(WAIT):
                moved = [await anext(changes) for _ in range(2)]
            await changes.aclose()
            assert [(c.previous is not None, c.fencing_token) for c in moved] == [
                (True, None),  # no leader between two terms
                (False, second),
            ]
    assert rec.count("a:lose-2") == 1
    assert rec.count("b:lose-2") == 1
    a_events = [e[0] for e in rec.events if e[0].startswith("a:") and "work-start" not in e[0]]
    assert a_events == [
        "a:become-1",
        "a:become-2",
        "a:work-cancelled",
        "a:work-cleaned",
        "a:lose-1",
        "a:lose-2",
    ]


# --------------------------------------------------------------------------- the sync election


class ThreadLog:
    """A thread-safe event log that the test thread can wait on."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = threading.Condition()

    def add(self, *event: Any) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e[0] == name)

    def wait_for(self, name: str, n: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.count(name) >= n, WAIT), self.events


class SyncDriver(Protocol):
    def make(self) -> SyncElectionProtocol: ...
    def lead(self, election: SyncElectionProtocol) -> None: ...
    def lose_lease(self, election: SyncElectionProtocol) -> None: ...


class RealSyncDriver:
    def __init__(self, name: str) -> None:
        self.server = fakeredis.FakeServer()
        self.name = name

    def make(self) -> SyncElectionProtocol:
        config = ElectionConfig(name=self.name, instance_id="a", **FAST)
        return real_sync.LeaderElection(
            lambda: fakeredis.FakeAsyncRedis(server=self.server), config
        )

    def lead(self, election: SyncElectionProtocol) -> None:
        election.wait_until_leader(timeout=WAIT)

    def lose_lease(self, election: SyncElectionProtocol) -> None:
        with fakeredis.FakeRedis(server=self.server) as client:
            client.set(election.config.lock_key, "someone-else", px=300)
        election.wait_until_follower(timeout=WAIT)


class FakeSyncDriver:
    def __init__(self, name: str) -> None:
        self.name = name

    def make(self) -> SyncElectionProtocol:
        return FakeSyncLeaderElection(ElectionConfig(name=self.name, instance_id="a", **FAST))

    def lead(self, election: SyncElectionProtocol) -> None:
        assert isinstance(election, FakeSyncLeaderElection)
        election.elect()

    def lose_lease(self, election: SyncElectionProtocol) -> None:
        assert isinstance(election, FakeSyncLeaderElection)
        election.depose()


@pytest.mark.parametrize("kind", ["real", "fake"])
def test_the_sync_election_records_the_same_history(kind: str) -> None:
    name = f"conformance-sync-{uuid.uuid4().hex[:8]}"
    driver: SyncDriver = RealSyncDriver(name) if kind == "real" else FakeSyncDriver(name)
    log = ThreadLog()
    election = driver.make()
    main = threading.main_thread()
    tokens: list[int] = []

    @election.on_become_leader
    def become() -> None:
        log.add("become", election.is_leader, threading.current_thread() is main)

    @election.while_leader
    def job(term_over: threading.Event) -> None:
        log.add("job-start", election.is_leader, threading.current_thread() is main)
        term_over.wait(WAIT)
        log.add("job-end", election.is_leader)

    @election.on_lose_leadership
    def lose() -> None:
        log.add("lose", election.is_leader, threading.current_thread() is main)

    def a_term_began(n: int) -> None:
        driver.lead(election)
        log.wait_for("become", n)
        log.wait_for("job-start", n)
        assert election.is_leader
        token = election.fencing_token
        assert token is not None
        assert election.get_leader_id() == "a"
        tokens.append(token)

    with election:
        a_term_began(1)
        driver.lose_lease(election)  # the lease is lost: is_leader is False before the job ends
        log.wait_for("lose", 1)
        a_term_began(2)
        election.resign()  # the term ends, then the job returns while the lock is still held
        log.wait_for("lose", 2)
        assert not election.is_leader
        a_term_began(3)
    assert log.count("lose") == 3  # stop() returned after the lose callbacks
    election.stop()  # idempotent
    with pytest.raises(ElectionNotRunningError):
        election.wait_until_leader(timeout=WAIT)
    assert tokens == sorted(set(tokens))

    def term(job_end_leading: bool) -> list[tuple[Any, ...]]:
        return [("job-end", job_end_leading), ("lose", False, False)]

    ends = [e for e in log.events if e[0] in ("job-end", "lose")]
    assert ends == term(False) * 3  # lost, resigned, stopped: is_leader is False first
    starts = [e for e in log.events if e[0] in ("become", "job-start")]
    assert sorted(starts) == [("become", True, False)] * 3 + [("job-start", True, False)] * 3
