"""``leaderelection step-down [options] [--instance ID] [--wait DURATION | --no-wait]``.

Asks the leader to resign gracefully, as its own ``resign()`` would: it releases the lock, a
follower takes over within milliseconds, and it stays a candidate (held back for
``retry_interval``). The request is ``S <instance id>`` on the election's pub/sub channel
(:meth:`LeaderObserver.request_step_down`); every candidate that runs a version of the library
with step-down support listens there, and the named one resigns if it leads.

Then, unless ``--no-wait``, it follows the election's changes until the asked term has ended
and the next leader is known (or the wait is over), and says who leads now.

Exit status: 0 when the term ended (or ``--no-wait`` and the request was delivered, or the
``--instance`` named does not lead: nothing to do); 3 when no one leads (nothing to do); 1 when
no candidate received the request, when the leader did not step down within the wait, or when
Redis failed or refused; 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Final

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderElectionError,
    LeaderInfo,
    LeaderObserver,
)

from ._common import (
    ExitCode,
    add_connection_arguments,
    add_verbosity_argument,
    closing,
    config_from_args,
    duration_argument,
    format_age,
    library_logging,
    redis_url_from_args,
    report_error,
    say,
)

__all__ = ["add_arguments", "run", "step_down"]

_NAME: Final = "step-down"

EPILOG: Final = (
    "The leader honours the request if it runs a version of leaderelection with step-down "
    "support. Exit status: 0 when the leader's term ended (the new leader is printed), when "
    "--instance names an instance that does not lead, or with --no-wait once the request was "
    "delivered; 3 when the election has no leader; 1 when no candidate received the request, "
    "the leader did not step down within --wait, or Redis failed or refused; 2 for usage and "
    "configuration errors. See docs/cli.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``step-down`` subcommand's options to ``parser``."""
    parser.usage = (
        "leaderelection step-down [options] [--instance ID] [--wait DURATION | --no-wait]"
    )
    parser.epilog = EPILOG
    group = parser.add_argument_group("step-down options")
    group.add_argument(
        "--instance",
        metavar="ID",
        help="ask only if this instance leads; if another one does, do nothing (default: ask "
        "whoever leads)",
    )
    waiting = group.add_mutually_exclusive_group()
    waiting.add_argument(
        "--wait",
        type=duration_argument,
        metavar="DURATION",
        help="how long to wait for the term to end and the next leader to take over "
        "(default: the lease, --lock-ttl)",
    )
    waiting.add_argument(
        "--no-wait",
        action="store_true",
        help="send the request and exit without waiting for the handoff",
    )
    add_connection_arguments(parser)
    add_verbosity_argument(parser)


def _elapsed(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else format_age(seconds)


def _describe(info: LeaderInfo) -> str:
    return (
        f"{info.instance_id} (host {info.hostname}, pid {info.pid}, "
        f"fencing token {info.fencing_token})"
    )


async def step_down(
    url: str, config: ElectionConfig, *, instance: str | None, wait: float | None
) -> int:
    """Ask the leader (or ``instance``, if it leads) to step down, and wait up to ``wait``
    seconds for the handoff (None: do not wait). Returns the exit code.

    Raises:
        LeaderElectionError: no candidate received the request, or Redis failed or refused.
    """
    async with LeaderObserver(url, config) as observer:
        leader = await observer.current()
        if leader is None:
            say(_NAME, f"election {config.name!r} has no leader: nothing to do")
            return ExitCode.NO_LEADER
        if instance is not None and leader.instance_id != instance:
            say(
                _NAME,
                f"{instance} does not lead election {config.name!r}, {_describe(leader)} "
                "does: nothing to do",
            )
            return ExitCode.OK
        # Ask before following the changes: a subscription of our own would count as a
        # receiver of the request. What happened in between shows in the first state read.
        await observer.request_step_down(leader.instance_id)
        loop = asyncio.get_running_loop()
        asked_at = loop.time()
        say(_NAME, f"asked {_describe(leader)} to step down")
        if wait is None:
            return ExitCode.OK

        ended = False
        try:
            async with (
                asyncio.timeout(wait),
                closing(observer.changes()) as changes,
            ):
                async for change in changes:
                    new = change.leader
                    if new is not None and new.fencing_token == leader.fencing_token:
                        continue  # still the asked term
                    if not ended:
                        ended = True
                        # Said as seen: a term that ends also when its lease expires.
                        say(
                            _NAME,
                            f"the term of {leader.instance_id} with fencing token "
                            f"{leader.fencing_token} ended {_elapsed(loop.time() - asked_at)} "
                            "after the request",
                        )
                    if new is None:
                        continue  # between two terms: wait for the next leader
                    if new.instance_id == leader.instance_id:
                        say(
                            _NAME,
                            f"{_describe(new)} leads again: no other candidate took over",
                        )
                    else:
                        say(_NAME, f"{_describe(new)} leads now")
                    return ExitCode.OK
        except TimeoutError:
            pass
        if ended:
            say(_NAME, f"no one leads yet, {format_age(wait)} after the request")
            return ExitCode.OK
        say(
            _NAME,
            f"error: {leader.instance_id} did not step down within {format_age(wait)}: it may run "
            "a version of leaderelection without step-down support, or it missed the request; "
            "stop it instead (SIGTERM to `leaderelection run` releases leadership at once)",
        )
        return ExitCode.ERROR


def run(args: argparse.Namespace) -> int:
    """Run the ``step-down`` subcommand with the parsed command line; return the exit code."""
    if args.instance_id is not None:
        print(
            "leaderelection step-down: error: --instance-id is the id of a candidate, and "
            "step-down is not one: use --instance ID to name the leader to ask",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        config = config_from_args(args)
        url = redis_url_from_args(args)
    except ConfigurationError as exc:
        return report_error(_NAME, exc)
    if args.no_wait:
        wait: float | None = None
    elif args.wait is not None:
        wait = args.wait.total_seconds()
    else:
        wait = config.lock_ttl.total_seconds()
    with library_logging(_NAME, args.verbose):
        try:
            return asyncio.run(step_down(url, config, instance=args.instance, wait=wait))
        except LeaderElectionError as exc:
            return report_error(_NAME, exc)
