"""``leaderelection watch [options] [--json]``: one line per change of leader, until interrupted.

The first line is the state when the watch began; then one line per change, in order, from
:meth:`LeaderObserver.changes`: a new leader, or "no leader" when a term ended (between two terms
there is always a "no leader" line). Each line starts with the time this machine saw the change
and is flushed at once, so the output can be piped. With ``--json``, each line is a JSON object.

SIGINT and SIGTERM end the watch with status 0: that is how it is meant to stop. So does a reader
that goes away (``watch | head -5``). Redis errors after the first read are retried, with a
warning on stderr; a first read that fails ends the watch with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any, Final

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderChange,
    LeaderElectionError,
    LeaderObserver,
)

from ._common import (
    ExitCode,
    add_connection_arguments,
    add_verbosity_argument,
    closing,
    config_from_args,
    format_time,
    info_json,
    library_logging,
    on_stop_signals,
    redact_url,
    redis_url_from_args,
    report_error,
    say,
    signal_name,
    silence_stdout,
)

__all__ = ["add_arguments", "change_json", "format_change", "run", "watch"]

_NAME: Final = "watch"
_STOP_BOUND: Final = 5.0  # seconds to wait for the observer to close after a signal

EPILOG: Final = (
    "The first line is the state when the watch began; every change follows, in order, with "
    "'no leader' between two terms. Lines are flushed at once. Exit status: 0 when stopped by "
    "SIGINT (Ctrl-C) or SIGTERM, or when the reader of the output goes away; 1 when the first "
    "read failed (Redis unreachable, wrong password, missing permission) or Redis refused later; "
    "2 for usage and configuration errors. See docs/cli.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``watch`` subcommand's options to ``parser``."""
    parser.usage = "leaderelection watch [options] [--json]"
    parser.epilog = EPILOG
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per line instead of a line for a person",
    )
    add_connection_arguments(parser)
    add_verbosity_argument(parser)


def format_change(change: LeaderChange) -> str:
    """One line for a person: ``<time>  leader <id> (host ..., pid ..., fencing token ...)`` or
    ``<time>  no leader`` (naming the term that ended, if one did)."""
    at = format_time(change.at)
    info = change.leader
    if info is not None:
        return (
            f"{at}  leader {info.instance_id} (host {info.hostname}, pid {info.pid}, "
            f"fencing token {info.fencing_token})"
        )
    previous = change.previous
    if previous is None:
        return f"{at}  no leader"
    return (
        f"{at}  no leader (the term of {previous.instance_id} with fencing token "
        f"{previous.fencing_token} ended)"
    )


def change_json(change: LeaderChange, election: str) -> dict[str, Any]:
    """One ``--json`` line: ``at``, ``election``, ``initial``, ``leader`` and ``previous``."""
    return {
        "at": format_time(change.at),
        "election": election,
        "initial": change.initial,
        "leader": info_json(change.leader) if change.leader is not None else None,
        "previous": info_json(change.previous) if change.previous is not None else None,
    }


class _ReaderGone(Exception):
    """The standard output was closed (``watch | head``)."""


def _emit(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise _ReaderGone from None


async def watch(url: str, config: ElectionConfig, *, as_json: bool) -> int:
    """Print the changes of leader of ``config.name`` at ``url`` until stopped; the exit code."""
    stop = asyncio.Event()
    got: list[int] = []

    def on_signal(signum: int) -> None:
        if not got:
            got.append(signum)
            say(_NAME, f"got {signal_name(signum)}: stopping")
        stop.set()

    async def follow() -> int:
        async with (
            LeaderObserver(url, config) as observer,
            closing(observer.changes()) as changes,
        ):
            async for change in changes:
                if change.initial:
                    say(
                        _NAME,
                        f"watching election {config.name!r} at {redact_url(url)}; one line per "
                        "change, Ctrl-C to stop",
                    )
                if as_json:
                    _emit(json.dumps(change_json(change, config.name)))
                else:
                    _emit(format_change(change))
        return ExitCode.OK  # not reached: the stream ends only when cancelled

    with on_stop_signals(on_signal):
        task = asyncio.ensure_future(follow())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(_STOP_BOUND):
                    await task
        if task.cancelled() or not task.done():
            return ExitCode.OK
        exc = task.exception()
        if exc is None:
            return task.result()
        if isinstance(exc, _ReaderGone):
            return ExitCode.OK
        if isinstance(exc, LeaderElectionError):
            return report_error(_NAME, exc)
        raise exc


def run(args: argparse.Namespace) -> int:
    """Run the ``watch`` subcommand with the parsed command line; return the exit code."""
    try:
        config = config_from_args(args)
        url = redis_url_from_args(args)
    except ConfigurationError as exc:
        return report_error(_NAME, exc)
    with library_logging(_NAME, args.verbose):
        return asyncio.run(watch(url, config, as_json=args.json))
