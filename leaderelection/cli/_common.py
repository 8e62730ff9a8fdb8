"""What the subcommands share: options, exit codes, errors, logging, signals and formatting.

Every subcommand that talks to Redis takes the same connection and election options, built from
one table: ``--redis-url`` (default ``$REDIS_URL``, else ``redis://localhost:6379/0``) and one
flag per :class:`ElectionConfig` field (``--lock-ttl``, ``--name``, ...). A flag wins over its
``LEADER_ELECTION_*`` environment variable, which wins over the field's default. The exit codes of
the whole command line are defined here, in :class:`ExitCode`, and documented in ``docs/cli.md``.

The rest is what more than one subcommand needs, so that no subcommand imports another: one-line
errors and status lines, the library's log on stderr, SIGINT/SIGTERM handling, a stdout whose
reader went away, and the formatting of times, ages and leader records (``status``, ``watch``,
``step-down``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderElectionError,
    LeaderInfo,
    parse_duration,
)
from leaderelection._connect import check_url
from leaderelection._connect import redact as redact_url

__all__ = [
    "DEFAULT_REDIS_URL",
    "STOP_SIGNALS",
    "ExitCode",
    "add_connection_arguments",
    "add_verbosity_argument",
    "check_redis_url",
    "closing",
    "config_from_args",
    "duration_argument",
    "exit_code_for",
    "format_age",
    "format_time",
    "info_json",
    "library_logging",
    "on_stop_signals",
    "redact_url",
    "redis_url_from_args",
    "report_error",
    "say",
    "signal_name",
    "silence_stdout",
    "status_of_returncode",
]

T = TypeVar("T")

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
REDIS_URL_ENV: Final = "REDIS_URL"


class ExitCode(enum.IntEnum):
    """The exit codes of the ``leaderelection`` command line.

    ``run`` also exits with its command's own status when the command ended on its own (or was
    stopped because ``run`` itself was asked to stop), so any value from 0 to 255 can come from
    there; the codes below are the ones the command line itself chooses.
    """

    OK = 0
    """Success."""
    ERROR = 1
    """Redis refused or failed: wrong password, missing permission, read-only replica, a key of
    another type, or (for one-shot commands) Redis unreachable; or another failure."""
    USAGE = 2
    """Bad usage or configuration: an unknown or invalid option, an invalid ``LEADER_ELECTION_*``
    value, inconsistent timings, an unusable Redis URL, no command given."""
    NO_LEADER = 3
    """``status`` and ``step-down``: the election has no leader."""
    LEADERSHIP_LOST = 4
    """``run --on-loss exit``: the term ended, the command was stopped, and ``run`` exited."""
    CANNOT_EXECUTE = 126
    """``run``: the command was found but could not be executed (permission denied)."""
    COMMAND_NOT_FOUND = 127
    """``run``: the command was not found."""
    INTERRUPTED = 130
    """Interrupted by SIGINT (Ctrl-C). In general, 128 + N means "ended by signal N"."""


# ----------------------------------------------------------------------------- options

# Each ElectionConfig field, its flag's metavar, and its help. The flag is the field's name with
# dashes; its default is None, meaning "not given": the environment or the field's default apply.
_FIELDS: Final[tuple[tuple[str, str, str], ...]] = (
    (
        "name",
        "NAME",
        "the election's name; candidates with the same name compete (default: default)",
    ),
    ("key_prefix", "PREFIX", "prefix of the election's keys (default: leaderelection)"),
    ("lock_key", "KEY", "explicit lock key (default: <prefix>:{<name>}:lock)"),
    ("info_key", "KEY", "explicit leader-info key (default: derived from the lock key)"),
    ("lock_ttl", "DURATION", "lease length in Redis (default: 10s)"),
    ("heartbeat_interval", "DURATION", "how often the leader renews its lease (default: 3s)"),
    (
        "retry_interval",
        "DURATION",
        "backoff base after Redis errors, and the hold-back after a step-down (default: 2s)",
    ),
    (
        "renew_deadline",
        "DURATION",
        "a leader that has not renewed within this steps down (default: 2/3 of --lock-ttl)",
    ),
    ("instance_id", "ID", "this candidate's id (default: <hostname>-<pid>-<random>)"),
    ("hostname", "HOST", "the hostname reported in the leader record (default: this machine's)"),
    (
        "metadata",
        "K=V,...",
        "pairs the leader advertises in its record, e.g. url=http://10.0.0.5:8000 (default: none)",
    ),
    (
        "min_replicas",
        "N",
        "replicas that must acknowledge a new term or a renewal before it counts (default: 0)",
    ),
    (
        "restart_protection",
        "yes|no",
        "hold a free lock back on a server younger than ceil(lock_ttl)+1 s; 'no' only with "
        "appendfsync always, or when a lost lease costs nothing (default: yes)",
    ),
    (
        "priority",
        "N",
        "-100 to 100: a higher priority gets the first chance at a free lock; a sitting leader "
        "is never preempted (default: 0)",
    ),
)
_DURATIONS: Final = frozenset(
    {"lock_ttl", "heartbeat_interval", "retry_interval", "renew_deadline"}
)


def duration_argument(text: str) -> timedelta:
    """An argparse ``type=`` for durations: ``10``, ``2.5``, ``500ms``, ``10s``, ``1m30s``."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--redis-url`` and one flag per :class:`ElectionConfig` field to ``parser``.

    Read them back with :func:`redis_url_from_args` and :func:`config_from_args`.
    """
    group = parser.add_argument_group(
        "Redis and election options",
        "Each option defaults to its LEADER_ELECTION_* environment variable (for example "
        "--lock-ttl to LEADER_ELECTION_LOCK_TTL), then to the library's default. Durations take "
        "seconds (2.5) or units (500ms, 10s, 1m30s).",
    )
    group.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://[[user]:password@]host[:port][/db] (one server, or any node of a Redis "
        "Cluster), rediss://..., unix:///path, or redis+sentinel://[[user]:password@]host:port"
        "[,host:port...]/service[/db] (rediss+sentinel:// for TLS; sentinel credentials as "
        f"?sentinel_username=&sentinel_password=) (default: ${REDIS_URL_ENV}, else "
        f"{DEFAULT_REDIS_URL})",
    )
    for field, metavar, text in _FIELDS:
        env = ElectionConfig.ENV_NAMES.get(field)
        group.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            metavar=metavar,
            type=duration_argument if field in _DURATIONS else str,
            help=f"{text}; env {env}" if env else text,
        )


def add_verbosity_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``-v/--verbose``: show the library's log at INFO (``-v``) or DEBUG (``-vv``)."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the library's log on stderr: -v INFO, -vv DEBUG (default: warnings only)",
    )


def redis_url_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """The Redis URL: ``--redis-url``, else ``$REDIS_URL``, else :data:`DEFAULT_REDIS_URL`.

    Raises:
        ConfigurationError: the URL cannot be used (checked without connecting).
    """
    url = args.redis_url
    if not url:
        env = os.environ if environ is None else environ
        url = env.get(REDIS_URL_ENV, "").strip() or DEFAULT_REDIS_URL
    check_redis_url(str(url))
    return str(url)


def check_redis_url(url: str) -> None:
    """Check that ``url`` can be used (any form the library accepts), without connecting.

    Raises:
        ConfigurationError: it cannot; the message says what is wrong and what is expected.
    """
    check_url(url)


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ElectionConfig:
    """The election's config: the flags given, over ``LEADER_ELECTION_*``, over the defaults.

    Raises:
        ConfigurationError: a value is invalid or the timings are inconsistent; the message names
            the field (or the environment variable it came from).
    """
    overrides: dict[str, Any] = {}
    for field, _, _ in _FIELDS:
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return ElectionConfig.from_env(environ, **overrides)


# ------------------------------------------------------------------------------- errors


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error that ends a command: see :class:`ExitCode`."""
    if isinstance(exc, ConfigurationError):
        return ExitCode.USAGE
    return ExitCode.ERROR


