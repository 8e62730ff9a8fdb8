"""LeaderObserver and election.changes() on a real redis-server: every change, in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from leaderelection import (
    LeaderChange,
    LeaderElection,
    LeaderElectionError,
    LeaderObserver,
)
from leaderelection._store import RedisStore
from tests.support import fast_config


class Recorder:
    """Collects an observer's stream in a background task."""

    def __init__(self, stream: AsyncIterator[LeaderChange]) -> None:
        self.changes: list[LeaderChange] = []
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(stream))

    async def _run(self, stream: AsyncIterator[LeaderChange]) -> None:
        async for change in stream:
            self.changes.append(change)
            self._new.set()

    @property
    def tokens(self) -> list[int | None]:
        return [c.fencing_token for c in self.changes]

    async def wait_for(self, token: int | None, *, count: int = 1, timeout: float = 10) -> None:
        """Wait until ``token`` (None: no leader) was seen ``count`` times."""
        async with asyncio.timeout(timeout):
            while self.tokens.count(token) < count:
                self._new.clear()
                await self._new.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_current_reads_the_leader_and_its_lease(shared_redis: Any, name: str) -> None:
    config = fast_config(name)
    async with LeaderObserver(shared_redis.url, config) as observer:
        assert await observer.current() is None
        assert await observer.current_lease() == (None, 0.0)
        async with LeaderElection(shared_redis.url, config) as election:
            info, lease_left = await observer.current_lease()
            assert info is not None
            assert info.instance_id == election.instance_id
            assert info.fencing_token == election.fencing_token
            assert 0 < lease_left <= 1.0
        assert await observer.current() is None


async def test_every_change_of_a_scripted_sequence_is_seen_once_in_order(
    shared_redis: Any, make_proxy: Any, name: str
) -> None:
    """20+ changes: handoffs by resign, stops, a lease that expires without an announcement
    (the leader's traffic blackholed) with and without a successor waiting, and restarts.

    The candidates record every term they win; the stream must be exactly: the initial state,
    then each term's token followed by "no leader", in the order the terms were granted.
    """
    config = fast_config(name)
    terms: list[int] = []

    def candidate(url: str = shared_redis.url) -> LeaderElection:
        election = LeaderElection(url, config)

        @election.on_become_leader
        def won() -> None:
            token = election.fencing_token
            if token is not None and token not in terms:
                terms.append(token)

        return election

    async def leader_of(*elections: LeaderElection) -> LeaderElection:
        async with asyncio.timeout(10):
            while True:
                for election in elections:
                    if election.is_leader:
                        return election
                await asyncio.sleep(0.01)

    observer = LeaderObserver(shared_redis.url, config)
    recorder = Recorder(observer.changes())
    try:
        await recorder.wait_for(None)  # the initial state: no leader
        a, b, c = candidate(), candidate(), candidate()
        async with a, b, c:
            leader = await leader_of(a, b, c)
            for _ in range(8):  # handoffs: the token, then no leader, then the next token
                await recorder.wait_for(leader.fencing_token)
                await leader.resign()
                leader = await leader_of(*(e for e in (a, b, c) if e is not leader))
            await recorder.wait_for(leader.fencing_token)
        await recorder.wait_for(None, count=len(terms) + 1)  # the last one stopped: no leader

        # A lease that expires with no one waiting: only the read at expiry can see it end.
        proxy = await make_proxy(shared_redis)
        lonely = candidate(proxy.url)
        async with lonely:
            assert lonely.is_leader
            await recorder.wait_for(lonely.fencing_token)
            proxy.blackhole()
            await lonely.wait_until_follower(timeout=5)
            await recorder.wait_for(None, count=len(terms) + 1, timeout=5)
            # Drop the attempts the blackhole holds: delivered late, one could win a term that
            # no candidate knows of (the observer would rightly report it).
            proxy.reset()
            proxy.pass_through()
            await lonely.wait_until_leader(timeout=10)
            await recorder.wait_for(lonely.fencing_token)

            # A lease that expires while another waits: the next term is announced, the end of
            # the old one is not; the stream still shows no leader in between.
            d = candidate()
            async with d:
                proxy.blackhole()
                await d.wait_until_leader(timeout=10)
                await recorder.wait_for(d.fencing_token)
                proxy.reset()
                proxy.pass_through()
                for _ in range(3):
                    await d.resign()
                    await lonely.wait_until_leader(timeout=10)
                    await recorder.wait_for(lonely.fencing_token)
                    await lonely.resign()
                    await d.wait_until_leader(timeout=10)
                    await recorder.wait_for(d.fencing_token)
        await recorder.wait_for(None, count=len(terms) + 1)
    finally:
        await recorder.close()
        await observer.aclose()

    expected: list[int | None] = [None]
    for token in terms:
        expected += [token, None]
    assert len(terms) >= 16  # more than 20 changes: each term is two (it starts, it ends)
    assert recorder.tokens == expected
    assert terms == sorted(terms)
    assert recorder.changes[0].initial
    assert not any(change.initial for change in recorder.changes[1:])
    for before, after in zip(recorder.changes, recorder.changes[1:], strict=False):
        assert after.previous == before.leader or after.previous is None


