"""Small asyncio helpers shared by the runtime: a lazy event, and bounded or combined waits."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

if TYPE_CHECKING:
    from ._clock import Clock

__all__ = [
    "Flag",
    "Waitable",
    "being_cancelled",
    "close_client",
    "wait_bounded",
    "wait_first",
    "wait_shielded",
]


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


def being_cancelled() -> bool:
    """Whether the current task has a cancellation pending (ours to honour, not to report)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def wait_first(*events: Waitable) -> None:
    """Wait until any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def wait_bounded(
    awaitable: Waitable | asyncio.Future[Any], timeout: float, clock: Clock
) -> bool:
    """Wait up to ``timeout`` seconds of ``clock`` for an event or a future; True if it came in
    time. A future is never cancelled by this wait."""
    if awaitable.done() if isinstance(awaitable, asyncio.Future) else awaitable.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        async with clock.timeout(timeout):
            if isinstance(awaitable, asyncio.Future):
                await asyncio.wait({awaitable})
            else:
                await awaitable.wait()
    return awaitable.done() if isinstance(awaitable, asyncio.Future) else awaitable.is_set()


async def wait_shielded(awaitable: Waitable | Awaitable[Any], timeout: float, clock: Clock) -> None:
    """Wait up to ``timeout`` seconds of ``clock`` for an event or future even if the caller is
    cancelled meanwhile; a cancellation that arrived is raised afterwards. A failed future's
    exception is retrieved (whoever awaits it reports it), never raised here."""
    is_flag = not isinstance(awaitable, Awaitable)
    waiter: asyncio.Future[Any] = (
        asyncio.ensure_future(awaitable.wait())  # type: ignore[union-attr]
        if is_flag
        else asyncio.ensure_future(awaitable)  # type: ignore[arg-type]
    )
    done = Flag()
    waiter.add_done_callback(lambda _: done.set())
    deadline = clock.now() + timeout
    cancelled: BaseException | None = None
    # The shield holds off an anyio scope's cancellation, which is delivered again at every await.
    with anyio.CancelScope(shield=True):
        while not waiter.done() and clock.now() < deadline:
            try:
                await clock.wait_until(deadline, done)
            except asyncio.CancelledError as exc:
                cancelled = exc  # keep waiting; raised below
    if is_flag:
        waiter.cancel()
    elif waiter.done() and not waiter.cancelled():
        waiter.exception()
    if cancelled is not None:
        raise cancelled


async def close_client(client: Any) -> None:
    """Close a redis-py asyncio client or pub/sub: ``aclose()`` where redis-py has it (5.0.1+),
    else ``close()``; nothing for an object with neither."""
    closer = getattr(client, "aclose", None) or getattr(client, "close", None)
    if closer is not None:
        result = closer()
        if inspect.isawaitable(result):
            await result
