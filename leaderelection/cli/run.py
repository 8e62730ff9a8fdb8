"""``leaderelection run [options] -- CMD [ARGS...]``: run a command only while this instance leads.

Every instance campaigns; the leader starts the command, with its fencing token, instance id and
election name in the environment. When the term ends (a lost lease, a step-down), the command
gets SIGTERM at once and SIGKILL after ``--grace`` seconds; then ``run`` waits for its next term
and starts the command again (``--on-loss restart``, the default) or exits (``--on-loss exit``).
When the command exits on its own, ``run`` releases leadership and exits with its status. SIGINT
and SIGTERM are forwarded to the command; once it is gone, ``run`` releases leadership and exits.

The timing rests on the election's ``while_leader`` task: the library cancels it when the term
ends, no later than ``renew_deadline`` after the last successful renewal was sent, even if Redis
never answers. That cancellation starts the stop; the stop itself runs in a task of its own, so
that nothing can cut the grace period short, and the next term's task waits for it: there is never
more than one command running per ``run``, and the command is always gone before ``run`` releases
leadership. The cancelled task itself also waits for the stop, so that a resign (a step-down
request) releases the lock only once the command is gone, as long as the election waits for it.

The command runs in a process group of its own (so a terminal's Ctrl-C reaches it once, through
``run``), and signals go to the whole group, so a shell and the commands it started all get them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
from typing import Final

import anyio

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    LeaderElection,
    LeaderElectionError,
)

from ._common import (
    ExitCode,
    add_connection_arguments,
    add_verbosity_argument,
    config_from_args,
    duration_argument,
    library_logging,
    on_stop_signals,
    redact_url,
    redis_url_from_args,
    report_error,
    say,
    signal_name,
    status_of_returncode,
)

__all__ = [
    "ENV_FENCING_TOKEN",
    "ENV_INSTANCE_ID",
    "ENV_NAME",
    "Runner",
    "add_arguments",
    "command_from_args",
    "run",
]

ENV_FENCING_TOKEN: Final = "LEADER_ELECTION_FENCING_TOKEN"
ENV_INSTANCE_ID: Final = "LEADER_ELECTION_INSTANCE_ID"
ENV_NAME: Final = "LEADER_ELECTION_NAME"
ON_LOSS: Final = ("restart", "exit")
_NAME: Final = "run"

EPILOG: Final = (
    f"The command gets {ENV_FENCING_TOKEN}, {ENV_INSTANCE_ID} and {ENV_NAME} in its "
    "environment, and runs without a shell unless --shell is given. Exit status: the command's "
    "own when it ended on its own or after a forwarded SIGINT/SIGTERM (128+N when signal N ended "
    "it), 4 after a lost term with --on-loss exit, 1 when Redis refused (credentials, "
    "permissions, read-only replica), 2 for usage and configuration errors, 126 or 127 when the "
    "command cannot be executed or is not found. See docs/cli.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` subcommand's options to ``parser``."""
    parser.usage = "leaderelection run [options] -- CMD [ARGS...]"
    parser.epilog = EPILOG
    group = parser.add_argument_group("run options")
    group.add_argument(
        "--grace",
        type=duration_argument,
        default=None,
        metavar="DURATION",
        help="how long the command has to exit after SIGTERM before it gets SIGKILL (default: "
        "lock_ttl - renew_deadline, 3.3s with the default lease: the longest grace with which "
        "a cut-off leader's command is gone before another instance can start its own)",
    )
    group.add_argument(
        "--on-loss",
        choices=ON_LOSS,
        default="restart",
        help="when leadership is lost and the command was stopped: campaign again and restart it "
        "on the next term, or exit with status 4 (default: %(default)s)",
    )
    group.add_argument(
        "--shell",
        action="store_true",
        help="run the command with /bin/sh -c (the words after -- joined by spaces)",
    )
    add_connection_arguments(parser)
    add_verbosity_argument(parser)
    parser.add_argument(
        "run_command",  # not "command": the top-level parser keeps the subcommand's name there
        nargs=argparse.REMAINDER,
        metavar="-- CMD [ARGS...]",
        help="the command to run while this instance leads",
    )


