"""`python -m leaderelection demo`: the three acts, in order, with increasing fencing tokens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from leaderelection.cli import demo, main

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[\+ *\d+\.\d ms\] ")


def _act(out: str, tag: str) -> tuple[str, int]:
    """The leader and fencing token announced on the one line starting with ``tag``."""
    found = re.findall(
        rf"\] {tag}: ([ABC]) is the leader with fencing token (\d+)", out, re.MULTILINE
    )
    assert len(found) == 1, f"expected one {tag} line in:\n{out}"
    leader, token = found[0]
    return leader, int(token)


def test_demo_elects_fails_over_and_hands_over(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo"])
    out, err = capsys.readouterr()
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert err == ""  # the library's logging is quiet by default

    lines = out.splitlines()
    assert all(LINE.match(line) for line in lines), out
    first, t1 = _act(out, "ELECTION")
    second, t2 = _act(out, "FAILOVER")
    third, t3 = _act(out, "HANDOFF")
    assert len({first, second, third}) == 3, out  # the crashed leader cannot come back
    assert t1 < t2 < t3

    assert re.search(r"elected in \d+\.\d ms \(enter to leader\)", out)
    assert f"CRASH: {first} is cut off from Redis" in out
    assert f"{first}'s lease expired in Redis" in out
    assert re.search(rf"FAILOVER: .* ms after {first}'s lease expired", out)
    assert f"{second} calls resign()" in out
    assert re.search(rf"HANDOFF: .* ms after {second} called resign\(\)", out)
    assert f"fencing tokens seen: {t1} ({first}) < {t2} ({second}) < {t3} ({third})" in out
    assert "summary:" in lines[-1]
    for leader, token in ((first, t1), (second, t2), (third, t3)):
        assert f"{leader}: on_become_leader: I am the leader now (fencing token {token})" in out
        assert f"{leader}: doing leader-only work (token {token})" in out
        assert f"{leader}: on_lose_leadership" in out

    # The timeline tells the story in order.
    order = [
        "=== 1. election",
        "ELECTION:",
        "=== 2. leader crash",
        "CRASH:",
        f"{first}: on_lose_leadership",
        "lease expired in Redis",
        "FAILOVER:",
        "=== 3. graceful resign and handoff",
        "calls resign()",
        "HANDOFF:",
        "=== 4. fencing tokens",
        "summary:",
    ]
    positions = [out.index(marker) for marker in order]
    assert positions == sorted(positions), out


def test_demo_exits_1_when_the_expected_change_does_not_come(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A "crash" that cuts nothing: the leader keeps renewing and never steps down.
    monkeypatch.setattr(demo, "cut_connection", lambda client: None)
    assert main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED:" in out
    assert "leaderelection demo: failed:" in err
    assert "still claimed leadership" in err


def test_demo_without_fakeredis_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # import fakeredis raises ImportError
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'leaderelection-redis[demo]'" in err
    assert "--redis-url" in err
    assert len(err.strip().splitlines()) == 1


def test_demo_refuses_invalid_timings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--lock-ttl", "200ms"]) == 2
    assert "heartbeat_interval < renew_deadline < lock_ttl" in capsys.readouterr().err


def test_no_subcommand_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: leaderelection" in err
    assert "demo" in err


def test_usage_errors_and_help_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert main(["demo", "--help"]) == 0
    assert "--redis-url" in capsys.readouterr().out


def test_python_dash_m_entry_point() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "leaderelection"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "usage: leaderelection" in done.stderr
