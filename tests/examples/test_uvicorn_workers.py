"""examples/fastapi_app.py under real uvicorn: two "hosts" of three workers each, one job runner.

Two ``uvicorn --workers 3`` processes play two hosts (their own hostname and advertised URL)
on one real redis-server. The test checks that every worker names the same leader, that the
periodic job runs on one worker of the six at a time, and that after the leader's worker is
SIGKILLed another worker takes over within the lease (uvicorn restarts the killed worker, which
rejoins as a follower). It prints, per second, which instances ran the job, and the failover
time (kill to the next run, and lease expiry to the next run); with
``LEADERELECTION_MULTIWORKER_REPORT=<path>`` it also writes them to that file.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from leaderelection import ElectionConfig
from tests.examples.processes import Process, example_env, start_example_app
from tests.redis_harness import RedisServer

JOB_RUNS_KEY = "example:job-runs"  # examples/fastapi_app.py's
HOSTS = ("host-a", "host-b")
WORKERS = 3
LOCK_TTL = 2.0
JOB_INTERVAL = 0.1
# The library's guarantee: a follower takes over within ~100 ms of the lease's expiry, which is
# at most LOCK_TTL after the killed leader's last renewal. One second covers the rest (retry
# jitter, a busy 2-core machine, uvicorn restarting the killed worker meanwhile).
FAILOVER_BOUND = LOCK_TTL + 1.0
RUN_SECONDS = 3.0  # how long the job runs before the kill, and again after the failover
STARTUP_TIMEOUT = 90.0  # six workers importing FastAPI on two cores
REQUESTS_PER_HOST = 40
REPORT_ENV = "LEADERELECTION_MULTIWORKER_REPORT"


@dataclass(frozen=True)
class Run:
    """One run of the job, as the example recorded it."""

    at: float  # time.time() in the worker
    instance: str
    token: int


@dataclass
class Host:
    name: str
    port: int
    url: str
    process: Process


@pytest.mark.redis
@pytest.mark.timeout(240)
def test_two_uvicorn_hosts_run_the_job_once_across_six_workers(
    shared_redis: RedisServer,
) -> None:
    election = f"fastapi-example-{uuid.uuid4().hex[:8]}"
    lock_key = ElectionConfig(name=election).lock_key
    started = time.monotonic()
    hosts: list[Host] = []
    with shared_redis.sync_client() as redis, contextlib.ExitStack() as stack:
        redis.delete(JOB_RUNS_KEY)
        try:
            for name in HOSTS:
                hosts.append(_start_host(name, shared_redis.url, election))
                stack.callback(hosts[-1].process.close)

            # All six workers up, one of them leading.
            for host in hosts:
                host.process.wait_until_count(
                    r"Application startup complete\.", WORKERS, timeout=STARTUP_TIMEOUT
                )
            leader = _wait_for_leader(hosts[0])
            leader_host = next(h for h in hosts if leader["instance_id"].startswith(f"{h.name}-"))
            assert leader["hostname"] == leader_host.name
            assert leader["metadata"] == {"url": leader_host.url}

            # (a) Every worker that answers names the same leader; requests spread over workers.
            answers = _ask_every_host(hosts)
            _check_answers(answers, hosts, leader)
            _check_run_now(hosts, leader)

            # (b) The job runs for a while on the leader only.
            _wait_for_runs(redis, leader["instance_id"], RUN_SECONDS)

            # (c) SIGKILL the leader's worker: a process of one of our uvicorn trees.
            pid = leader["pid"]
            assert _terms_begun(hosts) == [pid], "only the leader's worker has ever led"
            first_workers = _worker_pids(leader_host)
            assert os.getpgid(pid) == leader_host.process.pgid, (pid, leader_host)
            assert pid in _worker_pids(leader_host), (pid, leader_host.process.dump())
            killed_at = time.time()
            os.kill(pid, signal.SIGKILL)
            # Nothing renews the lease any more: it expires when its time to live runs out.
            lease_left = redis.pttl(lock_key) / 1000
            expires_at = time.time() + lease_left
            assert 0 < lease_left <= LOCK_TTL, lease_left

            # (d) Another instance takes over and runs the job; (e) for a while.
            new_leader = _wait_for_runs(
                redis, None, RUN_SECONDS, exclude=leader["instance_id"], since=killed_at
            )
            # uvicorn replaced the killed worker, which rejoined as a candidate.
            leader_host.process.wait_for(rf"Child process \[{pid}\] died", timeout=30)
            leader_host.process.wait_until_count(
                r"Application startup complete\.", WORKERS + 1, timeout=STARTUP_TIMEOUT
            )
            new_info = _wait_for_leader(hosts[0])
            assert new_info["instance_id"] == new_leader
            (replacement,) = _worker_pids(leader_host) - first_workers

            # (f) Stop the hosts as a rolling deploy would, the leader's last; each exits cleanly.
            stopped_at = time.time()
            order = sorted(hosts, key=lambda h: new_leader.startswith(f"{h.name}-"))
            for host, signum in zip(order, (signal.SIGTERM, signal.SIGINT), strict=True):
                host.process.send_signal(signum)
                assert host.process.wait(timeout=60) == 0, host.process.dump()
            for host in hosts:
                output = host.process.output()
                assert "Traceback" not in output, host.process.dump()
                assert output.count("Application shutdown complete.") == WORKERS, output
            # The last leader released the lock on its way out.
            assert redis.exists(lock_key) == 0
        except BaseException:
            for host in hosts:
                print(host.process.dump())
            raise

        runs = _read_runs(redis)
    failover = _failover(
        runs,
        old=leader["instance_id"],
        new=new_leader,
        killed_at=killed_at,
        expired_at=expires_at,
        stopped_at=stopped_at,
    )
    report = _describe(
        runs,
        failover,
        killed=leader,
        new_leader_is_replacement=new_info["pid"] == replacement,
        answers=answers,
        election=election,
    )
    report += f"\nTest duration: {time.monotonic() - started:.1f}s.\n"
    print("\n" + report)
    if path := os.environ.get(REPORT_ENV):
        Path(path).write_text(report)
    _check_runs(runs, failover)


# --------------------------------------------------------------------------------- processes


def _start_host(name: str, redis_url: str, election: str) -> Host:
    """Start ``uvicorn --workers 3`` on a free port, as host ``name`` would."""

    def env(port: int) -> dict[str, str]:
        return example_env(
            REDIS_URL=redis_url,
            ADVERTISED_URL=f"http://127.0.0.1:{port}",
            JOB_INTERVAL=f"{JOB_INTERVAL:g}",
            LEADER_ELECTION_NAME=election,
            LEADER_ELECTION_HOSTNAME=name,
            LEADER_ELECTION_LOCK_TTL=f"{LOCK_TTL:g}s",
            LEADER_ELECTION_HEARTBEAT_INTERVAL="500ms",
            LEADER_ELECTION_RETRY_INTERVAL="500ms",
        )

    process, port = start_example_app(
        f"uvicorn {name}",
        env,
        ready=r"Started parent process",
        timeout=STARTUP_TIMEOUT,
        workers=WORKERS,
    )
    return Host(name, port, f"http://127.0.0.1:{port}", process)


def _terms_begun(hosts: list[Host]) -> list[int]:
    """The pids of the workers that logged "Became the leader", once per term."""
    pattern = r"\[(\d+)\] leaderelection: Became the leader"
    return [int(m.group(1)) for host in hosts for m in host.process.matches(pattern)]


def _worker_pids(host: Host) -> set[int]:
    return {int(m.group(1)) for m in host.process.matches(r"Started server process \[(\d+)\]")}


# ------------------------------------------------------------------------------------- HTTP


def _get_leader(host: Host) -> dict[str, Any]:
    # A new connection per request: the kernel hands each one to any of the host's workers.
    response = httpx.get(f"{host.url}/leader", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_leader(host: Host) -> dict[str, Any]:
    """The leader's record, once there is one (``GET /leader`` on ``host``)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = _get_leader(host)["leader_info"]
        if info is not None:
            return dict(info)
        time.sleep(0.05)  # polling, until the deadline
    raise AssertionError(f"no leader within 20s:\n{host.process.dump()}")


