"""LeaderElection end to end on an in-process fakeredis server (real clock, short timings).

Every wait is on an event or a condition with a timeout; nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
import redis

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    ElectionNotRunningError,
    ElectionStatistics,
    LeaderElection,
    LeaderElectionError,
)
from tests.support import FAST, eventually, fast_config

SLOW = {"lock_ttl": "30s", "heartbeat_interval": "5s", "retry_interval": "1s"}


@pytest.fixture
def config(name: str) -> ElectionConfig:
    return fast_config(name)


async def test_entering_returns_after_the_first_attempt(
    make_client: Any, config: ElectionConfig
) -> None:
    async with LeaderElection(make_client(), config) as a:
        assert a.is_leader
        assert a.leader_event.is_set()
        assert a.fencing_token is not None
        info = await a.get_leader_info()
        assert info is not None
        assert info.instance_id == a.instance_id
        assert info.fencing_token == a.fencing_token
        assert info.election == config.name
        async with LeaderElection(make_client(), config) as b:
            assert not b.is_leader
            assert b.fencing_token is None
            assert not b.leader_event.is_set()
            assert await b.get_leader_id() == a.instance_id
            assert b.statistics().leader_id == a.instance_id
            assert b.instance_id != a.instance_id


async def test_one_config_serves_many_candidates_with_distinct_ids(make_client: Any) -> None:
    config = ElectionConfig(name="shared", **FAST)
    elections = [LeaderElection(make_client(), config) for _ in range(5)]
    assert len({e.instance_id for e in elections}) == 5
    for e in elections:
        await e.start()
    try:
        assert sum(e.is_leader for e in elections) == 1
    finally:
        for e in elections:
            await e.stop()


async def test_stop_hands_over_through_the_release_channel(make_client: Any) -> None:
    config = ElectionConfig(name="handoff", **SLOW)  # 30 s lease: only a release can be this fast
    a = LeaderElection(make_client(), config)
    b = LeaderElection(make_client(), config)
    await a.start()
    await b.start()
    try:
        assert a.is_leader
        await a.stop()
        assert not a.is_leader
        await b.wait_until_leader(timeout=2.0)
        assert b.is_leader
    finally:
        await b.stop()
        await a.stop()


async def test_resign_hands_over_and_holds_back(make_client: Any) -> None:
    config = ElectionConfig(name="resign", **SLOW)
    async with (
        LeaderElection(make_client(), config) as a,
        LeaderElection(make_client(), config) as b,
    ):
        first = a.fencing_token
        assert first is not None
        await a.resign()
        assert not a.is_leader
        assert a.statistics().state == "held_back"
        await b.wait_until_leader(timeout=2.0)
        second = b.fencing_token
        assert second is not None
        assert second > first
        await b.resign()
        await a.wait_until_leader(timeout=5.0)  # after its hold-back, a leads again: a new term
        assert a.fencing_token is not None
        assert a.fencing_token > second
        assert a.statistics().terms_won == 2


async def test_resign_when_not_leader_is_a_no_op(make_client: Any, config: ElectionConfig) -> None:
    async with (
        LeaderElection(make_client(), config) as a,
        LeaderElection(make_client(), config) as b,
    ):
        await b.resign()
        assert a.is_leader
        assert not b.is_leader


async def test_callbacks_run_in_order_isolated_and_balanced(
    make_client: Any, config: ElectionConfig
) -> None:
    events: list[str] = []
    errors: list[tuple[BaseException, dict[str, Any]]] = []
    lost = asyncio.Event()

    def handler(exc: BaseException, context: Any) -> None:
        errors.append((exc, dict(context)))

    election = LeaderElection(make_client(), config, on_error=handler)

    @election.on_become_leader
    def first() -> None:
        events.append("become-1")
        raise RuntimeError("boom")

    @election.on_become_leader
    async def second() -> None:
        await asyncio.sleep(0)
        events.append("become-2")

    @election.while_leader
    async def work() -> None:
        events.append("work-start")
        try:
            await asyncio.Event().wait()
        finally:
            events.append("work-cancelled")

    @election.on_lose_leadership
    async def lose() -> None:
        events.append("lose")
        lost.set()

    async with election:
        await eventually(lambda: "become-2" in events and "work-start" in events)
        await election.resign()
        async with asyncio.timeout(5):
            await lost.wait()
    assert events.index("become-1") < events.index("become-2") < events.index("lose")
    assert events.index("work-cancelled") < events.index("lose")
    assert events.count("lose") == 1
    assert len(errors) == 1
    exc, context = errors[0]
    assert isinstance(exc, RuntimeError)
    assert context["kind"] == "on_become_leader"
    assert context["callback"] is first
    assert context["fencing_token"] is not None


async def test_every_become_gets_exactly_one_lose_even_when_stopped_mid_callback(
    make_client: Any, config: ElectionConfig
) -> None:
    events: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()
    election = LeaderElection(make_client(), config)

    @election.on_become_leader
    async def slow_become() -> None:
        events.append("become-start")
        inside.set()
        await release.wait()
        events.append("become-end")

    election.on_lose_leadership(lambda: events.append("lose"))
    await election.start()
    async with asyncio.timeout(5):
        await inside.wait()
    stopping = asyncio.create_task(election.stop())
    await eventually(lambda: not election.is_leader)
    assert not stopping.done()  # stop waits for the callbacks
    release.set()
    async with asyncio.timeout(5):
        await stopping
    assert events == ["become-start", "become-end", "lose"]


async def test_slow_async_callback_does_not_delay_heartbeats(
    make_client: Any, config: ElectionConfig
) -> None:
    gate = asyncio.Event()
    election = LeaderElection(make_client(), config)

    @election.on_become_leader
    async def slow() -> None:
        await gate.wait()

    async with election:
        await eventually(lambda: election.statistics().renewals >= 5)
        assert election.is_leader
        gate.set()


async def test_while_leader_registered_during_a_term_starts_at_once(
    make_client: Any, config: ElectionConfig
) -> None:
    started = asyncio.Event()
    async with LeaderElection(make_client(), config) as election:
        assert election.is_leader

        @election.while_leader
        async def late() -> None:
            started.set()
            await asyncio.Event().wait()

        async with asyncio.timeout(5):
            await started.wait()


async def test_while_leader_exception_is_reported_and_election_goes_on(
    make_client: Any, config: ElectionConfig, caplog: pytest.LogCaptureFixture
) -> None:
    election = LeaderElection(make_client(), config)

    @election.while_leader
    async def broken() -> None:
        raise ValueError("task failed")

    with caplog.at_level(logging.ERROR, logger="leaderelection"):
        async with election:
            await eventually(lambda: any("ValueError" in r.getMessage() for r in caplog.records))
            await eventually(lambda: election.statistics().renewals >= 2)
            assert election.is_leader
    record = next(r for r in caplog.records if "ValueError" in r.getMessage())
    assert record.exc_info is not None


async def test_lost_lock_ends_the_term_and_a_new_term_follows(
    make_client: Any, config: ElectionConfig, caplog: pytest.LogCaptureFixture
) -> None:
    lost = asyncio.Event()
    client = make_client()
    election = LeaderElection(client, config, on_lose_leadership=lost.set)
    with caplog.at_level(logging.WARNING, logger="leaderelection"):
        async with election:
            first = election.fencing_token
            assert first is not None
            await client.set(config.lock_key, "someone-else", px=300)  # our lock was taken
            async with asyncio.timeout(5):
                await lost.wait()
            assert any(
                r.getMessage() == "Failed to send heartbeat, lost leadership"
                for r in caplog.records
            )
            await election.wait_until_leader(timeout=5)  # the foreign lock expires; a new term
            assert election.fencing_token is not None
            assert election.fencing_token > first
            assert election.statistics().terms_won == 2


async def test_wait_until_leader_times_out_and_follower_returns(
    make_client: Any, config: ElectionConfig
) -> None:
    async with (
        LeaderElection(make_client(), config) as a,
        LeaderElection(make_client(), config) as b,
    ):
        with pytest.raises(TimeoutError):
            await b.wait_until_leader(timeout=0.05)
        await b.wait_until_follower(timeout=0.05)
        with pytest.raises(TimeoutError):
            await a.wait_until_follower(timeout=0.05)


async def test_waiting_on_a_stopped_election_is_an_error(
    make_client: Any, config: ElectionConfig
) -> None:
    a = LeaderElection(make_client(), config)
    with pytest.raises(ElectionNotRunningError, match="start"):
        await a.wait_until_leader()
    async with a, LeaderElection(make_client(), config) as b:
        waiting = asyncio.create_task(b.wait_until_leader())
        await asyncio.sleep(0)
        await b.stop()
        with pytest.raises(ElectionNotRunningError):
            await waiting


async def test_lifecycle_errors(make_client: Any, config: ElectionConfig) -> None:
    election = LeaderElection(make_client(), config)
    await election.stop()  # stopping a never-started election is fine
    await election.stop()
    with pytest.raises(LeaderElectionError, match="already started"):
        await election.start()
    other = LeaderElection(make_client(), config)
    async with other:
        with pytest.raises(LeaderElectionError, match="already started"):
            await other.start()
    await other.stop()
    assert other.statistics().state == "stopped"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (redis.Redis(), "asyncio client"),
        (object(), "redis.asyncio.Redis or RedisCluster"),
        (42, "redis.asyncio.Redis or RedisCluster"),
    ],
)
def test_bad_redis_argument(bad: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LeaderElection(bad)


async def test_bad_url_is_a_configuration_error() -> None:
    election = LeaderElection("http://localhost:6379")
    with pytest.raises(ConfigurationError, match="redis://"):
        await election.start()


async def test_statistics_is_an_immutable_snapshot(
    make_client: Any, config: ElectionConfig
) -> None:
    async with LeaderElection(make_client(), config) as election:
        stats = election.statistics()
        assert isinstance(stats, ElectionStatistics)
        assert stats.state == "leader"
        assert stats.terms_won == 1
        assert stats.transitions == 1
        assert stats.acquire_attempts == 1
        with pytest.raises(AttributeError):
            stats.state = "follower"  # type: ignore[misc]
        await eventually(lambda: election.statistics().renewals >= 1)
        latency = election.statistics().last_renew_latency
        assert latency is not None
        assert latency >= 0
    assert stats.state == "leader"  # the snapshot did not change


async def test_logs_carry_the_go_messages_and_structured_fields(
    make_client: Any, config: ElectionConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="leaderelection"):
        async with LeaderElection(make_client(), config) as election:
            await eventually(lambda: election.statistics().renewals >= 1)
            token = election.fencing_token
    messages = {r.getMessage(): r for r in caplog.records}
    for text, level in [
        ("Became the leader", logging.INFO),
        ("Heartbeat sent", logging.DEBUG),
        ("Releasing leadership voluntarily", logging.INFO),
    ]:
        record = messages[text]
        assert record.levelno == level
        assert record.election == config.name  # type: ignore[attr-defined]
        assert record.instance_id == election.instance_id  # type: ignore[attr-defined]
        assert record.fencing_token == token  # type: ignore[attr-defined]


async def test_caller_owned_client_is_not_closed(make_client: Any, config: ElectionConfig) -> None:
    client = make_client()
    async with LeaderElection(client, config):
        pass
    assert await client.ping()


async def test_sync_and_async_callbacks_given_to_the_constructor(
    make_client: Any, config: ElectionConfig
) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def lose() -> None:
        seen.append("lose")
        done.set()

    election = LeaderElection(
        make_client(),
        config,
        on_become_leader=lambda: seen.append("become"),
        on_lose_leadership=lose,
    )
    async with election:
        await eventually(lambda: seen == ["become"])
    assert seen == ["become", "lose"]
    assert done.is_set()


def test_register_non_callable_is_a_type_error(make_client: Any, config: ElectionConfig) -> None:
    election = LeaderElection(make_client(), config)
    with pytest.raises(TypeError):
        election.on_become_leader(42)  # type: ignore[type-var]
    with pytest.raises(TypeError):
        election.while_leader("nope")  # type: ignore[type-var]


async def test_stop_from_inside_a_callback_does_not_deadlock(
    make_client: Any, config: ElectionConfig
) -> None:
    election = LeaderElection(make_client(), config)
    lost = asyncio.Event()

    @election.on_become_leader
    async def stop_at_once() -> None:
        await election.stop()  # returns at once; the shutdown follows this callback

    election.on_lose_leadership(lost.set)
    await election.start()
    async with asyncio.timeout(5):
        await lost.wait()
        await election.stop()
    assert election.statistics().state == "stopped"


async def test_is_leader_reads_the_clock_when_the_loop_was_blocked(
    make_client: Any, config: ElectionConfig
) -> None:
    """A blocked event loop cannot run the watchdog, but ``is_leader`` turns False on time, and
    waiting for leadership neither spins nor resumes the old term."""
    async with LeaderElection(make_client(), config) as election:
        first = election.fencing_token
        assert first is not None
        time.sleep(0.8)  # noqa: ASYNC251 - the fault: block the loop past renew_deadline (0.667 s)
        assert not election.is_leader
        assert election.fencing_token is None
        assert election.leader_event.is_set()  # only the watchdog clears it, on its next turn
        await election.wait_until_leader(timeout=5)
        assert election.fencing_token is not None
        assert election.fencing_token > first  # a new term, never the old one resumed


async def test_a_stray_cancelled_error_in_callbacks_is_isolated(
    make_client: Any, config: ElectionConfig
) -> None:
    """A callback or task that awaits something cancelled fails alone; the election goes on."""
    events: list[str] = []
    errors: list[str] = []
    lost = asyncio.Event()

    async def cancelled_future() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError, though nobody cancelled this task

    election = LeaderElection(
        make_client(), config, on_error=lambda exc, ctx: errors.append(ctx["kind"])
    )
    election.on_become_leader(cancelled_future)
    election.on_become_leader(lambda: events.append("become-2"))
    election.while_leader(cancelled_future)
    election.on_lose_leadership(lambda: (events.append("lose"), lost.set()))
    async with election:
        await eventually(lambda: "become-2" in events and len(errors) == 2)
        await eventually(lambda: election.statistics().renewals >= 2)
        assert election.is_leader
        await election.resign()
        async with asyncio.timeout(5):
            await lost.wait()
    assert events == ["become-2", "lose"]
    assert sorted(errors) == ["on_become_leader", "while_leader"]


async def test_resign_from_a_while_leader_task_still_hands_over(make_client: Any) -> None:
    config = ElectionConfig(name="resign-inside", **SLOW)  # 30 s lease: only a release is fast
    a = LeaderElection(make_client(), config)

    @a.while_leader
    async def give_up() -> None:
        await a.resign()  # ends this very task's term

    async with a, LeaderElection(make_client(), config) as b:
        await b.wait_until_leader(timeout=2.0)
        assert not a.is_leader


async def test_resign_right_after_start_returns(make_client: Any, config: ElectionConfig) -> None:
    """start() returns before the election's own task runs; the API works at once."""
    async with LeaderElection(make_client(), config) as a:
        assert a.is_leader
        await a.resign()
        assert not a.is_leader
        assert not a.leader_event.is_set()
        await a.wait_until_leader(timeout=5)  # after the hold-back, a new term
        assert a.statistics().terms_won == 2
