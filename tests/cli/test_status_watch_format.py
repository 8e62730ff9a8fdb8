"""``status``, ``watch`` and ``step-down`` without Redis: output formats, options, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from leaderelection import LeaderChange, LeaderInfo
from leaderelection.cli import COMMANDS, build_parser, main
from leaderelection.cli._common import format_age, format_time
from leaderelection.cli.status import Status, format_status, status_json
from leaderelection.cli.watch import change_json, format_change

AT = datetime(2026, 11, 26, 17, 1, 2, 345678, tzinfo=UTC)


def info(instance_id: str = "host-a", token: int = 1795711865794002) -> LeaderInfo:
    return LeaderInfo(
        instance_id=instance_id,
        hostname="vm-a",
        pid=4242,
        started_at=AT - timedelta(minutes=2, seconds=5),
        last_heartbeat=AT - timedelta(seconds=0.4),
        fencing_token=token,
        election="billing",
    )


def test_times_are_iso_8601_utc_with_milliseconds() -> None:
    assert format_time(AT) == "2026-11-26T17:01:02.345Z"
    plus_two = AT.astimezone(timezone(timedelta(hours=2)))
    assert format_time(plus_two) == "2026-11-26T17:01:02.345Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0s"), (0.4, "0.4s"), (12.34, "12.3s"), (125, "2m05s"), (7620, "2h07m"),
     (273600, "3d04h")],
)  # fmt: skip
def test_ages_for_a_person(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_status_block_with_a_leader() -> None:
    status = Status("billing", info(), 2.63, AT)
    assert status.exit_code == 0
    assert format_status(status).splitlines() == [
        "election        billing",
        "leader          host-a",
        "hostname        vm-a",
        "pid             4242",
        "fencing token   1795711865794002",
        "leader since    2026-11-26T16:58:57.345Z (2m05s ago)",
        "last heartbeat  2026-11-26T17:01:01.945Z (0.4s ago)",
        "lease left      2.6s",
    ]


def test_status_block_without_a_leader() -> None:
    status = Status("billing", None, 0.0, AT)
    assert status.exit_code == 3
    assert format_status(status).splitlines() == ["election  billing", "leader    none"]


def test_a_leader_clock_ahead_of_ours_is_not_a_negative_age() -> None:
    ahead = info().model_copy(update={"last_heartbeat": AT + timedelta(seconds=1.5)})
    text = format_status(Status("billing", ahead, 1.0, AT))
    assert "(1.5s ahead of this machine's clock)" in text
    assert "-" not in text.split("last heartbeat")[1].split("T", 1)[1]


def test_status_json() -> None:
    doc = status_json(Status("billing", info(), 2.63251, AT))
    assert json.loads(json.dumps(doc)) == {
        "election": "billing",
        "at": "2026-11-26T17:01:02.345Z",
        "leader": {
            "instance_id": "host-a",
            "hostname": "vm-a",
            "pid": 4242,
            "fencing_token": 1795711865794002,
            "started_at": "2026-11-26T16:58:57.345Z",
            "last_heartbeat": "2026-11-26T17:01:01.945Z",
            "metadata": {},
            "leader_for_seconds": 125.0,
            "heartbeat_age_seconds": 0.4,
            "lease_left_seconds": 2.633,
        },
    }
    assert status_json(Status("billing", None, 0.0, AT)) == {
        "election": "billing",
        "at": "2026-11-26T17:01:02.345Z",
        "leader": None,
    }


def test_watch_lines() -> None:
    a, b = info("host-a", 100), info("host-b", 200)
    assert format_change(LeaderChange(None, None, AT, initial=True)) == (
        "2026-11-26T17:01:02.345Z  no leader"
    )
    assert format_change(LeaderChange(a, None, AT)) == (
        "2026-11-26T17:01:02.345Z  leader host-a (host vm-a, pid 4242, fencing token 100)"
    )
    assert format_change(LeaderChange(None, a, AT)) == (
        "2026-11-26T17:01:02.345Z  no leader (the term of host-a with fencing token 100 ended)"
    )
    assert format_change(LeaderChange(b, None, AT)).endswith("leader host-b (host vm-a, pid "
                                                            "4242, fencing token 200)")  # fmt: skip


def test_watch_json_lines() -> None:
    a = info("host-a", 100)
    ended = change_json(LeaderChange(None, a, AT), "billing")
    assert json.loads(json.dumps(ended)) == {
        "at": "2026-11-26T17:01:02.345Z",
        "election": "billing",
        "initial": False,
        "leader": None,
        "previous": {
            "instance_id": "host-a",
            "hostname": "vm-a",
            "pid": 4242,
            "fencing_token": 100,
            "started_at": "2026-11-26T16:58:57.345Z",
            "last_heartbeat": "2026-11-26T17:01:01.945Z",
            "metadata": {},
        },
    }
    first = change_json(LeaderChange(a, None, AT, initial=True), "billing")
    assert first["initial"] is True
    assert first["leader"]["fencing_token"] == 100
    assert first["previous"] is None


def test_the_commands_are_registered() -> None:
    assert {"status", "watch", "step-down"} <= set(COMMANDS)
    for name in ("status", "watch", "step-down"):
        module = COMMANDS[name].load()
        assert callable(module.add_arguments) and callable(module.run)
    args = build_parser("step-down").parse_args(
        ["step-down", "--instance", "host-a", "--wait", "2s", "--name", "billing"]
    )
    assert args.instance == "host-a"
    assert args.wait == timedelta(seconds=2)
    assert args.no_wait is False
    args = build_parser("watch").parse_args(["watch", "--json", "--lock-ttl", "3s"])
    assert args.json is True and args.lock_ttl == timedelta(seconds=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status", "--redis-url", "http://x:6379"], "cannot use Redis URL 'http://x:6379'"),
        (["watch", "--redis-url", "redis://h:notaport/0"], "cannot use Redis URL"),
        (["step-down", "--redis-url", "ftp://h"], "cannot use Redis URL"),
        (["status", "--lock-ttl", "1s", "--heartbeat-interval", "2s"], "timings must satisfy"),
        (["step-down", "--wait", "soon"], "argument --wait: cannot read 'soon' as a duration"),
        (["step-down", "--wait", "1s", "--no-wait"], "not allowed with argument --wait"),
        (["step-down", "--instance-id", "host-a"], "use --instance ID to name the leader"),
        (["status", "--jsn"], "unrecognized arguments: --jsn"),
    ],
)
def test_usage_errors_exit_2_before_contacting_redis(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err
