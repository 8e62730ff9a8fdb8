"""The cost of ``min_replicas``: one renewal's round trip with and without the replicas' WAIT.

``python benchmarks/min_replicas.py [--samples N]`` starts a master and one replica (the test
suite's harness, free loopback ports) and times ``N`` renewals of one term for
``min_replicas=0`` and ``min_replicas=1`` (the WAIT rides in the script's round trip), then
prints p50, p99 and max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from leaderelection import ElectionConfig
from leaderelection._store import RedisStore
from tests.redis_harness import RedisServer

RECORD = '{"instance_id":"bench","fencing_token":1}'


async def renewals(master: RedisServer, replicas: int, samples: int) -> list[float]:
    async with master.client() as client:
        store = RedisStore.for_config(
            client, ElectionConfig(name=f"bench-{replicas}", min_replicas=replicas)
        )
        await store.acquire(
            "t", '{"instance_id":"bench"', 10_000, unknown_tokens=(), min_uptime_s=0, timeout=1
        )
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            assert await store.renew("t", RECORD, 10_000, timeout=1)
            times.append((time.perf_counter() - started) * 1000)
        return sorted(times)


async def main(samples: int) -> None:
    with RedisServer() as master, RedisServer(replica_of=master) as _replica:
        print(f"server {master.binary}, {samples} renewals each")
        for replicas in (0, 1):
            times = await renewals(master, replicas, samples)
            print(
                f"min_replicas={replicas}: renew p50 {times[len(times) // 2]:.3f} ms, "
                f"p99 {times[int(len(times) * 0.99)]:.3f} ms, max {times[-1]:.3f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    asyncio.run(main(parser.parse_args().samples))
