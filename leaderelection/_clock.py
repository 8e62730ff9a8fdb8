"""The clock an election reads and waits through: monotonic time, waits that an event can cut
short, and call deadlines.

The election never reads ``time``, calls ``asyncio.sleep`` or sets an ``asyncio.timeout`` of its
own: it asks its clock, so that tests can substitute :class:`FakeClock`, which they move by hand,
and an election test waits for no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol

from ._aio import Waitable

__all__ = ["Clock", "FakeClock", "MonotonicClock"]


class Clock(Protocol):
    """Monotonic time in seconds, waits until a point of it, and deadlines for calls."""

    def now(self) -> float:
        """The current monotonic time in seconds."""
        ...

    async def wait_until(self, deadline: float, wake: Waitable | None = None) -> bool:
        """Wait until ``deadline`` or until ``wake`` is set, whichever comes first.

        Returns:
            True when ``wake`` was set (or already set), False when the deadline came.
        """
        ...

    def timeout(self, delay: float) -> contextlib.AbstractAsyncContextManager[None]:
        """An ``async with`` block that ``delay`` seconds from now raises ``TimeoutError``."""
        ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` (the event loop's own clock on every platform)."""

    __slots__ = ()

    def now(self) -> float:
        """The current monotonic time in seconds."""
        return time.monotonic()

    async def wait_until(self, deadline: float, wake: Waitable | None = None) -> bool:
        """Wait until ``deadline`` or until ``wake`` is set, whichever comes first."""
        if wake is not None and wake.is_set():
            return True
        delay = deadline - time.monotonic()
        if math.isinf(delay) and wake is not None:
            await wake.wait()
            return True
        if wake is None:
            await asyncio.sleep(max(delay, 0.0))
            return False
        if delay <= 0:
            return False
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            return False
        return True

    def timeout(self, delay: float) -> contextlib.AbstractAsyncContextManager[None]:
        """``asyncio.timeout(delay)``."""
        return _asyncio_timeout(delay)


@contextlib.asynccontextmanager
async def _asyncio_timeout(delay: float) -> AsyncIterator[None]:
    async with asyncio.timeout(None if math.isinf(delay) else max(delay, 0.0)):
        yield


class FakeClock:
    """A clock that stands still until the test moves it (trio's ``MockClock``, for asyncio).

    Waits and deadlines taken through it fire when :meth:`advance` (or :meth:`advance_until`)
    passes their time, in order, and the tasks they wake run before time moves on. Nothing
    waits for real time::

        clock = FakeClock()
        server = MemoryServer(clock)
        election = LeaderElection(None, config, clock=clock, store=server.store(config))
        await election.start()
        await clock.advance(config.lock_ttl.total_seconds())

    Args:
        start: The reading of :meth:`now` to begin with.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    async def wait_until(self, deadline: float, wake: Waitable | None = None) -> bool:
        """Wait until the clock reaches ``deadline`` or until ``wake`` is set."""
        if wake is not None and wake.is_set():
            return True
        if deadline <= self._now:
            return False
        fired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def fire() -> None:
            if not fired.done():
                fired.set_result(None)

        timer = self.call_at(deadline, fire)
        try:
            if wake is None:
                await fired
                return False
            waker: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
            pending: list[asyncio.Future[Any]] = [fired, waker]
            try:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waker.cancel()
                fired.cancel()
            return wake.is_set()
        finally:
            timer.cancel()  # a wait that ended otherwise leaves no timer behind

    def timeout(self, delay: float) -> contextlib.AbstractAsyncContextManager[None]:
        """A block that raises ``TimeoutError`` once the clock passed ``delay`` from now."""
        return self._timeout(self._now + delay)

    @contextlib.asynccontextmanager
    async def _timeout(self, deadline: float) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        inside = True

        def expire() -> None:
            if inside and not scope.expired():
                scope.reschedule(loop.time())  # expires on the loop's next turn

        async with asyncio.timeout(None) as scope:
            timer = None
            if deadline <= self._now:
                scope.reschedule(loop.time())
            elif not math.isinf(deadline):
                timer = self.call_at(deadline, expire)
            try:
                yield
            finally:
                inside = False
                if timer is not None:
                    timer.cancel()

    def call_at(self, when: float, callback: Callable[[], object]) -> _Timer:
        """Call ``callback()`` once the clock reaches ``when``; returns a cancellable handle."""
        timer = _Timer(when, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def next_deadline(self) -> float | None:
        """The earliest time a live wait or deadline is set for, or None."""
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0].when if self._timers else None

    def jump(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward at once, firing no timer and running no task: what
        an event loop blocked for ``seconds`` finds when it runs again. The timers that fell due
        fire, in order, at the next :meth:`advance` (``advance(0)`` is enough)."""
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self._now += seconds

    async def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, firing every timer due on the way in order and
        letting the tasks they wake run before the clock moves on."""
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        end = self._now + seconds
        await settle()
        at_this_instant = 0
        while (due := self.next_deadline()) is not None and due <= end:
            timer = heapq.heappop(self._timers)
            at_this_instant = at_this_instant + 1 if timer.when <= self._now else 0
            if at_this_instant > _LIVELOCK:
                raise RuntimeError(
                    f"{_LIVELOCK} timers fired at fake time {self._now:.6f} without the clock "
                    "moving on: the code under test keeps waking itself (a livelock)"
                )
            self._now = max(self._now, timer.when)
            timer.callback()
            await settle()
        self._now = end
        await settle()

    async def advance_until(self, condition: Callable[[], object], *, limit: float) -> float:
        """Jump from timer to timer until ``condition()`` holds; return the fake time it took.

        Raises:
            TimeoutError: ``condition()`` did not hold within ``limit`` fake seconds.
        """
        start = self._now
        await settle()
        while not condition():
            due = self.next_deadline()
            if due is None or due > start + limit:
                raise TimeoutError(f"the condition did not hold within {limit} fake seconds")
            await self.advance(max(due - self._now, 0.0))
        return self._now - start


_LIVELOCK: Final = 100_000  # timers fired at one fake instant before advance() gives up


class _Timer:
    """A callback due at a fake time; ordered by time, then by the order they were set."""

    __slots__ = ("callback", "cancelled", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], object]) -> None:
        self.when, self.seq, self.callback = when, seq, callback
        self.cancelled = False

    def __lt__(self, other: _Timer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        """Never fire; the clock drops it when it comes up."""
        self.cancelled = True


async def settle(rounds: int = 200) -> None:
    """Let every task that can run, run, until the event loop has nothing ready."""
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)
        if ready is not None and not ready:
            # Twice in a row: a task woken by the last one has had its turn too.
            await asyncio.sleep(0)
            if not getattr(loop, "_ready", ()):
                return
