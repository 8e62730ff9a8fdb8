"""examples/async_worker.py: two workers, one leads; SIGTERM hands leadership over at once."""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
import uuid

import pytest

from tests.examples.processes import ROOT, Process, example_env
from tests.redis_harness import RedisServer

WORKER = str(ROOT / "examples" / "async_worker.py")
LOCK_TTL = 4.0
# A crashed leader's lease would hold a follower back for about LOCK_TTL; a release wakes it
# through the election's channel within milliseconds. The bound leaves room for a loaded machine.
HANDOFF_BOUND = 1.0
START_TIMEOUT = 30.0  # interpreter start and imports, on a busy 2-core machine


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_sigterm_hands_leadership_to_the_other_worker(shared_redis: RedisServer) -> None:
    env = example_env(
        REDIS_URL=shared_redis.url,
        LEADER_ELECTION_NAME=f"example-worker-{uuid.uuid4().hex[:8]}",
        LEADER_ELECTION_LOCK_TTL=f"{LOCK_TTL:g}s",
        LEADER_ELECTION_HEARTBEAT_INTERVAL="1s",
        LEADER_ELECTION_RETRY_INTERVAL="500ms",
        WORK_INTERVAL="0.2",
    )
    with contextlib.ExitStack() as stack:
        workers = []
        for label in ("worker-1", "worker-2"):
            # --seconds: a worker left running by a failed test stops by itself.
            proc = Process([sys.executable, WORKER, "--seconds", "90"], env=env, label=label)
            stack.callback(proc.close)
            workers.append(proc)
        ids = {}
        for proc in workers:
            _, _, started = proc.wait_for(
                r"^started: instance (\S+), election ", timeout=START_TIMEOUT
            )
            ids[proc] = started.group(1)

        # Exactly one leads, and the other names it as the leader.
        leader, follower = _leader_and_follower(workers, ids)
        _, _, leading = leader.wait_for(r"^leading: fencing token (\d+)$", timeout=5)
        old_token = int(leading.group(1))
        follower.wait_for(f"^following: leader is {re.escape(ids[leader])}$", timeout=5)
        assert not follower.matches(r"^leading:"), follower.dump()

        # Graceful handoff: SIGTERM the leader; the follower leads well within the lease.
        mark = len(follower.lines)
        sent = time.monotonic()
        leader.send_signal(signal.SIGTERM)
        _, led_at, took_over = follower.wait_for(
            r"^leading: fencing token (\d+)$", timeout=LOCK_TTL + 5, after=mark
        )
        handoff = led_at - sent
        print(f"\ngraceful handoff (SIGTERM to the leader -> the other leads): {handoff:.3f}s")
        assert handoff < HANDOFF_BOUND, (
            f"handoff took {handoff:.3f}s, lock_ttl {LOCK_TTL}s\n{leader.dump()}\n{follower.dump()}"
        )
        assert int(took_over.group(1)) > old_token

        assert leader.wait(timeout=15) == 0, leader.dump()
        assert leader.matches(r"^stopping: releasing leadership$"), leader.dump()
        assert leader.matches(r"^stopped$"), leader.dump()

        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=15) == 0, follower.dump()
        assert follower.matches(r"^stopped$"), follower.dump()
        for proc in workers:
            assert "Traceback" not in proc.output(), proc.dump()

        # The last one out released the lock: nobody leads.
        with shared_redis.sync_client() as client:
            assert client.exists(f"leaderelection:{{{env['LEADER_ELECTION_NAME']}}}:lock") == 0


def _leader_and_follower(
    workers: list[Process], ids: dict[Process, str]
) -> tuple[Process, Process]:
    """Wait until one worker says it leads and the other says it follows it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leading = [proc for proc in workers if proc.matches(r"^leading:")]
        if len(leading) > 1:
            raise AssertionError("both workers lead:\n" + "\n".join(p.dump() for p in workers))
        if leading:
            (leader,) = leading
            (follower,) = (proc for proc in workers if proc is not leader)
            return leader, follower
        time.sleep(0.01)  # polling both outputs, until the deadline
    raise AssertionError("no worker leads:\n" + "\n".join(p.dump() for p in workers))
