"""Cancellation safety on real redis-server processes, through a delaying TCP proxy.

The hazard (the class of redis-py CVE-2023-28859): a command is cancelled after it was sent but
before its reply was read. If the connection then goes back into use with that reply still on
its way, the next command on it reads the previous command's answer, and every later command is
one answer behind. For an election that would be silent corruption: a renewal reading a GET's
bytes, a leader-info read returning another command's reply, a lock acquired by a reply that
belonged to someone else.

Every test here makes the cancellation land while the reply is in flight: the proxy delays each
chunk by a fixed time in each direction, and either the test waits until the server has executed
the command (its side effect or ``INFO commandstats`` shows it) and then cuts, or the delays put
the election's own deadline between the server's execution and the reply's arrival and the test
confirms the execution. The answer exists and is held by the proxy when the command is
abandoned. Then the proxy heals and the test checks that

* every later command on the same caller-owned client gets its own answer, sequentially and
  concurrently (ECHO with distinct payloads, GET of keys holding distinct values);
* the election's own later commands get their own answers (its renewals keep succeeding, the
  leader info it reads is its own term's);
* the election's state is right: it stepped down when its renewals could not complete, it did not
  lead on an unanswered acquire, the lock an abandoned command left behind is released through
  the unknown-token bookkeeping or expires (never leaked), and the next term has a strictly
  greater fencing token.

The clients are caller-owned ``redis.asyncio.Redis`` objects with retries off, so each fault
reaches the election as it happens. ``single`` clients send every command over one connection,
the most direct exposure to a stray reply (redis-py's only defence there is dropping the
connection at the cut); ``pooled`` ones hand out the most recently released connection first,
so the next command lands on the connection the cancelled one used (redis-py also reconnects a
pooled connection that has unread data when it is checked out).

With redis-py's protection removed (a connection kept after a cancelled read), these tests fail:
renewals read an ECHO's payload, concurrent commands get each other's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio

import leaderelection._scripts as scripts_module
from leaderelection import ElectionConfig, LeaderElection, LeaderInfo, StoreUnavailableError
from tests.redis_harness import MakeProxy, RedisServer, TcpProxy, no_retry
from tests.support import eventually, fast_config

ClientKind = str  # "pooled" or "single"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
async def direct(shared_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client straight to the server (not through the proxy) that watches what it executed.

    It also caches the election's scripts, so an election's first EVALSHA is one round trip (a
    NOSCRIPT answer followed by EVAL would be two, and move the moment a reply is in flight).
    """
    client = shared_redis.client(retry=no_retry())
    for source in scripts_module.SHA:  # every script the store sends
        await client.script_load(source)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(shared_redis: RedisServer, make_proxy: MakeProxy) -> TcpProxy:
    """A proxy to the shared server, in pass-through mode until a test delays it."""
    return await make_proxy(shared_redis)


async def proxied_client(proxy: TcpProxy, kind: ClientKind) -> redis.asyncio.Redis:
    """A caller-owned client through ``proxy`` that never retries, its connections open.

    Opening a connection costs a round trip of its own (redis-py's CLIENT SETINFO), so a pooled
    client opens a few before any fault: then only the connection a cancellation dropped pays it.
    """
    client = redis.asyncio.Redis.from_url(
        proxy.url, retry=no_retry(), single_connection_client=kind == "single"
    )
    await asyncio.gather(*(client.ping() for _ in range(1 if kind == "single" else 3)))
    return client


async def wait_for_server(check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0) -> None:
    """Return once ``check()`` (a question to the server) is true; TimeoutError at the deadline.

    The server's state has no event to wait on: this polls it every few milliseconds. The
    deadline is checked in the loop rather than by asyncio.timeout(): on Python 3.11 redis-py's
    asyncio.wait_for() around a send can swallow a cancellation that lands as the send
    completes, and a swallowed timeout never fires again.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() >= deadline:
            raise TimeoutError(f"the server did not reach the expected state in {timeout} s")
        await asyncio.sleep(0.002)


# The commands an election's read of the leader info can be made of (a GET or a script).
READ_COMMANDS = ("get", "evalsha", "eval")


async def server_calls(direct: redis.asyncio.Redis, commands: tuple[str, ...]) -> int:
    """How many times the server has executed any of ``commands`` (``INFO commandstats``)."""
    stats = await direct.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands)


async def stored_info(direct: redis.asyncio.Redis, config: ElectionConfig) -> LeaderInfo | None:
    """The leader-info record as the server holds it."""
    raw = await direct.get(config.info_key)
    return None if raw is None else LeaderInfo.model_validate_json(raw)


async def stored_fence(direct: redis.asyncio.Redis, config: ElectionConfig) -> int:
    """The election's fence counter on the server (the last fencing token it granted)."""
    raw = await direct.get(config.fence_key)
    return 0 if raw is None else int(raw)