def _ask_every_host(hosts: list[Host]) -> dict[str, list[dict[str, Any]]]:
    """``GET /leader`` on each host, a few requests at a time: REQUESTS_PER_HOST of them, and
    more (up to a deadline) until at least two workers of the host have answered, since how
    the kernel spreads connections over the workers is uneven on a busy machine."""
    answers: dict[str, list[dict[str, Any]]] = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for host in hosts:
            got = answers[host.name] = []
            deadline = time.monotonic() + 20
            while not got or (
                len({a["instance_id"] for a in got}) < 2 and time.monotonic() < deadline
            ):
                got += pool.map(lambda _, h=host: _get_leader(h), range(REQUESTS_PER_HOST))
    return answers


def _check_answers(
    answers: dict[str, list[dict[str, Any]]], hosts: list[Host], leader: dict[str, Any]
) -> None:
    every = [answer for host_answers in answers.values() for answer in host_answers]
    named = {a["leader_info"]["instance_id"] if a["leader_info"] else None for a in every}
    assert named == {leader["instance_id"]}, named
    assert {a["leader_info"]["fencing_token"] for a in every} == {leader["fencing_token"]}
    for host in hosts:
        workers = {a["instance_id"] for a in answers[host.name]}
        assert all(w.startswith(f"{host.name}-") for w in workers), workers
        assert len(workers) <= WORKERS, workers
        # uvicorn's workers accept from one shared socket: new connections reach several.
        assert len(workers) >= 2, f"{host.name}: every request reached {workers}"
    for answer in every:
        leads = answer["instance_id"] == leader["instance_id"]
        assert answer["is_leader"] is leads, answer
        assert answer["fencing_token"] == (leader["fencing_token"] if leads else None), answer


