"""Figures shared by the benchmark driver and its worker processes: INFO commandstats snapshots,
distribution summaries and resident memory.

The throwaway ``redis-server`` is the test suite's (``tests/redis_harness.py``), imported by
``run.py``; the workers only get its URL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import redis

__all__ = [
    "commandstats",
    "percentile",
    "redis_cpu_s",
    "rss_bytes",
    "stats_delta",
    "summarize",
]


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command name from ``INFO commandstats`` (``{"evalsha": 12, ...}``)."""
    raw: dict[str, Any] = client.info("commandstats")
    out: dict[str, int] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = int(value["calls"]) if isinstance(value, dict) else int(value)
    return out


def redis_cpu_s(client: redis.Redis) -> float:
    """The server's CPU time so far, in seconds: ``used_cpu_sys + used_cpu_user`` of ``INFO cpu``
    (the whole process, every thread)."""
    raw: dict[str, Any] = client.info("cpu")
    return float(raw["used_cpu_sys"]) + float(raw["used_cpu_user"])


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
