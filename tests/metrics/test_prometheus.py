"""The Prometheus collector: what a scrape of a process with live elections and observers shows.

The elections run on the fake clock and the memory server (tests/election/conftest.py), so a
scrape is compared with figures the test caused itself; the observer tests use a real Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from leaderelection import ElectionConfig, LeaderElection, LeaderObserver, _metrics
from leaderelection.prometheus import LeaderElectionCollector
from leaderelection.testing import FakeClock, MemoryServer
from tests.election.conftest import Drive, MakeElection
from tests.redis_harness import RedisServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """The samples of a scrape, as Prometheus would parse them from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def of(samples: Samples, metric: str, election: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``metric`` for the election named ``election``, by label set."""
    return {
        labels: v
        for (n, labels), v in samples.items()
        if n == metric and ("name", election) in labels
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(LeaderElectionCollector())
    return registry


async def test_a_scrape_shows_the_leader_and_the_follower_then_the_handoff(
    registry: CollectorRegistry,
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    drive: Drive,
) -> None:
    a, b = make_election(config), make_election(config)
    await a.start()
    await b.start()
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)  # one renewal
    name = config.name
    ia, ib = a.instance_id, b.instance_id
    s = scrape(registry)

    assert value(s, "leader_election_master_status", name=name, instance_id=ia) == 1
    assert value(s, "leader_election_master_status", name=name, instance_id=ib) == 0
    assert value(s, "leaderelection_state", name=name, instance_id=ia, state="leader") == 1
    assert value(s, "leaderelection_state", name=name, instance_id=ib, state="follower") == 1
    assert value(s, "leaderelection_terms_won_total", name=name, instance_id=ia) == 1
    assert value(s, "leaderelection_fencing_token", name=name, instance_id=ia) == a.fencing_token
    assert value(s, "leaderelection_fencing_token", name=name, instance_id=ib) is None
    assert value(s, "leaderelection_renewals_total", name=name, instance_id=ia) == 1
    lease = value(s, "leaderelection_lease_remaining_seconds", name=name, instance_id=ia)
    assert lease == pytest.approx(a.statistics().lease_remaining)
    assert 0 < lease <= config.renew_deadline.total_seconds()
    assert value(s, "leaderelection_lease_remaining_seconds", name=name, instance_id=ib) == 0
    attempts = {
        dict(labels)["result"]: v
        for labels, v in of(s, "leaderelection_acquire_attempts_total", name).items()
        if ("instance_id", ib) in labels
    }
    assert attempts == {"acquired": 0, "late": 0, "held": 1, "held_back": 0, "error": 0}
    # The histogram: one renewal, in the first bucket (the memory server answers at once).
    assert value(s, "leaderelection_renew_latency_seconds_count", name=name, instance_id=ia) == 1
    assert (
        value(
            s, "leaderelection_renew_latency_seconds_bucket", name=name, instance_id=ia, le="+Inf"
        )
        == 1
    )
    assert value(s, "leaderelection_last_renew_latency_seconds", name=name, instance_id=ia) == 0
    assert value(s, "leaderelection_last_renew_latency_seconds", name=name, instance_id=ib) is None

    # The handoff: a resigns, b is woken by the release and takes over.
    await a.resign()
    await drive(b.wait_until_leader(), limit=1)
    s = scrape(registry)
    assert value(s, "leader_election_master_status", name=name, instance_id=ia) == 0
    assert value(s, "leader_election_master_status", name=name, instance_id=ib) == 1
    lost = of(s, "leaderelection_leadership_lost_total", name)
    assert {dict(k)["reason"]: v for k, v in lost.items() if ("instance_id", ia) in k} == {
        "resigned": 1,
        "stopped": 0,
        "renew_deadline": 0,
        "lock_lost": 0,
        "error": 0,
    }
    assert value(s, "leaderelection_release_notices_total", name=name, instance_id=ib) == 1
    assert value(s, "leaderelection_follower_wakeups_total", name=name, instance_id=ib) == 1
    assert value(s, "leaderelection_state", name=name, instance_id=ia, state="held_back") == 1

    # Stopped elections disappear.
    await drive(a.stop(), limit=10)
    await drive(b.stop(), limit=10)
    assert of(scrape(registry), "leader_election_master_status", name) == {}


async def test_store_errors_are_counted_by_kind_and_the_term_lost_by_reason(
    registry: CollectorRegistry,
    make_election: MakeElection,
    config: ElectionConfig,
    server: MemoryServer,
    clock: FakeClock,
) -> None:
    a = make_election(config)
    await a.start()
    server.hanging = True  # renewals time out until the local lease runs out
    await clock.advance_until(lambda: not a.is_leader, limit=10)
    server.hanging = False
    server.unavailable = True  # the next acquire attempts are refused at once
    await clock.advance_until(
        lambda: a.statistics().store_errors_by_kind["connection"] > 0, limit=10
    )
    s = scrape(registry)
    labels = {"name": config.name, "instance_id": a.instance_id}
    stats = a.statistics()
    assert stats.renew_failures > 0
    assert value(s, "leaderelection_renew_failures_total", **labels) == stats.renew_failures
    assert (
        value(s, "leaderelection_store_errors_total", **labels, kind="timeout")
        == (stats.store_errors_by_kind["timeout"])
    )
    assert stats.store_errors_by_kind["timeout"] >= stats.renew_failures  # acquires may too
    assert sum(stats.store_errors_by_kind.values()) == stats.store_errors
    assert (
        value(s, "leaderelection_store_errors_total", **labels, kind="connection")
        == (stats.store_errors_by_kind["connection"])
    )
    # Every kind is exported, those that never happened as 0 (so rate() counts a first error).
    assert value(s, "leaderelection_store_errors_total", **labels, kind="read_only") == 0
    assert value(s, "leaderelection_leadership_lost_total", **labels, reason="renew_deadline") == 1
    assert (
        value(s, "leaderelection_acquire_attempts_total", **labels, result="error")
        == (stats.acquire_results["error"])
    )


async def test_restart_protection_shows_while_it_holds_elections_back(
    registry: CollectorRegistry, config: ElectionConfig, clock: FakeClock, drive: Drive
) -> None:
    young = MemoryServer(clock, uptime=1.0)
    election = LeaderElection(None, config, clock=clock, store=young.store(config))
    await election.start()
    try:
        labels = {"name": config.name, "instance_id": election.instance_id}
        s = scrape(registry)
        assert value(s, "leaderelection_restart_protection_active", **labels) == 1
        assert value(s, "leaderelection_state", **labels, state="held_back") == 1
        assert value(s, "leaderelection_acquire_attempts_total", **labels, result="held_back") == 1
        await drive(election.wait_until_leader(), limit=30)
        s = scrape(registry)
        assert value(s, "leaderelection_restart_protection_active", **labels) == 0
        assert value(s, "leader_election_master_status", **labels) == 1
    finally:
        await drive(election.stop(), limit=10)


async def test_a_scrape_sends_nothing_to_the_store(
    registry: CollectorRegistry,
    make_election: MakeElection,
    config: ElectionConfig,
    server: MemoryServer,
) -> None:
    a = make_election(config)
    await a.start()
    before = server.commands
    server.hanging = True  # a scrape that called the store would not come back
    for _ in range(3):
        assert value(
            scrape(registry),
            "leader_election_master_status",
            name=config.name,
            instance_id=a.instance_id,
        )
    assert server.commands == before
    server.hanging = False


def test_describe_lists_every_family_without_collecting() -> None:
    names = {family.name for family in LeaderElectionCollector().describe()}
    assert "leader_election_master_status" in names
    assert all(
        n == "leader_election_master_status" or n.startswith("leaderelection_") for n in names
    )
    assert all(not family.samples for family in LeaderElectionCollector().describe())


def test_sync_elections_are_exported(
    registry: CollectorRegistry, redis_server: RedisServer
) -> None:
    from leaderelection.sync import LeaderElection as SyncLeaderElection

    config = ElectionConfig(name="sync-metrics", restart_protection=False)
    with SyncLeaderElection(redis_server.url, config) as election:
        assert election.is_leader
        s = scrape(registry)
        assert (
            value(
                s,
                "leader_election_master_status",
                name="sync-metrics",
                instance_id=election.instance_id,
            )
            == 1
        )
    assert of(scrape(registry), "leader_election_master_status", "sync-metrics") == {}


async def test_observers_export_who_leads_as_they_see_it(
    registry: CollectorRegistry, redis_server: RedisServer
) -> None:
    config = ElectionConfig(name="observed-metrics", lock_ttl=2, heartbeat_interval=0.5)
    async with LeaderObserver(redis_server.url, config) as observer:
        assert of(scrape(registry), "leaderelection_observed_leader", config.name) == {}
        assert await observer.current() is None
        s = scrape(registry)
        assert value(s, "leaderelection_observed_leader", name=config.name, leader_id="") == 0
        assert value(s, "leaderelection_observed_changes_total", name=config.name) == 0

        changes = observer.changes()
        first = await anext(changes)
        assert first.leader is None
        async with LeaderElection(redis_server.url, config) as election:
            change = await asyncio.wait_for(anext(changes), 5)
            assert change.leader is not None
            s = scrape(registry)
            leader = {"name": config.name, "leader_id": election.instance_id}
            assert value(s, "leaderelection_observed_leader", **leader) == 1
            assert value(s, "leaderelection_observed_fencing_token", name=config.name) == (
                election.fencing_token
            )
            assert value(s, "leaderelection_observed_changes_total", name=config.name) == 1
        change = await asyncio.wait_for(anext(changes), 5)  # the release
        assert change.leader is None
        await changes.aclose()  # type: ignore[attr-defined]
        s = scrape(registry)
        assert value(s, "leaderelection_observed_leader", name=config.name, leader_id="") == 0
        assert value(s, "leaderelection_observed_changes_total", name=config.name) == 2
    # A closed observer disappears.
    assert of(scrape(registry), "leaderelection_observed_leader", config.name) == {}


def test_scrapes_from_another_thread_while_elections_come_and_go(
    registry: CollectorRegistry,
) -> None:
    """The prometheus_client HTTP server scrapes from its own thread."""
    done = threading.Event()
    errors: list[BaseException] = []
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        try:
            while not done.is_set():
                scrape(registry)
                scrapes += 1
        except BaseException as exc:  # the test fails on any
            errors.append(exc)

    async def churn() -> None:
        clock = FakeClock()
        server = MemoryServer(clock)
        for round_ in range(40):
            config = ElectionConfig(name=f"churn-{round_ % 3}")
            elections = [
                LeaderElection(None, config, clock=clock, store=server.store(config))
                for _ in range(5)
            ]
            for election in elections:
                await election.start()
            await clock.advance(3.5)
            for election in elections:
                await election.stop()

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        asyncio.run(churn())
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    assert scrapes > 0


async def test_observers_of_one_election_count_each_change_once(
    registry: CollectorRegistry, redis_server: RedisServer
) -> None:
    """Two observers of one election, one of them with two iterations: one view per election,
    each change counted once, and the count kept when one of the observers closes."""
    config = ElectionConfig(name="observed-twice", lock_ttl=2, heartbeat_interval=0.5)
    first = LeaderObserver(redis_server.url, config)
    second = LeaderObserver(redis_server.url, config)
    iterations = [first.changes(), first.changes(), second.changes()]
    try:
        for changes in iterations:
            assert (await anext(changes)).leader is None
        async with LeaderElection(redis_server.url, config) as election:
            for changes in iterations:
                change = await asyncio.wait_for(anext(changes), 5)
                assert change.leader is not None
            s = scrape(registry)
            assert of(s, "leaderelection_observed_leader", config.name) == {
                frozenset({("name", config.name), ("leader_id", election.instance_id)}): 1
            }
            assert value(s, "leaderelection_observed_changes_total", name=config.name) == 1
        for changes in iterations:
            assert (await asyncio.wait_for(anext(changes), 5)).leader is None
        assert (
            value(scrape(registry), "leaderelection_observed_changes_total", name=config.name) == 2
        )
        for changes in iterations:
            await changes.aclose()  # type: ignore[attr-defined]
        await first.aclose()
        # The other observer is open: the view and its count stay.
        assert (
            value(scrape(registry), "leaderelection_observed_changes_total", name=config.name) == 2
        )
    finally:
        for changes in iterations:
            await changes.aclose()  # type: ignore[attr-defined]
        await first.aclose()
        await second.aclose()
    assert of(scrape(registry), "leaderelection_observed_changes_total", config.name) == {}


async def test_an_observers_reading_is_exported_for_one_lease_without_an_iteration(
    redis_server: RedisServer,
) -> None:
    """A reading of current() goes stale: without a changes() iteration keeping it current, it
    is exported for lock_ttl, then no more (so an old "no leader" fires no alert)."""
    config = ElectionConfig(name="observed-stale", lock_ttl=2, heartbeat_interval=0.5)
    async with LeaderObserver(redis_server.url, config) as observer:
        assert await observer.current() is None
        read = time.monotonic()
        assert [v.name for v in _metrics.observed(now=read)] == [config.name]
        assert [v.name for v in _metrics.observed(now=read + 1.9)] == [config.name]
        assert _metrics.observed(now=read + 2.1) == []
        changes = observer.changes()
        await anext(changes)
        # An iteration keeps it current, however long it runs.
        assert [v.name for v in _metrics.observed(now=time.monotonic() + 3600)] == [config.name]
        await changes.aclose()  # type: ignore[attr-defined]
        assert _metrics.observed(now=time.monotonic() + 3600) == []


def test_a_late_reading_never_moves_the_view_back() -> None:
    from leaderelection import LeaderInfo

    def info(token: int) -> LeaderInfo:
        return LeaderInfo(
            instance_id=f"i{token}",
            hostname="h",
            pid=1,
            started_at="2026-12-04T00:00:00Z",
            last_heartbeat="2026-12-04T00:00:00Z",
            fencing_token=token,
            election="late",
        )

    sighting = _metrics.open_sighting("late-readings", fresh_for=60)
    try:
        sighting.saw(info(5), None, 0.0)
        sighting.saw(None, info(5), 0.0)  # term 5 ended
        sighting.saw(info(5), None, 0.0)  # a read sent before that, answered after: ignored
        sighting.saw(info(7), None, 0.0)
        sighting.saw(None, info(5), 0.0)  # the end of term 5 again, late: ignored
        view = sighting.view
        assert view is not None
        assert view.leader is not None and view.leader.fencing_token == 7
        assert view.changes == 2
    finally:
        _metrics.close_sighting(sighting)
