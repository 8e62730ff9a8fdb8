"""An event log that tests can wait on: every append wakes the waiters, so a test waits for what
it checks instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any


class Recorder:
    """What callbacks and leader tasks did, in order, and the errors reported to ``on_error``."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []
        self._changed = asyncio.Event()

    def add(self, *event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    def on_error(self, exc: BaseException, context: Mapping[str, Any]) -> None:
        self.errors.append((exc, dict(context)))
        self._changed.set()

    def names(self) -> list[str]:
        return [event[0] for event in self.events]

    def count(self, name: str) -> int:
        return self.names().count(name)

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every event."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
