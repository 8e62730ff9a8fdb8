"""Tests that kill mutations the rest of the suite let through.

Each test pins one promise whose deliberate break no other test noticed: a step-down request
naming another instance is ignored, the lock is released only after the ``while_leader`` tasks
finished, the deadline watchdog ends a term whose renewal is stuck, and the error handler's
context carries the fencing token. They run on an in-process fakeredis server with intercepted
script calls, except the watchdog's, which runs on the fake clock (``conftest.py``) with a store
whose renewals hang, so that its bound is exact. Nothing sleeps for luck: every wait is on an
event, a message delivered in order after the one under test, or a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import anyio
import pytest

from leaderelection import ElectionConfig, LeaderElection, LeaderInfo, StoreUnavailableError
from leaderelection._scripts import RELEASE, SHA
from leaderelection._store import RedisStore
from leaderelection.testing import FakeClock, MemoryServer, MemoryStore
from tests.support import FAST, eventually

# A 30 s lease and a 5 s call deadline: nothing expires and no task is cut short by a deadline.
SLOW = {"lock_ttl": "30s", "heartbeat_interval": "5s", "retry_interval": "1s"}


def _name() -> str:
    return f"mut-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ 1. foreign step-down request


async def test_a_step_down_request_naming_another_instance_is_ignored(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``S <other id>`` on the leader's channel changes nothing for the leader.

    Proof without waiting for luck: ``a`` and ``c`` lead two elections on ONE client, so one
    pub/sub connection delivers both channels' messages, in the order they were published. The
    foreign request goes to ``a``'s channel first, then a request naming ``c`` to ``c``'s
    channel. Once ``c`` has stepped down, ``a`` has handled the earlier message too (and a
    resignation it started would have run before ``c``'s).
    """
    client = make_client()
    config_a = ElectionConfig(name=_name(), **SLOW)
    config_c = ElectionConfig(name=_name(), **SLOW)
    hub = RedisStore.for_config(client, config_a).hub
    assert hub is not None
    with caplog.at_level(logging.INFO, logger="leaderelection"):
        async with LeaderElection(client, config_a) as a:
            # c joins once the hub's subscription is up: a second election added while the hub
            # is still connecting ends up subscribed on a connection nobody reads.
            assert await hub.wait_active(config_a.release_channel, timeout=5.0)
            async with LeaderElection(client, config_c) as c:
                assert await hub.wait_active(config_c.release_channel, timeout=5.0)
                assert a.is_leader
                assert c.is_leader
                token, before = a.fencing_token, a.statistics()
                assert token is not None
                publisher = make_client()
                received = await RedisStore.for_config(publisher, config_a).request_step_down(
                    "someone-else", timeout=2.0
                )
                assert received == 1  # a's subscription got the foreign request
                await RedisStore.for_config(publisher, config_c).request_step_down(
                    c.instance_id, timeout=2.0
                )
                await c.wait_until_follower(timeout=5.0)  # the later message took effect

                after = a.statistics()
                assert a.is_leader
                assert a.leader_event.is_set()
                assert a.fencing_token == token
                assert after.state == "leader"
                assert after.terms_won == before.terms_won == 1
                assert after.transitions == before.transitions
                info = await a.get_leader_info()
                assert info is not None
                assert info.instance_id == a.instance_id
                assert info.fencing_token == token
    stepped = [r for r in caplog.records if r.getMessage() == "Stepping down on request"]
    assert [r.instance_id for r in stepped] == [c.instance_id]  # type: ignore[attr-defined]


# ------------------------------------------------- 2. release only after while_leader finished


def _record_releases(client: Any, events: list[str]) -> None:
    """Make ``client`` note "release-sent" in ``events`` when the release script goes out."""
    forward = client.evalsha
    release_sha = SHA[RELEASE]

    async def evalsha(sha: str, numkeys: int, *args: Any) -> Any:
        if sha == release_sha:
            events.append("release-sent")
        return await forward(sha, numkeys, *args)

    client.evalsha = evalsha


def _guarded_election(
    client: Any, config: ElectionConfig, events: list[str], seen: list[LeaderInfo | None]
) -> tuple[LeaderElection, asyncio.Event, list[int]]:
    """An election whose while_leader task, once cancelled, reads the leader record (shielded,
    bounded) and notes "task-finished" as its last act."""
    election = LeaderElection(client, config)
    started = asyncio.Event()
    tokens: list[int] = []

    @election.while_leader
    async def guard() -> None:
        token = election.fencing_token
        assert token is not None
        tokens.append(token)
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.fail_after(2.0):
                lock = await client.get(config.lock_key)
                raw = await client.get(config.info_key)
            seen.append(LeaderInfo.model_validate_json(raw) if lock and raw else None)
            events.append("task-finished")

    return election, started, tokens


@pytest.mark.parametrize("how", ["stop", "resign"])
async def test_the_lock_is_released_only_after_while_leader_tasks_finished(
    make_client: Any, how: str
) -> None:
    """stop() and resign() cancel the term's tasks, wait for them, and only then release: a
    task's clean-up still runs under the lock of its term."""
    client = make_client()
    config = ElectionConfig(name=_name(), **SLOW)
    events: list[str] = []
    seen: list[LeaderInfo | None] = []
    _record_releases(client, events)
    election, started, tokens = _guarded_election(client, config, events, seen)
    await election.start()
    try:
        assert election.is_leader
        async with asyncio.timeout(5):
            await started.wait()
        if how == "stop":
            await election.stop()
        else:
            await election.resign()
            assert not election.is_leader
    finally:
        await election.stop()
    assert len(seen) == 1
    held = seen[0]
    assert held is not None, "the lock was gone when the while_leader task finished"
    assert held.instance_id == election.instance_id
    assert held.fencing_token == tokens[0]  # still this term's lock
    assert events[:2] == ["task-finished", "release-sent"]
    assert await client.get(config.lock_key) is None  # and it was released afterwards


