"""What many tests share: waiting on a condition with a deadline, and the elections' timings.

Tests wait on events where the library offers one (``leader_event``, ``wait_until_leader``). For
anything else (server state, counters, a thread's progress) they use :func:`eventually`, or
:func:`eventually_sync` from plain threads: it re-checks the condition every few milliseconds and
raises ``TimeoutError`` at a deadline, so a test never passes by the luck of a sleep.

The timings are :class:`~leaderelection.ElectionConfig` fields, named for why a test needs them:
``ElectionConfig(name=name, **CROWDED)``, or :func:`fast_config` for the common case. The fresh
election name comes from the ``name`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from leaderelection import ElectionConfig

__all__ = ["CROWDED", "FAST", "eventually", "eventually_sync", "fast_config"]

FAST: Final[Mapping[str, str]] = MappingProxyType(
    {"lock_ttl": "1s", "heartbeat_interval": "100ms", "retry_interval": "200ms"}
)
"""A 1 s lease renewed every 100 ms: a lease left to expire is taken over within about a second.

Each Redis call may take 100 ms (the call deadline is ``min(heartbeat, renew_deadline -
heartbeat)``), plenty on loopback or fakeredis for an election on the test's own event loop. A
fresh server holds a 1 s lease back until its uptime exceeds 2 s (restart protection).
"""

CROWDED: Final[Mapping[str, str]] = MappingProxyType(
    {"lock_ttl": "2s", "heartbeat_interval": "500ms", "retry_interval": "200ms"}
)
"""A 2 s lease renewed every 500 ms: each Redis call may take 500 ms instead of FAST's 100 ms.

For elections whose event loop shares a busy process: the sync facade's loop thread competes for
the GIL with the test's own threads, and the FastAPI tests run the app, its lifespan and the HTTP
client on the election's loop. A lease of 2 s still tells a release (milliseconds) from an expiry
(1.5 s or more after the last renewal).
"""


def fast_config(name: str, **overrides: Any) -> ElectionConfig:
    """An election called ``name`` with the :data:`FAST` timings, and any field overridden."""
    return ElectionConfig(**{"name": name, **FAST, **overrides})


async def eventually(
    check: Callable[[], object] | Callable[[], Awaitable[object]], *, timeout: float = 5.0
) -> None:
    """Return as soon as ``check()`` is true; raise ``TimeoutError`` after ``timeout`` seconds.

    ``check`` may be a plain function or a coroutine function (its result is awaited, e.g. a read
    from Redis). The deadline also bounds a check that hangs.
    """
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.002)  # no event to wait on: poll the condition
    except TimeoutError:
        if not deadline.expired():
            raise  # raised by the check itself
        raise TimeoutError(f"{_describe(check)} was not true within {timeout} s") from None


def eventually_sync(check: Callable[[], object], *, timeout: float = 5.0) -> None:
    """The blocking twin of :func:`eventually`, for threads (no event loop needed)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{_describe(check)} was not true within {timeout} s")
        time.sleep(0.005)


def _describe(check: Callable[..., object]) -> str:
    return getattr(check, "__qualname__", None) or repr(check)