def report_error(command: str, exc: BaseException) -> int:
    """Print ``leaderelection <command>: error: <message>`` to stderr; return the exit code.

    The library's messages already say what to fix (the field, the URL, the missing permission),
    so they are printed as they are, on one line, without a traceback.
    """
    message = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, LeaderElectionError | OSError):
        message = f"{type(exc).__name__}: {message}"
    print(f"leaderelection {command}: error: {message}", file=sys.stderr, flush=True)
    return exit_code_for(exc)


def say(command: str, text: str) -> None:
    """Print one status line, ``leaderelection <command>: <text>``, to stderr."""
    with contextlib.suppress(OSError, ValueError):  # stderr gone: carry on silently
        print(f"leaderelection {command}: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ signals


STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """Call ``handler(signum)`` on SIGINT and SIGTERM while the block runs, in the running loop.

    The handlers are the event loop's (``loop.add_signal_handler``), removed when the block is left.
    """
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handler, signum)
    try:
        yield
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def status_of_returncode(returncode: int) -> int:
    """A child's exit status as a shell reports it: its code, or 128 + N if signal N ended it."""
    return returncode if returncode >= 0 else 128 - returncode


# ------------------------------------------------------------------------------- output


def silence_stdout() -> None:
    """Point stdout at the null device after its reader went away (``watch | head``), so that
    flushing it again, at exit, does not fail too."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def format_time(at: datetime) -> str:
    """``at`` in UTC as ISO 8601 with milliseconds: ``2026-11-26T17:01:02.345Z``."""
    utc = at.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_age(seconds: float) -> str:
    """A duration for a person: ``0.4s``, ``12.3s``, ``4m05s``, ``2h07m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def info_json(info: LeaderInfo) -> dict[str, Any]:
    """A leader record as a JSON-ready dict, with ISO 8601 UTC timestamps."""
    return {
        "instance_id": info.instance_id,
        "hostname": info.hostname,
        "pid": info.pid,
        "fencing_token": info.fencing_token,
        "started_at": format_time(info.started_at),
        "last_heartbeat": format_time(info.last_heartbeat),
        "metadata": dict(info.metadata),
    }


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Close ``stream`` (an async generator, such as ``changes()``) when the block is left, so
    that its subscription ends at once rather than when it is garbage-collected."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


# ------------------------------------------------------------------------------ logging


class _RepeatFilter(logging.Filter):
    """Shows a message (by its template) at most once per ``interval`` seconds.

    While Redis is down the election logs every retry; a person needs to see it once in a while,
    not every backoff.
    """

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        now = time.monotonic()
        key = str(record.msg)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


class _Formatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        text = f"leaderelection {self.command}: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


@contextlib.contextmanager
def library_logging(command: str, verbosity: int, repeat_interval: float = 30.0) -> Iterator[None]:
    """Show the ``leaderelection`` logger on stderr while the command runs.

    Warnings and errors by default (a repeated warning at most once per ``repeat_interval``
    seconds); ``verbosity`` 1 adds INFO, 2 adds DEBUG (and shows every repeat).
    """
    logger = logging.getLogger("leaderelection")
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(command))
    handler.setLevel(level)
    if verbosity < 2:
        handler.addFilter(_RepeatFilter(repeat_interval))
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the command line owns stderr; no root handler prints it twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