async def assert_own_replies(
    client: redis.asyncio.Redis, direct: redis.asyncio.Redis, tag: str, n: int = 20
) -> None:
    """Every command on ``client`` gets its own answer: one behind would be seen at once.

    The keys are written through ``direct``, so every reply read on ``client`` here belongs to a
    command sent here. Sequential commands come first: the first of them reuses the connection
    a cancelled command was on.
    """
    values = {f"{tag}:key:{i}": f"{tag}:value:{i}".encode() for i in range(n)}
    await direct.mset(values)
    try:
        for i, (key, value) in enumerate(values.items()):
            payload = f"{tag}:echo:{i}".encode()
            assert await client.echo(payload) == payload
            assert await client.get(key) == value
        commands: list[Awaitable[Any]] = []
        expected: list[bytes] = []
        for i, (key, value) in enumerate(values.items()):
            payload = f"{tag}:echo-concurrent:{i}".encode()
            commands += [client.echo(payload), client.get(key)]
            expected += [payload, value]
        assert await asyncio.gather(*commands) == expected
        assert await client.execute_command("ECHO", b"last") == b"last"
    finally:
        await direct.delete(*values)


async def wait_for_renewals(election: LeaderElection, count: int, timeout: float = 5.0) -> None:
    """Wait until ``count`` more renewals succeeded (each read its own ``1`` from the server)."""
    target = election.statistics().renewals + count
    await eventually(lambda: election.statistics().renewals >= target, timeout=timeout)


@contextlib.contextmanager
def loss_reasons() -> Iterator[list[str]]:
    """The reasons of the terms that ended while inside, from the library's log records."""
    reasons: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reason = getattr(record, "reason", None)
            if reason is not None:
                reasons.append(reason)

    handler = Handler(logging.DEBUG)
    logger = logging.getLogger("leaderelection")
    logger.addHandler(handler)
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)


class Callbacks:
    """Counts become/lose callbacks and signals each through an event."""

    def __init__(self) -> None:
        self.became = 0
        self.lost = 0
        self.became_event = asyncio.Event()
        self.lost_event = asyncio.Event()

    def on_become(self) -> None:
        self.became += 1
        self.became_event.set()

    def on_lose(self) -> None:
        self.lost += 1
        self.lost_event.set()

    def attach(self, election: LeaderElection) -> LeaderElection:
        election.on_become_leader(self.on_become)
        election.on_lose_leadership(self.on_lose)
        return election


# ------------------------------------------------------------- 1. a cancelled leader-info read


async def read_cut_by_caller(
    election: LeaderElection, executed: Callable[[], Awaitable[bool]]
) -> None:
    """``get_leader_info()`` under the caller's own ``asyncio.timeout``, made to fire the moment
    the server has executed the read, so that its reply is in flight when the read is cancelled
    (and its send, which a cancellation must not land in, is long done)."""
    async with asyncio.timeout(None) as deadline:

        async def cut_when_executed() -> None:
            await wait_for_server(executed)
            deadline.reschedule(asyncio.get_running_loop().time())

        cutter = asyncio.create_task(cut_when_executed())
        try:
            await election.get_leader_info()
        finally:
            if not cutter.done():
                cutter.cancel()
            await asyncio.wait({cutter})


