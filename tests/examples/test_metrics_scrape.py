"""examples/fastapi_app.py's ``/metrics`` under real uvicorn: two hosts, a handoff, two scrapes.

Two single-worker uvicorn processes of the example (a leader and a follower) on one real
redis-server are scraped before and after the leader is asked to step down; the scrapes, as
Prometheus parses them, show the leadership move. The test prints the election's lines of all
four scrapes; with ``LEADERELECTION_SCRAPE_REPORT=<path>`` it also writes them to that file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from leaderelection import ElectionConfig, LeaderObserver
from tests.examples.processes import Process, example_env, start_example_app
from tests.redis_harness import RedisServer

STARTUP_TIMEOUT = 60.0
REPORT_ENV = "LEADERELECTION_SCRAPE_REPORT"
# The lines of a scrape that say who leads and how it changed (the report shows these).
SHOWN = (
    "leader_election_master_status",
    "leaderelection_state",
    "leaderelection_terms_won_total",
    'leaderelection_leadership_lost_total{instance_id="{leader}",name="{name}",reason="resigned"}',
    "leaderelection_fencing_token",
    "leaderelection_release_notices_total",
    "leaderelection_follower_wakeups_total",
    "leaderelection_lease_remaining_seconds",
    "leaderelection_renewals_total",
)


def _start(host: str, redis_url: str, election: str) -> tuple[Process, str]:
    def env(port: int) -> dict[str, str]:
        return example_env(
            REDIS_URL=redis_url,
            ADVERTISED_URL=f"http://127.0.0.1:{port}",
            JOB_INTERVAL="1",
            LEADER_ELECTION_NAME=election,
            LEADER_ELECTION_HOSTNAME=host,
            LEADER_ELECTION_LOCK_TTL="3s",
            LEADER_ELECTION_HEARTBEAT_INTERVAL="500ms",
            LEADER_ELECTION_RETRY_INTERVAL="500ms",
        )

    process, port = start_example_app(
        f"uvicorn {host}",
        env,
        ready=r"Application startup complete\.",
        timeout=STARTUP_TIMEOUT,
    )
    return process, f"http://127.0.0.1:{port}"


def _scrape(url: str) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return response.text, samples


def _lines(text: str, election: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if f'name="{election}"' in line
        and line.split("{")[0] in {s.split("{")[0] for s in SHOWN}
        and ("leadership_lost" not in line or 'reason="resigned"' in line)
    ]


def _status(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    """leader_election_master_status by instance id."""
    return {
        dict(labels)["instance_id"]: value
        for (name, labels), value in samples.items()
        if name == "leader_election_master_status"
    }


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    (value,) = [v for (n, _), v in samples.items() if n == name]
    return value


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_two_processes_scraped_before_and_after_a_handoff(shared_redis: RedisServer) -> None:
    election = f"scrape-{uuid.uuid4().hex[:8]}"
    config = ElectionConfig(name=election, lock_ttl=3, heartbeat_interval=0.5)
    report: list[str] = []
    with contextlib.ExitStack() as stack:
        processes = []
        try:
            first, first_url = _start("host-a", shared_redis.url, election)
            processes.append(first)
            stack.callback(first.close)
            first.wait_for(r"Became the leader", timeout=30)  # host-a leads: it came first
            second, second_url = _start("host-b", shared_redis.url, election)
            processes.append(second)
            stack.callback(second.close)

            # Before: host-a leads, host-b follows. Each process exports its own candidate.
            text_a, a = _scrape(first_url)
            text_b, b = _scrape(second_url)
            ((leader, one),) = _status(a).items()
            ((follower, zero),) = _status(b).items()
            assert (one, zero) == (1, 0)
            assert leader.startswith("host-a-") and follower.startswith("host-b-")
            assert _get(a, "leaderelection_terms_won_total") == 1
            assert _get(b, "leaderelection_terms_won_total") == 0
            token = _get(a, "leaderelection_fencing_token")
            report += ["# before the handoff: host-a", *_lines(text_a, election)]
            report += ["# before the handoff: host-b", *_lines(text_b, election)]

            # The handoff: the leader is asked to step down; host-b takes over.
            async def step_down() -> None:
                async with LeaderObserver(shared_redis.url, config) as observer:
                    assert await observer.request_step_down(leader) == leader

            asyncio.run(step_down())
            second.wait_for(r"Became the leader", timeout=30)

            # After: host-a's term ended before its release, which host-b's term followed.
            first.wait_for(r"Stepped down \(resigned\)", timeout=10)
            text_a, a = _scrape(first_url)
            text_b, b = _scrape(second_url)
            assert _status(a) == {leader: 0}
            assert _status(b) == {follower: 1}
            assert _get(b, "leaderelection_terms_won_total") == 1
            assert _get(b, "leaderelection_fencing_token") > token
            lost = {
                dict(labels)["reason"]: v
                for (n, labels), v in a.items()
                if n == "leaderelection_leadership_lost_total"
            }
            assert lost == {
                "resigned": 1,
                "stopped": 0,
                "renew_deadline": 0,
                "lock_lost": 0,
                "error": 0,
            }
            # host-b was woken by the release, not by its next scheduled attempt.
            assert _get(b, "leaderelection_release_notices_total") == 1
            assert _get(b, "leaderelection_follower_wakeups_total") == 1
            report += ["# after the handoff: host-a", *_lines(text_a, election)]
            report += ["# after the handoff: host-b", *_lines(text_b, election)]
        except BaseException:
            for process in processes:
                print(process.dump())
            raise
    text = "\n".join(report) + "\n"
    print("\n" + text)
    if path := os.environ.get(REPORT_ENV):
        Path(path).write_text(text)
