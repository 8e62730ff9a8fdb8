"""The recipes of the how-to guides (docs/how-to/, docs/recipes.md), run for real: the example
modules against a real redis-server.

Each example is imported from its file and its functions are called with short timings and a
unique election name. Every wait is on an event, on ``wait_until_leader`` or on a condition
with a deadline (``eventually``); nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.asyncio import Redis

from leaderelection import LeaderElection, leader_only
from tests.redis_harness import RedisServer
from tests.support import eventually, fast_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


apscheduler_leader = load_example("apscheduler_leader")
migrations = load_example("migrations_at_startup")
cache_warming = load_example("cache_warming")
metrics = load_example("metrics_aggregation")
fencing = load_example("fencing_sqlite")
progress = load_example("fenced_progress")


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix for the application's data."""
    return f"recipes-data-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def data(shared_redis: RedisServer) -> AsyncIterator[Redis]:
    """The application's own client, for its data (the elections make their own)."""
    client = Redis.from_url(shared_redis.url, decode_responses=True)
    yield client
    await client.aclose()


# ----------------------------------------------------------------------------- 1. APScheduler


@pytest.mark.redis
async def test_apscheduler_jobs_fire_only_in_the_leader_and_move_with_the_lead(
    shared_redis: RedisServer, name: str
) -> None:
    config = fast_config(name)
    a, b = LeaderElection(shared_redis.url, config), LeaderElection(shared_redis.url, config)
    starts = {"a": 0, "b": 0}  # every time a scheduler started the job
    # The runs that leader_only let through: (the scheduler's term, the term at the run).
    runs: dict[str, list[tuple[int, int | None]]] = {"a": [], "b": []}
    made: dict[str, list[AsyncIOScheduler]] = {"a": [], "b": []}

    def scheduler_factory(who: str, election: LeaderElection) -> Callable[[int], Any]:
        @leader_only(election)
        async def record(token: int) -> None:
            runs[who].append((token, election.fencing_token))

        async def job(token: int) -> None:
            starts[who] += 1
            await record(token)

        def make(token: int) -> AsyncIOScheduler:
            scheduler = AsyncIOScheduler()
            scheduler.add_job(job, "interval", seconds=0.02, args=[token])
            made[who].append(scheduler)
            return scheduler

        return make

    apscheduler_leader.run_scheduler_while_leading(a, scheduler_factory("a", a))
    apscheduler_leader.run_scheduler_while_leading(b, scheduler_factory("b", b))

    async with a:
        await a.wait_until_leader(timeout=5)
        token_a = a.fencing_token
        async with b:
            await eventually(lambda: len(runs["a"]) >= 3)
            assert not b.is_leader
            assert made["b"] == []  # a follower has no scheduler at all
            assert starts["b"] == 0

            await a.resign()
            await b.wait_until_leader(timeout=5)
            token_b = b.fencing_token
            assert token_a is not None and token_b is not None and token_b > token_a

            # A's scheduler was shut down by its lose callback; B's took over.
            await eventually(lambda: not made["a"][0].running)
            assert made["a"][0].get_jobs() == []
            starts_a, runs_b = starts["a"], len(runs["b"])
            await eventually(lambda: len(runs["b"]) >= runs_b + 5)
            assert starts["a"] == starts_a  # nothing of A's fired while B ran its jobs 5 times
            assert len(made["a"]) == 1  # A follows: no new scheduler
            assert len(made["b"]) == 1
            # Every run happened in the term of the scheduler that started it.
            assert set(runs["a"]) == {(token_a, token_a)}
            assert set(runs["b"]) == {(token_b, token_b)}
        # B's term ended when it left: its scheduler is shut down too.
        await eventually(lambda: not made["b"][0].running)