async def test_an_idle_observer_reads_about_once_per_lease(
    shared_redis: Any, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No busy polling: with a stable leader, reads come at lease expiry only."""
    reads = 0
    read = asyncio.Event()
    original = RedisStore.read_state

    async def counting(self: RedisStore, *, timeout: float) -> Any:
        nonlocal reads
        reads += 1
        read.set()
        return await original(self, timeout=timeout)

    monkeypatch.setattr(RedisStore, "read_state", counting)
    config = fast_config(name)  # a 1 s lease, renewed every 100 ms
    async with (
        LeaderElection(shared_redis.url, config) as election,
        LeaderObserver(shared_redis.url, config) as observer,
    ):
        assert election.is_leader
        recorder = Recorder(observer.changes())
        try:
            await recorder.wait_for(election.fencing_token)
            start, renewals = reads, election.statistics().renewals
            async with asyncio.timeout(10):
                while reads - start < 3:
                    read.clear()
                    await read.wait()
            # Three reads took at least two leases: the leader renewed many times meanwhile.
            assert election.statistics().renewals - renewals >= 12
            assert recorder.tokens == [election.fencing_token]
        finally:
            await recorder.close()


async def test_a_candidate_exposes_the_same_stream(shared_redis: Any, name: str) -> None:
    config = fast_config(name)
    async with (
        LeaderElection(shared_redis.url, config) as a,
        LeaderElection(shared_redis.url, config) as b,
    ):
        recorder = Recorder(b.changes())
        try:
            first = a if a.is_leader else b
            first_token = first.fencing_token
            await recorder.wait_for(first_token)
            await first.resign()
            second = b if first is a else a
            await second.wait_until_leader(timeout=5)
            await recorder.wait_for(second.fencing_token)
            assert recorder.tokens == [first_token, None, second.fencing_token]
        finally:
            await recorder.close()


async def test_step_down_request_makes_the_leader_resign(shared_redis: Any, name: str) -> None:
    config = fast_config(name)
    async with LeaderObserver(shared_redis.url, config) as observer:
        assert await observer.request_step_down() is None  # no leader: nothing sent
        with pytest.raises(LeaderElectionError, match="received the step-down request"):
            await observer.request_step_down("nobody-listens")
        async with (
            LeaderElection(shared_redis.url, config) as a,
            LeaderElection(shared_redis.url, config) as b,
        ):
            leader, follower = (a, b) if a.is_leader else (b, a)
            # A request naming another instance is ignored by the leader.
            await observer.request_step_down(follower.instance_id)
            asked = await observer.request_step_down()
            assert asked == leader.instance_id
            await follower.wait_until_leader(timeout=5)
            assert not leader.is_leader
            assert (await observer.current()) is not None
            assert (await observer.current()).instance_id == follower.instance_id  # type: ignore[union-attr]
            assert leader.statistics().state in ("follower", "held_back")  # still a candidate


async def test_metadata_reaches_followers_observers_and_the_release_message(
    shared_redis: Any, name: str
) -> None:
    # A value that looks like the token field must not fool the release script's token lookup.
    metadata = {"url": "http://10.0.0.5:8000", "note": '"fencing_token":7, {}'}
    leader_config = fast_config(name, metadata=metadata)
    async with LeaderObserver(shared_redis.url, fast_config(name)) as observer:
        recorder = Recorder(observer.changes())
        try:
            async with (
                LeaderElection(shared_redis.url, leader_config) as leader,
                LeaderElection(shared_redis.url, fast_config(name)) as follower,
            ):
                assert leader.is_leader
                token = leader.fencing_token
                info = await follower.get_leader_info()
                assert info is not None
                assert info.metadata == metadata
                await recorder.wait_for(token)
                announced = recorder.changes[-1].leader
                assert announced is not None
                assert announced.metadata == metadata
                await leader.stop()
                await follower.wait_until_leader(timeout=5)
                await recorder.wait_for(follower.fencing_token)
            ended = [c for c in recorder.changes if c.leader is None and c.previous is not None]
            assert ended[0].previous is not None
            assert ended[0].previous.fencing_token == token  # "R <token>" read the real token
            assert ended[0].previous.metadata == metadata
        finally:
            await recorder.close()
