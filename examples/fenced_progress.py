"""A leader-only job that records its progress in Redis through a Fence.

    REDIS_URL=redis://localhost:6379/0 python examples/fenced_progress.py

The leader works through a list of items in order. After each one, a single fenced script
appends the item's result to a list and records how far the job got, so the two never
disagree. A new leader reads the progress and carries on from there. A leader that was replaced
while it worked (paused past its lease, or just slow) cannot add a result or move the progress
back: its fenced write is refused, and its job stops.

Two candidates, A and B, play it in one process:

1. A leads and records items 1 and 2, then stalls in the middle of item 3.
2. A's term ends and B leads. Standing in for the stall, A's term is ended with ``resign()``,
   so that the scenario runs the same way every time.
3. B reads the progress (2), and records items 3 to 6.
4. A resumes and records item 3 through the fence of its old term: refused.

Every key is in the election's Redis Cluster hash slot (``myapp:{<election name>}:...``), as a
fenced write needs on a Redis Cluster.

Environment:
    REDIS_URL: The Redis (or Valkey) URL, in any form the library takes (a cluster node's
        ``redis://``, ``redis+sentinel://...``); default ``redis://localhost:6379/0``.
    LEADER_ELECTION_*: The election's settings (``ElectionConfig.from_env``), for example
        ``LEADER_ELECTION_LOCK_TTL``. The election's name is ``--name``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from leaderelection import ElectionConfig, Fence, LeaderElection

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

# KEYS[1] the progress hash, KEYS[2] the results list
# ARGV[1] the number of items done, ARGV[2] the writer's fencing token, ARGV[3] the item's result
# Returns how many results the list holds. Recording an item twice (a retry after a timeout)
# changes nothing.
# --8<-- [start:record-script]
RECORD = """
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
if done < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'done', ARGV[1], 'token', ARGV[2])
  redis.call('RPUSH', KEYS[2], ARGV[3])
end
return redis.call('LLEN', KEYS[2])
"""
# --8<-- [end:record-script]

Work = Callable[[str], Awaitable[str]]


# --8<-- [start:job]
def job_keys(config: ElectionConfig) -> tuple[str, str]:
    """The job's progress hash and results list, in the election's hash slot."""
    return f"myapp:{{{config.name}}}:progress", f"myapp:{{{config.name}}}:results"


async def record(fence: Fence, config: ElectionConfig, done: int, result: str) -> bool:
    """Append ``result`` and set the progress to ``done`` items, in one step, if the fence's
    term still holds; False once a newer term exists (nothing was written then)."""
    written = await fence.eval(RECORD, list(job_keys(config)), [done, fence.token, result])
    return written.written


async def run_job(election: LeaderElection, data: Redis, items: Sequence[str], work: Work) -> None:
    """The leader's job, started at every term: carry on from the recorded progress."""
    fence = election.fence()  # bound to this term
    progress, _ = job_keys(election.config)
    # Fenced writes of earlier terms can no longer land: what is read here is final.
    done = int(await data.hget(progress, "done") or 0)
    for index in range(done, len(items)):
        result = await work(items[index])
        if not await record(fence, election.config, index + 1, result):
            return  # the term is over: the next leader carries on from the progress
    # --8<-- [end:job]


@dataclass(frozen=True)
class Outcome:
    """What the scenario saw, for the tests."""

    token_a: int
    token_b: int
    late_write: bool
    progress: dict[str, str]
    results: list[str]


async def scenario(
    url: str, config: ElectionConfig, items: Sequence[str], stall_at: int = 2
) -> Outcome:
    """Play the scenario of the module docstring with two candidates of ``config``'s election."""
    wait = config.lock_ttl.total_seconds() + 5  # covers restart protection on a new server
    async with Redis.from_url(url, decode_responses=True) as data:
        await data.delete(*job_keys(config))
        stalled = asyncio.Event()
        finished = asyncio.Event()

        async def work_of_a(item: str) -> str:
            if item == items[stall_at]:
                stalled.set()
                await asyncio.Event().wait()  # A stalls here, until its term ends
            return f"{item}: done by A"

        async def work_of_b(item: str) -> str:
            return f"{item}: done by B"

        async with LeaderElection(url, config) as a:

            @a.while_leader
            async def job_a() -> None:
                await run_job(a, data, items, work_of_a)

            await a.wait_until_leader(timeout=wait)
            async with asyncio.timeout(wait):
                await stalled.wait()
            # --8<-- [start:stale-fence]
            stale = a.fence()  # A's term, kept by the part of A that stalled
            # --8<-- [end:stale-fence]
            print(f"A leads with token {stale.token}; records 2 items, stalls in the 3rd")

            async with LeaderElection(url, config) as b:

                @b.while_leader
                async def job_b() -> None:
                    await run_job(b, data, items, work_of_b)
                    finished.set()

                await a.resign()
                await b.wait_until_leader(timeout=wait)
                token_b = b.fence().token
                async with asyncio.timeout(wait):
                    await finished.wait()
                print(f"B leads with token {token_b}; carries on from the progress, to the end")

                # --8<-- [start:late-write]
                late = await record(stale, config, stall_at + 1, f"{items[stall_at]}: late, A")
                # --8<-- [end:late-write]
                print(f"A resumes and records the 3rd item with token {stale.token}: {late}")
                progress, results = job_keys(config)
                outcome = Outcome(
                    stale.token,
                    token_b,
                    late,
                    await data.hgetall(progress),
                    await data.lrange(results, 0, -1),
                )
    for line in outcome.results:
        print(f"  {line}")
    return outcome


async def main(url: str, config: ElectionConfig) -> Outcome:
    items = [f"invoice-{n}" for n in range(1, 7)]
    return await scenario(url, config, items)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="recipes-progress", help="the election's name")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # the library's warnings, e.g. restart protection
    asyncio.run(main(REDIS_URL, ElectionConfig.from_env(name=args.name)))
