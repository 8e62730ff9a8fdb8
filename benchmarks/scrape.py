"""The cost of a metrics scrape with many live elections in one process.

``python benchmarks/scrape.py [--elections 1 100 1000] [--samples N]`` starts that many real
``LeaderElection`` objects (on the in-memory store and a fake clock: a scrape reads only the
elections' memory, never Redis, so the store does not change what is measured), a tenth of them
leading and each with a few renewals, then times ``N`` scrapes and prints p50 and p95 in
milliseconds for:

* ``collect``: ``LeaderElectionCollector.collect()`` alone (the library's part);
* ``scrape``: ``prometheus_client.generate_latest`` over a registry holding only the collector
  (collect plus the text format, what ``GET /metrics`` costs), and the size of its output;
* ``otel``: one collection of the OpenTelemetry instruments by the SDK's in-memory reader
  (when ``opentelemetry-sdk`` is installed).

Needs ``pip install -e '.[prometheus,otel]' opentelemetry-sdk``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import CollectorRegistry, generate_latest

from leaderelection import ElectionConfig, LeaderElection
from leaderelection.prometheus import LeaderElectionCollector
from leaderelection.testing import FakeClock, MemoryServer


def timed(func: Callable[[], object], samples: int) -> tuple[float, float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1 if len(times) > 1 else 0]


async def measure(count: int, samples: int) -> None:
    clock = FakeClock()
    server = MemoryServer(clock)
    elections = []
    for i in range(count):
        # Ten candidates per election name: one leads, nine follow.
        config = ElectionConfig(name=f"job-{i // 10}")
        election = LeaderElection(None, config, clock=clock, store=server.store(config))
        await election.start()
        elections.append(election)
    await clock.advance(10)  # three renewals per leader
    leaders = sum(e.is_leader for e in elections)

    collector = LeaderElectionCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    size = len(generate_latest(registry))
    c50, c95 = timed(lambda: list(collector.collect()), samples)
    s50, s95 = timed(lambda: generate_latest(registry), samples)
    line = (
        f"{count:>6} elections ({leaders} leading): collect p50 {c50:7.2f} ms  p95 {c95:7.2f} ms"
        f" | scrape p50 {s50:7.2f} ms  p95 {s95:7.2f} ms, {size / 1024:7.1f} KiB"
    )
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from leaderelection.opentelemetry import LeaderElectionInstrumentor
    except ImportError:
        line += " | otel: opentelemetry-sdk not installed"
    else:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        instrumentor = LeaderElectionInstrumentor()
        instrumentor.instrument(meter_provider=provider)
        o50, o95 = timed(reader.get_metrics_data, samples)
        instrumentor.uninstrument()
        provider.shutdown()
        line += f" | otel p50 {o50:7.2f} ms  p95 {o95:7.2f} ms"
    print(line, flush=True)
    for election in elections:
        await election.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elections", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for count in args.elections:
        asyncio.run(measure(count, args.samples))


if __name__ == "__main__":
    main()
