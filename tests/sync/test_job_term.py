"""A sync ``while_leader`` function belongs to the term it was started for, even when that term
ended before its thread began: its ``resign()`` never ends a later term."""

from __future__ import annotations

import threading

import fakeredis

from leaderelection import ElectionConfig
from leaderelection.sync import LeaderElection
from tests.support import CROWDED


def test_a_job_whose_term_ended_before_it_started_cannot_resign_a_later_term(name: str) -> None:
    server = fakeredis.FakeServer()
    config = ElectionConfig(name=name, **CROWDED)
    election = LeaderElection(lambda: fakeredis.FakeAsyncRedis(server=server), config)
    go, stale_returned, second_started = threading.Event(), threading.Event(), threading.Event()
    term_events: list[threading.Event] = []

    def job(term_over: threading.Event) -> None:
        term_events.append(term_over)
        if len(term_events) == 1:  # started for term 1, which ended before it ran
            go.wait(10)
            election.resign()  # must not touch term 2
            stale_returned.set()
        else:
            second_started.set()
            term_over.wait(10)

    with election:
        assert election.is_leader
        first = election.fencing_token
        # Registered mid-term, then at once a resign queued behind the registration on the
        # election's loop: the term ends before the job's task takes its first step.
        election.while_leader(job)
        election.resign()
        election.wait_until_leader(timeout=5)  # term 2, after the hold-back
        second = election.fencing_token
        assert second is not None and first is not None and second > first
        assert second_started.wait(5)  # term 2's own job runs too
        go.set()
        assert stale_returned.wait(5)
        # A round trip through the loop: whatever the stale resign() queued has begun by now.
        election.get_leader_info()
        assert not term_events[1].is_set(), "the stale job's resign() ended term 2"
        assert election.fencing_token == second
