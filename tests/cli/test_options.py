"""The shared command-line options, their environment variables, errors and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from leaderelection import (
    ConfigurationError,
    ElectionConfig,
    StoreAuthenticationError,
    StoreError,
    StoreReadOnlyError,
    StoreUnavailableError,
)
from leaderelection.cli import build_parser, main
from leaderelection.cli._common import (
    DEFAULT_REDIS_URL,
    ExitCode,
    _RepeatFilter,
    config_from_args,
    exit_code_for,
    redact_url,
    redis_url_from_args,
    report_error,
    status_of_returncode,
)
from leaderelection.cli.run import command_from_args
from tests.cli.conftest import StartRun, clean_env
from tests.redis_harness import free_port


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("run").parse_args(["run", *argv])


def test_flags_win_over_environment_and_environment_over_defaults() -> None:
    environ = {
        "LEADER_ELECTION_NAME": "from-env",
        "LEADER_ELECTION_LOCK_TTL": "5s",
        "LEADER_ELECTION_HEARTBEAT_INTERVAL": "1s",
    }
    config = config_from_args(parse("--lock-ttl", "3s", "--", "true"), environ)
    assert config.lock_ttl == timedelta(seconds=3)  # flag over env
    assert config.name == "from-env"  # env over default
    assert config.heartbeat_interval == timedelta(seconds=1)
    assert config.retry_interval == ElectionConfig().retry_interval  # default
    assert config.renew_deadline == timedelta(seconds=2)  # 2/3 of the flag's lock_ttl


def test_every_config_field_has_a_flag() -> None:
    values = {
        "name": "billing",
        "key_prefix": "app",
        "lock_key": "app:{billing}:the-lock",
        "info_key": "app:{billing}:the-info",
        "lock_ttl": "4s",
        "heartbeat_interval": "500ms",
        "retry_interval": "1s",
        "renew_deadline": "3s",
        "instance_id": "worker-1",
        "hostname": "host-a",
        "metadata": "url=http://10.0.0.5:8000,zone=eu-1",
        "min_replicas": "1",
        "restart_protection": "no",
        "priority": "-5",
    }
    assert set(values) == set(ElectionConfig.model_fields)
    argv = [
        arg for field, value in values.items() for arg in ("--" + field.replace("_", "-"), value)
    ]
    config = config_from_args(parse(*argv, "--", "true"), {})
    assert config == ElectionConfig(**values)


def test_every_environment_variable_is_read() -> None:
    values = {
        "name": "billing",
        "key_prefix": "app",
        "lock_ttl": "4s",
        "heartbeat_interval": "500ms",
        "retry_interval": "1s",
        "renew_deadline": "3s",
        "instance_id": "worker-1",
        "hostname": "host-a",
        "metadata": "url=http://10.0.0.5:8000,zone=eu-1",
        "min_replicas": "2",
        "restart_protection": "false",
        "priority": "7",
    }
    assert set(values) == set(ElectionConfig.ENV_NAMES)
    environ = {ElectionConfig.ENV_NAMES[field]: value for field, value in values.items()}
    assert config_from_args(parse("--", "true"), environ) == ElectionConfig(**values)


def test_redis_url_comes_from_the_flag_then_redis_url_then_the_default() -> None:
    env = {"REDIS_URL": "redis://env-host:6380/1"}
    assert redis_url_from_args(parse("--redis-url", "redis://flag/2", "--", "x"), env) == (
        "redis://flag/2"
    )
    assert redis_url_from_args(parse("--", "x"), env) == "redis://env-host:6380/1"
    assert (
        redis_url_from_args(parse("--", "x"), {})
        == DEFAULT_REDIS_URL
        == ("redis://localhost:6379/0")
    )


def test_the_command_after_double_dash_keeps_its_own_options() -> None:
    args = parse("--grace", "2s", "--", "python", "-c", "pass", "--grace", "1", "--")
    assert args.grace == timedelta(seconds=2)
    assert command_from_args(args) == ["python", "-c", "pass", "--grace", "1", "--"]
    assert command_from_args(parse("sleep", "10")) == ["sleep", "10"]
    assert parse("--", "x").on_loss == "restart"
    assert parse("--", "x").grace is None  # lock_ttl - renew_deadline, computed by run()
    assert parse("--", "x").shell is False


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--redis-url", "http://user:secret@host"], {}, "cannot use Redis URL 'http://user:***@host'"),
        (["--redis-url", "redis://host:port/0"], {}, "Port could not be cast to integer"),
        ([], {"REDIS_URL": "localhost:6379"}, "cannot use Redis URL 'localhost:6379': no scheme"),
        (["--lock-ttl", "ten"], {}, "argument --lock-ttl: cannot read 'ten' as a duration"),
        ([], {"LEADER_ELECTION_LOCK_TTL": "ten"}, "lock_ttl=LEADER_ELECTION_LOCK_TTL"),
        (["--lock-ttl", "1s", "--heartbeat-interval", "2s"], {}, "heartbeat_interval < renew_d"),
        (["--name", "a{b}"], {}, "name must not contain '{' or '}'"),
        (["--on-loss", "later"], {}, "argument --on-loss: invalid choice: 'later'"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_usage_errors(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("LEADER_ELECTION_") or k == "REDIS_URL"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["run", *argv, "--", "true"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("leaderelection run: error: "), err
    assert "secret" not in err


def test_flag_errors_do_not_blame_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--lock-ttl", "1s", "--heartbeat-interval", "2s", "--", "true"]) == 2
    assert "environment" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["run"], ["run", "--"], ["run", "--shell", "--", " "]])
def test_no_command_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "leaderelection run: error: no command given" in capsys.readouterr().err


def test_exit_codes() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "ERROR": 1,
        "USAGE": 2,
        "NO_LEADER": 3,
        "LEADERSHIP_LOST": 4,
        "CANNOT_EXECUTE": 126,
        "COMMAND_NOT_FOUND": 127,
        "INTERRUPTED": 130,
    }
    assert ExitCode.INTERRUPTED == 128 + signal.SIGINT
    assert exit_code_for(ConfigurationError("bad")) == 2
    for exc in (
        StoreAuthenticationError("no"),
        StoreReadOnlyError("ro"),
        StoreUnavailableError("down"),
        StoreError("other"),
        RuntimeError("bug"),
    ):
        assert exit_code_for(exc) == 1
    assert status_of_returncode(3) == 3
    assert status_of_returncode(-signal.SIGTERM) == 143
    assert status_of_returncode(-signal.SIGKILL) == 137


def test_report_error_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    exc = StoreAuthenticationError("Redis refused the credentials while acquiring:\n  WRONGPASS")
    assert report_error("status", exc) == 1
    assert capsys.readouterr().err == (
        "leaderelection status: error: Redis refused the credentials while acquiring: WRONGPASS\n"
    )


def test_redact_url() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:pw@host/0?ssl=1") == "rediss://user:***@host/0?ssl=1"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url("unix:///tmp/redis.sock") == "unix:///tmp/redis.sock"


def test_a_repeated_warning_is_shown_once_per_interval() -> None:
    repeat = _RepeatFilter(interval=60)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("leaderelection", level, __file__, 1, msg, (1.0,), None)

    shown = [repeat.filter(record("Failed to acquire, retrying in %s")) for _ in range(3)]
    assert shown == [True, False, False]
    assert repeat.filter(record("Heartbeat failed, retrying: %s"))
    assert repeat.filter(record("Callback raised %s", logging.ERROR))
    assert repeat.filter(record("Callback raised %s", logging.ERROR))


async def test_unreachable_redis_keeps_trying_and_says_so(start_run: StartRun) -> None:
    """Redis down is not an error: `run` says so on stderr, keeps trying, starts nothing."""
    run = await start_run(f"redis://127.0.0.1:{free_port()}/0", "down")
    await run.line(r"warning: Failed to acquire leadership, retrying in .*: Redis is unavailable")
    await run.line(r"cannot reach Redis at redis://127\.0\.0\.1:\d+/0 yet: still trying")
    run.signal(signal.SIGTERM)
    assert await run.wait() == 128 + signal.SIGTERM
    await run.line(r"got SIGTERM: exiting")
    assert run.child_pids() == [] and run.events == [], run.dump()


def test_run_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "leaderelection", "run", "--help"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for flag in ("--grace", "--on-loss", "--shell", "--redis-url", "--lock-ttl", "--instance-id"):
        assert flag in text
    assert "LEADER_ELECTION_FENCING_TOKEN" in text