def _check_run_now(hosts: list[Host], leader: dict[str, Any]) -> None:
    """``POST /jobs/run-now``: the leader runs it; a follower answers 503 naming the leader.
    Asks until both answers have been seen (a deadline bounds it)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while seen != {200, 503}:
        assert time.monotonic() < deadline, f"answers seen: {seen}"
        for host in hosts:
            response = httpx.post(f"{host.url}/jobs/run-now", timeout=10)
            seen.add(response.status_code)
            if response.status_code == 200:
                assert response.json()["fencing_token"] == leader["fencing_token"]
                continue
            assert response.status_code == 503, response.text
            detail = response.json()["detail"]
            assert detail["error"] == "not_leader"
            assert detail["leader"]["instance_id"] == leader["instance_id"]
            assert detail["leader_url"] == leader["metadata"]["url"]
            assert response.headers["X-Leader-URL"] == leader["metadata"]["url"]


# ------------------------------------------------------------------------------------- runs


def _read_runs(redis: Any) -> list[Run]:
    runs = []
    for raw in redis.lrange(JOB_RUNS_KEY, 0, -1):
        at, instance, token = raw.decode().split()
        runs.append(Run(float(at), instance, int(token)))
    return runs


def _wait_for_runs(
    redis: Any,
    instance: str | None,
    seconds: float,
    *,
    exclude: str | None = None,
    since: float = 0.0,
) -> str:
    """Wait until one instance (``instance``, or any but ``exclude``) has run the job for
    ``seconds`` since ``since``; return that instance."""
    deadline = time.monotonic() + seconds + 30
    while time.monotonic() < deadline:
        first: dict[str, float] = {}
        for run in _read_runs(redis):
            if run.at < since or run.instance == exclude:
                continue
            if instance is not None and run.instance != instance:
                continue
            first.setdefault(run.instance, run.at)
            if run.at - first[run.instance] >= seconds:
                return run.instance
        time.sleep(0.1)  # polling, until the deadline
    raise AssertionError(f"no instance ran the job for {seconds}s: {_read_runs(redis)}")


@dataclass(frozen=True)
class Failover:
    """What the test did and saw, to read the job's run history against."""

    old: str  # the first leader, SIGKILLed
    new: str  # the instance that ran the job after the kill
    killed_at: float  # time.time()
    expired_at: float  # time.time() when the killed leader's lease ran out
    first_new_run: float  # time.time(), recorded by the new leader
    stopped_at: float  # time.time() of the first stop signal

    @property
    def seconds(self) -> float:
        """From the kill to the new leader's first run."""
        return self.first_new_run - self.killed_at

    @property
    def after_expiry(self) -> float:
        """From the lease's expiry to the new leader's first run."""
        return self.first_new_run - self.expired_at

    def in_window(self, second: int) -> bool:
        """Whether the one-second bucket ``second`` overlaps [kill, first run of the new leader]."""
        return second <= self.first_new_run and self.killed_at < second + 1


def _failover(
    runs: list[Run], *, old: str, new: str, killed_at: float, expired_at: float, stopped_at: float
) -> Failover:
    first_new_run = min(run.at for run in runs if run.instance == new and run.at >= killed_at)
    return Failover(old, new, killed_at, expired_at, first_new_run, stopped_at)


