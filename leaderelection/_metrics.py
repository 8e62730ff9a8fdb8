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
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ._campaign import Campaign
    from ._core import LossReason, Term
    from ._info import LeaderInfo

__all__ = [
    "Listener",
    "Sighting",
    "View",
    "add_listener",
    "close_sighting",
    "elections",
    "observed",
    "open_sighting",
    "register_election",
    "remove_listener",
    "unregister_election",
    "watching",
]

logger = logging.getLogger("leaderelection")

_lock = threading.Lock()
_elections: weakref.WeakSet[Campaign] = weakref.WeakSet()


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


@dataclass(frozen=True, slots=True)
class View:
    """Who leads an election, as this process's observers saw it last."""

    name: str
    leader: LeaderInfo | None
    changes: int  # changes of leader seen (the first reading is not one)


class Sighting:
    """What the open observers of one election name in this process saw, shared by them.

    Readings are ordered by fencing token, so that one that comes late (a read sent before a
    change and answered after another observer saw it) never moves the view back: a leader
    with token T is ``(T, 0)``, "no leader" after it ``(T, 1)``. A change is counted once per
    process, whichever observer or iteration saw it first. The view is exported while a
    ``changes()`` iteration keeps it current, or for one lease after a reading.
    """

    __slots__ = ("_order", "fresh_for", "name", "observers", "read_at", "view", "watching")

    def __init__(self, name: str) -> None:
        self.name = name
        self.observers = 0  # open LeaderObservers of this name
        self.watching = 0  # changes() iterations running
        self.fresh_for = 0.0  # seconds a reading stays current without an iteration: lock_ttl
        self.read_at = -math.inf  # monotonic time of the last reading
        self.view: View | None = None  # replaced whole, so a scrape never sees half of one
        self._order = (-1, 1)

    def saw(self, leader: LeaderInfo | None, previous: LeaderInfo | None, now: float) -> None:
        """A reading: ``leader`` leads (None: no one), and ``previous`` led before, if known."""
        with _lock:
            self.read_at = now
            if leader is not None:
                order = (leader.fencing_token, 0)
            else:
                known = previous.fencing_token if previous is not None else self._order[0]
                order = (max(known, 0), 1)
            view = self.view
            if view is not None and order <= self._order:
                return  # the same state, or an older one
            self._order = order
            changes = 0 if view is None else view.changes + 1
            self.view = View(self.name, leader, changes)

    def current(self, now: float) -> View | None:
        """The view to export, or None when there is none or it is stale."""
        if self.watching or now - self.read_at <= self.fresh_for:
            return self.view
        return None


_sightings: dict[str, Sighting] = {}


def open_sighting(name: str, fresh_for: float) -> Sighting:
    """An observer of election ``name`` opened: the sighting it shares with the others."""
    with _lock:
        sighting = _sightings.get(name)
        if sighting is None:
            sighting = _sightings[name] = Sighting(name)
        sighting.observers += 1
        sighting.fresh_for = max(sighting.fresh_for, fresh_for)
        return sighting


def close_sighting(sighting: Sighting) -> None:
    """An observer closed (or was collected): the last one of a name ends its sighting."""
    with _lock:
        sighting.observers -= 1
        if sighting.observers <= 0 and _sightings.get(sighting.name) is sighting:
            del _sightings[sighting.name]


def watching(sighting: Sighting, delta: int) -> None:
    """A ``changes()`` iteration started (1) or ended (-1)."""
    with _lock:
        sighting.watching += delta


def observed(now: float | None = None) -> list[View]:
    """Who leads each observed election, as the observers of this process saw it last: one view
    per election name, while current (see :class:`Sighting`)."""
    now = time.monotonic() if now is None else now
    with _lock:
        sightings = list(_sightings.values())
    return [view for s in sightings if (view := s.current(now)) is not None]
