"""Fixtures of the election tests: a :class:`FakeClock`, a :class:`MemoryServer` on it, and
elections on both, so that a test of timing (lease expiry, failover, renewals, hold-backs) waits
for no real time.

Time moves only when the test moves it: ``await clock.advance(seconds)``, or
``await clock.advance_until(condition, limit=fake_seconds)``, which jumps from timer to timer and
returns the fake seconds it took. ``await drive(awaitable, limit=...)`` awaits something that
needs time to pass (``wait_until_leader()``, a ``stop()`` against a hanging server) while the
clock moves. Timings are realistic (the library's defaults, 10 s / 3 s / 2 s): fake time costs
nothing.

Nothing waits for real time. The clock only reads it, to fail a test whose code under test never
stops running at one fake instant (a livelock: say, a term that ends and starts again at once,
forever) instead of hanging it; a real-time test would have failed by its own timeout there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pytest

from leaderelection import ElectionConfig, LeaderElection
from leaderelection.testing import FakeClock, MemoryServer

T = TypeVar("T")

_TEARDOWN_LIMIT = 300.0  # fake seconds; a stop() needs a few call deadlines at most
_REAL_BUDGET = 10.0  # real seconds a test's timers may take to fire; the tests need milliseconds


class GuardedClock(FakeClock):
    """A :class:`FakeClock` whose timers fail the test once it has run ``budget`` real seconds.

    ``advance`` fires timers one after another, letting woken tasks run in between; code that
    keeps waking itself without waiting (a livelock at one fake instant) would have it fire
    stale timers forever, and pytest-timeout's exception lands in whichever task happens to
    run, so it cannot stop that. The guard raises in the test's own task, from ``advance``.
    It trips once: the teardown can then stop the elections.
    """

    def __init__(self, budget: float = _REAL_BUDGET) -> None:
        super().__init__()
        self._real_deadline = time.monotonic() + budget
        self._budget = budget

    def call_at(self, when: float, callback: Callable[[], object]) -> Any:
        def guarded() -> object:
            if time.monotonic() > self._real_deadline:
                self._real_deadline = float("inf")
                raise RuntimeError(
                    f"the test ran for {self._budget} s of real time without finishing at fake "
                    f"time {self.now():.3f}: the code under test never stops running (livelock?)"
                )
            return callback()

        return super().call_at(when, guarded)


class MakeElection(Protocol):
    """``make_election(config, **kwargs)``: a new election on the test's clock and server."""

    def __call__(self, config: ElectionConfig, **kwargs: Any) -> LeaderElection: ...


class Drive(Protocol):
    """``await drive(awaitable, limit=fake_seconds)``: its result, the clock moving meanwhile."""

    async def __call__(self, awaitable: Awaitable[T], *, limit: float) -> T: ...


@pytest.fixture
def clock() -> FakeClock:
    """The clock of every election, store and server of the test."""
    return GuardedClock()


@pytest.fixture
def server(clock: FakeClock) -> MemoryServer:
    """One in-memory Redis stand-in, up for an hour (restart protection does not hold back)."""
    return MemoryServer(clock)


@pytest.fixture
def config(name: str) -> ElectionConfig:
    """A fresh election with the library's default timings: a 10 s lease renewed every 3 s,
    renew_deadline 6.667 s, retry_interval (and resign's hold-back) 2 s, call deadline 3 s."""
    return ElectionConfig(name=name)


async def _drive(clock: FakeClock, awaitable: Awaitable[T], limit: float) -> T:
    task = asyncio.ensure_future(awaitable)
    try:
        await clock.advance_until(task.done, limit=limit)
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return await task


@pytest.fixture
def drive(clock: FakeClock) -> Drive:
    """Await something while the fake clock moves from timer to timer, as real time would
    pass; ``TimeoutError`` when it is not done within ``limit`` fake seconds (or nothing is
    left on the clock to wait for)."""

    async def drive(awaitable: Awaitable[T], *, limit: float) -> T:
        return await _drive(clock, awaitable, limit)

    return drive


@pytest.fixture
async def make_election(clock: FakeClock, server: MemoryServer) -> AsyncIterator[MakeElection]:
    """Factory of elections on the test's clock and memory server; every one is stopped at
    teardown (the clock moving, so that a stop against a faulty server ends by its deadlines).
    """
    elections: list[LeaderElection] = []

    def make(config: ElectionConfig, **kwargs: Any) -> LeaderElection:
        election = LeaderElection(None, config, clock=clock, store=server.store(config), **kwargs)
        elections.append(election)
        return election

    yield make
    for election in reversed(elections):
        await _drive(clock, election.stop(), _TEARDOWN_LIMIT)