def command_from_args(args: argparse.Namespace) -> list[str]:
    """The command to run: the words after ``--`` (or after the options, without ``--``)."""
    command = list(args.run_command)
    return command[1:] if command[:1] == ["--"] else command


def run(args: argparse.Namespace) -> int:
    """Run the ``run`` subcommand with the parsed command line; return the exit code."""
    command = command_from_args(args)
    if not " ".join(command).strip():
        print(
            "leaderelection run: error: no command given: leaderelection run [options] -- CMD "
            "[ARGS...]",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    try:
        config = config_from_args(args)
        url = redis_url_from_args(args)
    except ConfigurationError as exc:
        return report_error(_NAME, exc)

    safe_grace = (config.lock_ttl - config.renew_deadline).total_seconds()
    grace = safe_grace if args.grace is None else args.grace.total_seconds()
    if grace > safe_grace:
        say(
            _NAME,
            f"warning: --grace {grace:g}s is longer than lock_ttl - renew_deadline "
            f"({safe_grace:g}s): if this host is cut off from Redis, its command may still run "
            "when another instance starts its own",
        )

    async def main() -> int:
        runner = Runner(
            url,
            config,
            command,
            shell=args.shell,
            grace=grace,
            on_loss=args.on_loss,
        )
        return await runner.main()

    with library_logging(_NAME, args.verbose):
        return asyncio.run(main())


class _Child:
    """One run of the command: its process, the term it belongs to, and how it ends.

    Attributes:
        proc: The process; it leads a process group of its own.
        token: The fencing token of the term that started it.
        exited: Completes when the process has exited (and its status was printed).
        watcher: The task that waits for the process to exit and completes ``exited``.
        stopping: The task that stops it (SIGTERM or a forwarded signal, SIGKILL after the
            grace period), once someone started to stop it; None while it runs undisturbed.
    """

    __slots__ = ("exited", "proc", "stopping", "token", "watcher")

    def __init__(self, proc: asyncio.subprocess.Process, token: int) -> None:
        self.proc = proc
        self.token = token
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stopping: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        """The process id (also the id of its process group)."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True until the process has exited."""
        return self.proc.returncode is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command's process group, if it is still running."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):  # it exited a moment ago
                os.killpg(self.proc.pid, signum)

    def stop(self, signum: int, grace: float) -> asyncio.Task[None]:
        """Send ``signum`` now and SIGKILL after ``grace`` seconds, unless it exits first.

        The first call starts the stop; later calls return the same task without signalling
        (forward further signals with :meth:`signal`).
        """
        if self.stopping is None:
            self.signal(signum)
            self.stopping = asyncio.ensure_future(self._stop(signum, grace))
        return self.stopping

    async def _stop(self, signum: int, grace: float) -> None:
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(self.exited)
        except TimeoutError:
            say(
                _NAME,
                f"pid {self.pid} is still running {grace:g}s after {signal_name(signum)}: "
                "sending SIGKILL",
            )
            self.signal(signal.SIGKILL)
            await asyncio.shield(self.exited)


class Runner:
    """Campaigns, and runs the command while this instance leads (see the module docstring).

    Args:
        redis_url: The Redis to campaign on.
        config: The election's config.
        command: The command and its arguments (with ``shell``, the words of a shell command).
        shell: Run ``" ".join(command)`` with ``/bin/sh -c``.
        grace: Seconds between SIGTERM (or a forwarded signal) and SIGKILL.
        on_loss: ``"restart"``: after a lost term, start the command again on the next term;
            ``"exit"``: exit with :attr:`ExitCode.LEADERSHIP_LOST`.
    """

    def __init__(
        self,
        redis_url: str,
        config: ElectionConfig,
        command: list[str],
        *,
        shell: bool = False,
        grace: float = 10.0,
        on_loss: str = "restart",
    ) -> None:
        if on_loss not in ON_LOSS:
            raise ValueError(f"on_loss must be one of {ON_LOSS}, got {on_loss!r}")
        self._url = redis_url
        self._config = config
        self._command = command
        self._shell = shell
        self._display = " ".join(command) if shell else shlex.join(command)
        self._grace = grace
        self._on_loss = on_loss
        self._election = LeaderElection(redis_url, config)
        self._election.while_leader(self._lead)
        self._done = asyncio.Event()  # set once: the run is over, stop the command and leave
        self._exit_code: int = ExitCode.OK
        self._signal: int | None = None  # the first SIGINT/SIGTERM that run received
        self._signalled: _Child | None = None  # the command that got that signal forwarded
        self._child: _Child | None = None  # the latest command started
        self._spawning: asyncio.Task[_Child | None] | None = None
        self._ending: asyncio.Task[None] | None = None  # stopping the last ended term's command

    async def main(self) -> int:
        """Campaign and supervise the command until the run is over; return the exit code."""
        with on_stop_signals(self._on_signal):
            return await self._main()

    async def _main(self) -> int:
        election = self._election
        say(
            _NAME,
            f"campaigning in election {self._config.name!r} as {election.instance_id} at "
            f"{redact_url(self._url)}",
        )
        try:
            await election.start()
        except LeaderElectionError as exc:
            return report_error(_NAME, exc)
        try:
            if not self._done.is_set() and not election.is_leader:
                self._announce_follower()
            await self._done.wait()
            await self._stop_command()
        finally:
            if election.is_leader:
                say(_NAME, "releasing leadership")
            await election.stop()
            if self._ending is not None:
                await self._ending
        say(_NAME, f"exiting with status {self._exit_code}")
        return self._exit_code

    def _announce_follower(self) -> None:
        stats = self._election.statistics()
        if stats.restart_protection:
            return  # the library's warning says how long elections are held back
        if stats.store_errors:
            say(
                _NAME,
                f"cannot reach Redis at {redact_url(self._url)} yet: still trying; the command "
                "starts when this instance leads",
            )
        else:
            leader = stats.leader_id or "another instance"
            say(_NAME, f"following ({leader} leads); the command starts when this instance leads")

    def _finish(self, code: int) -> None:
        """End the run with ``code`` (the first reason to end wins)."""
        if not self._done.is_set():
            self._exit_code = code
            self._done.set()

    # ---------------------------------------------------------------------------- terms

    async def _lead(self) -> None:
        """One term, as a ``while_leader`` task: start the command, stop it when the term ends.

        The election cancels this task when the term ends. The stop then runs as a task of its
        own (:meth:`_end_term`) that the cancellation cannot cut short.
        """
        token = self._election.fencing_token
        if token is None:
            return
        if self._ending is not None:
            await asyncio.shield(self._ending)  # the last term's command must be gone first
        if self._done.is_set() or self._election.fencing_token != token:
            return
        spawn = self._spawning = asyncio.ensure_future(self._spawn(token))
        try:
            child = await asyncio.shield(spawn)
            if child is None:
                return
            await asyncio.shield(child.exited)
        except asyncio.CancelledError:
            ending = self._ending = asyncio.ensure_future(self._end_term(spawn))
            # Hold this task until the command is gone: after a resign() (a step-down request)
            # the election releases the lock once the term's tasks are done (it waits for them
            # up to one call deadline), and the next leader must not start its command while
            # this one still runs. The election's cancel scope would interrupt a plain await.
            with anyio.CancelScope(shield=True):
                await asyncio.shield(ending)
            raise
        if child.stopping is None:
            self._ended_on_its_own(child)

    async def _end_term(self, spawn: asyncio.Task[_Child | None]) -> None:
        """The term of ``spawn``'s command ended: stop the command, then restart or exit."""
        child = await spawn
        if child is None:
            return
        if child.running and child.stopping is None:
            say(
                _NAME,
                f"no longer the leader (the term with fencing token {child.token} ended): "
                f"sending SIGTERM to pid {child.pid}, SIGKILL after {self._grace:g}s",
            )
            child.stop(signal.SIGTERM, self._grace)
        await asyncio.shield(child.exited)
        if child.stopping is None:  # it ended on its own, just as the term ended
            self._ended_on_its_own(child)
            return
        if self._done.is_set():
            return
        if self._on_loss == "exit":
            say(_NAME, "leadership lost and the command stopped: exiting (--on-loss exit)")
            self._finish(ExitCode.LEADERSHIP_LOST)
        else:
            say(_NAME, "waiting for the next term to start the command again (--on-loss restart)")

    def _ended_on_its_own(self, child: _Child) -> None:
        assert child.proc.returncode is not None
        if self._done.is_set():
            return
        status = status_of_returncode(child.proc.returncode)
        say(_NAME, f"the command ended on its own with status {status}")
        self._finish(status)

    # -------------------------------------------------------------------------- command

    async def _spawn(self, token: int) -> _Child | None:
        """Start the command for the term with ``token``; None (and the run ends) if it cannot."""
        env = {
            **os.environ,
            ENV_FENCING_TOKEN: str(token),
            ENV_INSTANCE_ID: self._election.instance_id,
            ENV_NAME: self._config.name,
        }
        say(_NAME, f"leading with fencing token {token}: starting {self._display}")
        try:
            if self._shell:
                proc = await asyncio.create_subprocess_shell(
                    self._display, env=env, process_group=0
                )
            else:
                proc = await asyncio.create_subprocess_exec(
                    *self._command, env=env, process_group=0
                )
        except OSError as exc:
            code = (
                ExitCode.COMMAND_NOT_FOUND
                if isinstance(exc, FileNotFoundError)
                else ExitCode.CANNOT_EXECUTE
            )
            reason = exc.strerror or str(exc)
            say(_NAME, f"error: cannot run {self._command[0]!r}: {reason}")
            self._finish(code)
            return None
        child = _Child(proc, token)
        self._child = child
        child.watcher = asyncio.ensure_future(self._watch(child))
        say(_NAME, f"started pid {proc.pid}")
        return child

    async def _watch(self, child: _Child) -> None:
        """Wait for the command to exit, say how it ended, and complete ``child.exited``."""
        try:
            returncode = await child.proc.wait()
            say(_NAME, f"pid {child.pid} {_describe_exit(returncode)}")
        finally:
            child.exited.set_result(None)

    async def _stop_command(self) -> None:
        """The run is over: make sure the command is gone before leadership is released."""
        if self._spawning is not None:
            await self._spawning  # a command being started right now is stopped below
        child = self._child
        if child is None:
            return
        if child.running and child.stopping is None:
            signum = self._signal or signal.SIGTERM
            if self._signal is not None:
                self._signalled = child
            say(_NAME, f"sending {signal_name(signum)} to pid {child.pid}")
            child.stop(signum, self._grace)
        await asyncio.shield(child.exited)
        if self._signalled is child and child.proc.returncode is not None:
            self._exit_code = status_of_returncode(child.proc.returncode)

    def _on_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM: forward it to the command, then leave (see :meth:`_stop_command`)."""
        child = self._child
        running = child is not None and child.running
        if self._signal is None:
            self._signal = signum
            if running and child is not None:
                say(
                    _NAME,
                    f"got {signal_name(signum)}: forwarding it to pid {child.pid} (SIGKILL after "
                    f"{self._grace:g}s), then releasing leadership",
                )
            else:
                say(_NAME, f"got {signal_name(signum)}: exiting")
            self._finish(128 + signum)
        elif running:
            say(_NAME, f"got {signal_name(signum)} again: forwarding it")
        if running and child is not None:
            if self._signalled is None:
                self._signalled = child
            if child.stopping is None:
                child.stop(signum, self._grace)
            else:
                child.signal(signum)


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    return f"was ended by {signal_name(-returncode)} (status {128 - returncode})"
