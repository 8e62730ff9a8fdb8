"""The ``leaderelection`` command line (also ``python -m leaderelection``): the dispatcher.

Each subcommand lives in a module of its own in this package, imported only when that subcommand
runs, so ``leaderelection --help`` stays fast and a subcommand's optional dependencies
(``fakeredis`` for ``demo``) are never needed by the others. A subcommand module provides two
functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...          # returns the exit code

What several subcommands share (the Redis and election options, exit codes, error lines, logging,
signals, the formatting of times and leader records) lives in :mod:`leaderelection.cli._common`;
no subcommand imports another. Adding a subcommand is one entry in ``COMMANDS`` and one module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from leaderelection import __version__

__all__ = ["COMMANDS", "Command", "main"]


class CommandModule(Protocol):
    """What a subcommand's module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the subcommand's options and arguments to ``parser``."""
        ...

    def run(self, args: argparse.Namespace) -> int:
        """Run the subcommand with the parsed ``args``; return the process exit code."""
        ...


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its module (imported lazily) and the text of ``--help``.

    Attributes:
        module: Import path of the module implementing :class:`CommandModule`.
        help: One line shown in ``leaderelection --help``.
        description: The paragraph shown in ``leaderelection <command> --help``.
    """

    module: str
    help: str
    description: str

    def load(self) -> CommandModule:
        """Import the subcommand's module."""
        return cast(CommandModule, importlib.import_module(self.module))


COMMANDS: dict[str, Command] = {
    "demo": Command(
        module="leaderelection.cli.demo",
        help="watch three candidates elect, fail over after a crash, and hand over on resign",
        description=(
            "Run three candidates (A, B, C) in this process and print a timeline: the election, "
            "a leader crash and the failover after its lease expires, a graceful resign() and "
            "the handoff through the release channel, and the fencing tokens of every term. "
            "Uses an embedded in-process Redis (fakeredis) unless --redis-url is given."
        ),
    ),
    "run": Command(
        module="leaderelection.cli.run",
        help="run a command only while this instance leads, and stop it when leadership ends",
        description=(
            "Campaign in an election and run CMD while this instance leads: it starts when a "
            "term starts, with the fencing token in its environment, and gets SIGTERM when the "
            "term ends (SIGKILL after --grace). SIGINT and SIGTERM are forwarded to it; once it "
            "is gone, leadership is released."
        ),
    ),
    "status": Command(
        module="leaderelection.cli.status",
        help="show the current leader, its fencing token, heartbeat and lease; exit 3 if none",
        description=(
            "Read who leads the election: instance id, hostname, pid, fencing token, when the "
            "term started, the age of the last heartbeat and the lease left. Exits 0 when a "
            "leader exists and 3 when none does; --json prints one JSON object."
        ),
    ),
    "watch": Command(
        module="leaderelection.cli.watch",
        help="print one line per change of leader, with a timestamp, until interrupted",
        description=(
            "Print the current leader, then one line per change of leader, in order, with "
            "'no leader' between two terms, each with the time it was seen; --json prints JSON "
            "lines. Runs until SIGINT or SIGTERM, and then exits 0."
        ),
    ),
    "step-down": Command(
        module="leaderelection.cli.stepdown",
        help="ask the leader to resign gracefully and hand over, e.g. before maintenance",
        description=(
            "Ask the current leader (or the one named with --instance, if it leads) to resign "
            "gracefully: it releases leadership, another candidate takes over within "
            "milliseconds, and it stays a candidate. Then wait for the handoff and print the "
            "new leader."
        ),
    ),
}


def _selected(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first argument that is not an option."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser.

    Args:
        selected: The subcommand about to run: only its module is imported, to add its options.
            The other subcommands are listed (with their help) but not imported.

    Returns:
        The top-level parser; a parsed namespace has ``command`` set to the subcommand's name.
    """
    parser = argparse.ArgumentParser(
        prog="leaderelection",
        description="Asyncio leader election on Redis or Valkey: tools and a live demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.description)
        if name == selected:
            command.load().add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``leaderelection`` command line.

    Args:
        argv: The arguments without the program name; default ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for usage errors (and when no subcommand is given, after
        printing the help), otherwise what the subcommand returns.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = _selected(args_list)
    parser = build_parser(selected)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help, --version and usage errors: return, don't exit
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return COMMANDS[args.command].load().run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
