"""The files in ``monitoring/``: promtool accepts the alerting rules and passes their unit tests,
every alert has a test that expects it to fire and one that expects it not to, every runbook link
leads to the alert's section of ``docs/monitoring.md``. (That the rules and the dashboard query
only metrics the collector exports is tests/metrics/test_monitoring_names.py.)

The promtool tests find ``promtool`` on PATH (``$PROMTOOL`` first), or bring their own: on a
Debian or Ubuntu machine they take it out of the distribution's ``prometheus`` package
(``apt-get download``, no root needed, nothing installed) into a cache under the user's home.
Where neither works they skip, saying why, unless ``LEADERELECTION_REQUIRE_PROMTOOL=1`` is set:
then they fail, so that CI cannot skip them unnoticed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts_test.yml"
DASHBOARD = ROOT / "monitoring" / "dashboard.json"
DOC = ROOT / "docs" / "monitoring.md"
RUNBOOKS = (
    "https://github.com/leaderelection-redis/leaderelection-redis/blob/main/docs/monitoring.md#"
)


CACHE = Path.home() / ".cache" / "leaderelection-tests" / "promtool"


def _bring_promtool() -> str | None:
    """promtool out of Debian's prometheus package, cached; None where apt cannot get it."""
    if CACHE.is_file():
        return str(CACHE)
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    with tempfile.TemporaryDirectory() as work:
        for command in (["apt-get", "download", "prometheus"], ["sh", "-c", "dpkg-deb -x *.deb x"]):
            done = subprocess.run(command, cwd=work, capture_output=True, timeout=300, check=False)
            if done.returncode != 0:
                return None
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(work) / "x" / "usr" / "bin" / "promtool", CACHE)
    return str(CACHE)


def find_promtool() -> str:
    """The promtool to run (see the module docstring), or a skip or failure saying why not."""
    path = os.environ.get("PROMTOOL") or shutil.which("promtool") or _bring_promtool()
    if path is None:
        reason = (
            "promtool is not on PATH and apt-get could not fetch Debian's prometheus package "
            "(apt-get install prometheus, or put a Prometheus release's promtool on PATH)"
        )
        if os.environ.get("LEADERELECTION_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"LEADERELECTION_REQUIRE_PROMTOOL=1, but {reason}")
        pytest.skip(reason)
    return path


def promtool(*args: str) -> None:
    """Run promtool from the repository root, print its output, and require success."""
    path = find_promtool()
    proc = subprocess.run(
        [path, *args], cwd=ROOT, capture_output=True, text=True, timeout=50, check=False
    )
    print(f"$ promtool {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"


def test_promtool_checks_the_rules() -> None:
    promtool("check", "rules", str(RULES.relative_to(ROOT)))


def test_promtool_passes_the_rule_unit_tests() -> None:
    promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names, "no alerts in alerts.yml"
    assert names - firing == set(), "alerts that no test expects to fire"
    assert names - quiet == set(), "alerts that no test expects to stay quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that alerts.yml does not have"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation removed (except
    hyphens and underscores), spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def doc_headings() -> dict[str, str]:
    """The anchors of docs/monitoring.md's headings (outside code blocks), to their text."""
    headings: dict[str, str] = {}
    fenced = False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            headings.setdefault(github_anchor(match.group(1)), match.group(1))
    return headings


def test_github_anchor() -> None:
    assert github_anchor("LeaderElectionNoLeader") == "leaderelectionnoleader"
    assert github_anchor("What to do: `resign()`, then wait") == "what-to-do-resign-then-wait"


def test_every_runbook_url_leads_to_the_alerts_section() -> None:
    headings = doc_headings()
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOKS), url
        anchor = url.removeprefix(RUNBOOKS)
        assert anchor in headings, f"{rule['alert']}: docs/monitoring.md has no #{anchor}"
        assert headings[anchor] == rule["alert"], f"{rule['alert']}: #{anchor} is another section"


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
