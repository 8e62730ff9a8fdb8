"""What the exporters read: the elections and observers alive in this process, and the hooks
that tell them about terms as they begin and end.

The Prometheus collector (:mod:`leaderelection.prometheus`) reads the registered elections'
counters when it is scraped, and nothing else: registering costs one set insertion per
``start()`` and one removal per teardown, and between scrapes there is no cost at all. The
OpenTelemetry instrumentation (:mod:`leaderelection.opentelemetry`) also listens to events
(term start and end, for its spans, and renewals, for its histogram) through
:data:`listeners`, which is empty unless it is installed.

Scrapes may come from another thread (``prometheus_client``'s HTTP server), so the registries
are guarded by a lock and handed out as copies; the counters they read are plain ints in dicts
whose keys never change, which another thread may copy at any time.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._campaign import Campaign
    from ._core import LossReason, Term
    from ._info import LeaderInfo

__all__ = [
    "Listener",
    "Sighting",
    "add_listener",
    "elections",
    "observed",
    "register_election",
    "register_sighting",
    "remove_listener",
    "unregister_election",
]

logger = logging.getLogger("leaderelection")

_lock = threading.Lock()
_elections: weakref.WeakSet[Campaign] = weakref.WeakSet()
_sightings: weakref.WeakSet[Sighting] = weakref.WeakSet()


class Listener(Protocol):
    """Told about events as they happen, on the election's event loop. Must not block."""

    def term_began(self, campaign: Campaign, term: Term) -> None: ...

    def term_ended(self, campaign: Campaign, term: Term, reason: LossReason) -> None: ...

    def renewed(self, campaign: Campaign, latency: float) -> None: ...


# Changed as a whole under the lock; the elections test it for emptiness before each event.
listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    with _lock:
        if listener not in listeners:
            listeners[:] = [*listeners, listener]


def remove_listener(listener: Listener) -> None:
    with _lock:
        listeners[:] = [x for x in listeners if x is not listener]


def notify(method: str, *args: object) -> None:
    """Call ``method`` on every listener; a failing listener is logged and never affects the
    election."""
    for listener in tuple(listeners):
        try:
            getattr(listener, method)(*args)
        except Exception:
            logger.warning("A metrics listener failed in %s", method, exc_info=True)


def register_election(campaign: Campaign) -> None:
    """A campaign started: the exporters see it until :func:`unregister_election`."""
    with _lock:
        _elections.add(campaign)


def unregister_election(campaign: Campaign) -> None:
    with _lock:
        _elections.discard(campaign)


def elections() -> list[Campaign]:
    """The campaigns started and not yet stopped in this process."""
    with _lock:
        return list(_elections)


@dataclass(eq=False)
class Sighting:
    """Who leads an election, as an observer of this process last saw it."""

    name: str
    seen: bool = False  # False until the observer read the leader once
    leader: LeaderInfo | None = None
    at: datetime | None = None
    changes: int = 0  # changes of leader seen (the initial state is not one)

    def saw(self, leader: LeaderInfo | None, at: datetime, *, change: bool) -> None:
        self.seen, self.leader, self.at = True, leader, at
        if change:
            self.changes += 1


def register_sighting(sighting: Sighting) -> None:
    """An observer's view: exported while the observer is open (and alive)."""
    with _lock:
        _sightings.add(sighting)


def unregister_sighting(sighting: Sighting) -> None:
    with _lock:
        _sightings.discard(sighting)


def observed() -> list[Sighting]:
    """The observers' views that saw something, one per election name: who leads as the most
    recent view saw it, and the most changes any of them saw (so that the count only grows)."""
    with _lock:
        views = [s for s in _sightings if s.seen]
    merged: dict[str, Sighting] = {}
    for view in views:
        kept = merged.get(view.name)
        if kept is None:
            merged[view.name] = Sighting(view.name, True, view.leader, view.at, view.changes)
            continue
        if view.at is not None and kept.at is not None and view.at > kept.at:
            kept.leader, kept.at = view.leader, view.at
        kept.changes = max(kept.changes, view.changes)
    return list(merged.values())
