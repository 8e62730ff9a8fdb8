"""The clock an election sleeps through: monotonic time and waits that a wake-up event can cut.

The election never reads ``time`` or calls ``asyncio.sleep`` directly; it asks its clock, so tests
can substitute a clock they advance by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "Flag", "MonotonicClock", "Waitable"]


class Waitable(Protocol):
    """What a wait can be cut by: an ``asyncio.Event`` or a :class:`Flag`."""

    def is_set(self) -> bool:
        """Whether it is set."""
        ...

    async def wait(self) -> object:
        """Wait until it is set."""
        ...


class Flag:
    """An ``asyncio.Event`` that allocates nothing until someone waits on it.

    An idle candidate holds several of these; asyncio's Event allocates a deque for its waiters
    up front, which a thousand idle candidates in one process would pay for many times over.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._value

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        """Clear the flag."""
        self._value = False

    async def wait(self) -> bool:
        """Wait until the flag is set; return True."""
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class Clock(Protocol):
    """Monotonic time in seconds, and a way to wait until a point of it."""

    def now(self) -> float:
        """The current monotonic time in seconds."""
        ...

    async def wait_until(self, deadline: float, wake: Waitable | None = None) -> bool:
        """Wait until ``deadline`` or until ``wake`` is set, whichever comes first.

        Returns:
            True when ``wake`` was set (or already set), False when the deadline came.
        """
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
