"""Example programs as real subprocesses: their output lines, read as they come, and teardown.

Every process starts in a session (and process group) of its own, so that :meth:`Process.close`
kills it together with everything it started (uvicorn's workers), even after a failed test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.redis_harness import free_port

ROOT = Path(__file__).resolve().parents[2]

# Settings the examples read from the environment; a test passes its own.
_EXAMPLE_VARIABLES = ("REDIS_URL", "ADVERTISED_URL", "JOB_INTERVAL", "WORK_INTERVAL")


def example_env(**extra: str) -> dict[str, str]:
    """This process's environment without election or example settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("LEADER_ELECTION_") and key not in _EXAMPLE_VARIABLES
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Process:
    """A subprocess whose stdout and stderr (merged) are read line by line by a thread.

    Each line is kept with the ``time.monotonic()`` at which it was read.
    """

    def __init__(self, args: Sequence[str], *, env: dict[str, str], label: str) -> None:
        self.label = label
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._eof = False
        self.popen = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.pgid = self.popen.pid  # start_new_session: the process leads its own group
        self._reader = threading.Thread(target=self._read, name=f"read {label}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, *, timeout: float, after: int = 0
    ) -> tuple[int, float, re.Match[str]]:
        """The first line at index >= ``after`` matching the regex ``pattern``:
        ``(index, time read, match)``. Fails if the output ends or ``timeout`` passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        index = after
        with self._changed:
            while True:
                while index < len(self.lines):
                    at, text = self.lines[index]
                    if match := regex.search(text):
                        return index, at, match
                    index += 1
                if self._eof:
                    raise AssertionError(
                        f"{self.label} ended (exit code {self.popen.poll()}) before printing "
                        f"/{pattern}/:\n{self.dump()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.label}: no line /{pattern}/ within {timeout}s:\n{self.dump()}"
                    )
                self._changed.wait(left)

    def wait_until_count(self, pattern: str, count: int, *, timeout: float) -> None:
        """Wait until ``count`` lines match ``pattern``."""
        after = 0
        for _ in range(count):
            index, _, _ = self.wait_for(pattern, timeout=timeout, after=after)
            after = index + 1

    def matches(self, pattern: str) -> list[re.Match[str]]:
        """Every line so far matching the regex ``pattern``."""
        regex = re.compile(pattern)
        with self._changed:
            texts = [text for _, text in self.lines]
        return [m for text in texts if (m := regex.search(text))]

    def output(self) -> str:
        with self._changed:
            return "\n".join(text for _, text in self.lines)

    def dump(self, last: int = 200) -> str:
        with self._changed:
            texts = [text for _, text in self.lines[-last:]]
        return f"--- {self.label} (pid {self.pid}), last {len(texts)} lines:\n" + "\n".join(texts)

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and its output to be read; return its exit code."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.label} did not exit within {timeout}s:\n{self.dump()}"
            ) from None
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        """Kill the process and its whole process group (idempotent), and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.popen.wait()
        self._reader.join(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


def start_example_app(
    label: str,
    env: Callable[[int], dict[str, str]],
    *,
    ready: str,
    timeout: float,
    workers: int | None = None,
) -> tuple[Process, int]:
    """``uvicorn examples.fastapi_app:app`` on a free loopback port, once its output matches
    ``ready``; ``env(port)`` is its environment. Tries another port when one was taken between
    choosing it and binding it. Returns the process and its port."""
    for _ in range(3):
        port = free_port()
        args = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
        if workers is not None:
            args += ["--workers", str(workers)]
        args += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        process = Process(args, env=env(port), label=label)
        try:
            process.wait_for(ready, timeout=timeout)
        except AssertionError:
            process.close()
            if "address already in use" in process.output().lower():
                continue  # another process took the free port first
            raise
        return process, port
    raise AssertionError(f"no free port for {label} after 3 attempts")