@pytest.mark.parametrize(
    ("kind", "cut"),
    [("pooled", "caller-timeout"), ("single", "caller-timeout"), ("pooled", "call-deadline")],
)
async def test_cancelled_leader_info_read_leaves_no_stray_reply(
    proxy: TcpProxy,
    direct: redis.asyncio.Redis,
    name: str,
    kind: ClientKind,
    cut: str,
) -> None:
    """A ``get_leader_info()`` abandoned while its reply is held by the proxy leaves no
    stray reply behind: once the proxy heals, the caller's own commands on the shared client and
    the election's renewals and reads all get their own answers, and the leader stays leader.

    ``caller-timeout``: the caller's ``asyncio.timeout`` fires right after the server executed
    the read (the reply is then held for 0.25 s more); the read starts right after a renewal
    came back, so that nothing else of the election's reaches the server before it (the next
    renewal is half a second away). ``call-deadline``: the election's own call
    deadline (1 s) fires while the reply is held (server at +0.7 s, reply at +1.4 s). A
    single-connection client cannot be given the second cut: its renewals, which then take
    longer than the call deadline, hold the one connection, so the read would be cut before it is
    even sent.
    """
    config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    client = await proxied_client(proxy, kind)
    try:
        async with LeaderElection(client, config) as election:
            assert election.is_leader
            token = election.fencing_token
            before = 0

            async def executed() -> bool:
                return await server_calls(direct, READ_COMMANDS) > before

            if cut == "caller-timeout":
                proxy.delay(0.25)
                await wait_for_renewals(election, 1)  # one came back: the next is 0.5 s away
                before = await server_calls(direct, READ_COMMANDS)
                with pytest.raises(TimeoutError):
                    await read_cut_by_caller(election, executed)
            else:
                before = await server_calls(direct, READ_COMMANDS)
                proxy.delay(0.7)
                with pytest.raises(StoreUnavailableError, match="did not answer within"):
                    await election.get_leader_info()
            # The server did execute the abandoned read: its answer exists and was in flight.
            await wait_for_server(executed)
            proxy.pass_through()

            await assert_own_replies(client, direct, name)
            info = await election.get_leader_info()
            assert info is not None
            assert info.instance_id == election.instance_id
            assert info.fencing_token == token
            await wait_for_renewals(election, 2)
            assert election.is_leader
            assert election.fencing_token == token  # the same term all along
            assert election.statistics().terms_won == 1
        assert await direct.exists(config.lock_key) == 0
    finally:
        await client.aclose()


# ------------------------------------------------------------- 2. renewals cut by their deadline


@pytest.mark.parametrize("kind", ["pooled", "single"])
async def test_renewals_cut_by_their_deadline_step_down_and_leave_no_stray_reply(
    proxy: TcpProxy,
    direct: redis.asyncio.Redis,
    name: str,
    kind: ClientKind,
) -> None:
    """Renewals whose replies are held past their deadline are cancelled with the reply in
    flight; the leader steps down locally at its renew deadline; it keeps campaigning without
    leading while no answer comes; the lock its unanswered renewal extended has a TTL (it
    expires, or the election takes it over with the ended term's remembered token); after
    healing it leads again with a greater fencing token, and nothing is one answer behind.

    With 0.4 s each way, the first renewal of the fault reaches the server (and extends the
    lease there) before its deadline of at most 0.567 s fires; its answer would come at 0.8 s.
    The connection it was on is dropped at the cut, and a new one needs three round trips
    (HELLO, CLIENT SETINFO, then the command) in redis-py 8, so the retries and the acquires
    that follow (0.1 s deadline) are cut while their handshake replies are in flight.
    """
    config = fast_config(name)  # lock_ttl 1s, heartbeat 100ms, renew_deadline 667ms
    client = await proxied_client(proxy, kind)
    calls = Callbacks()
    try:
        with loss_reasons() as reasons:
            async with calls.attach(LeaderElection(client, config)) as election:
                assert election.is_leader
                first = election.fencing_token
                assert first is not None
                await wait_for_renewals(election, 1)
                calls.became_event.clear()
                fault_began = datetime.now(UTC)
                proxy.delay(0.4)

                async with asyncio.timeout(5):
                    await calls.lost_event.wait()
                assert not election.is_leader
                assert election.fencing_token is None
                assert not election.leader_event.is_set()
                assert reasons == ["renew_deadline"]  # stepped down locally, not told by the store

                # A renewal sent during the fault was executed by the server (it extended the
                # lease there) although its answer never reached the election.
                await wait_for_server(lambda: _heartbeat_since(direct, config, fault_began))
                # The lock it extended is not leaked: it expires within one lease, unless the
                # election takes it over first (the ended term's token is remembered).
                remaining = await direct.pttl(config.lock_key)
                assert remaining == -2 or 0 < remaining <= 1000
                # It keeps campaigning, and does not lead while no answer comes back.
                attempts = election.statistics().acquire_attempts
                await eventually(lambda: election.statistics().acquire_attempts >= attempts + 2)
                assert not election.is_leader
                assert election.statistics().terms_won == 1

                proxy.pass_through()
                await election.wait_until_leader(timeout=5)
                token = election.fencing_token
                assert token is not None
                assert token > first
                assert token == await stored_fence(direct, config)
                assert election.statistics().terms_won == 2

                info = await election.get_leader_info()
                assert info is not None
                assert info.instance_id == election.instance_id
                assert info.fencing_token == token
                stored = await stored_info(direct, config)
                assert stored is not None
                assert (stored.instance_id, stored.fencing_token) == (election.instance_id, token)
                await assert_own_replies(client, direct, name)
                await wait_for_renewals(election, 3)
                assert election.is_leader
                assert election.fencing_token == token
            assert await direct.exists(config.lock_key) == 0
            assert (calls.became, calls.lost) == (2, 2)
    finally:
        await client.aclose()


