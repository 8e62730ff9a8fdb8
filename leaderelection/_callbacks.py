"""Isolated, ordered callbacks and the dispatcher that runs them.

Callbacks run one at a time, in registration order, in the election's dispatcher task, never in
the task that renews the lease: a slow async callback delays other callbacks, not renewals. An
exception from a callback is logged with its traceback and handed to the optional error handler;
the remaining callbacks still run and the election goes on (aiojobs' exception-handler model).

The dispatcher runs a term's lose callbacks only after its become callbacks finished and its
``while_leader`` tasks ended. User code that does not finish when asked is waited for at most a
grace period (one lease): the shutdown then logs it and goes on, so ``stop()`` stays bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from ._aio import Flag, being_cancelled, wait_bounded

if TYPE_CHECKING:
    from ._clock import Clock
    from ._term import TermRun

__all__ = [
    "Callback",
    "CallbackList",
    "Dispatcher",
    "ErrorHandler",
    "LeaderTask",
    "check_thread_function",
    "refuse_awaitable",
    "report",
]

logger = logging.getLogger("leaderelection")

Callback = Callable[[], Any]
"""A zero-argument callable, sync or async."""

LeaderTask = Callable[[], Awaitable[Any]]
"""An async function run for the length of every term (``while_leader``)."""

ErrorHandler = Callable[[BaseException, Mapping[str, Any]], Any]
"""The type of ``on_error``: called as ``handler(exception, context)`` when a callback or a
``while_leader`` task raises (the exception is logged either way).

``context`` has the keys ``kind`` (``"on_become_leader"``, ``"on_lose_leadership"`` or
``"while_leader"``), ``callback`` (the function that raised), ``election``, ``instance_id``
and ``fencing_token`` (the token of the term during which it happened). The handler must be a
plain function: it runs inside the election. An async one is refused when the election is
made; an awaitable that a handler returns is closed without being run, and an error is
logged; an exception that the handler raises is logged.

```python
callback_errors: Counter[str] = Counter()


def count_callback_errors(exc: BaseException, context: Mapping[str, Any]) -> None:
    callback_errors[context["kind"]] += 1


election = LeaderElection(url, config, on_error=count_callback_errors)
```
"""

Kind = Literal["become", "lose"]
_AFTER_CANCEL: Final = 0.1  # seconds given to user code to end once cancelled


def check_error_handler(handler: ErrorHandler | None) -> None:
    """Refuse an error handler that cannot be called as a plain function, at once.

    Raises:
        TypeError: ``handler`` is not callable, or is async (it would never be awaited).
    """
    if handler is None:
        return
    if not callable(handler):
        raise TypeError(f"on_error must be callable, got {handler!r}")
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ is async too
    ):
        raise TypeError(
            f"on_error must be a plain function, not async: {handler!r}. It is called inside "
            "the election and never awaited; hand the work to a task of your own from it"
        )


def check_thread_function(func: Callable[..., object], name: str, arity: int) -> None:
    """Refuse, at once, what the sync election cannot call as ``func()`` / ``func(event)`` in a
    worker thread.

    Raises:
        TypeError: ``func`` is not callable, is async, or does not take ``arity`` arguments.
    """
    if not callable(func):
        raise TypeError(f"{name} needs a function, got {func!r}")
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"{name} of the sync election takes plain functions, run in a worker thread; "
            f"{func!r} is async (register async callbacks on the asyncio election instead)"
        )
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some builtins have none to show
        return
    try:
        signature.bind(*([None] * arity))
    except TypeError:
        wanted = "no arguments" if arity == 0 else "one argument, a threading.Event"
        raise TypeError(f"{name} calls {func!r} with {wanted}") from None


def refuse_awaitable(result: object, func: Callable[..., object]) -> None:
    """Raise TypeError (closing it) when a sync callback returned an awaitable."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"{func!r} returned an awaitable: the sync election runs plain functions")


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
                if being_cancelled():
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
        on_error(exc, context)
    except Exception:
        logger.exception("The error handler %r raised", on_error)


class Dispatcher:
    """Runs the become and lose callbacks of each term, in order, in a task of its own.

    The task starts with the first term and lives until :meth:`close`. ``context(kind, run)``
    makes the error context of a term's callbacks.
    """

    __slots__ = (
        "_become",
        "_clock",
        "_closed",
        "_context",
        "_done",
        "_lose",
        "_on_error",
        "_queue",
        "_wake",
        "grace",
    )

    def __init__(
        self,
        become: CallbackList,
        lose: CallbackList,
        *,
        context: Callable[[str, TermRun], Mapping[str, Any]],
        on_error: ErrorHandler | None,
        grace: float,
        clock: Clock,
    ) -> None:
        self._become, self._lose = become, lose
        self._clock = clock
        self._closed = False  # close() ran to its end: a second close() has nothing to wait for
        self._context = context
        self._on_error = on_error
        self.grace = grace
        self._queue: list[tuple[Kind, TermRun] | None] = []
        self._wake = Flag()
        self._done: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The dispatcher's task, once started."""
        return self._done

    def enqueue(self, kind: Kind, run: TermRun) -> None:
        """Queue the ``kind`` callbacks of ``run``'s term; starts the task at the first."""
        self._queue.append((kind, run))
        if self._done is None:
            self._done = asyncio.get_running_loop().create_task(
                self._dispatch(), name="leaderelection-callbacks"
            )
        self._wake.set()

    async def close(self) -> None:
        """Run what is queued, then end the task; bounded by the grace period.

        A callback still running after it is cancelled and given a moment more; one that
        swallows the cancellation is left to finish on its own, and logged.
        """
        task = self._done
        if task is None or self._closed:
            return
        self._queue.append(None)
        self._wake.set()
        try:
            if await wait_bounded(task, self.grace, self._clock):
                return
            logger.warning(
                "A callback did not finish within %.1fs of stop(); cancelling it", self.grace
            )
            task.cancel()
            if not await wait_bounded(task, _AFTER_CANCEL, self._clock):
                logger.warning(
                    "A callback did not finish after it was cancelled; stop() goes on without it"
                )
        finally:
            self._closed = True

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            item = self._queue.pop(0)
            if item is None:
                return
            kind, run = item
            if kind == "lose":
                await run.wait_tasks(self.grace)
            callbacks = self._become if kind == "become" else self._lose
            await callbacks.run(self._context(callbacks.kind, run), self._on_error)