def _check_runs(runs: list[Run], failover: Failover) -> None:
    """The job ran on one instance at a time: the first leader until the kill, one other after."""
    assert runs, "the job never ran"
    assert len(runs) < 10_000, "the list was trimmed: the history is incomplete"
    times = [run.at for run in runs]
    assert times == sorted(times), "runs were recorded out of time order"

    # Terms, in the order they ran: the instance changes only from one term to the next, a
    # term never comes back, and fencing tokens strictly increase from term to term.
    terms: list[tuple[str, int]] = []
    for run in runs:
        if not terms or terms[-1] != (run.instance, run.token):
            assert (run.instance, run.token) not in terms, f"runs interleave: {run} {terms}"
            terms.append((run.instance, run.token))
    tokens = [token for _, token in terms]
    assert tokens == sorted(set(tokens)), f"fencing tokens do not increase: {terms}"

    # Before the stop: two terms, the first leader's until the kill, then the new leader's.
    before_stop = [run for run in runs if run.at < failover.stopped_at]
    served = [term for term in terms if any(r.instance == term[0] for r in before_stop)]
    assert [instance for instance, _ in served] == [failover.old, failover.new], served
    assert max(run.at for run in runs if run.instance == failover.old) <= failover.killed_at
    assert 0 < failover.seconds <= FAILOVER_BOUND, f"failover took {failover.seconds:.3f}s"
    # No one runs the job while the killed leader's lease lasts; the next leader follows its
    # expiry closely (the margin is for a loaded machine: the library's own is ~100 ms).
    assert failover.expired_at - 0.05 <= failover.first_new_run <= failover.expired_at + 1.0

    # Per second, before the stop: exactly one instance ran the job, except around the failover.
    for second, in_second in _by_second(runs, failover).items():
        if second < math.floor(failover.stopped_at) and not failover.in_window(second):
            instances = {run.instance for run in in_second}
            assert len(instances) == 1, f"second {second}: {instances}"

    # After the stop signals: no term hopped to a worker that was shutting down too, since each
    # worker leaves the election at the signal (election_lifespan's leave_on_signal).
    after_stop = {run.instance for run in runs if run.at >= failover.stopped_at}
    assert after_stop <= {failover.new}, f"terms after the stop signals: {after_stop}"


def _by_second(runs: list[Run], failover: Failover) -> dict[int, list[Run]]:
    """The runs per one-second bucket of time.time(), every second from the first run on."""
    last = max(math.floor(runs[-1].at), math.floor(failover.stopped_at))
    buckets: dict[int, list[Run]] = {s: [] for s in range(math.floor(runs[0].at), last + 1)}
    for run in runs:
        buckets[math.floor(run.at)].append(run)
    return buckets


def _describe(
    runs: list[Run],
    failover: Failover,
    *,
    killed: dict[str, Any],
    new_leader_is_replacement: bool,
    answers: dict[str, list[dict[str, Any]]],
    election: str,
) -> str:
    """The job's run history as a table of runs per second, and the failover, in Markdown."""
    origin = math.floor(runs[0].at)
    stop_second = math.floor(failover.stopped_at)
    order = list(dict.fromkeys(run.instance for run in runs))
    rows = []
    for second, in_second in _by_second(runs, failover).items():
        instances = sorted({run.instance for run in in_second}, key=order.index)
        notes = []
        if second <= failover.killed_at < second + 1:
            notes.append(f"leader SIGKILLed at +{failover.killed_at - origin:.3f}s")
        if second <= failover.expired_at < second + 1:
            notes.append(f"lease expires at +{failover.expired_at - origin:.3f}s")
        if second <= failover.first_new_run < second + 1:
            notes.append(f"new leader's first run at +{failover.first_new_run - origin:.3f}s")
        if second == stop_second:
            notes.append(f"shutdown begins at +{failover.stopped_at - origin:.3f}s")
        if second > stop_second and in_second:
            notes.append("shutting down")
        if failover.in_window(second) and not notes:
            notes.append("failover: no leader")
        who = ", ".join(instances) or "-"
        rows.append(f"| +{second - origin} | {who} | {len(in_second)} | {'; '.join(notes)} |")

    workers_seen = ", ".join(
        f"{len({a['instance_id'] for a in host_answers})} workers on {host}"
        for host, host_answers in answers.items()
    )
    tokens = {run.instance: run.token for run in runs}
    in_its_place = " (the worker uvicorn started in its place)" if new_leader_is_replacement else ""
    counts = ", ".join(f"{n} by {i}" for i, n in Counter(run.instance for run in runs).items())
    after_stop = sum(1 for run in runs if run.at >= failover.stopped_at)
    lines = [
        f"Election `{election}`: 2 hosts x {WORKERS} uvicorn workers, lock_ttl {LOCK_TTL:g}s, "
        f"heartbeat 0.5s, job every {JOB_INTERVAL:g}s. `GET /leader` was answered by "
        f"{workers_seen}, all naming {killed['instance_id']} as the leader.",
        "",
        "| second | instances that ran the job | runs | event |",
        "|---:|---|---:|---|",
        *rows,
        "",
        f"Leader {failover.old} (pid {killed['pid']}, fencing token {tokens.get(failover.old)}) "
        f"SIGKILLed; {failover.new}{in_its_place} (fencing token {tokens.get(failover.new)}) "
        f"ran the job {failover.seconds:.3f}s later (bound {FAILOVER_BOUND:g}s: lock_ttl + 1s): "
        f"{failover.expired_at - failover.killed_at:.3f}s until the lease expired, then "
        f"{failover.after_expiry * 1000:.0f}ms to the new leader's first run.",
        f"Runs: {len(runs)} in all, {counts}; {after_stop} after the first stop signal.",
    ]
    return "\n".join(lines) + "\n"