async def _heartbeat_since(
    direct: redis.asyncio.Redis, config: ElectionConfig, since: datetime
) -> bool:
    info = await stored_info(direct, config)
    return info is not None and info.last_heartbeat >= since


# ---------------------------------------------------------------- 3. an unanswered first acquire


async def test_unanswered_first_acquire_does_not_lead_and_its_lock_is_taken_over(
    proxy: TcpProxy,
    direct: redis.asyncio.Redis,
    name: str,
) -> None:
    """``start()``'s first acquire is granted by the server but cut by its deadline (0.5 s)
    while the grant is in flight (server at +0.3 s, answer at +0.6 s). The election does not
    lead, the lock names it in the store, and after healing the election takes that lock over
    through its unknown-token bookkeeping, with a greater fencing token, before the orphaned
    lease could have expired: it did not wait for the TTL.
    """
    # restart protection needs an uptime of ceil(3) + 1 s: shared_redis has more.
    config = fast_config(name, lock_ttl="3s", heartbeat_interval="500ms", retry_interval="100ms")
    client = await proxied_client(proxy, "pooled")
    calls = Callbacks()
    try:
        proxy.delay(0.3)
        election = calls.attach(LeaderElection(client, config))
        await election.start()
        try:
            assert not election.is_leader
            stats = election.statistics()
            assert stats.terms_won == 0
            assert stats.store_errors >= 1
            orphan = await stored_info(direct, config)
            assert orphan is not None
            assert orphan.instance_id == election.instance_id  # the server granted it to us
            assert orphan.fencing_token is not None
            remaining_ms = await direct.pttl(config.lock_key)
            assert 0 < remaining_ms <= 3000
            orphan_fence = await stored_fence(direct, config)

            proxy.pass_through()
            # Leading before the orphaned lease ends means the lock was taken over, not waited
            # out. The bound is a causal one (margin: the lease minus one backoff), not a speed
            # target.
            await election.wait_until_leader(timeout=remaining_ms / 1000 - 0.2)
            token = election.fencing_token
            assert token is not None
            assert token > orphan_fence >= orphan.fencing_token
            info = await election.get_leader_info()
            assert info is not None
            assert (info.instance_id, info.fencing_token) == (election.instance_id, token)
            await assert_own_replies(client, direct, name)
            await wait_for_renewals(election, 2)
            assert election.is_leader
        finally:
            await election.stop()
        assert await direct.exists(config.lock_key) == 0
        assert (calls.became, calls.lost) == (1, 1)
    finally:
        await client.aclose()


# ------------------------------------------------- 4. the whole election ended mid-call


