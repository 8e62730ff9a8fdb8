"""The clock an election sleeps through: monotonic time and waits that a wake-up event can cut.

The election never reads ``time`` or calls ``asyncio.sleep`` directly; it asks its clock, so tests
can substitute a clock they advance by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    """Monotonic time in seconds, and a way to wait until a point of it."""

    def now(self) -> float:
        """The current monotonic time in seconds."""
        ...

    async def wait_until(self, deadline: float, wake: asyncio.Event | None = None) -> bool:
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

    async def wait_until(self, deadline: float, wake: asyncio.Event | None = None) -> bool:
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
