"""Waiting on conditions that have no event of their own (server state, counters).

Tests wait on events where the library offers one (``leader_event``, ``wait_until_leader``). For
anything else they use :func:`eventually`: it re-checks the condition every few milliseconds and
fails with ``TimeoutError`` at a deadline, so a test never passes by the luck of a sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], object], *, timeout: float = 5.0) -> None:
    """Return as soon as ``predicate()`` is true; raise TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - there is no event, only the condition
            await asyncio.sleep(0.002)
