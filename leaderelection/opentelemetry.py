"""OpenTelemetry metrics and spans of every election and observer in the process (extra ``otel``).

Install it once, at startup, after the OpenTelemetry SDK (if any) is configured::

    from leaderelection.opentelemetry import LeaderElectionInstrumentor

    LeaderElectionInstrumentor().instrument()  # the global meter and tracer providers

It needs only ``opentelemetry-api``: without an SDK every instrument and span is a no-op. The
figures are the Prometheus collector's (:mod:`leaderelection.prometheus`), named the
OpenTelemetry way (dotted names, units apart, no ``_total``):

* observable instruments, read from what the elections already know when the SDK collects:
  ``leaderelection.leader`` (1 while leading), ``leaderelection.state``,
  ``leaderelection.terms_won``, ``leaderelection.leadership_lost``,
  ``leaderelection.acquire.attempts``, ``leaderelection.renewals``,
  ``leaderelection.renew.failures``, ``leaderelection.store.errors``,
  ``leaderelection.lease.remaining``, ``leaderelection.renew.last_duration``,
  ``leaderelection.restart_protection.active``, ``leaderelection.release.notices``,
  ``leaderelection.follower.wakeups``, ``leaderelection.fencing_token`` and the observers'
  ``leaderelection.observed.leader``, ``leaderelection.observed.fencing_token``,
  ``leaderelection.observed.changes``;
* a histogram, recorded at each renewal: ``leaderelection.renew.duration`` (seconds);
* two spans per term, so that a trace shows when leadership moved: ``leaderelection.term.start``
  at the moment a term begins, and ``leaderelection.term``, covering the whole term, when it
  ends (with the reason), linked to the first.

Every data point carries ``leaderelection.name`` and ``leaderelection.instance_id`` (observers:
``leaderelection.name`` and ``leaderelection.leader_id``). ``docs/monitoring.md`` has the table.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without the extra
    raise ImportError(
        "leaderelection.opentelemetry needs opentelemetry-api, which the 'otel' extra "
        "installs: pip install 'leaderelection-redis[otel]'"
    ) from exc

from . import __version__, _metrics
from ._core import LATENCY_BUCKETS, ElectionStatistics, LossReason, Term

if TYPE_CHECKING:
    from ._campaign import Campaign

__all__ = ["LeaderElectionInstrumentor"]

_SCOPE = "leaderelection"
_ROOT = Context()  # an empty context: the spans it starts have no parent


class _State:
    """The instrumentation in effect (one per process), and the instruments made so far."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: _Listener | None = None
        self.instruments: dict[int, tuple[metrics.MeterProvider, _Instruments]] = {}


_state = _State()

Attributes = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Election:
    attributes: Attributes
    stats: ElectionStatistics


def _elections() -> Iterator[_Election]:
    """The live elections and their statistics now."""
    for campaign in _metrics.elections():
        stats = campaign.core.statistics(campaign.clock.now(), campaign.state)
        if stats.state != "stopped":
            yield _Election(_attributes(campaign), stats)


def _attributes(campaign: Campaign) -> Attributes:
    return {
        "leaderelection.name": campaign.config.name,
        "leaderelection.instance_id": campaign.instance_id,
    }


