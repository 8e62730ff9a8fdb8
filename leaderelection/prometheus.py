"""Prometheus metrics of every election and observer alive in the process (extra ``prometheus``).

Register the collector once, at startup::

    from prometheus_client import REGISTRY
    from leaderelection.prometheus import LeaderElectionCollector

    REGISTRY.register(LeaderElectionCollector())

A scrape then exports every :class:`~leaderelection.LeaderElection` started and not yet stopped
in the process (async and :mod:`~leaderelection.sync` ones alike), and what each open
:class:`~leaderelection.LeaderObserver` saw last. Everything is read from what the elections
already know, at scrape time: a scrape sends nothing to Redis, and between scrapes the
collector costs nothing. A stopped election disappears from the next scrape.

The gauge ``leader_election_master_status{name, instance_id}`` is client-go's; the others share
the prefix ``leaderelection_``. ``docs/monitoring.md`` lists them all, with the alert rules and
the Grafana dashboard built on them.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
    from prometheus_client.samples import Sample
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "leaderelection.prometheus needs prometheus_client, which the 'prometheus' extra "
        "installs: pip install 'leaderelection-redis[prometheus]'"
    ) from exc

from . import _metrics
from ._core import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ._campaign import Campaign

__all__ = ["PREFIX", "LeaderElectionCollector"]

PREFIX = "leaderelection_"
"""The prefix of every metric but client-go's ``leader_election_master_status``."""

