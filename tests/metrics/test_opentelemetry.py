"""The OpenTelemetry instrumentation, read back through the SDK's in-memory reader and exporter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from leaderelection import ElectionConfig
from leaderelection import _metrics as registry
from leaderelection.opentelemetry import LeaderElectionInstrumentor
from leaderelection.testing import FakeClock
from tests.election.conftest import Drive, MakeElection

Points = dict[str, list[tuple[dict[str, Any], Any]]]


class Telemetry:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        tracer_provider = self.tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.instrumentor = LeaderElectionInstrumentor()
        self.instrumentor.instrument(
            meter_provider=self.meter_provider, tracer_provider=tracer_provider
        )

    def points(self, instance_id: str) -> Points:
        """Every data point of one candidate, by instrument name."""
        data = self.reader.get_metrics_data()
        out: Points = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "leaderelection"
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        if attributes.get("leaderelection.instance_id") == instance_id:
                            out.setdefault(metric.name, []).append((attributes, point))
        return out

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    yield telemetry
    telemetry.instrumentor.uninstrument()
    telemetry.meter_provider.shutdown()


def only(points: Points, name: str) -> Any:
    (point,) = points[name]
    return point[1].value


async def test_instruments_and_spans_follow_a_handoff(
    telemetry: Telemetry,
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    drive: Drive,
) -> None:
    a, b = make_election(config), make_election(config)
    tracer = telemetry.tracer_provider.get_tracer("the-app")
    with tracer.start_as_current_span("the app's start-up"):  # the runner inherits this context
        await a.start()
        await b.start()
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)
    pa, pb = telemetry.points(a.instance_id), telemetry.points(b.instance_id)
    assert only(pa, "leaderelection.leader") == 1
    assert only(pb, "leaderelection.leader") == 0
    assert only(pa, "leaderelection.terms_won") == 1
    assert only(pa, "leaderelection.fencing_token") == a.fencing_token
    assert "leaderelection.fencing_token" not in pb
    assert only(pa, "leaderelection.renewals") == 1
    (histogram,) = pa["leaderelection.renew.duration"]
    assert histogram[1].count == 1
    assert histogram[0] == {
        "leaderelection.name": config.name,
        "leaderelection.instance_id": a.instance_id,
    }
    held = {
        attributes["leaderelection.acquire.result"]: point.value
        for attributes, point in pb["leaderelection.acquire.attempts"]
    }
    assert held["held"] == 1
    (state,) = pa["leaderelection.state"]
    assert state[0]["leaderelection.state"] == "leader"
    (start,) = telemetry.finished("leaderelection.term.start")
    assert start.parent is None  # a root span, whatever was current when the election started
    assert start.attributes is not None
    assert start.attributes["leaderelection.instance_id"] == a.instance_id
    assert start.attributes["leaderelection.fencing_token"] == a.fencing_token
    assert telemetry.finished("leaderelection.term") == []  # the term goes on

    token = a.fencing_token
    with tracer.start_as_current_span("a request that resigns"):
        await a.resign()
    await drive(b.wait_until_leader(), limit=1)
    (term,) = telemetry.finished("leaderelection.term")
    assert term.parent is None
    assert term.attributes is not None
    assert term.attributes["leaderelection.loss_reason"] == "resigned"
    assert term.attributes["leaderelection.fencing_token"] == token
    assert term.start_time == start.start_time
    assert term.end_time is not None and term.start_time is not None
    assert term.end_time >= term.start_time
    assert [link.context for link in term.links] == [start.context]
    starts = telemetry.finished("leaderelection.term.start")
    assert all(span.parent is None for span in starts)
    assert [s.attributes["leaderelection.instance_id"] for s in starts if s.attributes] == [
        a.instance_id,
        b.instance_id,
    ]
    pa, pb = telemetry.points(a.instance_id), telemetry.points(b.instance_id)
    assert only(pa, "leaderelection.leader") == 0
    assert only(pb, "leaderelection.leader") == 1
    lost = {
        attributes["leaderelection.loss_reason"]: point.value
        for attributes, point in pa["leaderelection.leadership_lost"]
    }
    assert lost["resigned"] == 1
    assert only(pb, "leaderelection.follower.wakeups") == 1

    # Uninstrumented: no more spans, no more observations.
    telemetry.instrumentor.uninstrument()
    assert not telemetry.instrumentor.is_instrumented
    await clock.advance(config.retry_interval.total_seconds() + 0.1)  # a's hold-back is over
    await b.resign()
    await drive(a.wait_until_leader(), limit=5)
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)
    assert a.statistics().renewals == 2
    assert len(telemetry.finished("leaderelection.term.start")) == 2
    # Only the histogram's earlier point is left (cumulative), and it did not grow.
    pa = telemetry.points(a.instance_id)
    assert list(pa) == ["leaderelection.renew.duration"]
    assert pa["leaderelection.renew.duration"][0][1].count == 1


async def test_a_failing_listener_never_affects_the_election(
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def term_began(self, *args: object) -> None:
            raise RuntimeError("broken exporter")

        term_ended = renewed = term_began

    broken = Broken()
    registry.add_listener(broken)
    try:
        with caplog.at_level(logging.WARNING, "leaderelection"):
            a = make_election(config)
            await a.start()
            await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)
            assert a.is_leader
            assert a.statistics().renewals == 1
            await a.resign()
            assert a.statistics().leadership_lost["resigned"] == 1
    finally:
        registry.remove_listener(broken)
    failures = [r for r in caplog.records if r.getMessage().startswith("A metrics listener")]
    assert {r.getMessage() for r in failures} == {
        "A metrics listener failed in term_began",
        "A metrics listener failed in renewed",
        "A metrics listener failed in term_ended",
    }


async def test_instrumenting_again_works_and_twice_counts_once(
    telemetry: Telemetry, make_election: MakeElection, config: ElectionConfig, clock: FakeClock
) -> None:
    # Off and on again on the same providers: the instruments are the provider's, and observe.
    telemetry.instrumentor.uninstrument()
    telemetry.instrumentor.instrument(
        meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider
    )
    # A second instrumentor while one is in effect does nothing: nothing is counted twice.
    second = LeaderElectionInstrumentor()
    assert second.is_instrumented
    second.instrument(
        meter_provider=telemetry.meter_provider, tracer_provider=telemetry.tracer_provider
    )
    a = make_election(config)
    await a.start()
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)
    points = telemetry.points(a.instance_id)
    assert only(points, "leaderelection.leader") == 1
    (histogram,) = points["leaderelection.renew.duration"]
    assert histogram[1].count == a.statistics().renewals == 1
    assert len(telemetry.finished("leaderelection.term.start")) == 1


async def test_a_renewal_answered_after_the_term_ended_is_not_recorded(
    telemetry: Telemetry,
    make_election: MakeElection,
    config: ElectionConfig,
    clock: FakeClock,
) -> None:
    """An answer that comes after the local lease ran out extends nothing; neither histogram
    (Prometheus' in the core, OpenTelemetry's) counts it."""
    a = make_election(config)
    await a.start()
    store = a._campaign.store
    assert store is not None
    renew = store.renew
    late = clock.now() + config.renew_deadline.total_seconds() + 1

    async def renew_late(*args: Any, **kwargs: Any) -> bool:
        store.renew = renew  # type: ignore[method-assign]  # only the first one is late
        await clock.wait_until(late)  # past the lease's end: the watchdog ends the term first
        return await renew(*args, **kwargs)

    store.renew = renew_late  # type: ignore[method-assign]
    await clock.advance_until(lambda: clock.now() >= late, limit=20)
    await clock.advance(0.001)  # the late answer is handled (the next term's renewal is later)
    stats = a.statistics()
    assert stats.leadership_lost["renew_deadline"] == 1
    assert stats.renewals == 0
    assert sum(a._campaign.core.latency_counts) == 0
    assert "leaderelection.renew.duration" not in telemetry.points(a.instance_id)
