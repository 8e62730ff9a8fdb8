"""Fixtures for command-line tests: ``leaderelection run`` processes and what they print."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from tests import support

T = TypeVar("T")

CHILD = str(Path(__file__).with_name("child.py"))
ROOT = str(Path(__file__).resolve().parents[2])
# support.FAST as options: lease 1 s, local step-down after 2/3 s without a renewal.
FAST = tuple(
    arg for field, value in support.FAST.items() for arg in (f"--{field.replace('_', '-')}", value)
)
STARTED = re.compile(r"started pid (\d+)")
GONE = re.compile(r"pid (\d+) (exited|was ended)")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without election settings, with the package importable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LEADER_ELECTION_") and k != "REDIS_URL"
    }
    env["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(extra)
    return env


class RunProcess:
    """A ``leaderelection run`` process: its status lines (stderr) and its command's events.

    The command (``child.py``) prints JSON lines on the stdout it shares with ``run``; other
    stdout lines are kept as ``{"event": "text", "text": ...}``. Every line is stamped with
    ``time.monotonic()`` when it was read.
    """

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.lines: list[tuple[float, str]] = []  # stderr
        self.events: list[dict[str, Any]] = []  # stdout
        self.exited_at: float | None = None
        self._new = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._readers = [
            loop.create_task(self._read(proc.stderr, self._on_line)),
            loop.create_task(self._read(proc.stdout, self._on_event)),
        ]

    async def _read(self, stream: asyncio.StreamReader | None, sink: Any) -> None:
        assert stream is not None
        while raw := await stream.readline():
            sink(raw.decode(errors="replace").rstrip("\n"))
            self._new.set()
        self._new.set()

    def _on_line(self, text: str) -> None:
        self.lines.append((time.monotonic(), text))

    def _on_event(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            event = {"event": "text", "text": text, "t": time.monotonic()}
        self.events.append(event)

    @property
    def stderr(self) -> str:
        return "\n".join(text for _, text in self.lines)

    def child_pids(self) -> list[int]:
        """The commands that ``run`` started and did not report gone."""
        started = [int(m.group(1)) for _, text in self.lines if (m := STARTED.search(text))]
        gone = {int(m.group(1)) for _, text in self.lines if (m := GONE.search(text))}
        return [pid for pid in started if pid not in gone]

    def _ended(self) -> bool:
        return all(reader.done() for reader in self._readers)

    async def _until(self, find: Callable[[], T | None], what: str, timeout: float) -> T:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = find()
                    if found is not None:
                        return found
                    if self._ended():
                        raise AssertionError(f"{self.label} ended before {what}:\n{self.dump()}")
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.label}: no {what} within {timeout}s:\n{self.dump()}"
            ) from None

    async def line(
        self, pattern: str, *, after: int = 0, timeout: float = 10.0
    ) -> tuple[int, float, str]:
        """The first stderr line at index >= ``after`` matching the regex ``pattern``:
        ``(index, time read, text)``."""

        def find() -> tuple[int, float, str] | None:
            for index in range(after, len(self.lines)):
                at, text = self.lines[index]
                if re.search(pattern, text):
                    return index, at, text
            return None

        return await self._until(find, f"stderr line /{pattern}/", timeout)

    async def event(self, kind: str, *, after: int = 0, timeout: float = 10.0) -> dict[str, Any]:
        """The first command event ``kind`` at index >= ``after``."""

        def find() -> dict[str, Any] | None:
            for record in self.events[after:]:
                if record["event"] == kind:
                    return record
            return None

        return await self._until(find, f"{kind!r} event", timeout)

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e["event"] == kind)

    async def wait(self, timeout: float = 10.0) -> int:
        """Wait for ``run`` to exit (and its output to be read); return its exit code."""
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
                self.exited_at = time.monotonic()
                await asyncio.gather(*self._readers)
        except TimeoutError:
            raise AssertionError(
                f"{self.label} did not exit within {timeout}s:\n{self.dump()}"
            ) from None
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def dump(self) -> str:
        events = "\n".join(json.dumps(e) for e in self.events)
        return f"--- {self.label} stderr:\n{self.stderr}\n--- {self.label} stdout:\n{events}"

    async def close(self) -> None:
        """Kill ``run`` and every command it started (they run in process groups of their own)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        # A command outlives a killed ``run``, and holds its stdout open: wait() would hang.
        for pid in self.child_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


class StartRun(Protocol):
    async def __call__(
        self,
        url: str,
        name: str,
        *options: str,
        child: Sequence[str] = (),
        command: Sequence[str] | None = None,
        label: str = "run",
        fast: bool = True,
    ) -> RunProcess: ...


@pytest.fixture
async def start_run() -> AsyncIterator[StartRun]:
    """Start ``python -m leaderelection run --redis-url URL --name NAME [fast timings] OPTIONS
    -- python child.py CHILD...`` (or ``-- COMMAND``); every process is killed at teardown."""
    made: list[RunProcess] = []

    async def start(
        url: str,
        name: str,
        *options: str,
        child: Sequence[str] = (),
        command: Sequence[str] | None = None,
        label: str = "run",
        fast: bool = True,
    ) -> RunProcess:
        argv = [
            sys.executable, "-m", "leaderelection", "run",
            "--redis-url", url, "--name", name,
            *(FAST if fast else ()), *options,
            "--", *(command if command is not None else (sys.executable, CHILD, *child)),
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=clean_env(),
        )
        run = RunProcess(proc, label)
        made.append(run)
        return run

    yield start
    for run in made:
        await run.close()
