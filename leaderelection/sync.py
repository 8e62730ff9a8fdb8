"""The election for threaded programs: Django, Flask, Celery beat, scripts.

:class:`LeaderElection` here runs the asyncio :class:`leaderelection.LeaderElection` on an event
loop of its own, in a background thread, and gives threads a blocking API. Everything the asyncio
election guarantees holds unchanged: heartbeats never wait for your code, ``is_leader`` turns
False locally before the lease can expire in Redis, fencing tokens increase, callbacks run in
order, and every become is followed by exactly one lose::

    import threading

    from leaderelection import ElectionConfig
    from leaderelection.sync import LeaderElection

    election = LeaderElection("redis://localhost:6379/0", ElectionConfig(name="billing"))


    @election.on_become_leader
    def announce() -> None:  # runs in a worker thread, never on the election's loop
        print("leading, fencing token", election.fencing_token)


    @election.while_leader  # one thread per term; term_over is set when the term ends
    def scheduler(term_over: threading.Event) -> None:
        token = election.fencing_token  # this term's token, for the resources written to
        while not term_over.is_set():
            run_due_jobs(fencing_token=token)
            term_over.wait(60)  # wakes at once when the term ends


    with election:  # start(): returns once the first acquisition attempt finished
        serve_forever()  # any thread may read election.is_leader, or wait_until_leader()
    # stop(): the job returned, the lock was released, the lose callbacks ran

What runs where:

- The election's own thread (named ``leaderelection-<name>``) runs its asyncio loop: campaign,
  heartbeats, release. It is a daemon thread and runs no code of yours except ``on_error``.
- ``on_become_leader`` / ``on_lose_leadership`` callbacks run one at a time, in registration order,
  in a worker thread, so a slow callback delays later callbacks but never a heartbeat.
- Each ``while_leader`` function runs in a worker thread of its own for the length of a term.
- ``is_leader``, ``fencing_token``, ``instance_id``, ``config``, ``statistics()`` and
  ``fence()`` never block and are safe from any thread. ``wait_until_leader()``,
  ``wait_until_follower()``, ``resign()``, ``get_leader_info()``, ``get_leader_id()`` and the
  writes of a :class:`SyncFence` block the calling thread, and many threads may call them at once.

An election that is never stopped does not hold up interpreter exit: its thread is a daemon, and
an ``atexit`` hook stops it first (releasing the lock and running the lose callbacks), giving up
after ``lock_ttl``, when the lease would have expired anyway. Start elections after ``fork()``:
in a child process, an election started before the fork is stopped and never reports leadership.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from . import _election
from ._aio import close_client
from ._callbacks import (
    ErrorHandler,
    check_error_handler,
    check_thread_function,
    refuse_awaitable,
)
from ._config import ElectionConfig, config_argument, new_instance_id
from ._core import ElectionStatistics
from ._election import Lifecycle
from ._exceptions import (
    ConfigurationError,
    ElectionNotRunningError,
    LeaderElectionError,
    NotLeaderError,
)
from ._fence import SyncFence
from ._info import LeaderInfo
from ._term import current_term

__all__ = ["LeaderElection", "RedisFactory", "SyncFence"]

logger = logging.getLogger("leaderelection")

RedisFactory = Callable[[], Any]
"""A zero-argument function returning a ``redis.asyncio.Redis`` (or ``RedisCluster``); the
election calls it on its own event loop and closes the client when it stops."""

C = TypeVar("C", bound=Callable[[], object])
J = TypeVar("J", bound=Callable[[threading.Event], object])
T = TypeVar("T")
Kind = Literal["become", "lose", "job"]
_Role = Literal["callback", "job"]

_CALL_SLACK: Final = 5.0  # seconds added to the bounded waits of a stop at interpreter exit


class _ThreadRole(threading.local):
    """What the current thread runs for one election: a callback, a job, or neither."""

    role: _Role | None = None
    term_over: threading.Event | None = None
    token: int | None = None


class LeaderElection:
    """Elect one leader among the candidates of an election, from threaded code.

    Use it as ``with LeaderElection(redis, config) as election:``, or call :meth:`start` and
    :meth:`stop`. One election campaigns once: create a new one to campaign again. Create and
    start it in the process that uses it: with a pre-forking server (gunicorn), after the fork.

    Args:
        redis: A URL (``redis://`` of one server or of any node of a Redis Cluster,
            ``rediss://``, ``unix://``, ``redis+sentinel://``: see docs/topologies.md), or a
            zero-argument function that returns a ``redis.asyncio.Redis`` (also from
            ``Sentinel.master_for``) or ``RedisCluster``. The function is called on the
            election's own event loop, because a client made on another loop cannot be used on
            it; the election closes that client when it stops.
        config: The election's settings; default ``ElectionConfig()``.
        on_become_leader: A callback registered first, as with :meth:`on_become_leader`.
        on_lose_leadership: A callback registered first, as with :meth:`on_lose_leadership`.
        on_error: Called as ``on_error(exception, context)`` when a callback or ``while_leader``
            function raises (the exception is logged either way). ``context["callback"]`` is the
            function you registered. It runs on the election's loop thread: keep it quick, and
            do not call this election's blocking methods from it.

    Raises:
        ConfigurationError: ``redis`` is a client instance, or neither a URL nor a function;
            ``config`` is not an ``ElectionConfig``.
    """

    __slots__ = (
        "__weakref__",
        "_auto_id",
        "_client",
        "_config",
        "_election",
        "_forked",
        "_limiter",
        "_lock",
        "_loop",
        "_loop_thread",
        "_on_error",
        "_originals",
        "_portal",
        "_redis",
        "_registrations",
        "_start_done",
        "_state",
        "_stop_future",
        "_stop_lock",
        "_thread",
        "_thread_role",
        "_workers",
    )

    def __init__(
        self,
        redis: str | RedisFactory,
        config: ElectionConfig | None = None,
        *,
        on_become_leader: Callable[[], object] | None = None,
        on_lose_leadership: Callable[[], object] | None = None,
        on_error: ErrorHandler | None = None,
    ) -> None:
        self._config = config_argument(config)
        check_error_handler(on_error)
        if not isinstance(redis, str):
            if not isinstance(redis, type) and callable(getattr(redis, "evalsha", None)):
                raise ConfigurationError(
                    "leaderelection.sync.LeaderElection takes a URL (redis://, rediss://, unix://, "
                    "redis+sentinel://) or a zero-argument "
                    "function that makes the client, such as `lambda: redis.asyncio.Redis(...)`, "
                    "not a client: the election runs on an event loop of its own, and a client "
                    "made outside it cannot be used there"
                )
            if not callable(redis):
                raise ConfigurationError(
                    "redis must be a redis:// URL or a zero-argument function returning a "
                    f"redis.asyncio.Redis, got {type(redis).__name__}"
                )
        self._redis = redis
        self._on_error = on_error
        self._auto_id: tuple[int, str] | None = None  # (pid, id) when the config sets none

        # Guards the state and the registrations; never held while waiting for the loop.
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()  # held by the one thread running stop()
        self._state: Lifecycle = "new"
        self._forked = False
        self._start_done = threading.Event()
        self._registrations: list[tuple[Kind, Callable[[], Awaitable[None]]]] = []
        self._originals: dict[int, Callable[..., object]] = {}  # id(wrapper) -> your function
        self._thread_role = _ThreadRole()
        self._workers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

        # Set by start(); the loop-side ones are touched only on the loop thread.
        self._election: _election.LeaderElection | None = None
        self._thread: threading.Thread | None = None
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The loop's thread itself, not its ident: a finished thread's ident can be reused by a
        # new thread, which would then be taken for the loop's.
        self._loop_thread: threading.Thread | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._client: Any = None  # a client the factory made, closed at stop
        self._stop_future: concurrent.futures.Future[None] | None = None

        _elections.add(self)
        if on_become_leader is not None:
            self.on_become_leader(on_become_leader)
        if on_lose_leadership is not None:
            self.on_lose_leadership(on_lose_leadership)

    # --------------------------------------------------------------------- public reads

    @property
    def config(self) -> ElectionConfig:
        """The election's configuration, as given."""
        return self._config

    @property
    def instance_id(self) -> str:
        """This candidate's id: the config's, or ``hostname-pid-random`` made for this process."""
        election = self._election
        if election is not None:
            return election.instance_id
        if self._config.instance_id is not None:
            return self._config.instance_id
        pid = os.getpid()
        with self._lock:  # one id, even when several threads ask first at once
            auto = self._auto_id
            if auto is None or auto[0] != pid:  # made before a fork: this process needs its own
                auto = (pid, new_instance_id(self._config))
                self._auto_id = auto
            return auto[1]

    @property
    def is_leader(self) -> bool:
        """True while this instance leads. Never blocks, never touches Redis; any thread.

        It turns False at the local lease deadline even before the election's loop has noticed,
        exactly as the asyncio election's does.
        """
        election = self._election
        return election is not None and not self._forked and election.is_leader

    @property
    def fencing_token(self) -> int | None:
        """The current term's fencing token while leader, else None. Never blocks; any thread.

        Pass it to the resources the leader writes to, so that they can reject a write from a
        leader that has been replaced meanwhile.
        """
        election = self._election
        if election is None or self._forked:
            return None
        return election.fencing_token

    def statistics(self) -> ElectionStatistics:
        """A snapshot of the election's state and counters. Never blocks; any thread.

        Read from another thread than the election's, the fields are read one after the other
        without a lock: each is valid, and during a transition they may straddle it.
        """
        election = self._election
        if election is None:
            return ElectionStatistics.initial(
                self.instance_id, "stopped" if self._state == "stopped" else "new"
            )
        stats = election.statistics()
        if self._forked:
            stats = replace(
                stats, state="stopped", is_leader=False, fencing_token=None, leader_id=None
            )
        return stats

    def fence(self) -> SyncFence:
        """A :class:`SyncFence` bound to the current term: blocking writes to Redis that are
        refused from the moment the term is over (see ``leaderelection.LeaderElection.fence``).
        Never blocks; any thread.

        Raises:
            NotLeaderError: this instance does not lead, or the calling ``while_leader``
                function belongs to a term that has ended.
        """
        election = self._election
        if election is None or self._forked or self._state != "running":
            raise NotLeaderError(
                f"{self.instance_id} does not lead: the election is "
                f"{'stopped' if self._forked else self._state}"
            )
        role = self._thread_role
        if role.role == "job" and role.token is not None and role.token != election.fencing_token:
            raise NotLeaderError(
                f"fence() was called from a while_leader function of the term with fencing "
                f"token {role.token}, which has ended (its term_over event is set)"
            )
        return SyncFence(election.fence(), self._fence_call)

    @property
    def async_election(self) -> _election.LeaderElection:
        """The asyncio election underneath, for advanced use.

        It lives on this election's private event loop, in another thread. Its read-only
        properties and ``statistics()`` are safe from any thread (this class reads them). Its
        coroutines (``get_leader_info()``, ``changes()``, ...) and ``leader_event`` belong to
        that loop: they cannot be awaited on another loop, nor called from other threads. Code
        that needs them must run on that loop, for example as an async callback registered on
        the asyncio election itself; never call this class's blocking methods from such code.

        Raises:
            ElectionNotRunningError: the election was never started.
        """
        election = self._election
        if election is None:
            raise ElectionNotRunningError(
                "the election has not been started: the asyncio election is made by start()"
            )
        return election

    # ------------------------------------------------------------------------- waiting

    def wait_until_leader(self, timeout: float | None = None) -> None:
        """Block until this instance leads. Many threads may wait at once.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ElectionNotRunningError: the election is not running, or stopped while waiting.
            LeaderElectionError: called on the election's own loop thread (from ``on_error``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._refuse_on_loop_thread("wait_until_leader()")
        self._wait_started(deadline)
        election = self._running_election("wait_until_leader()")
        self._call("wait_until_leader()", election.wait_until_leader, _left(deadline))

    def wait_until_follower(self, timeout: float | None = None) -> None:
        """Block until this instance does not lead; return at once if it does not.

        Called from a ``while_leader`` function, it returns once that function's event is set:
        ``stop()`` and ``resign()`` wait for the function before the term ends.

        Args:
            timeout: Seconds to wait at most; None waits as long as it takes.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            LeaderElectionError: called on the election's own loop thread (from ``on_error``).
        """
        self._refuse_on_loop_thread("wait_until_follower()")
        role = self._thread_role
        if role.role == "job" and role.term_over is not None:
            if not role.term_over.wait(timeout):
                raise TimeoutError("the term did not end in time")
            return
        election = self._election
        if election is None or not self.is_leader:
            return
        with contextlib.suppress(ElectionNotRunningError):  # stopped: not leading any more
            self._call("wait_until_follower()", election.wait_until_follower, timeout)

    # ----------------------------------------------------------------- other blocking calls

    def resign(self) -> None:
        """Hand leadership over now and stay a candidate; nothing happens when not leading.

        The term ends as the asyncio election's does (``docs/architecture.md``): ``is_leader``
        turns False, the ``while_leader`` functions are told to finish (their event is set) and
        have returned before the lock is released, so a follower takes over with no overlap;
        then the lose callbacks run, and this instance is held back for at least
        ``retry_interval``.
        Returns once the lock is released. Called from a ``while_leader`` function, it returns
        as soon as that function's event is set, without waiting for the release, which follows
        once the function returned.

        Raises:
            ElectionNotRunningError: the election is not running.
            LeaderElectionError: called on the election's own loop thread (from ``on_error``).
        """
        self._refuse_on_loop_thread("resign()")
        role = self._thread_role
        if role.role == "job" and role.term_over is not None:
            # Waiting for the release here would wait for this very function to return.
            portal = self._portal
            with contextlib.suppress(RuntimeError):  # the portal stopped: the term is over
                if portal is not None and self._state == "running":
                    portal.start_task_soon(self._resign_on_loop, role.token)
            role.term_over.wait()
            return
        self._wait_started(None)
        self._running_election("resign()")
        self._call("resign()", self._resign_on_loop, None)

    def get_leader_info(self) -> LeaderInfo | None:
        """Read who leads from Redis; None when no one does.

        Only while the election runs, between ``start()`` and ``stop()``: it reads on the
        election's own loop and client, which exist only then. Before ``start()`` and after
        ``stop()`` it raises ``ElectionNotRunningError``; called while another thread is in
        ``start()``, it first waits for that to finish. (The asyncio
        :meth:`leaderelection.LeaderElection.get_leader_info` reads in every state.)

        Raises:
            StoreError: Redis failed or did not answer in time.
            CorruptLeaderInfoError: the stored record is not valid LeaderInfo JSON.
            ElectionNotRunningError: the election is not running: not started yet, stopped,
                or started in another process before a fork.
            LeaderElectionError: called on the election's own loop thread (from ``on_error``).
        """
        self._refuse_on_loop_thread("get_leader_info()")
        self._wait_started(None)
        election = self._running_election("get_leader_info()")
        return self._call("get_leader_info()", election.get_leader_info)

    def get_leader_id(self) -> str | None:
        """Read the leader's instance id from Redis; None when no one leads.

        Only while the election runs, as :meth:`get_leader_info`.

        Raises:
            StoreError: Redis failed or did not answer in time.
            ElectionNotRunningError: the election is not running.
            LeaderElectionError: called on the election's own loop thread (from ``on_error``).
        """
        info = self.get_leader_info()
        return info.instance_id if info is not None else None

    # ----------------------------------------------------------------------- callbacks

    def on_become_leader(self, callback: C) -> C:
        """Register a zero-argument function run in a worker thread when a term starts.

        Usable as a decorator. Callbacks run one at a time in registration order, each isolated:
        an exception is logged and handed to ``on_error``, and the rest still run. One
        registered while the election runs takes effect from the next term.

        Raises:
            TypeError: ``callback`` is not callable, is async, or needs arguments.
        """
        self._register("become", callback)
        return callback

    def on_lose_leadership(self, callback: C) -> C:
        """Register a zero-argument function run in a worker thread when a term ends.

        It runs only after the term's become callbacks finished and its ``while_leader``
        functions returned; every become is followed by exactly one lose unless the process
        dies.

        Raises:
            TypeError: ``callback`` is not callable, is async, or needs arguments.
        """
        self._register("lose", callback)
        return callback

    def while_leader(self, func: J) -> J:
        """Register a function run in a worker thread of its own for the length of every term.

        It is called with one argument, a ``threading.Event`` that is set when the term ends
        (or when ``stop()`` or ``resign()`` begins), and must return promptly once it is set:
        the lose callbacks, ``stop()`` and ``resign()`` wait for it to return. A thread cannot be
        interrupted, so a function stuck in a long call keeps running after a term that ended
        because the lease was lost: pass the fencing token to what it writes. One registered
        during a term starts at once. An exception ends it for this term and is reported like a
        callback's.

        Raises:
            TypeError: ``func`` is not callable, is async, or does not take one argument.
        """
        self._register("job", func)
        return func

    # ----------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        """Start the election (see :meth:`start`) and return it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the election (see :meth:`stop`)."""
        self.stop()

    def start(self) -> None:
        """Start campaigning; return once the first acquisition attempt has finished.

        Starts the election's thread and event loop. On a free election the first instance to
        start is leader when this returns.

        Raises:
            ConfigurationError: the URL is unusable, or the factory's result is not a client.
            StoreAuthenticationError: Redis refused the credentials or permissions.
            StoreReadOnlyError: the server is a read-only replica.
            WrongKeyTypeError: an election key holds another type.
            StoreError: Redis answered another permanent error.
            LeaderElectionError: the election was already started (or stopped).

        A Redis that is down or slow is not an error here: the election keeps trying in the
        background while ``is_leader`` stays False. After an error, no thread is left behind.
        """
        with self._lock:
            if self._state != "new":
                raise LeaderElectionError(
                    f"this election was already started (state {self._state}); create a new "
                    "LeaderElection to campaign again"
                )
            self._state = "starting"
            _live.add(self)
        ready: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()
        thread = threading.Thread(
            target=_serve_portal, args=(ready,), name=f"leaderelection-{self._config.name}"
        )
        thread.daemon = True  # see _stop_live_elections: never holds up interpreter exit
        portal: BlockingPortal | None = None
        try:
            thread.start()
            portal = ready.result()
            future = portal.start_task_soon(self._start_on_loop)
            try:
                future.result()
            except BaseException:
                future.cancel()  # interrupted (Ctrl-C): cancel the start; the loop undoes it
                raise
            with self._lock:
                self._thread, self._portal = thread, portal
                if not self._forked:
                    self._state = "running"
        except BaseException:
            if portal is None and thread.ident is not None:  # interrupted while it came up
                with contextlib.suppress(BaseException):
                    portal = ready.result()
            _close_portal(portal, thread, cancel_remaining=True)
            with self._lock:
                self._state = "stopped"
                _live.discard(self)
            raise
        finally:
            self._start_done.set()

    def stop(self) -> None:
        """Stop campaigning and release leadership if held. Idempotent; any thread.

        The term ends as the asyncio election's does (``docs/architecture.md``): ``is_leader``
        turns False, the ``while_leader`` functions are told to finish and return while the
        lease is still held in Redis, then the lock is released (a follower takes over within
        milliseconds), the lose callbacks run, and the election's thread exits.
        Returns when all of that is done. Bounded when Redis is gone; it waits for your
        callbacks and ``while_leader`` functions to return.

        Raises:
            LeaderElectionError: called from this election's own callback, ``while_leader``
                function or loop thread, which the stop would wait for.
        """
        self._stop(timeout=None)

    # ------------------------------------------------------------------------ internals

    def _stop(self, *, timeout: float | None) -> bool:
        """Stop; with ``timeout``, give up waiting after it and return False."""
        if self._state == "stopped":
            return True
        if self._thread_role.role is not None:
            raise LeaderElectionError(
                "stop() cannot be called from this election's own callback or while_leader "
                "function: it waits for them to return. Call resign() to hand leadership over, "
                "or let another thread call stop()"
            )
        self._refuse_on_loop_thread("stop()")
        deadline = None if timeout is None else time.monotonic() + timeout
        # One stopper at a time; the others wait for it here. A stopper interrupted while
        # waiting (Ctrl-C) leaves the shutdown running on the loop for the next one to finish.
        if not self._stop_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            with self._lock:
                if self._state == "new":
                    self._state = "stopped"
                    self._start_done.set()
                    return True
            if not self._start_done.wait(_left(deadline)):  # another thread is in start()
                return False
            portal = self._portal
            if self._state == "running" and portal is not None:
                with self._lock:
                    self._state = "stopping"
                with contextlib.suppress(RuntimeError):  # the loop has died: nothing to stop
                    self._stop_future = portal.start_task_soon(self._stop_on_loop)
            future = self._stop_future
            if future is not None:
                try:
                    future.result(_left(deadline))
                except TimeoutError:
                    return False
                except (Exception, concurrent.futures.CancelledError):
                    pass  # an unexpected failure: raised below, once the thread is gone
            if not self._is_stopped():  # else another stopper finished while this one waited
                portal, self._portal = self._portal, None
                thread, self._thread = self._thread, None
                if thread is not None:
                    _close_portal(portal, thread, cancel_remaining=False)
                for worker in list(self._workers):  # told to exit when the loop ended
                    worker.join(_left(deadline))
                with self._lock:
                    self._state = "stopped"
                    _live.discard(self)
        finally:
            self._stop_lock.release()
        if future is not None and not future.cancelled():
            future.result()  # an unexpected error in the shutdown, raised after the cleanup
        return True

    def _is_stopped(self) -> bool:
        return self._state == "stopped"

    def _stop_at_exit(self) -> None:
        """The ``atexit`` hook's stop of an election that was never stopped: bounded."""
        if self._state == "stopped" or self._forked:
            return
        logger.warning(
            "A leaderelection.sync.LeaderElection was not stopped; stopping it at exit",
            extra={"election": self._config.name, "instance_id": self.instance_id},
        )
        try:
            if not self._stop(timeout=self._config.lock_ttl.total_seconds() + _CALL_SLACK):
                logger.warning(
                    "The election did not stop in time; its lease expires within lock_ttl",
                    extra={"election": self._config.name, "instance_id": self.instance_id},
                )
        except Exception:
            logger.exception("Stopping the election at exit failed")

    def _after_fork_in_child(self) -> None:
        """In a forked child: the loop thread did not survive the fork; never report leading."""
        self._start_done = threading.Event()  # its lock may have been held by a lost thread
        self._start_done.set()
        self._forked = True
        self._state = "stopped"
        self._thread = self._portal = self._stop_future = None

    def _refuse_on_loop_thread(self, what: str) -> None:
        if self._loop_thread is threading.current_thread():
            raise LeaderElectionError(
                f"{what} blocks, and cannot be called on the election's own event loop thread "
                "(from on_error, or from async code running on async_election's loop): it "
                "would wait for that loop forever. Call it from another thread"
            )

    def _wait_started(self, deadline: float | None) -> None:
        """If another thread is in start(), wait for its outcome (bounded by the first attempt)."""
        if self._state == "starting" and not self._start_done.wait(_left(deadline)):
            raise TimeoutError("the election did not finish starting in time")

    def _running_election(self, what: str) -> _election.LeaderElection:
        election = self._election
        if self._forked:
            raise ElectionNotRunningError(
                f"{what}: this election was started in another process before a fork, and "
                "cannot run here; create and start a new LeaderElection in each process"
            )
        if self._state != "running" or election is None:
            raise ElectionNotRunningError(
                f"{what}: the election is {self._state}; use `with LeaderElection(...)` or "
                "call start() first"
            )
        return election

    def _fence_call(self, what: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """A fence's write, run on the election's loop; refused on the loop's own thread."""
        self._refuse_on_loop_thread(what)
        return self._call(what, func)

    def _call(self, what: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the election's loop and block until it returns."""
        portal = self._portal
        if portal is None:
            raise ElectionNotRunningError(f"{what}: the election stopped")
        try:
            future = portal.start_task_soon(func, *args)
        except RuntimeError:  # the portal stopped since the state was read
            raise ElectionNotRunningError(f"{what}: the election stopped") from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ElectionNotRunningError(f"{what}: the election stopped") from None
        except BaseException:
            future.cancel()  # interrupted while waiting (Ctrl-C): end the call on the loop too
            raise

    # ---------------------------------------------------------------- registration

    def _register(self, kind: Kind, func: Callable[..., object]) -> None:
        wrapper = self._wrap_job(func) if kind == "job" else self._wrap_callback(kind, func)
        self._originals[id(wrapper)] = func
        with self._lock:
            self._registrations.append((kind, wrapper))
            election = self._election
            if election is None or self._state not in ("starting", "running"):
                return  # start() registers it, or the election is over
            add = _adder(election, kind)
            if threading.current_thread() is self._loop_thread or self._loop is None:
                add(wrapper)
            else:
                # In a task of the loop (a while_leader started mid-term needs one), without
                # waiting for it: registrations keep their order, and no lock is held across.
                asyncio.run_coroutine_threadsafe(_call_in_task(add, wrapper), self._loop)

    def _wrap_callback(
        self, kind: Kind, func: Callable[..., object]
    ) -> Callable[[], Awaitable[None]]:
        name = "on_become_leader" if kind == "become" else "on_lose_leadership"
        check_thread_function(func, name, 0)

        @functools.wraps(func)
        async def in_worker_thread() -> None:
            await anyio.to_thread.run_sync(self._run_callback, func, limiter=self._limiter)

        return in_worker_thread

    def _wrap_job(self, func: Callable[..., object]) -> Callable[[], Awaitable[None]]:
        check_thread_function(func, "while_leader", 1)

        @functools.wraps(func)
        async def for_the_term() -> None:
            # A task of the asyncio election, cancelled when the term ends. The function runs
            # in a thread, which cannot be cancelled: set its event, then wait for it to return,
            # so that neither the release nor the lose callbacks overlap with it.
            term = current_term()  # the term this task was started for, even if it has ended
            token = term.fencing_token if term is not None else None
            term_over = threading.Event()
            call = asyncio.ensure_future(
                anyio.to_thread.run_sync(
                    self._run_job, func, term_over, token, limiter=self._limiter
                )
            )
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError:
                term_over.set()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({call})
                error = call.exception()
                if error is not None:
                    raise error from None  # the function's own failure, reported as such
                raise
            finally:
                term_over.set()

        return for_the_term

    def _run_callback(self, func: Callable[[], object]) -> None:
        """In a worker thread: one callback."""
        self._workers.add(threading.current_thread())
        role = self._thread_role
        role.role = "callback"
        try:
            refuse_awaitable(func(), func)
        finally:
            role.role = None

    def _run_job(
        self,
        func: Callable[[threading.Event], object],
        term_over: threading.Event,
        token: int | None,
    ) -> None:
        """In a worker thread: one ``while_leader`` function for one term."""
        self._workers.add(threading.current_thread())
        role = self._thread_role
        role.role, role.term_over, role.token = "job", term_over, token
        try:
            refuse_awaitable(func(term_over), func)
        finally:
            role.role, role.term_over, role.token = None, None, None

    def _report(self, exc: BaseException, context: Mapping[str, Any]) -> object:
        """The asyncio election's error handler: hand the user's own function to on_error."""
        assert self._on_error is not None
        callback = self._originals.get(id(context.get("callback")), context.get("callback"))
        return self._on_error(exc, {**context, "callback": callback})

    # ---------------------------------------------------------------- on the loop thread

    async def _start_on_loop(self) -> None:
        self._loop_thread = threading.current_thread()
        self._loop = asyncio.get_running_loop()
        # Every while_leader function needs a thread for its whole term: none may queue.
        self._limiter = anyio.CapacityLimiter(math.inf)
        target = self._redis
        if not isinstance(target, str):
            target = self._client = target()
        config = self._config
        if config.instance_id is None:
            config = config.model_copy(update={"instance_id": self.instance_id})
        try:
            election = _election.LeaderElection(
                target, config, on_error=self._report if self._on_error is not None else None
            )
            # Threads cannot be cancelled: the term's end waits for them to return, as long as
            # they take, before the release and the lose callbacks (docs/sync.md).
            election._wait_for_user_code(math.inf)
            with self._lock:
                for kind, wrapper in self._registrations:
                    _adder(election, kind)(wrapper)
                self._election = election
            await election.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_client()
            raise

    async def _stop_on_loop(self) -> None:
        assert self._election is not None
        try:
            await self._election.stop()
        finally:
            await self._close_client()

    async def _resign_on_loop(self, token: int | None) -> None:
        """Resign; ``token`` is the calling job's term, which must still be the current one."""
        election = self._election
        assert election is not None
        if token is not None and token != election.fencing_token:
            return  # the calling job's term is over already: the current one is not its own
        await election.resign()

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await close_client(client)


def _adder(
    election: _election.LeaderElection, kind: Kind
) -> Callable[[Callable[[], Awaitable[None]]], object]:
    if kind == "become":
        return election.on_become_leader
    if kind == "lose":
        return election.on_lose_leadership
    return election.while_leader


async def _call_in_task(func: Callable[[T], object], arg: T) -> None:
    func(arg)


def _serve_portal(ready: concurrent.futures.Future[BlockingPortal]) -> None:
    """The election's thread: an event loop serving a blocking portal until it is stopped.

    What ``anyio.from_thread.start_blocking_portal`` does, in a thread the election owns: that
    helper is a generator whose cleanup waits for the loop thread, so a forked child, which has
    no such thread, would hang when it dropped the helper (at the latest at its exit).
    """

    async def serve() -> None:
        async with BlockingPortal() as portal:
            ready.set_result(portal)
            await portal.sleep_until_stopped()

    try:
        anyio.run(serve, backend="asyncio")
    except BaseException as exc:
        if not ready.done():
            ready.set_exception(exc)
            return
        logger.exception("The election's event loop failed")


def _close_portal(
    portal: BlockingPortal | None, thread: threading.Thread, *, cancel_remaining: bool
) -> None:
    """Stop the portal (its loop ends after its tasks) and join the election's thread."""
    if portal is not None:
        with contextlib.suppress(RuntimeError):  # not running: the loop has ended already
            portal.call(portal.stop, cancel_remaining)
    if thread.ident is not None:
        thread.join()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# Every election (for the fork hook), and those between start() and the end of stop() (for the
# exit and fork hooks). _live holds strong references: an election that nobody refers to any
# more still runs on its thread, so the exit hook must still find it, stop it and release.
_elections: weakref.WeakSet[LeaderElection] = weakref.WeakSet()
_live: set[LeaderElection] = set()


def _stop_live_elections() -> None:
    for election in list(_live):
        election._stop_at_exit()


def _forget_live_elections() -> None:
    for election in list(_elections):
        # A lock held at the fork by a thread that the child does not have stays held forever.
        election._lock, election._stop_lock = threading.Lock(), threading.Lock()
    for election in list(_live):
        election._after_fork_in_child()
    _live.clear()


# atexit runs after the interpreter has joined the non-daemon threads, while daemon threads
# (the elections' loops) still run: a leaked election is released rather than left to expire.
atexit.register(_stop_live_elections)
os.register_at_fork(after_in_child=_forget_live_elections)