async def _run_until_cancelled(election: LeaderElection, entered: asyncio.Event) -> None:
    async with election:
        entered.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("how", "phase"),
    [
        ("stop", "renewal"),
        ("cancel", "renewal"),
        ("stop", "acquire"),
        ("cancel", "acquire"),
        ("cancel", "start"),
    ],
)
async def test_election_ended_while_a_call_is_in_flight(
    proxy: TcpProxy,
    direct: redis.asyncio.Redis,
    name: str,
    how: str,
    phase: str,
) -> None:
    """``stop()``, or cancelling the task running ``async with``, while one of the election's
    calls has been executed by the server and its reply is held by the proxy.

    * ``renewal``: a leader (3 s lease, 0.2 s call deadline) with 0.4 s each way: it keeps
      renewing (0.8 s round trips); it is ended right after the server executed a renewal. The
      release cannot be answered within its deadline, so the lock goes away when the server
      executes that release anyway or when it expires, within one lease.
    * ``acquire``: a follower whose acquire (after a foreign lock expired) was granted by the
      server, its answer in flight (0.1 s each way, 1 s deadline). Ending cancels the acquire;
      the unknown-token bookkeeping releases the lock it took before ``stop()`` returns (the
      release reconnects the connection the cut dropped: four round trips, 0.8 s).
    * ``start``: the same, with the cut during ``start()`` (the task is cancelled in
      ``__aenter__``).

    In every case the end is bounded, the callbacks balance, the caller's client stays usable
    with every command getting its own answer, and a new election on it leads with a greater
    fencing token.
    """
    client = await proxied_client(proxy, "pooled")
    calls = Callbacks()
    if phase == "renewal":
        config = fast_config(
            name, lock_ttl="3s", heartbeat_interval="200ms", retry_interval="200ms"
        )
    else:
        config = fast_config(name, lock_ttl="5s", heartbeat_interval="1s", retry_interval="1s")
    election = calls.attach(LeaderElection(client, config))
    entered = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        if phase == "renewal":
            task = await _enter(election, how, entered)
            assert election.is_leader
            await wait_for_renewals(election, 1)
            proxy.delay(0.4)
            seen = await stored_info(direct, config)
            assert seen is not None
            await wait_for_server(lambda: _heartbeat_moved(direct, config, seen))
            assert election.is_leader
            floor = election.fencing_token
        elif phase == "acquire":
            await direct.set(config.lock_key, "someone-else", px=300)
            task = await _enter(election, how, entered)
            assert not election.is_leader
            proxy.delay(0.1)
            await wait_for_server(lambda: _names(direct, config, election.instance_id))
            floor = await stored_fence(direct, config)
        else:
            proxy.delay(0.1)
            task = asyncio.create_task(_run_until_cancelled(election, entered))
            await wait_for_server(lambda: _names(direct, config, election.instance_id))
            assert not entered.is_set()  # still in start(), its acquire's answer in flight
            floor = await stored_fence(direct, config)

        async with asyncio.timeout(5):  # bounded, even with the replies held
            if how == "stop":
                await election.stop()
            else:
                assert task is not None
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        assert not election.is_leader
        assert election.statistics().state == "stopped"
        assert calls.became == calls.lost == (1 if phase == "renewal" else 0)
        if phase == "renewal":
            # Released by the server executing the unanswered release, or expired: gone within
            # one lease either way.
            await wait_for_server(
                lambda: _gone(direct, config), timeout=config.lock_ttl.total_seconds() + 1
            )
        else:
            # The lock the abandoned acquire took was released before the end returned.
            assert await direct.exists(config.lock_key) == 0

        proxy.pass_through()
        await assert_own_replies(client, direct, name)
        assert floor is not None
        async with LeaderElection(client, config) as successor:
            assert successor.is_leader
            assert successor.fencing_token is not None
            assert successor.fencing_token > floor
            info = await successor.get_leader_info()
            assert info is not None
            assert info.instance_id == successor.instance_id
            assert info.fencing_token == successor.fencing_token
    finally:
        if task is not None and not task.done():
            task.cancel()
        await election.stop()
        await client.aclose()


async def _enter(
    election: LeaderElection, how: str, entered: asyncio.Event
) -> asyncio.Task[None] | None:
    """Start ``election`` directly (``stop``) or in a task running ``async with`` (``cancel``)."""
    if how == "stop":
        await election.start()
        return None
    task = asyncio.create_task(_run_until_cancelled(election, entered))
    async with asyncio.timeout(5):
        await entered.wait()
    return task


async def _heartbeat_moved(
    direct: redis.asyncio.Redis, config: ElectionConfig, seen: LeaderInfo
) -> bool:
    info = await stored_info(direct, config)
    return info is not None and info.last_heartbeat > seen.last_heartbeat


async def _names(direct: redis.asyncio.Redis, config: ElectionConfig, instance_id: str) -> bool:
    info = await stored_info(direct, config)
    return info is not None and info.instance_id == instance_id


async def _gone(direct: redis.asyncio.Redis, config: ElectionConfig) -> bool:
    return await direct.exists(config.lock_key) == 0
