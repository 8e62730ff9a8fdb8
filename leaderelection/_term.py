"""One term of leadership: its deadline watchdog and its ``while_leader`` tasks.

A :class:`TermRun` is made when the core reports ``BecameLeader`` and ended when it reports
``LostLeadership``; it owns the tasks it starts. The watchdog steps down at the end of the local
lease even when a renewal is stuck in a call that does not honour its deadline. The
``while_leader`` tasks run user code: each is isolated (its failure is reported, the term goes
on), cancelled when the term ends, and waited for only within bounds.

The order a term ends in, whatever ended it (a lost lease, ``resign()``, ``stop()``):

1. the core ends the term: ``is_leader`` is False from that instant;
2. ``leader_event`` is cleared, the watchdog returns, the ``while_leader`` tasks are cancelled;
3. for ``resign()`` and ``stop()``: the tasks are given ``call_timeout`` to finish, then the lock
   is released and followers are woken on the channel;
4. the lose callbacks run, once the term's become callbacks finished and its tasks ended (or a
   grace period of one lease passed, which is logged).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ._aio import Flag, being_cancelled, wait_bounded
from ._callbacks import ErrorHandler, LeaderTask, report
from ._clock import Clock
from ._core import Term

__all__ = ["TermRun", "current_run", "current_term"]

logger = logging.getLogger("leaderelection")

# In a while_leader task: the TermRun it was started for (tasks copy the context they start in).
_CURRENT_RUN: contextvars.ContextVar[TermRun | None] = contextvars.ContextVar(
    "leaderelection_term_run", default=None
)


def current_term() -> Term | None:
    """The term a ``while_leader`` task was started for (None outside such a task).

    It stays that term's even when the term ended before the task ran a single step.
    """
    run = _CURRENT_RUN.get()
    return run.term if run is not None else None


def current_run() -> TermRun | None:
    """The term run a ``while_leader`` task was started for (also seen by the tasks it starts,
    which copy its context: :meth:`TermRun.runs` tells the task itself apart)."""
    return _CURRENT_RUN.get()


class _LeaderTask:
    __slots__ = ("done", "func", "scope", "task")

    def __init__(self, func: LeaderTask) -> None:
        self.func = func
        self.done = Flag()
        # An anyio scope, not task.cancel(): its cancellation is delivered again at every await
        # until the task leaves it, so a task whose cancellation was swallowed (redis-py can do
        # that inside a call) still ends.
        self.scope = anyio.CancelScope()
        self.task: asyncio.Task[None] | None = None


class TermRun:
    """What one term started: its end signal, its watchdog and its ``while_leader`` tasks."""

    __slots__ = ("_clock", "_tasks", "_watchdog", "ended", "owner", "term")

    def __init__(self, term: Term, clock: Clock, owner: object = None) -> None:
        self.term = term
        self.owner = owner  # who started the term (its campaign)
        self._clock = clock
        self.ended = Flag()  # set when the term ends; the watchdog returns then
        self._tasks: list[_LeaderTask] = []
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The term's ``while_leader`` tasks."""
        return [t.task for t in self._tasks if t.task is not None]

    def runs(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ``task`` is one of this term's ``while_leader`` tasks."""
        return task is not None and any(entry.task is task for entry in self._tasks)

    def start_watchdog(self, deadline: Callable[[], float], check: Callable[[], None]) -> None:
        """Call ``check()`` each time the clock reaches ``deadline()``, until the term ends."""

        clock = self._clock

        async def watchdog() -> None:
            while not self.ended.is_set():
                if await clock.wait_until(deadline(), self.ended):
                    return
                try:
                    check()
                except Exception:
                    logger.exception("The lease watchdog failed; the heartbeat still steps down")
                    return

        self._watchdog = asyncio.get_running_loop().create_task(
            watchdog(), name="leaderelection-watchdog"
        )

    def start_task(
        self,
        func: LeaderTask,
        *,
        context: Mapping[str, Any],
        on_error: ErrorHandler | None,
    ) -> asyncio.Task[None]:
        """Start ``func()`` as a task of this term; at once cancelled if the term has ended."""
        entry = _LeaderTask(func)
        self._tasks.append(entry)
        token = _CURRENT_RUN.set(self)
        try:
            entry.task = asyncio.get_running_loop().create_task(
                _run_isolated(entry, context, on_error),
                name=f"leaderelection-while-leader:{getattr(func, '__qualname__', func)}",
            )
        finally:
            _CURRENT_RUN.reset(token)
        if self.ended.is_set():
            entry.scope.cancel()
        return entry.task

    def end(self) -> None:
        """The term ended: stop the watchdog, cancel the ``while_leader`` tasks."""
        self.ended.set()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        for entry in self._tasks:
            entry.scope.cancel()

    async def wait_tasks(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the ``while_leader`` tasks to end; True if they all did.

        A task still running then is logged: it ignored its cancellation.
        """
        deadline = self._clock.now() + timeout
        for entry in self._tasks:
            if not await wait_bounded(entry.done, deadline - self._clock.now(), self._clock):
                logger.warning(
                    "The while_leader task %s did not finish within %.1fs of the end of its "
                    "term (it ignores cancellation); going on without it",
                    getattr(entry.func, "__qualname__", entry.func),
                    timeout,
                )
                return False
        return True


async def _run_isolated(
    entry: _LeaderTask, context: Mapping[str, Any], on_error: ErrorHandler | None
) -> None:
    try:
        with entry.scope:
            await entry.func()
    except Exception as exc:
        report(exc, {**context, "callback": entry.func}, on_error)
    except asyncio.CancelledError as exc:
        if being_cancelled():
            raise  # cancelled from outside (the term's own end is caught by its scope)
        # A stray CancelledError (the task awaited something that was cancelled) ends this task
        # only, like any other exception.
        report(exc, {**context, "callback": entry.func}, on_error)
    finally:
        entry.done.set()
