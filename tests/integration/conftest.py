"""Fixtures for integration and fault tests: candidate processes on real redis-servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

CANDIDATE = str(Path(__file__).with_name("candidate.py"))
ROOT = str(Path(__file__).resolve().parents[2])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.redis)


class Candidate:
    """A candidate process (``candidate.py``) and the JSON events it printed."""

    def __init__(self, proc: asyncio.subprocess.Process, instance_id: str) -> None:
        self.proc = proc
        self.instance_id = instance_id
        self.events: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))
            self._new.set()
        self._new.set()

    async def next_event(self) -> None:
        """Wait until the candidate prints its next event (or exits)."""
        self._new.clear()
        await self._new.wait()

    async def expect(self, event: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first ``event`` at index >= ``after``, waiting up to ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while True:
                for record in self.events[after:]:
                    if record["event"] == event:
                        return record
                if self._reader.done():
                    raise AssertionError(
                        f"{self.instance_id} exited before {event!r}: {self.events}"
                    )
                await self.next_event()

    def last_until(self) -> float:
        """The last local lease deadline the candidate reported."""
        return max(r["until"] for r in self.events if r["event"] in ("became", "lease"))

    def terms(self) -> list[tuple[float, float]]:
        """The candidate's terms so far, as ``(start, end)`` monotonic times.

        A term starts at its ``became`` and ends at the earlier of its ``lost`` and the last lease
        deadline it reported: ``is_leader`` reads the clock, so a paused or killed process stops
        leading at that deadline without saying so. A term still running ends, so far, at its
        last deadline.
        """
        terms: list[tuple[float, float]] = []
        start: float | None = None
        end = 0.0
        for record in self.events:
            if record["event"] == "became":
                start, end = record["t"], record["until"]
            elif start is not None and record["event"] == "lease":
                end = max(end, record["until"])
            elif start is not None and record["event"] == "lost":
                terms.append((start, min(end, record["t"])))
                start = None
        if start is not None:
            terms.append((start, end))
        return terms

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def assert_one_leader_at_a_time(*candidates: Candidate) -> None:
    """No two terms in the candidates' whole recorded history overlap (guarantee 3)."""
    terms = sorted((start, end, c.instance_id) for c in candidates for start, end in c.terms())
    assert terms, "no candidate led"
    for (_, end, earlier), (start, _, later) in itertools.pairwise(terms):
        assert end <= start, f"{earlier} led until {end:.6f}, {later} from {start:.6f}"


class MakeCandidate(Protocol):
    async def __call__(
        self,
        url: str,
        name: str,
        *,
        ttl: str = ...,
        heartbeat: str = ...,
        retry: str = ...,
        min_replicas: int = ...,
        ready_timeout: float = ...,
    ) -> Candidate: ...


@pytest.fixture
async def make_candidate() -> AsyncIterator[MakeCandidate]:
    """Start candidate processes; every one is killed at teardown."""
    made: list[Candidate] = []

    async def make(
        url: str,
        name: str,
        *,
        ttl: str = "1s",
        heartbeat: str = "100ms",
        retry: str = "200ms",
        min_replicas: int = 0,
        ready_timeout: float = 30,
    ) -> Candidate:
        instance_id = f"proc-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            CANDIDATE,
            url,
            name,
            instance_id,
            ttl,
            heartbeat,
            retry,
            str(min_replicas),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        candidate = Candidate(proc, instance_id)
        made.append(candidate)
        await candidate.expect("ready", timeout=ready_timeout)
        return candidate

    yield make
    for candidate in made:
        await candidate.close()


@pytest.fixture
def own_redis(make_redis_server: Any) -> Any:
    """A fresh server for a test that breaks it, up long enough that restart protection lets a
    1 s lease be granted (uptime > ceil(1) + 1 s): about three seconds of waiting."""
    server = make_redis_server()
    server.wait_uptime_above(2)
    return server