class LeaderElectionInstrumentor:
    """Exports the process's elections and observers through OpenTelemetry (module docstring).

    ``instrument()`` starts the instruments and the spans; ``uninstrument()`` stops both (the
    observable instruments then report nothing). There is one instrumentation per process, as
    with OpenTelemetry's own instrumentors: while one is in effect, ``instrument()`` (of any
    instance) does nothing, so nothing is ever counted twice.
    """

    @property
    def is_instrumented(self) -> bool:
        """Whether an instrumentation is in effect in this process."""
        return _state.active is not None

    def instrument(
        self,
        *,
        meter_provider: metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        """Start the instruments on ``meter_provider`` and the spans on ``tracer_provider``
        (default: the global providers, no-ops until an SDK is set)."""
        with _state.lock:
            if _state.active is not None:
                return
            provider = meter_provider or metrics.get_meter_provider()
            # A meter provider hands back the instruments it made before instead of new ones:
            # make them once per provider, and let their callbacks ask who is active.
            kept = _state.instruments.get(id(provider))
            if kept is None or kept[0] is not provider:
                kept = _state.instruments[id(provider)] = (provider, _Instruments(provider))
            tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
            _state.active = _Listener(kept[1], tracer)
            _metrics.add_listener(_state.active)

    def uninstrument(self) -> None:
        """Stop recording: no more spans, histogram points or observations."""
        with _state.lock:
            if _state.active is not None:
                _metrics.remove_listener(_state.active)
                _state.active = None


class _Instruments:
    """The instruments of one meter provider. Their callbacks observe only while an
    instrumentation on these instruments is in effect."""

    @property
    def live(self) -> bool:
        active = _state.active
        return active is not None and active.instruments is self

    def __init__(self, provider: metrics.MeterProvider) -> None:
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=provider)
        self.renew_duration = meter.create_histogram(
            "leaderelection.renew.duration",
            unit="s",
            description="Round trips of the successful renewals.",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        gauge, counter = meter.create_observable_gauge, meter.create_observable_counter

        def each(read: Callable[[ElectionStatistics], Iterable[tuple[float, Attributes]]]) -> Any:
            def callback(options: CallbackOptions) -> Iterator[Observation]:
                if not self.live:
                    return
                for election in _elections():
                    for value, extra in read(election.stats):
                        yield Observation(value, {**election.attributes, **extra})

            return [callback]

        def one(read: Callable[[ElectionStatistics], float | None]) -> Any:
            def values(stats: ElectionStatistics) -> Iterable[tuple[float, Attributes]]:
                value = read(stats)
                return () if value is None else ((value, {}),)

            return each(values)

        def by(label: str, read: Callable[[ElectionStatistics], Any]) -> Any:
            return each(lambda s: ((n, {label: key}) for key, n in read(s).items()))

        gauge(
            "leaderelection.leader",
            one(lambda s: 1 if s.is_leader else 0),
            unit="1",
            description="1 while this candidate leads the election, else 0.",
        )
        gauge(
            "leaderelection.state",
            each(lambda s: ((1, {"leaderelection.state": s.state}),)),
            unit="1",
            description="1 for the candidate's current state: follower, leader, held_back or "
            "stopping.",
        )
        counter(
            "leaderelection.terms_won",
            one(lambda s: s.terms_won),
            unit="{term}",
            description="Terms this candidate won.",
        )
        counter(
            "leaderelection.leadership_lost",
            by("leaderelection.loss_reason", lambda s: s.leadership_lost),
            unit="{term}",
            description="Terms that ended, by reason.",
        )
        counter(
            "leaderelection.acquire.attempts",
            by("leaderelection.acquire.result", lambda s: s.acquire_results),
            unit="{attempt}",
            description="Acquire attempts answered, by result.",
        )
        counter(
            "leaderelection.renewals",
            one(lambda s: s.renewals),
            unit="{renewal}",
            description="Successful renewals of the lease.",
        )
        counter(
            "leaderelection.renew.failures",
            one(lambda s: s.renew_failures),
            unit="{renewal}",
            description="Renewals that failed or timed out.",
        )
        counter(
            "leaderelection.store.errors",
            each(lambda s: ((n, {"error.type": k}) for k, n in s.store_errors_by_kind.items())),
            unit="{error}",
            description="Failed Redis calls (acquire, renew, release), by kind.",
        )
        gauge(
            "leaderelection.lease.remaining",
            one(lambda s: s.lease_remaining),
            unit="s",
            description="Seconds left on the leader's local lease; 0 when not leading.",
        )
        gauge(
            "leaderelection.renew.last_duration",
            one(lambda s: s.last_renew_latency),
            unit="s",
            description="Round trip of the last successful renewal.",
        )
        gauge(
            "leaderelection.restart_protection.active",
            one(lambda s: 1 if s.restart_protection else 0),
            unit="1",
            description="1 while restart protection holds elections back, else 0.",
        )
        counter(
            "leaderelection.release.notices",
            one(lambda s: s.release_notices),
            unit="{notice}",
            description="Releases announced on the channel that this candidate heard.",
        )
        counter(
            "leaderelection.follower.wakeups",
            one(lambda s: s.follower_wakeups),
            unit="{wakeup}",
            description="Release notices that moved this follower's next attempt earlier.",
        )
        gauge(
            "leaderelection.fencing_token",
            one(lambda s: s.fencing_token),
            unit="1",
            description="The fencing token of the current term (only while leading).",
        )

        def observed(
            read: Callable[[_metrics.View], Iterable[tuple[float, Attributes]]],
        ) -> Any:
            def callback(options: CallbackOptions) -> Iterator[Observation]:
                if not self.live:
                    return
                for sighting in _metrics.observed():
                    for value, extra in read(sighting):
                        yield Observation(value, {"leaderelection.name": sighting.name, **extra})

            return [callback]

        gauge(
            "leaderelection.observed.leader",
            observed(
                lambda s: (
                    (1 if s.leader is not None else 0, {"leaderelection.leader_id": _leader_id(s)}),
                )
            ),
            unit="1",
            description="1 with the leader's id as an observer saw it last, or 0 with an "
            "empty id when no one leads.",
        )
        gauge(
            "leaderelection.observed.fencing_token",
            observed(lambda s: ((s.leader.fencing_token, {}),) if s.leader is not None else ()),
            unit="1",
            description="The fencing token of the leader an observer saw last.",
        )
        counter(
            "leaderelection.observed.changes",
            observed(lambda s: ((s.changes, {}),)),
            unit="{change}",
            description="Changes of leader an observer saw.",
        )


class _Listener:
    """The instrumentation in effect: records renewals and the terms' spans (see
    ``_metrics.Listener``), on the elections' event loops."""

    def __init__(self, instruments: _Instruments, tracer: trace.Tracer) -> None:
        self.instruments = instruments
        self.tracer = tracer
        self.term_starts: weakref.WeakKeyDictionary[Campaign, tuple[int, trace.SpanContext]] = (
            weakref.WeakKeyDictionary()
        )

    def renewed(self, campaign: Campaign, latency: float) -> None:
        self.instruments.renew_duration.record(latency, _attributes(campaign))

    def term_began(self, campaign: Campaign, term: Term) -> None:
        started = time.time_ns()
        span = self.tracer.start_span(
            "leaderelection.term.start",
            context=_ROOT,  # a trace of its own, not a child of whatever span is current
            start_time=started,
            attributes=_term_attributes(campaign, term),
        )
        span.end(end_time=started)
        self.term_starts[campaign] = (started, span.get_span_context())

    def term_ended(self, campaign: Campaign, term: Term, reason: LossReason) -> None:
        started, context = self.term_starts.pop(campaign, (None, None))
        links = [trace.Link(context)] if context is not None and context.is_valid else []
        span = self.tracer.start_span(
            "leaderelection.term",
            context=_ROOT,
            start_time=started,
            links=links,
            attributes={
                **_term_attributes(campaign, term),
                "leaderelection.loss_reason": reason.value,
            },
        )
        span.end()


def _term_attributes(campaign: Campaign, term: Term) -> Attributes:
    return {
        **_attributes(campaign),
        "leaderelection.fencing_token": term.fencing_token,
        "leaderelection.term": term.number,
    }


def _leader_id(sighting: _metrics.View) -> str:
    return sighting.leader.instance_id if sighting.leader is not None else ""