@pytest.mark.redis
async def test_apscheduler_example_serves_and_shuts_its_scheduler_down(
    shared_redis: RedisServer, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await apscheduler_leader.serve(shared_redis.url, fast_config(name), seconds=0.3, interval=0.05)
    out = capsys.readouterr().out
    assert "leading with fencing token" in out
    assert "scheduler started" in out
    assert "no longer leading, scheduler shut down" in out
    assert out.rstrip().endswith("stopped")


# ------------------------------------------------------------------------------ 3. Migrations


def applied_versions(db: Path) -> list[tuple[int, str, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT version, applied_by, fencing_token FROM schema_version ORDER BY version"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.redis
async def test_migrations_run_once_by_the_leader_while_the_others_skip(
    shared_redis: RedisServer, name: str, tmp_path: Path
) -> None:
    db = tmp_path / "app.sqlite3"
    config = fast_config(name)
    # Hold the database's write lock: the leader's first migration waits on it, as a long
    # migration would, while the other two candidates' wait for the lead times out.
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    elections = [LeaderElection(shared_redis.url, config) for _ in range(3)]
    tasks = [
        asyncio.create_task(migrations.migrate_at_startup(election, db, timeout=0.3))
        for election in elections
    ]
    try:
        await eventually(lambda: sum(task.done() for task in tasks) == 2, timeout=10)
        skipped = [task.result() for task in tasks if task.done()]
        assert skipped == [None, None]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    results = await asyncio.gather(*tasks)

    assert sorted(results, key=lambda r: r is None) == [[1, 2, 3], None, None]
    leader = elections[results.index([1, 2, 3])]
    rows = applied_versions(db)
    assert [version for version, _, _ in rows] == [1, 2, 3]
    assert {by for _, by, _ in rows} == {leader.instance_id}
    assert len({token for _, _, token in rows}) == 1  # all in the leader's one term
    # Every instance, the ones that skipped included, finds the schema it needs.
    await migrations.wait_for_schema(db, migrations.REQUIRED_VERSION, timeout=5)

    # Three instances again: they lead one after the other, and nothing is applied twice.
    again = [LeaderElection(shared_redis.url, config) for _ in range(3)]
    results = await asyncio.gather(
        *(migrations.migrate_at_startup(election, db, timeout=5) for election in again)
    )
    assert results == [[], [], []]
    assert applied_versions(db) == rows

    # The next version of the code brings migration 4: one instance applies it, once.
    newer = (*migrations.MIGRATIONS, (4, "ALTER TABLE customer ADD COLUMN phone TEXT"))
    upgraded = [LeaderElection(shared_redis.url, config) for _ in range(3)]
    results = await asyncio.gather(
        *(
            migrations.migrate_at_startup(election, db, timeout=5, migrations=newer)
            for election in upgraded
        )
    )
    assert sorted(results) == [[], [], [4]]
    assert [version for version, _, _ in applied_versions(db)] == [1, 2, 3, 4]


@pytest.mark.redis
async def test_migrations_example_starts_an_instance(
    shared_redis: RedisServer, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "app.sqlite3"
    config = fast_config(name)
    applied = await migrations.start_instance(
        shared_redis.url, config, db, timeout=5, schema_timeout=5
    )
    assert applied == [1, 2, 3]
    applied = await migrations.start_instance(
        shared_redis.url, config, db, timeout=5, schema_timeout=5
    )
    assert applied == []
    out = capsys.readouterr().out
    assert "applied migrations [1, 2, 3]" in out
    assert "nothing left to apply" in out
    assert out.count("schema at version 3") == 2


# ---------------------------------------------------------------------------- 4. Cache warming


@pytest.mark.redis
async def test_cache_is_warmed_once_per_term_by_the_leader(
    shared_redis: RedisServer, name: str, data: Redis, prefix: str
) -> None:
    config = fast_config(name)
    a, b = LeaderElection(shared_redis.url, config), LeaderElection(shared_redis.url, config)
    warmed = {a.instance_id: asyncio.Event(), b.instance_id: asyncio.Event()}
    for election in (a, b):
        cache_warming.warm_on_every_term(election, data, prefix, keys=20, batch=10, batch_delay=0)
        # Registered after the warm-up: it runs once the warm-up has finished.
        election.on_become_leader(warmed[election.instance_id].set)

    async with a:
        await asyncio.wait_for(warmed[a.instance_id].wait(), 5)
        async with b:
            assert not b.is_leader
            assert await data.hgetall(f"{prefix}:warm-runs") == {a.instance_id: "1"}
            # Once per term, not once per heartbeat.
            renewals = a.statistics().renewals
            await eventually(lambda: a.statistics().renewals >= renewals + 3)
            assert await data.hgetall(f"{prefix}:warm-runs") == {a.instance_id: "1"}
            assert not warmed[b.instance_id].is_set()
            token_a = a.fencing_token

            await a.resign()
            await asyncio.wait_for(warmed[b.instance_id].wait(), 5)
            assert b.is_leader
            assert await data.hgetall(f"{prefix}:warm-runs") == {
                a.instance_id: "1",
                b.instance_id: "1",
            }
            record = json.loads(await data.get(f"{prefix}:warmed"))
            assert record == {
                "instance_id": b.instance_id,
                "fencing_token": b.fencing_token,
                "keys": 20,
            }
            assert token_a is not None and record["fencing_token"] > token_a
            assert await data.get(f"{prefix}:item:19") == "value 19"


@pytest.mark.redis
async def test_a_warm_up_longer_than_the_lease_does_not_cost_the_term(
    shared_redis: RedisServer, name: str, data: Redis, prefix: str
) -> None:
    config = fast_config(name)  # lock_ttl 1 s: the lease must be renewed during the warm-up
    election = LeaderElection(shared_redis.url, config)
    lost: list[int] = []
    election.on_lose_leadership(lambda: lost.append(1))
    # 10 batches, 0.15 s apart: 1.5 s, longer than the whole lease.
    cache_warming.warm_on_every_term(election, data, prefix, keys=100, batch=10, batch_delay=0.15)
    done = asyncio.Event()
    election.on_become_leader(done.set)

    async with election:
        assert election.is_leader
        token = election.fencing_token
        await asyncio.wait_for(done.wait(), 10)
        # Still the same term: heartbeats went on while the callback ran.
        assert election.is_leader
        assert election.fencing_token == token
        assert lost == []
        stats = election.statistics()
        assert stats.terms_won == 1
        assert stats.renewals >= 2  # a 1 s lease cannot last 1.5 s with fewer
        record = json.loads(await data.get(f"{prefix}:warmed"))
        assert record == {"instance_id": election.instance_id, "fencing_token": token, "keys": 100}


@pytest.mark.redis
async def test_cache_warming_example_serves(
    shared_redis: RedisServer, name: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await cache_warming.serve(
        shared_redis.url, fast_config(name), seconds=0.3, prefix=prefix, batch_delay=0
    )
    out = capsys.readouterr().out
    assert "leading" in out
    assert "warmed 1000 keys" in out
    assert "still leading: True" in out
    assert out.rstrip().endswith("stopped")


# ---------------------------------------------------------------------- 5. Metrics aggregation


@pytest.mark.redis
async def test_only_the_leader_aggregates_and_its_loop_ends_with_the_term(
    shared_redis: RedisServer, name: str, data: Redis, prefix: str
) -> None:
    config = fast_config(name)
    a, b = LeaderElection(shared_redis.url, config), LeaderElection(shared_redis.url, config)
    loop_a = metrics.aggregate_while_leading(a, data, prefix, interval=0.02)
    loop_b = metrics.aggregate_while_leading(b, data, prefix, interval=0.02)
    report_a = metrics.make_rebuild_report(a, data, prefix)
    report_b = metrics.make_rebuild_report(b, data, prefix)
    running_when_a_lost: list[bool] = []
    a.on_lose_leadership(lambda: running_when_a_lost.append(loop_a.running))
    await metrics.record_requests(data, prefix, a.instance_id, 3)
    await metrics.record_requests(data, prefix, b.instance_id, 4)

    async with a:
        await a.wait_until_leader(timeout=5)
        async with b:
            await eventually(lambda: loop_a.rounds >= 3)
            assert loop_a.running
            assert not loop_b.running and loop_b.rounds == 0
            summary = json.loads(await data.get(f"{prefix}:summary"))
            assert summary == {
                "total": 7,
                "instances": 2,
                "by": a.instance_id,
                "fencing_token": a.fencing_token,
            }
            # leader_only: the follower's call does nothing; the leader's does the work.
            assert await report_b() is None
            assert await data.get(f"{prefix}:report") is None
            assert await report_a() == {b.instance_id: 4, a.instance_id: 3}
            report = json.loads(await data.get(f"{prefix}:report"))
            assert report["fencing_token"] == a.fencing_token

            await a.resign()
            await b.wait_until_leader(timeout=5)
            # The loop had ended before A's lose callback ran.
            await eventually(lambda: running_when_a_lost == [False])
            rounds_a, rounds_b = loop_a.rounds, loop_b.rounds
            await eventually(lambda: loop_b.rounds >= rounds_b + 3)
            assert loop_a.rounds == rounds_a
            assert not loop_a.running
            summary = json.loads(await data.get(f"{prefix}:summary"))
            assert summary["by"] == b.instance_id
            assert summary["fencing_token"] == b.fencing_token
            assert await report_a() is None
        assert not loop_b.running


@pytest.mark.redis
async def test_metrics_example_serves(
    shared_redis: RedisServer, name: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await metrics.serve(
        shared_redis.url, fast_config(name), seconds=0.3, interval=0.05, prefix=prefix
    )
    out = capsys.readouterr().out
    assert "aggregating every 0.05s" in out
    assert "aggregation loop stopped" in out
    assert out.rstrip().endswith("stopped")


# --------------------------------------------------------------------------------- 6. Fencing


def test_the_fence_takes_the_same_or_a_newer_token_and_refuses_an_older_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fence.sqlite3"
    fencing.create_schema(db)
    fencing.set_balance(db, 10, "alice", 1)
    fencing.set_balance(db, 10, "alice", 2)  # the same term writes again
    fencing.set_balance(db, 12, "alice", 3)  # a newer term
    with pytest.raises(fencing.StaleLeaderError, match=r"token 11 is stale.*has seen 12"):
        fencing.set_balance(db, 11, "alice", 4)
    with pytest.raises(fencing.StaleLeaderError):
        fencing.set_balance(db, 11, "bob", 5)  # the fence covers the whole resource
    assert fencing.read_account(db, "alice") == (3, 12)
    assert fencing.read_account(db, "bob") is None  # the rejected transaction left nothing


@pytest.mark.redis
async def test_fencing_rejects_the_late_write_of_a_replaced_leader(
    shared_redis: RedisServer, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fence.sqlite3"
    outcome = await fencing.scenario(shared_redis.url, fast_config(name), db)
    assert outcome.token_b > outcome.token_a
    assert isinstance(outcome.rejected, fencing.StaleLeaderError)
    assert str(outcome.token_a) in str(outcome.rejected)
    assert outcome.after_late_write == (200, outcome.token_b)  # A's late write changed nothing
    assert outcome.final == (250, outcome.token_b)  # and B's writes go on
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT resource, token FROM fence").fetchall() == [
            ("accounts", outcome.token_b)
        ]
    finally:
        conn.close()
    assert "rejected" in capsys.readouterr().out


@pytest.mark.redis
async def test_fencing_example_main_uses_a_temporary_database(
    shared_redis: RedisServer, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await fencing.main(shared_redis.url, fast_config(name), None)
    assert outcome.final == (250, outcome.token_b)
    out = capsys.readouterr().out
    assert out.count("accepted") == 3
    assert out.count("rejected") == 1


# ------------------------------------------------------------------------ 7. Fenced progress


@pytest.mark.redis
async def test_the_job_carries_on_from_the_progress_and_the_old_term_is_refused(
    shared_redis: RedisServer, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    items = [f"item-{n}" for n in range(1, 6)]
    outcome = await progress.scenario(shared_redis.url, fast_config(name), items, stall_at=1)
    assert outcome.token_b > outcome.token_a
    assert outcome.late_write is False
    assert outcome.results == ["item-1: done by A"] + [f"item-{n}: done by B" for n in range(2, 6)]
    assert outcome.progress == {"done": "5", "token": str(outcome.token_b)}
    assert "item-2: late, A" not in capsys.readouterr().out


@pytest.mark.redis
async def test_recording_an_item_again_changes_nothing(
    shared_redis: RedisServer, name: str, data: Redis
) -> None:
    config = fast_config(name)
    progress_key, results_key = progress.job_keys(config)
    async with LeaderElection(shared_redis.url, config) as election:
        await election.wait_until_leader(timeout=10)
        fence = election.fence()
        assert await progress.record(fence, config, 1, "first") is True
        assert await progress.record(fence, config, 1, "first, sent again") is True
        assert await progress.record(fence, config, 2, "second") is True
    assert await data.lrange(results_key, 0, -1) == ["first", "second"]
    assert await data.hget(progress_key, "done") == "2"
    assert await progress.record(fence, config, 3, "after the term") is False


@pytest.mark.redis
async def test_fenced_progress_example_main_runs_six_items(
    shared_redis: RedisServer, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = await progress.main(shared_redis.url, fast_config(name))
    assert len(outcome.results) == 6
    out = capsys.readouterr().out
    assert out.count("done by A") == 2 and out.count("done by B") == 4
    assert f"token {outcome.token_a}: False" in out


# ------------------------------------------------------------------------------- the page


def test_the_docs_include_the_examples_instead_of_copying_them() -> None:
    """The how-to pages show the recipes' code by including sections of the example files
    (``--8<-- "examples/<file>.py:<section>"``), so that the pages cannot drift from the tested
    code: every recipe is included, and every section it names is marked in its file."""
    included: dict[str, set[str]] = {}
    quoted: set[str] = set()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()
        for path, section in re.findall(r'--8<-- "(examples/[\w.]+\.py)(?::([\w-]+))?"', text):
            included.setdefault(path, set()).add(section)
        quoted |= set(re.findall(r"<!-- quote: (examples/\S+) -->", text))
    recipes = {
        f"examples/{name}.py"
        for name in (
            "apscheduler_leader",
            "migrations_at_startup",
            "cache_warming",
            "metrics_aggregation",
            "fencing_sqlite",
            "fenced_progress",
        )
    }
    assert recipes <= set(included), f"not included in docs/: {recipes - set(included)}"
    for path, sections in included.items():
        source = (ROOT / path).read_text()
        for section in sections - {""}:
            for marker in (f"# --8<-- [start:{section}]", f"# --8<-- [end:{section}]"):
                assert marker in source, f"{path} has no {marker!r}"
    assert not recipes & quoted, f"copied rather than included: {recipes & quoted}"
