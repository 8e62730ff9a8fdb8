"""Isolated, ordered callback dispatch.

Callbacks run one at a time, in registration order, in the election's dispatcher task, never in
the heartbeat's: a slow async callback delays other callbacks, not renewals. An exception from a
callback is logged with its traceback and handed to the optional error handler; the remaining
callbacks still run and the election goes on (aiojobs' exception-handler model).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["Callback", "CallbackList", "ErrorHandler", "LeaderTask"]

logger = logging.getLogger("leaderelection")

Callback = Callable[[], Any]
"""A zero-argument callable, sync or async."""

LeaderTask = Callable[[], Awaitable[Any]]
"""An async function run for the length of every term (``while_leader``)."""

ErrorHandler = Callable[[BaseException, Mapping[str, Any]], Any]
"""Called as ``handler(exception, context)``; context has ``kind``, ``callback``, ``election``,
``instance_id`` and ``fencing_token``."""


class CallbackList:
    """Callbacks of one kind, called in registration order with per-callback isolation."""

    __slots__ = ("_callbacks", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._callbacks: list[Callable[..., Any]] = []

    def add(self, callback: Callable[..., Any]) -> None:
        """Register ``callback``; a non-callable raises TypeError at once."""
        if not callable(callback):
            raise TypeError(f"{self.kind} callback must be callable, got {callback!r}")
        self._callbacks.append(callback)

    async def run(self, context: Mapping[str, Any], on_error: ErrorHandler | None) -> None:
        """Call every callback in order; report and swallow each ``Exception``."""
        for callback in list(self._callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                report(exc, {**context, "kind": self.kind, "callback": callback}, on_error)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling() > 0:
                    raise  # the dispatcher itself is being cancelled
                # A stray CancelledError from awaiting something cancelled is the callback's own
                # failure: report it and go on with the next callback.
                report(exc, {**context, "kind": self.kind, "callback": callback}, on_error)


def report(exc: BaseException, context: Mapping[str, Any], on_error: ErrorHandler | None) -> None:
    """Log a callback's exception with its traceback and hand it to ``on_error``."""
    logger.error(
        "Callback %s (%s) raised %s",
        getattr(context.get("callback"), "__qualname__", context.get("callback")),
        context.get("kind"),
        type(exc).__name__,
        exc_info=exc,
        extra={k: context.get(k) for k in ("election", "instance_id", "fencing_token")},
    )
    if on_error is None:
        return
    try:
        result = on_error(exc, context)
        if inspect.isawaitable(result):
            # An async handler is closed rather than awaited: reporting must not block dispatch.
            close = getattr(result, "close", None)
            if close is not None:
                close()
            logger.error("The error handler must be a plain function, not async: %r", on_error)
    except Exception:
        logger.exception("The error handler %r raised", on_error)