_LABELS = ["name", "instance_id"]
_BOUNDS = (*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf")


class _Families:
    """The metric families of one scrape, empty until filled."""

    def __init__(self) -> None:
        p = PREFIX
        self.master_status = GaugeMetricFamily(
            "leader_election_master_status",
            "1 while this candidate leads the election, else 0 (client-go's gauge).",
            labels=_LABELS,
        )
        self.state = GaugeMetricFamily(
            f"{p}state",
            "1 for the candidate's current state: follower, leader, held_back or stopping.",
            labels=[*_LABELS, "state"],
        )
        self.terms_won = CounterMetricFamily(
            f"{p}terms_won", "Terms this candidate won.", labels=_LABELS
        )
        self.lost = CounterMetricFamily(
            f"{p}leadership_lost",
            "Terms that ended, by reason: resigned, stopped, renew_deadline (no renewal in "
            "time), lock_lost (the lock was no longer ours) or error.",
            labels=[*_LABELS, "reason"],
        )
        self.attempts = CounterMetricFamily(
            f"{p}acquire_attempts",
            "Acquire attempts answered, by result: acquired, late (won, answered too late to "
            "lead), held (another instance leads), held_back (restart protection) or error.",
            labels=[*_LABELS, "result"],
        )
        self.renewals = CounterMetricFamily(
            f"{p}renewals", "Successful renewals of the lease.", labels=_LABELS
        )
        self.renew_failures = CounterMetricFamily(
            f"{p}renew_failures", "Renewals that failed or timed out.", labels=_LABELS
        )
        self.store_errors = CounterMetricFamily(
            f"{p}store_errors",
            "Failed Redis calls (acquire, renew, release), by kind: timeout, connection, "
            "cluster, replicas_missing, authentication, read_only, wrong_type, corrupt_info or "
            "other.",
            labels=[*_LABELS, "kind"],
        )
        self.lease_remaining = GaugeMetricFamily(
            f"{p}lease_remaining_seconds",
            "Seconds left on the leader's local lease (it steps down at 0 without a renewal); "
            "0 when not leading.",
            labels=_LABELS,
        )
        self.last_latency = GaugeMetricFamily(
            f"{p}last_renew_latency_seconds",
            "Round trip of the last successful renewal.",
            labels=_LABELS,
        )
        self.latency = HistogramMetricFamily(
            f"{p}renew_latency_seconds",
            "Round trips of the successful renewals.",
            labels=_LABELS,
        )
        self.restart_protection = GaugeMetricFamily(
            f"{p}restart_protection_active",
            "1 while restart protection holds elections back after a Redis restart, else 0.",
            labels=_LABELS,
        )
        self.notices = CounterMetricFamily(
            f"{p}release_notices",
            "Releases announced on the election's channel that this candidate heard as a follower.",
            labels=_LABELS,
        )
        self.wakeups = CounterMetricFamily(
            f"{p}follower_wakeups",
            "Release notices that moved this follower's next attempt earlier (handoffs taken "
            "at once).",
            labels=_LABELS,
        )
        self.fencing_token = GaugeMetricFamily(
            f"{p}fencing_token",
            "The fencing token of the current term (exported only while leading).",
            labels=_LABELS,
        )
        self.observed_leader = GaugeMetricFamily(
            f"{p}observed_leader",
            "What an observer in this process saw last: 1 with the leader's instance id, or 0 "
            'with leader_id="" when no one leads.',
            labels=["name", "leader_id"],
        )
        self.observed_token = GaugeMetricFamily(
            f"{p}observed_fencing_token",
            "The fencing token of the leader an observer saw last (only while someone leads).",
            labels=["name"],
        )
        self.observed_changes = CounterMetricFamily(
            f"{p}observed_changes",
            "Changes of leader an observer in this process saw.",
            labels=["name"],
        )

    def __iter__(self) -> Iterator[Metric]:
        return iter(vars(self).values())


class LeaderElectionCollector(Collector):
    """A ``prometheus_client`` collector of every election and observer in the process.

    Register one per registry: ``REGISTRY.register(LeaderElectionCollector())``. Each scrape
    reads the elections' counters and states (no Redis call); see the module docstring and
    ``docs/monitoring.md`` for the metrics.
    """

    def __init__(self) -> None:
        # The label sets of each election, made at its first scrape (they never change).
        self._labels: weakref.WeakKeyDictionary[Campaign, _Labels] = weakref.WeakKeyDictionary()

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (so that registering does not collect)."""
        return list(_Families())

    def collect(self) -> Iterable[Metric]:
        """One sample set per live election and per observed election."""
        f = _Families()
        for campaign in _metrics.elections():
            core = campaign.core
            stats = core.statistics(campaign.clock.now(), campaign.state)
            if stats.state == "stopped":
                continue
            labels = self._labels.get(campaign)
            if labels is None:
                labels = self._labels[campaign] = _Labels(campaign)
            base = labels.base
            _add(f.master_status, base, 1.0 if stats.is_leader else 0.0)
            _add(f.state, labels.extra("state", stats.state), 1.0)
            _add(f.terms_won, base, stats.terms_won, "_total")
            for reason, count in stats.leadership_lost.items():
                _add(f.lost, labels.extra("reason", reason), count, "_total")
            for result, count in stats.acquire_results.items():
                _add(f.attempts, labels.extra("result", result), count, "_total")
            _add(f.renewals, base, stats.renewals, "_total")
            _add(f.renew_failures, base, stats.renew_failures, "_total")
            for kind, count in stats.store_errors_by_kind.items():
                _add(f.store_errors, labels.extra("kind", kind), count, "_total")
            _add(f.lease_remaining, base, stats.lease_remaining)
            if stats.last_renew_latency is not None:
                _add(f.last_latency, base, stats.last_renew_latency)
            cumulative = 0
            for bound, count in zip(_BOUNDS, list(core.latency_counts), strict=True):
                cumulative += count
                _add(f.latency, labels.extra("le", bound), cumulative, "_bucket")
            _add(f.latency, base, cumulative, "_count")
            _add(f.latency, base, core.latency_sum, "_sum")
            _add(f.restart_protection, base, 1.0 if stats.restart_protection else 0.0)
            _add(f.notices, base, stats.release_notices, "_total")
            _add(f.wakeups, base, stats.follower_wakeups, "_total")
            if stats.fencing_token is not None:
                _add(f.fencing_token, base, stats.fencing_token)
        for sighting in _metrics.observed():
            leader = sighting.leader
            named = {"name": sighting.name}
            if leader is None:
                _add(f.observed_leader, {**named, "leader_id": ""}, 0.0)
            else:
                _add(f.observed_leader, {**named, "leader_id": leader.instance_id}, 1.0)
                _add(f.observed_token, named, leader.fencing_token)
            _add(f.observed_changes, named, sighting.changes, "_total")
        return list(f)


class _Labels:
    """The label dicts of one election's samples, shared by every scrape (they are only read)."""

    __slots__ = ("_extra", "base")

    def __init__(self, campaign: Campaign) -> None:
        self.base = {"name": campaign.config.name, "instance_id": campaign.instance_id}
        self._extra: dict[tuple[str, str], dict[str, str]] = {}

    def extra(self, label: str, value: str) -> dict[str, str]:
        """The base labels and ``label=value``."""
        key = (label, value)
        labels = self._extra.get(key)
        if labels is None:
            labels = self._extra[key] = {**self.base, label: value}
        return labels


def _add(family: Metric, labels: dict[str, str], value: float, suffix: str = "") -> None:
    # What add_metric does, without zipping label names each time: a scrape of a thousand
    # elections adds some thirty-five thousand samples.
    family.samples.append(Sample(family.name + suffix, labels, value))
