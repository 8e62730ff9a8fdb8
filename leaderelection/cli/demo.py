"""``python -m leaderelection demo``: three candidates elect, fail over and hand over, live.

Three candidates, A, B and C, run in this process against one store: by default an embedded
in-process Redis (one ``fakeredis.FakeServer`` shared by three ``FakeAsyncRedis`` clients, the
``demo`` extra), or a real Redis with ``--redis-url``. The demo prints a timeline, each line
prefixed with the milliseconds since the demo started:

1. election: the three enter at once; one leads, with its fencing token and the time from entering
   to leading;
2. leader crash: the leader is cut off from Redis without releasing; it steps down locally at
   ``renew_deadline``, its lease expires ``lock_ttl`` after its last heartbeat, and a follower
   takes over (failover time after expiry);
3. graceful handoff: the new leader calls ``resign()``; the third candidate takes over through the
   release channel (handoff time);
4. the fencing tokens of the three terms, strictly increasing, and a summary.

Every change is detected by waiting on the election's events (``wait_until_leader``,
``wait_until_follower``) with timeouts; sleeps only pace what is shown. A leader change that does
not come within a generous timeout ends the demo with exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from leaderelection import ConfigurationError, ElectionConfig, LeaderElection, LeaderElectionError

from ._common import silence_stdout

__all__ = ["DemoFailure", "add_arguments", "run"]

LABELS = ("A", "B", "C")
TICK = 0.3  # seconds between the leader's "doing leader-only work" lines
PACE = 1.0  # seconds each leader is shown working before the next act
FAST_HANDOFF = 0.1  # seconds: a handoff faster than this cannot have waited for a timer
INSTALL_HINT = (
    "the demo's embedded Redis needs fakeredis with Lua: pip install "
    "'leaderelection-redis[demo]' (or pass --redis-url redis://localhost:6379/0 to use a real "
    "Redis)"
)


class DemoFailure(Exception):
    """The demo did not see what it expected (a leader change, a single leader, ...)."""


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``demo`` subcommand's options to ``parser``."""
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis or Valkey (e.g. redis://localhost:6379/0) instead of the embedded "
        "in-process store; on a server started less than ~lock_ttl ago the first election is "
        "held back by restart protection",
    )
    parser.add_argument(
        "--name",
        default="leaderelection-demo",
        help="the election's name, which determines its keys (default: %(default)s)",
    )
    parser.add_argument(
        "--lock-ttl",
        default="1s",
        metavar="DURATION",
        help="lease length in Redis (default: %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        default="250ms",
        metavar="DURATION",
        help="how often the leader renews its lease (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-interval",
        default="300ms",
        metavar="DURATION",
        help="backoff base after errors, and how long resign() holds back (default: %(default)s)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the library's 'leaderelection' logger to stderr: -v INFO, -vv DEBUG",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo with the parsed command line.

    Args:
        args: The namespace parsed with the options of :func:`add_arguments`.

    Returns:
        0 when every act went as expected, 1 when one did not (the reason is printed to
        stderr), 2 for invalid options or when the embedded store is not installed.
    """
    try:
        config = ElectionConfig(
            name=args.name,
            lock_ttl=args.lock_ttl,
            heartbeat_interval=args.heartbeat_interval,
            retry_interval=args.retry_interval,
        )
    except ConfigurationError as exc:
        print(f"leaderelection demo: error: {exc}", file=sys.stderr)
        return 2
    if args.redis_url is None and not _embedded_store_available():
        print(f"leaderelection demo: {INSTALL_HINT}", file=sys.stderr)
        return 2
    timeline = Timeline()
    with _library_logging(args.verbose, timeline):
        try:
            asyncio.run(Demo(config, timeline, redis_url=args.redis_url).run())
        except (DemoFailure, LeaderElectionError) as exc:
            timeline.log(f"FAILED: {exc}")
            print(f"leaderelection demo: failed: {exc}", file=sys.stderr)
            return 1
    return 0


def _embedded_store_available() -> bool:
    try:
        importlib.import_module("fakeredis")
        importlib.import_module("lupa")  # fakeredis[lua]: the election's Lua scripts need it
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------- timeline


class Timeline:
    """Prints lines prefixed with the milliseconds elapsed since the demo started.

    Keeps the monotonic and the wall-clock start so that times read from the store (such as a
    leader's ``last_heartbeat``, a UTC datetime) can be placed on the same timeline.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.start_wall = time.time()
        self.closed = False  # stdout went away (``demo | head``): the demo goes on silently
        self.labels: dict[str, str] = {}  # instance id -> candidate label, for the log lines

    def now(self) -> float:
        """The monotonic time in seconds."""
        return time.monotonic()

    def ms(self, at: float) -> float:
        """Milliseconds from the demo's start to the monotonic time ``at``."""
        return (at - self.start) * 1000

    def from_wall(self, moment: datetime) -> float:
        """The monotonic time of the (aware) wall-clock ``moment``."""
        return self.start + (moment.timestamp() - self.start_wall)

    def prefix(self, at: float | None = None) -> str:
        """The timestamp prefix of a line about the monotonic time ``at`` (default now)."""
        return f"[+{self.ms(self.now() if at is None else at):8.1f} ms]"

    def log(self, text: str) -> None:
        """Print one line of the timeline, stamped now."""
        if self.closed:
            return
        try:
            print(f"{self.prefix()} {text}", file=sys.stdout, flush=True)
        except BrokenPipeError:
            self.closed = True
            silence_stdout()

    def section(self, title: str) -> None:
        """Print a section heading."""
        self.log(f"=== {title} ===")


class _LogFormatter(logging.Formatter):
    """Formats the library's log records on the demo's timeline, naming candidates A, B, C."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__()
        self.timeline = timeline

    def format(self, record: logging.LogRecord) -> str:
        ms = (record.created - self.timeline.start_wall) * 1000
        instance = getattr(record, "instance_id", None)
        who = self.timeline.labels.get(instance, instance) if isinstance(instance, str) else "-"
        token = getattr(record, "fencing_token", None)
        suffix = f" (token {token})" if token is not None else ""
        text = f"[+{ms:8.1f} ms] log {record.levelname} {who}: {record.getMessage()}{suffix}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def _library_logging(verbosity: int, timeline: Timeline) -> Iterator[None]:
    """Route the ``leaderelection`` logger to stderr for the demo's duration.

    Quiet by default: only errors (such as a callback that raised) are shown, not the warnings
    the crashed candidate's failing heartbeats produce. ``-v`` shows INFO, ``-vv`` DEBUG.
    """
    logger = logging.getLogger("leaderelection")
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter(timeline))
    handler.setLevel(level)
    old_level = logger.level
    logger.addHandler(handler)
    if verbosity > 0:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# ---------------------------------------------------------------------------------- demo


@dataclass(eq=False)
class Candidate:
    """One of the demo's three candidates."""

    label: str
    client: Any
    election: LeaderElection
    entered: float = 0.0  # monotonic time start() was called
    started: float = 0.0  # monotonic time start() returned

    def __str__(self) -> str:
        return self.label


def cut_connection(client: Any) -> None:
    """Make every script call on ``client`` fail as if its connection to Redis had dropped.

    This is how the demo crashes a leader. A crash must stop the heartbeat *without* releasing the
    lock, so the demo must not call ``stop()`` or ``resign()`` (both release: that is their job),
    and it does not reach into the election's private tasks either. Every state change the
    election makes (acquire, renew, release) is one Lua script sent with ``EVALSHA``/``EVAL`` on
    the client the demo gave it, and each candidate has a client of its own; so shadowing those
    two methods on this one client (instance attributes win over the class's methods) cuts this
    candidate off exactly as a crash or a network partition would: no renewal and no release
    reaches Redis, and its lease stays until it expires. The process itself goes on, like a
    partitioned one: the election steps down locally at ``renew_deadline`` and keeps trying, in
    vain, to campaign. The other candidates' clients are untouched.
    """

    async def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        raise redis_exceptions.ConnectionError("connection lost (simulated crash)")

    client.evalsha = refuse
    client.eval = refuse


class Demo:
    """The three acts, run against one store.

    Args:
        config: The shared election config (each candidate gets its own ``instance_id``).
        timeline: Where the lines go.
        redis_url: A real Redis to use; default the embedded in-process store.
    """

    def __init__(
        self, config: ElectionConfig, timeline: Timeline, *, redis_url: str | None = None
    ) -> None:
        self.config = config
        self.tl = timeline
        self.redis_url = redis_url
        self.lock_ttl = config.lock_ttl.total_seconds()
        self.renew_deadline = config.renew_deadline.total_seconds()
        # Generous: a step that takes this long is a failure, not a slow machine.
        self.timeout = max(5.0, 4 * self.lock_ttl + 2)
        self.candidates: list[Candidate] = []
        self.seen_tokens: list[tuple[str, int]] = []  # (label, token) from on_become_leader
        self._stopped = False

    # ----------------------------------------------------------------------- set-up

    def _make_clients(self) -> list[Any]:
        if self.redis_url is None:
            fakeredis = importlib.import_module("fakeredis")
            server = fakeredis.FakeServer()
            return [fakeredis.FakeAsyncRedis(server=server) for _ in LABELS]
        return [aioredis.Redis.from_url(self.redis_url) for _ in LABELS]

    def _make_candidate(self, label: str, client: Any) -> Candidate:
        instance_id = f"{label}-{self.config.hostname}-{os.getpid()}"
        config = ElectionConfig(
            **self.config.model_dump(exclude={"instance_id"}), instance_id=instance_id
        )
        election = LeaderElection(client, config)
        candidate = Candidate(label, client, election)
        tl = self.tl

        @election.on_become_leader
        def became() -> None:
            token = election.fencing_token
            if token is not None:
                self.seen_tokens.append((label, token))
            tl.log(f"{label}: on_become_leader: I am the leader now (fencing token {token})")

        @election.on_lose_leadership
        def lost() -> None:
            tl.log(f"{label}: on_lose_leadership: I am no longer the leader")

        @election.while_leader
        async def work() -> None:
            token = election.fencing_token
            while True:
                tl.log(f"{label}: doing leader-only work (token {token})")
                await asyncio.sleep(TICK)

        tl.labels[election.instance_id] = label
        return candidate

    async def _check_reachable(self) -> None:
        client = self.candidates[0].client
        try:
            async with asyncio.timeout(3.0):
                await client.ping()
        except (redis_exceptions.RedisError, OSError, TimeoutError) as exc:
            raise DemoFailure(
                f"cannot reach Redis at {_redact(self.redis_url or '')}: "
                f"{exc or type(exc).__name__}"
            ) from exc

    # ---------------------------------------------------------------------- helpers

    def _leaders(self) -> list[Candidate]:
        leaders = [c for c in self.candidates if c.election.is_leader]
        if len(leaders) > 1:
            raise DemoFailure(f"two leaders at once: {', '.join(map(str, leaders))}")
        return leaders

    async def _first_leader(self, among: list[Candidate], what: str) -> tuple[Candidate, float]:
        """Wait until one of ``among`` leads; return it and the time it was seen leading."""

        async def leads(candidate: Candidate) -> Candidate:
            await candidate.election.wait_until_leader()
            return candidate

        waiters = [asyncio.create_task(leads(c)) for c in among]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            seen = self.tl.now()
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if not done:
            holder = await self._holder()
            names = ", ".join(map(str, among))
            raise DemoFailure(
                f"{what}: none of {names} became leader within {self.timeout:g}s "
                f"(the store says the leader is {holder})"
            )
        winner = next(iter(done)).result()
        self._leaders()
        return winner, seen

    async def _holder(self) -> str:
        """Who the store says leads, as a label when it is one of ours."""
        labels = {c.election.instance_id: c.label for c in self.candidates}
        for candidate in self.candidates:
            with contextlib.suppress(LeaderElectionError):
                info = await candidate.election.get_leader_info()
                return "no one" if info is None else labels.get(info.instance_id, info.instance_id)
        return "unknown (the store cannot be read)"

    async def _show_working(self, leader: Candidate) -> None:
        """Let ``leader`` work for a while, so its ticks show on the timeline."""
        await asyncio.sleep(PACE)
        if not leader.election.is_leader:
            raise DemoFailure(f"{leader} lost leadership unexpectedly while working")

    def _token(self, leader: Candidate) -> int:
        token = leader.election.fencing_token
        if token is None:
            raise DemoFailure(f"{leader} leads but reports no fencing token")
        return token

    # ------------------------------------------------------------------------- acts

    async def run(self) -> None:
        """Run the demo; raises :class:`DemoFailure` when an act does not go as expected."""
        tl = self.tl
        cfg = self.config
        store = (
            "an embedded in-process Redis (fakeredis)"
            if self.redis_url is None
            else f"Redis at {_redact(self.redis_url)}"
        )
        tl.log(f"leaderelection demo: candidates {', '.join(LABELS)} on {store}")
        tl.log(
            f"election {cfg.name!r}: lock_ttl={_ms(cfg.lock_ttl.total_seconds())}, "
            f"heartbeat_interval={_ms(cfg.heartbeat_interval.total_seconds())}, "
            f"renew_deadline={_ms(self.renew_deadline)}, "
            f"retry_interval={_ms(cfg.retry_interval.total_seconds())}"
        )
        clients = self._make_clients()
        # The first task group in a process imports anyio's asyncio backend (~20 ms, once): do it
        # now, so that the election time below measures the election, not an import.
        async with anyio.create_task_group():
            pass
        try:
            self.candidates = [
                self._make_candidate(label, client)
                for label, client in zip(LABELS, clients, strict=True)
            ]
            if self.redis_url is not None:
                await self._check_reachable()
            elected = await self._election()
            failed_over = await self._crash(elected)
            handed_over = await self._handoff(failed_over[0], crashed=elected[0])
            await self._show_working(handed_over[0])
            tl.section("shutdown")
            tl.log("stop() every candidate: the leader releases the lock on the way out")
            await self._stop_all()
            self._report(elected, failed_over, handed_over)
        finally:
            await self._stop_all()
            for client in clients:
                closer = getattr(client, "aclose", None) or client.close
                with contextlib.suppress(Exception):
                    await closer()

    async def _election(self) -> tuple[Candidate, int, float]:
        tl = self.tl
        tl.section("1. election")
        tl.log(f"{', '.join(LABELS[:-1])} and {LABELS[-1]} enter the election at the same time")

        async def enter(candidate: Candidate) -> None:
            candidate.entered = tl.now()
            await candidate.election.start()
            candidate.started = tl.now()

        results = await asyncio.gather(*(enter(c) for c in self.candidates), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if any(c.election.statistics().restart_protection for c in self.candidates):
            tl.log(
                "Redis started recently, so restart protection holds elections back until it "
                f"has been up for about one lease (lock_ttl={_ms(self.lock_ttl)}): a leader "
                "from before a Redis restart that lost its lock must have stepped down first. "
                "Waiting..."
            )
        leaders = self._leaders()
        if leaders:
            leader, seen = leaders[0], leaders[0].started
        else:
            leader, seen = await self._first_leader(self.candidates, "election")
        token = self._token(leader)
        took = (seen - leader.entered) * 1000
        followers = " and ".join(str(c) for c in self.candidates if c is not leader)
        tl.log(
            f"ELECTION: {leader} is the leader with fencing token {token}, elected in "
            f"{took:.1f} ms (enter to leader); {followers} follow, sleeping until its lease "
            "could expire or a release is announced"
        )
        await self._show_working(leader)
        return leader, token, took

    async def _crash(self, elected: tuple[Candidate, int, float]) -> tuple[Candidate, int, float]:
        tl = self.tl
        crashed = elected[0]
        survivors = [c for c in self.candidates if c is not crashed]
        tl.section("2. leader crash")
        cut_connection(crashed.client)
        crashed_at = tl.now()
        tl.log(
            f"CRASH: {crashed} is cut off from Redis (simulated crash): its heartbeats stop "
            "reaching Redis and it never releases the lock"
        )
        try:
            await crashed.election.wait_until_follower(timeout=self.renew_deadline + 1.0)
        except TimeoutError:
            raise DemoFailure(
                f"{crashed} still claimed leadership {_ms(self.renew_deadline + 1.0)} after "
                f"being cut off (renew_deadline is {_ms(self.renew_deadline)})"
            ) from None
        stepped_down = tl.now()
        info = await survivors[0].election.get_leader_info()
        if info is not None and info.instance_id == crashed.election.instance_id:
            heartbeat = tl.from_wall(info.last_heartbeat)
            expires = heartbeat + self.lock_ttl
            tl.log(
                f"{crashed} stepped down locally {_ms(stepped_down - heartbeat)} after its last "
                f"heartbeat (at +{tl.ms(heartbeat):.1f} ms): no renewal within renew_deadline "
                f"({_ms(self.renew_deadline)}), so it stops leading before its lease in Redis "
                f"expires at +{tl.ms(expires):.1f} ms (last heartbeat + lock_ttl)"
            )
            expiry_note = (
                f"last heartbeat at +{tl.ms(heartbeat):.1f} ms + lock_ttl {_ms(self.lock_ttl)}"
            )
        else:  # the record is gone already: the lease expired at the latest lock_ttl after now
            expires = crashed_at + self.lock_ttl
            tl.log(f"{crashed} stepped down locally (no renewal within renew_deadline)")
            expiry_note = "estimated: crash + lock_ttl"

        async def announce_expiry() -> None:
            await asyncio.sleep(max(expires - tl.now(), 0.0))  # pacing the line, not detection
            tl.log(
                f"{crashed}'s lease expired in Redis ({expiry_note}); "
                f"{' and '.join(map(str, survivors))} may take over now"
            )

        announcer = asyncio.create_task(announce_expiry())
        try:
            new, seen = await self._first_leader(survivors, f"failover after {crashed}'s crash")
        finally:
            await announcer
        token = self._token(new)
        after = (seen - expires) * 1000
        tl.log(
            f"FAILOVER: {new} is the leader with fencing token {token}, {after:.1f} ms after "
            f"{crashed}'s lease expired ({_ms(seen - crashed_at)} after the crash)"
        )
        await self._show_working(new)
        return new, token, after

    async def _handoff(
        self, leader: Candidate, *, crashed: Candidate
    ) -> tuple[Candidate, int, float]:
        tl = self.tl
        others = [c for c in self.candidates if c is not leader and c is not crashed]
        tl.section("3. graceful resign and handoff")
        waiter = asyncio.create_task(self._first_leader(others, f"handoff after {leader} resigned"))
        await asyncio.sleep(0)  # the waiter is waiting on the others' leader events
        resigned_at = tl.now()
        tl.log(
            f"{leader} calls resign(): it ends its term, releases the lock and announces the "
            "release on the release channel"
        )
        try:
            await leader.election.resign()
        except BaseException:
            waiter.cancel()
            with contextlib.suppress(BaseException):
                await waiter
            raise
        tl.log(
            f"{leader}: resign() returned after {_ms(tl.now() - resigned_at)}; it stays a "
            f"candidate but holds back for retry_interval "
            f"({_ms(self.config.retry_interval.total_seconds())})"
        )
        new, seen = await waiter
        token = self._token(new)
        took = (seen - resigned_at) * 1000
        how = (
            "woken by the release channel, not by a timer"
            if took < FAST_HANDOFF * 1000
            else f"slower than expected: its timer may have fired first (lock_ttl {self.lock_ttl}s)"
        )
        tl.log(
            f"HANDOFF: {new} is the leader with fencing token {token}, {took:.1f} ms after "
            f"{leader} called resign() ({how})"
        )
        return new, token, took

    async def _stop_all(self) -> None:
        """Stop every candidate, one at a time: followers first, the leader last.

        The leader's release then comes last on the timeline, and no release message reaches a
        follower while its release listener is being cancelled: on Python 3.11, fakeredis' pub/sub
        read (``asyncio.wait_for``) swallows a cancellation that lands in the same loop iteration
        as a message, which once made ``stop()`` hang (the library now cancels repeatedly).
        """
        if self._stopped:
            return
        self._stopped = True
        order = sorted(self.candidates, key=lambda c: c.election.is_leader)
        for candidate in order:
            await candidate.election.stop()

    def _report(
        self,
        elected: tuple[Candidate, int, float],
        failed_over: tuple[Candidate, int, float],
        handed_over: tuple[Candidate, int, float],
    ) -> None:
        tl = self.tl
        tl.section("4. fencing tokens")
        terms = [elected, failed_over, handed_over]
        tokens = [token for _, token, _ in terms]
        increasing = all(a < b for a, b in itertools.pairwise(tokens))
        seen = " < ".join(f"{token} ({who})" for who, token, _ in terms)
        if not increasing:
            raise DemoFailure(f"fencing tokens are not strictly increasing: {tokens}")
        if [token for _, token in self.seen_tokens] != tokens:
            raise DemoFailure(
                f"the on_become_leader callbacks saw the terms {self.seen_tokens}, "
                f"expected {tokens}"
            )
        tl.log(f"fencing tokens seen: {seen}: strictly increasing, one per term")
        tl.log(
            f"summary: {elected[0]} elected in {elected[2]:.1f} ms; {failed_over[0]} took over "
            f"{failed_over[2]:.1f} ms after {elected[0]}'s lease expired; {handed_over[0]} took "
            f"over {handed_over[2]:.1f} ms after {failed_over[0]} resigned; 3 terms, fencing "
            "tokens strictly increasing"
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:g} s"


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
