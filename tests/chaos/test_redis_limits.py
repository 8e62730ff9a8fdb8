"""Where Redis itself can break "at most one leader", and what fencing still guarantees.

Replication is asynchronous. When the primary dies before a replica received the write that
granted a term, and that replica is promoted, the new primary has no lock: it grants a second
term at once (its uptime is long, so the restart protection has nothing to hold back) while the
first leader still reads ``is_leader`` True until its local deadline. No client-side protocol on
a single asynchronously replicated lease store can prevent this; the fencing token can still
order the two leaders' writes at a resource that checks it. This test builds that exact schedule,
records the histories in the chaos format, and lets the chaos checker count the overlap and the
rejected stale write.

The resource here is another Redis server that checks the token itself (the high-water mark a
database would keep, as in the SQL recipe): a ``Fence`` writes to the election's own server,
which is the one that failed over (``tests/integration/test_fence.py`` measures that window).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from leaderelection import ElectionConfig
from tests.chaos.agent import History, recording_election
from tests.chaos.checker import check, format_table

pytestmark = pytest.mark.redis

# A resource that keeps the highest token it accepted and refuses a write below it. Tokens are
# decimal strings without leading zeros, compared exactly (length, then text), never as Lua
# doubles. The writes it applies are logged in the chaos format (token, writer, seq, sent).
FENCED_WRITE = """
local highest = redis.call('GET', KEYS[1])
local token = ARGV[1]
if highest and (#token < #highest or (#token == #highest and token < highest)) then
  return 0
end
redis.call('SET', KEYS[1], token)
redis.call('RPUSH', KEYS[2], cjson.encode({token, ARGV[2], tonumber(ARGV[3]), ARGV[4]}))
return 1
"""
RESOURCE_KEYS = ("fenced:highest", "fenced:log")

FAULT = "failover_lagging_replica"
CONFIG: dict[str, Any] = {
    "name": "limits",
    "lock_ttl": "2s",
    "heartbeat_interval": "100ms",
    "retry_interval": "200ms",
    "renew_deadline": "1800ms",
}


async def lagging_pair(make_redis_server: Any, make_proxy: Any) -> tuple[Any, Any, Any]:
    """A primary, the proxy of its replication link (to partition it), and its replica."""
    primary = make_redis_server()
    link = await make_proxy(primary)
    # started from a thread: the proxy needs this event loop while the replica syncs
    replica = await asyncio.to_thread(make_redis_server, replica_of=(link.host, link.port))
    # the restart protection needs ceil(2 s) + 1 s of uptime before a free lock is granted
    await asyncio.to_thread(replica.wait_uptime_above, 3)
    return primary, link, replica


def two_candidates(primary: Any, replica: Any, tmp_path: Path, **config: Any) -> tuple[Any, Any]:
    """ "first" on the primary and "second" on the replica, each recording its history."""
    return tuple(  # type: ignore[return-value]
        recording_election(
            server.url,
            ElectionConfig(instance_id=who, **CONFIG, **config),
            History(str(tmp_path / f"agent-{who}.jsonl")),
        )
        for who, server in (("first", primary), ("second", replica))
    )


def started_faults() -> list[dict[str, Any]]:
    return [
        {"meta": {"ttl": 2.0, "retry": 0.2, "types": [FAULT]}, "t": time.monotonic()},
        {"started": time.monotonic()},
    ]


def checked(tmp_path: Path, faults: list[dict[str, Any]], resource_log: bytes) -> Any:
    """The chaos checker's report of the histories, and its table (printed)."""
    (tmp_path / "resource.jsonl").write_bytes(resource_log)
    (tmp_path / "faults.jsonl").write_text("".join(json.dumps(r) + "\n" for r in faults))
    report = check(tmp_path)
    table = format_table(report)
    print(table)
    return report, table


async def test_failover_to_a_lagging_replica_overlaps_but_fencing_orders_the_writes(
    make_redis_server: Any, make_proxy: Any, tmp_path: Path
) -> None:
    primary, link, replica = await lagging_pair(make_redis_server, make_proxy)
    resource_server = make_redis_server()
    faults = started_faults()
    resource = redis.asyncio.Redis(host=resource_server.host, port=resource_server.port)
    write = resource.register_script(FENCED_WRITE)

    async def fenced_write(token: int | None, writer: str, seq: int) -> int:
        assert token is not None
        sent = time.monotonic()
        ok = int(await write(keys=list(RESOURCE_KEYS), args=[token, writer, seq, sent]))
        if not ok:  # a refusal is recorded by its writer, as a chaos agent does
            History(str(tmp_path / f"agent-{writer}.jsonl")).emit(
                "write", token=token, seq=seq, t0=sent, ok=False, at="resource"
            )
        return ok

    first, second = two_candidates(primary, replica, tmp_path)
    link.blackhole()  # replication stalls: the replica will miss the grant
    async with first:
        assert first.is_leader
        old_token = first.fencing_token
        assert await fenced_write(old_token, "first", 1) == 1

        inject = time.monotonic()
        primary.stop()  # the primary dies before the replica got the grant
        await link.close()  # what the link held is lost with it
        replica.promote()
        faults.append({"fault": FAULT, "target": "redis", "inject": inject})
        async with second:
            faults[-1]["heal"] = time.monotonic()
            # The documented break: both read is_leader True at this moment.
            assert second.is_leader
            assert first.is_leader
            new_token = second.fencing_token
            assert new_token is not None and old_token is not None
            assert new_token > old_token  # re-seeded from the server's clock
            # Fencing orders the writes: the new leader's lands, the old one's is refused.
            assert await fenced_write(new_token, "second", 1) == 1
            assert await fenced_write(old_token, "first", 2) == 0
            # The old leader steps down by its local deadline, Redis or not.
            await first.wait_until_follower(timeout=5)
            assert second.is_leader
            faults.append({"finished": time.monotonic()})
    log = await resource.lrange(RESOURCE_KEYS[1], 0, -1)
    await resource.aclose()
    report, table = checked(tmp_path, faults, b"".join(entry + b"\n" for entry in log))
    row = report.rows[FAULT]
    assert row.overlaps == 1, table
    assert 0 < row.max_overlap < 1.8, table
    assert row.stale_rejected == 1, table
    assert report.total.fenced_overlaps == 0, table
    assert report.total.token_regressions == 0, table
    assert report.total.unbalanced == 0, table
    assert not report.safe  # S1 broke, as documented in docs/guarantees.md


async def test_with_min_replicas_the_unreplicated_grant_never_counts_so_no_overlap(
    make_redis_server: Any, make_proxy: Any, tmp_path: Path
) -> None:
    """The same schedule with ``min_replicas=1``: the grant the replica missed was never
    acknowledged, so the first candidate never led, and the promoted replica's term (once it has
    a replica of its own) overlaps nothing."""
    primary, link, replica = await lagging_pair(make_redis_server, make_proxy)
    faults = started_faults()
    first, second = two_candidates(primary, replica, tmp_path, min_replicas=1)
    link.blackhole()
    async with first:
        assert not first.is_leader  # the grant was written, but no replica acknowledged it
        assert "min_replicas=1" in (first.statistics().last_error or "")
        inject = time.monotonic()
        primary.stop()
        await link.close()
        replica.promote()
        faults.append({"fault": FAULT, "target": "redis", "inject": inject})
        async with second:
            assert not second.is_leader  # the new primary has no replica yet
            await asyncio.to_thread(make_redis_server, replica_of=replica)
            faults[-1]["heal"] = time.monotonic()
            await second.wait_until_leader(timeout=10)
            assert not first.is_leader
            assert first.statistics().terms_won == 0
            faults.append({"finished": time.monotonic()})
    report, table = checked(tmp_path, faults, b"")
    assert report.rows[FAULT].overlaps == 0, table
    assert report.total.token_regressions == 0, table
    assert report.total.unbalanced == 0, table
