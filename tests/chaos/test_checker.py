"""The checker on hand-written histories: every property it reports can fail."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.chaos.checker import check, format_table
from tests.chaos.runner import merge_records

TYPES = ["kill_leader", "net_delay"]


def write(path: Path, records: list[Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def term(t0: float, t1: float, token: int, *, reason: str = "stopped") -> list[dict[str, Any]]:
    """The events of one clean term from t0 to t1."""
    return [
        {"e": "acquired", "t": t0, "token": token, "until": t1 + 0.5},
        {"e": "worker_start", "t": t0, "token": token},
        {"e": "become_start", "t": t0, "token": token},
        {"e": "become_end", "t": t0, "token": token},
        {"e": "lost", "t": t1, "token": token, "reason": reason},
        {"e": "worker_cancelled", "t": t1, "token": token},
        {"e": "worker_end", "t": t1, "token": token},
        {"e": "lose_start", "t": t1, "token": token},
        {"e": "lose_end", "t": t1, "token": token},
    ]


def make_run(
    tmp_path: Path,
    agents: dict[str, list[dict[str, Any]]],
    faults: list[dict[str, Any]] = (),  # type: ignore[assignment]
    writes: list[list[Any]] = (),  # type: ignore[assignment]
) -> Path:
    meta = {"meta": {"ttl": 1.0, "retry": 0.2, "types": TYPES}, "t": 0.0}
    write(tmp_path / "faults.jsonl", [meta, {"started": 0.0}, *faults, {"finished": 100.0}])
    for name, events in agents.items():
        write(tmp_path / f"agent-{name}.jsonl", events)
    write(tmp_path / "resource.jsonl", list(writes))
    return tmp_path


def refused(t0: float, token: int, seq: int, at: str = "redis") -> dict[str, Any]:
    """A fenced write that came back refused."""
    event = {"e": "write", "t": t0 + 0.01, "token": token, "seq": seq, "t0": t0, "ok": False}
    return {**event, "at": at}


def test_a_clean_history_is_safe(tmp_path: Path) -> None:
    faults = [{"fault": "net_delay", "target": "a", "inject": 9.0, "heal": 10.0}]
    a = term(1, 10, 100, reason="renew_deadline")
    a.insert(4, refused(9.5, 100, 2))
    a.insert(5, refused(9.8, 100, 3, at="local"))
    run = make_run(
        tmp_path,
        {"a": a, "b": term(10.5, 20, 200)},
        faults,
        [["100", "a", 1, 2.0], ["200", "b", 1, 11.0]],
    )
    report = check(run)
    assert report.safe, format_table(report)
    assert report.total.step_downs == 1
    assert report.rows["net_delay"].stale_rejected == 2
    assert report.rows["net_delay"].rejected_at_redis == 1
    assert report.writes_accepted == 2
    assert report.rows["net_delay"].leaderless == [0.5]


def test_overlapping_leadership_is_counted_with_its_length(tmp_path: Path) -> None:
    run = make_run(tmp_path, {"a": term(1, 10, 100), "b": term(9.75, 20, 200)})
    report = check(run)
    assert report.total.overlaps == 1
    assert abs(report.total.max_overlap - 0.25) < 1e-9
    assert not report.safe


def test_a_lease_deadline_ends_leadership_before_the_lost_event(tmp_path: Path) -> None:
    # a paused leader: its lost event comes late, but is_leader read False from its deadline on
    a = term(1, 30, 100, reason="renew_deadline")
    a[0]["until"] = 5.0
    faults = [{"fault": "kill_leader", "target": "x", "inject": 4.0, "heal": 4.0}]
    report = check(make_run(tmp_path, {"a": a, "b": term(6, 20, 200)}, faults))
    assert report.total.overlaps == 0, format_table(report)


def test_token_regression_is_counted(tmp_path: Path) -> None:
    report = check(make_run(tmp_path, {"a": term(1, 10, 200), "b": term(11, 20, 100)}))
    assert report.total.token_regressions == 1
    assert not report.safe


def test_an_applied_write_below_the_highest_token_is_a_fenced_overlap(tmp_path: Path) -> None:
    # sent before b's term began, applied after b's first write: out of order at Redis
    writes = [["200", "b", 1, 11.0], ["100", "a", 5, 9.9]]
    report = check(make_run(tmp_path, {"a": term(1, 10, 100), "b": term(11, 20, 200)}, [], writes))
    assert report.total.fenced_overlaps == 1
    assert report.total.stale_applied == 0
    assert not report.safe


def test_a_write_applied_after_a_newer_term_began_is_a_stale_write(tmp_path: Path) -> None:
    # a's write was sent at 12, after b's term began at 11, and Redis applied it (b wrote
    # nothing yet, so the order of the applied writes alone would not show it)
    writes = [["100", "a", 1, 2.0], ["100", "a", 2, 12.0]]
    report = check(make_run(tmp_path, {"a": term(1, 10, 100), "b": term(11, 20, 200)}, [], writes))
    assert report.total.stale_applied == 1
    assert report.total.fenced_overlaps == 0
    assert not report.safe


def test_unbalanced_callbacks_are_counted(tmp_path: Path) -> None:
    missing_lose = term(1, 10, 100)[:-2]
    lose_first = term(11, 20, 200)
    lose_first.insert(1, {"e": "lose_start", "t": 11, "token": 200})
    report = check(make_run(tmp_path, {"a": missing_lose, "b": lose_first}))
    assert report.total.unbalanced >= 2, report.problems
    assert not report.safe


def test_lose_while_the_leader_task_runs_is_unbalanced(tmp_path: Path) -> None:
    events = term(1, 10, 100)
    # the task ends after lose started
    events.remove({"e": "worker_end", "t": 10, "token": 100})
    events.append({"e": "worker_end", "t": 10, "token": 100})
    report = check(make_run(tmp_path, {"a": events}))
    assert any("while_leader" in p for p in report.problems)


def test_a_killed_process_may_stop_mid_term(tmp_path: Path) -> None:
    faults = [{"fault": "kill_leader", "target": "a", "inject": 5.0, "heal": 5.0}]
    killed = term(1, 10, 100)[:4]  # acquired, then killed before it lost
    killed[0]["until"] = 6.0
    report = check(make_run(tmp_path, {"a": killed, "b": term(6.5, 20, 200)}, faults))
    assert report.safe, format_table(report)
    assert report.rows["kill_leader"].leaderless == [1.5]
    assert report.rows["kill_leader"].over_bound == 1  # 1.5 s > lock_ttl + retry + epsilon


def test_a_step_down_without_a_fault_is_reported(tmp_path: Path) -> None:
    report = check(
        make_run(tmp_path, {"a": term(1, 10, 100, reason="lock_lost"), "b": term(11, 20, 200)})
    )
    assert len(report.unexplained_step_downs) == 1
    assert not report.safe


def test_no_leader_after_a_fault_is_counted(tmp_path: Path) -> None:
    faults = [{"fault": "net_delay", "target": "a", "inject": 9.0, "heal": 10.0}]
    report = check(make_run(tmp_path, {"a": term(1, 9.5, 100, reason="renew_deadline")}, faults))
    assert report.total.no_leader == 1


def test_the_resource_log_keeps_every_record_across_restarts_and_terms() -> None:
    def record(token: int, writer: str, seq: int) -> bytes:
        return json.dumps([str(token), writer, seq, float(seq)]).encode()

    # read before a restart that kept the data, then again: no record twice
    first = [record(100, "a1", 1), record(100, "a1", 2)]
    merged = merge_records([], first)
    merged = merge_records(merged, [*first, record(100, "a1", 3)])
    assert merged == [*first, record(100, "a1", 3)]
    # a restart that lost the data, then the same writer's next term: all of it is new
    later = [record(300, "a1", 1), record(300, "a1", 2)]
    assert merge_records(merged, later) == [*merged, *later]
