"""The program on the landing pages: the README quotes ``examples/hello.py`` verbatim, the docs
home page includes the file, and the file runs as the pages say against a real, brand-new
``redis-server``: restart protection holds the first election back (and says so), then one copy
leads and runs its ``while_leader`` function, and Ctrl+C hands leadership to the other copy."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import pytest

from tests.examples.processes import Process, example_env
from tests.redis_harness import RedisServer

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello.py"
URL = "redis://localhost:6379/0"
LEADING = r"^leading with fencing token (\d+)$"
START_TIMEOUT = 30.0  # interpreter start and imports, on a busy 2-core machine
HOLD_BACK = 12.0  # ceil(lock_ttl) + 1 s of server uptime with the default lock_ttl, and a margin


def test_the_readme_quotes_the_program_verbatim() -> None:
    source = HELLO.read_text()
    assert f"```python\n{source}```" in (ROOT / "README.md").read_text()


def test_the_docs_home_page_includes_the_program() -> None:
    assert '--8<-- "examples/hello.py"' in (ROOT / "docs" / "index.md").read_text()


def test_the_program_fits_on_a_screen() -> None:
    lines = [line for line in HELLO.read_text().splitlines() if line.strip()]
    assert len(lines) <= 16, f"examples/hello.py grew to {len(lines)} lines of code"
    assert URL in HELLO.read_text()


@pytest.mark.timeout(120)
def test_the_program_elects_runs_its_work_and_hands_over_on_ctrl_c(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    program = tmp_path / "hello.py"
    program.write_text(HELLO.read_text().replace(URL, redis_server.url))
    env = example_env()
    with contextlib.ExitStack() as stack:
        first = Process([sys.executable, str(program)], env=env, label="first")
        stack.callback(first.close)
        # A brand-new server: the first election waits, and the log says why.
        first.wait_for(r"Redis started \d+s ago: holding elections back", timeout=START_TIMEOUT)
        first.wait_for(r"Became the leader$", timeout=HOLD_BACK + START_TIMEOUT)
        _, _, leading = first.wait_for(LEADING, timeout=5)
        token = int(leading.group(1))

        second = Process([sys.executable, str(program)], env=env, label="second")
        stack.callback(second.close)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=15) == 0, first.dump()
        assert first.matches(r"Releasing leadership voluntarily$"), first.dump()
        assert "Traceback" not in first.output(), first.dump()

        # Leaving released the lock rather than leaving it to expire; the second copy leads (at
        # once if it was already waiting), with a larger fencing token.
        with redis_server.sync_client() as client:
            assert client.get("leaderelection:{hello}:lock") is None
        _, _, took_over = second.wait_for(LEADING, timeout=START_TIMEOUT)
        assert int(took_over.group(1)) > token
        assert not second.matches(r"holding elections back"), second.dump()
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=15) == 0, second.dump()
        assert "Traceback" not in second.output(), second.dump()
