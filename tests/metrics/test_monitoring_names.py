"""Every query of the alert rules and of the dashboard names metrics the collector exports."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from leaderelection import ElectionConfig, LeaderElection
from leaderelection import _metrics as registry
from leaderelection.prometheus import LeaderElectionCollector
from leaderelection.testing import FakeClock, MemoryServer
from tests.election.conftest import MakeElection

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
METRIC = re.compile(r"\b(leader_election_master_status|leaderelection_[a-z_]+)\b")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    queries = [
        (f"panel {panel.get('title')!r}", target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    queries += [
        (f"variable {variable['name']!r}", str(variable.get("query", "")))
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable.get("type") == "query"
    ]
    return queries


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [
        (f"alert {rule['alert']}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@pytest.fixture
async def exported(
    make_election: MakeElection, config: ElectionConfig, server: MemoryServer, clock: FakeClock
) -> set[str]:
    """The sample names of a real scrape in which every family has samples: a leader that
    renewed, a follower, a store error, and an observer's view."""
    a, b = make_election(config), make_election(config)
    await a.start()
    await b.start()
    # A third candidate, of another election, whose Redis is down: its store errors.
    down = MemoryServer(clock)
    down.unavailable = True
    other = ElectionConfig(name=f"{config.name}-down")
    c = LeaderElection(None, other, clock=clock, store=down.store(other))
    await c.start()
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)
    assert a.is_leader and c.statistics().store_errors > 0
    sighting = registry.open_sighting(config.name, fresh_for=60)
    sighting.saw(await a.get_leader_info(), None, time.monotonic())
    try:
        scrape = CollectorRegistry()
        scrape.register(LeaderElectionCollector())
        text = generate_latest(scrape).decode()
    finally:
        registry.close_sighting(sighting)
        c_stop = asyncio.ensure_future(c.stop())
        await clock.advance_until(c_stop.done, limit=30)
        await c_stop
    parsed = list(text_string_to_metric_families(text))
    # Every family had samples: the checks are against everything the collector exports.
    declared = {family.name for family in LeaderElectionCollector().describe()}
    assert {family.name for family in parsed if family.samples} == declared
    return {sample.name for family in parsed for sample in family.samples}


def _check(queries: list[tuple[str, str]], exported: set[str]) -> None:
    assert queries
    for where, query in queries:
        used = set(METRIC.findall(query))
        assert used, f"{where} queries no leaderelection metric: {query}"
        assert used <= exported, f"{where} queries {used - exported}, not exported: {query}"


def test_every_alert_queries_exported_metrics(exported: set[str]) -> None:
    _check(alert_queries(), exported)


def test_every_dashboard_panel_queries_exported_metrics(exported: set[str]) -> None:
    queries = dashboard_queries()
    _check(queries, exported)
    # And the dashboard shows the main figures.
    used = {name for _, query in queries for name in METRIC.findall(query)}
    assert {
        "leader_election_master_status",
        "leaderelection_terms_won_total",
        "leaderelection_lease_remaining_seconds",
        "leaderelection_renew_latency_seconds_bucket",
        "leaderelection_store_errors_total",
    } <= used
