"""``leaderelection status [options] [--json]``: who leads an election now.

One read of the leader record and its lease (:meth:`LeaderObserver.current_lease`). The answer
goes to stdout, as a small block for a person or, with ``--json``, as one JSON object; errors go
to stderr as one line. Exit status: 0 when a leader exists, 3 when none, 1 when Redis failed or
refused, 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any, Final

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
    config_from_args,
    format_age,
    format_time,
    info_json,
    library_logging,
    redis_url_from_args,
    report_error,
)

__all__ = ["Status", "add_arguments", "format_status", "read_status", "run", "status_json"]

_NAME: Final = "status"

EPILOG: Final = (
    "Prints the leader's instance id, hostname, pid, fencing token, when its term started, the "
    "age of its last heartbeat and the lease left. Exit status: 0 when a leader exists, 3 when "
    "the election has no leader, 1 when Redis failed or refused (unreachable, wrong password, "
    "missing permission), 2 for usage and configuration errors. See docs/cli.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``status`` subcommand's options to ``parser``."""
    parser.usage = "leaderelection status [options] [--json]"
    parser.epilog = EPILOG
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object instead of the block for a person",
    )
    add_connection_arguments(parser)
    add_verbosity_argument(parser)


# --------------------------------------------------------------------------- formatting


def _ago(at: datetime, now: datetime) -> str:
    seconds = (now - at).total_seconds()
    if seconds >= 0:
        return f"{format_age(seconds)} ago"
    # The leader's clock is ahead of this machine's: say so rather than print a negative age.
    return f"{format_age(-seconds)} ahead of this machine's clock"


class Status:
    """What ``status`` read: the election, its leader (or None), the lease left, and when.

    Attributes:
        election: The election's name.
        leader: The leader's record, or None when no one leads.
        lease_left: Seconds left on the leader's lease in Redis (0.0 without a leader).
        at: When the answer arrived (UTC, this machine's clock).
    """

    __slots__ = ("at", "election", "leader", "lease_left")

    def __init__(
        self, election: str, leader: LeaderInfo | None, lease_left: float, at: datetime
    ) -> None:
        self.election = election
        self.leader = leader
        self.lease_left = lease_left
        self.at = at

    @property
    def exit_code(self) -> int:
        """0 when someone leads, 3 when no one does."""
        return ExitCode.OK if self.leader is not None else ExitCode.NO_LEADER


def format_status(status: Status) -> str:
    """The block for a person, one ``label  value`` line per field (no trailing newline)."""
    rows: list[tuple[str, str]] = [("election", status.election)]
    info = status.leader
    if info is None:
        rows.append(("leader", "none"))
    else:
        rows += [
            ("leader", info.instance_id),
            ("hostname", info.hostname),
            ("pid", str(info.pid)),
            ("fencing token", str(info.fencing_token)),
            (
                "leader since",
                f"{format_time(info.started_at)} ({_ago(info.started_at, status.at)})",
            ),
            (
                "last heartbeat",
                f"{format_time(info.last_heartbeat)} ({_ago(info.last_heartbeat, status.at)})",
            ),
            ("lease left", format_age(status.lease_left)),
        ]
        rows += [(f"metadata {key}", value) for key, value in sorted(info.metadata.items())]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)


def status_json(status: Status) -> dict[str, Any]:
    """The JSON object of ``status --json``: timestamps ISO 8601 UTC, ages in seconds."""
    leader: dict[str, Any] | None = None
    info = status.leader
    if info is not None:
        leader = {
            **info_json(info),
            "leader_for_seconds": round((status.at - info.started_at).total_seconds(), 3),
            "heartbeat_age_seconds": round((status.at - info.last_heartbeat).total_seconds(), 3),
            "lease_left_seconds": round(status.lease_left, 3),
        }
    return {"election": status.election, "at": format_time(status.at), "leader": leader}


# ---------------------------------------------------------------------------------- run


async def read_status(url: str, config: ElectionConfig) -> Status:
    """Read who leads the election ``config.name`` at ``url``, and the lease left.

    Raises:
        StoreError: Redis failed, did not answer in time, or refused.
        CorruptLeaderInfoError: the leader record is not valid.
    """
    async with LeaderObserver(url, config) as observer:
        info, lease_left = await observer.current_lease()
    return Status(config.name, info, lease_left, datetime.now(UTC))


def run(args: argparse.Namespace) -> int:
    """Run the ``status`` subcommand with the parsed command line; return the exit code."""
    try:
        config = config_from_args(args)
        url = redis_url_from_args(args)
    except ConfigurationError as exc:
        return report_error(_NAME, exc)
    with library_logging(_NAME, args.verbose):
        try:
            status = asyncio.run(read_status(url, config))
        except LeaderElectionError as exc:
            return report_error(_NAME, exc)
    text = json.dumps(status_json(status)) if args.json else format_status(status)
    print(text, flush=True)
    return status.exit_code