# ---------------------------------------------------------- 3. the watchdog ends a stuck term


class _StuckRenewals(MemoryStore):
    """A memory store whose renewals, once ``stuck`` is set, never answer and ignore the
    deadline they were given (a client that swallows cancellation), so that the renewal's own
    deadline cannot end them; only ``unblock`` does (with ``StoreUnavailableError``)."""

    def __init__(self, server: MemoryServer, config: ElectionConfig) -> None:
        super().__init__(server, config)
        self.stuck = False
        self.unblock = asyncio.Event()
        self.last_forwarded = 0.0  # fake time the last answered renewal went out
        self.hanging = 0  # renewals stuck right now
        self.cancellations_ignored = 0

    async def renew(self, token: str, info_json: str, ttl_ms: int, *, timeout: float) -> bool:
        clock = self.server.clock
        if not self.stuck:
            self.last_forwarded = clock.now()
            return await super().renew(token, info_json, ttl_ms, timeout=timeout)
        self.hanging += 1
        try:
            async with clock.timeout(timeout):  # the deadline fires...
                while not self.unblock.is_set():
                    try:
                        await self.unblock.wait()
                    except asyncio.CancelledError:
                        self.cancellations_ignored += 1  # ...and is swallowed
            raise StoreUnavailableError("the renewal never got an answer")
        finally:
            self.hanging -= 1


async def test_the_watchdog_ends_a_term_whose_renewal_is_stuck(
    clock: FakeClock, server: MemoryServer
) -> None:
    """Guarantee 2 with a renewal call that neither answers nor honours its deadline: the term
    still ends (leader_event cleared, while_leader cancelled, lose run, is_leader False) exactly
    renew_deadline after the last successful renewal's send time. Only the watchdog can do that:
    the heartbeat is stuck inside the call.

    On the fake clock (a 10 s lease renewed every 3 s), so the bound is exact, with no margin for
    scheduling: the renewal's own deadline falls at that same instant and is ignored."""
    config = ElectionConfig(name=_name())
    heartbeat = config.heartbeat_interval.total_seconds()
    renew_deadline = config.renew_deadline.total_seconds()
    faults = _StuckRenewals(server, config)
    cancelled_at: list[float] = []
    lost_at: list[float] = []
    lost = asyncio.Event()
    election = LeaderElection(None, config, clock=clock, store=faults)

    @election.while_leader
    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled_at.append(clock.now())

    @election.on_lose_leadership
    def on_lose() -> None:
        lost_at.append(clock.now())
        lost.set()

    await election.start()
    try:
        assert election.is_leader
        await clock.advance(2 * heartbeat)
        assert election.statistics().renewals == 2
        faults.stuck = True
        await clock.advance_until(lambda: faults.hanging > 0, limit=heartbeat)
        last_ok = faults.last_forwarded
        try:
            await clock.advance_until(lost.is_set, limit=renew_deadline)
        except TimeoutError:
            pytest.fail(
                f"the term did not end within {renew_deadline:.3f} fake seconds of a stuck "
                f"renewal (is_leader={election.is_leader}, "
                f"leader_event={election.leader_event.is_set()})"
            )
        assert not election.leader_event.is_set()
        assert not election.is_leader
        assert election.fencing_token is None
        assert cancelled_at == [pytest.approx(last_ok + renew_deadline)], "not cancelled on time"
        assert lost_at == [pytest.approx(last_ok + renew_deadline)]
        assert faults.cancellations_ignored >= 1  # the renewal's deadline came and was ignored
        assert faults.hanging > 0  # the heartbeat is still stuck: the watchdog ended the term
    finally:
        faults.unblock.set()
        await election.stop()


# ------------------------------------------------------- 4. on_error context: the fencing token


async def test_error_context_carries_the_fencing_token_of_the_term(make_client: Any) -> None:
    """The context handed to on_error names the term by its fencing token (the store's), not by
    this instance's term count, for become, while_leader and lose alike."""
    client = make_client()
    config = ElectionConfig(name=_name(), **FAST)
    contexts: list[dict[str, Any]] = []
    tokens: list[int | None] = []

    def handler(exc: BaseException, context: Any) -> None:
        contexts.append(dict(context))

    election = LeaderElection(client, config, on_error=handler)

    @election.on_become_leader
    def become() -> None:
        tokens.append(election.fencing_token)
        raise RuntimeError("become failed")

    @election.while_leader
    async def task() -> None:
        raise RuntimeError("task failed")

    @election.on_lose_leadership
    def lose() -> None:
        raise RuntimeError("lose failed")

    async with election:
        token = election.fencing_token
        assert token is not None
        assert token != election.statistics().terms_won  # the two cannot be told apart otherwise
        await eventually(lambda: len(contexts) == 2)
    assert tokens == [token]
    kinds = sorted(c["kind"] for c in contexts)
    assert kinds == ["on_become_leader", "on_lose_leadership", "while_leader"]
    for context in contexts:
        assert context["fencing_token"] == token, context
        assert context["instance_id"] == election.instance_id
        assert context["election"] == config.name
