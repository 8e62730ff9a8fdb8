"""The documentation's code and reference, checked without building the site (``mkdocs build
--strict`` in CI checks links, anchors, snippets and cross-references).

- Every Python block of README.md and docs/ compiles, except a quote (an excerpt of a file,
  checked against it instead) and a block marked ``<!-- fragment: <why> -->`` on the line above.
- Every ``<!-- quote: <path> -->`` block is a verbatim excerpt of that file.
- Every ``--8<--`` snippet names a file that exists.
- The generated tables are complete: every field of ``ElectionConfig``, every option of every
  subcommand, every metric the collector exports, every public name of the API.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import re
import time
from pathlib import Path

import pytest

import leaderelection
from leaderelection import ElectionConfig, LeaderElection
from leaderelection import _metrics as registry
from leaderelection.prometheus import LeaderElectionCollector
from leaderelection.testing import FakeClock, MemoryServer
from tools import docs_hooks

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(
    r"^(?P<indent>[ ]*)(?P<ticks>`{3,}|~{3,})(?P<info>[^\n]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=ticks)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
QUOTE = re.compile(r"<!-- quote: (?P<path>\S+) -->\n$")
FRAGMENT = re.compile(r"<!-- fragment: .+ -->\n$")


def _blocks(page: Path) -> list[tuple[int, str, str, str]]:
    """(line, language, the line above, body) of every fenced block of ``page``."""
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        start = text.rfind("\n", 0, max(match.start() - 1, 0)) + 1
        above = text[start : match.start()]
        indent = len(match["indent"])
        body = "\n".join(line[indent:] for line in match["body"].splitlines())
        language = (match["info"].strip().split() or [""])[0]
        found.append((text.count("\n", 0, match.start()) + 1, language, above, body))
    return found


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_python_block_compiles() -> None:
    failures, compiled = [], 0
    for page in PAGES:
        for line, language, above, body in _blocks(page):
            if language not in ("python", "py") or QUOTE.search(above) or FRAGMENT.search(above):
                continue
            compiled += 1
            try:
                compile(body, f"{_name(page)}:{line}", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            except SyntaxError as exc:
                failures.append(f"{_name(page)}:{line}: {exc}")
    assert compiled > 40
    assert not failures, "\n".join(failures)


def test_every_quoted_block_is_an_excerpt_of_its_file() -> None:
    for page in PAGES:
        for line, _, above, body in _blocks(page):
            quote = QUOTE.search(above)
            if quote is None:
                continue
            source = ROOT / quote["path"]
            assert source.is_file(), f"{_name(page)}:{line} quotes {quote['path']}: no such file"
            assert body in source.read_text(), f"{_name(page)}:{line} misquotes {source}"


def test_every_snippet_names_an_existing_file() -> None:
    for page in PAGES:
        for included in re.findall(r'--8<--\s+"([^"]+)"', page.read_text()):
            path = included.split(":", 1)[0]
            assert (ROOT / path).is_file(), f"{_name(page)} includes {included}: no such file"


def test_every_marker_names_a_generator() -> None:
    for page in PAGES:
        docs_hooks.expand_markers(page.read_text())  # raises on an unknown marker
    with pytest.raises(ValueError, match="unknown marker"):
        docs_hooks.expand_markers("<!-- generated: nothing -->")


def _expanded(page: str) -> str:
    text = (DOCS / page).read_text()
    assert "<!-- generated: " in text
    return docs_hooks.expand_markers(text)


def test_the_configuration_table_has_every_field_with_its_variable_and_default() -> None:
    page = _expanded("configuration.md")
    rows = {row.split(" | ")[0].strip("| `"): row for row in page.splitlines() if row[:3] == "| `"}
    for name in ElectionConfig.model_fields:
        assert name in rows, f"configuration.md has no row for {name}"
        env = ElectionConfig.ENV_NAMES.get(name)
        assert (f"`{env}`" if env else "(none)") in rows[name]
    assert "`10s`" in rows["lock_ttl"] and "`True`" in rows["restart_protection"]
    assert "`socket.gethostname()`" in rows["hostname"]


def test_a_docstring_that_disagrees_with_the_environment_names_fails_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ElectionConfig, "ENV_NAMES", {**ElectionConfig.ENV_NAMES, "name": "X"})
    with pytest.raises(ValueError, match="ENV_NAMES says 'X'"):
        docs_hooks.config_fields()


def test_the_cli_page_has_every_command_and_every_option() -> None:
    raw = (DOCS / "cli.md").read_text()
    page = _expanded("cli.md")
    for name, parser in docs_hooks._parsers():
        assert f"<!-- generated: cli-command {name} -->" in raw
        assert f"## {name}\n" in raw
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings or [str(action.metavar)]:
                assert option in page, f"cli.md does not show {option} of {name}"
            if action.help:
                shown = parser._get_formatter()._expand_help(action)
                assert docs_hooks._text(shown)[:40] in page


def test_the_metrics_tables_have_every_family() -> None:
    page = _expanded("monitoring.md")
    for family in LeaderElectionCollector().describe():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in page, f"monitoring.md does not list {name}"


async def test_the_metrics_tables_agree_with_a_real_scrape() -> None:
    """The labels of every sample of a scrape (a leader and an observer's view) are in the
    table, and so is every value of the labels that take a fixed set of them."""
    clock = FakeClock()
    server = MemoryServer(clock)
    config = ElectionConfig(name="docs", restart_protection=False)
    election = LeaderElection(None, config, clock=clock, store=server.store(config))
    await election.start()
    await clock.advance(config.heartbeat_interval.total_seconds() + 0.1)  # a renewal
    sighting = registry.open_sighting(config.name, fresh_for=60)
    sighting.saw(await election.get_leader_info(), None, time.monotonic())
    try:
        families = list(LeaderElectionCollector().collect())
    finally:
        registry.close_sighting(sighting)
        stopping = asyncio.ensure_future(election.stop())
        await clock.advance_until(stopping.done, limit=30)
        await stopping
    page = _expanded("monitoring.md")
    rows = {row.split(" | ")[0].split("`")[1]: row for row in page.splitlines() if row[:3] == "| `"}
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert family.samples, f"{name} has no sample"
        for sample in family.samples:
            for label, value in sample.labels.items():
                assert f"`{label}`" in rows[name], f"{name}: label {label} not in the table"
                if label in ("state", "reason", "result", "kind"):
                    assert docs_hooks._text(value) in rows[name], f"{name}: {label}={value}"


def test_every_public_name_has_a_reference_entry() -> None:
    api = (DOCS / "api.md").read_text()
    for name in leaderelection.__all__:
        assert f"\n::: leaderelection.{name}\n" in api, f"docs/api.md does not render {name}"
    for module in ("sync", "testing", "fastapi", "prometheus", "opentelemetry"):
        page = (DOCS / "reference" / f"{module}.md").read_text()
        assert f"\n::: leaderelection.{module}\n" in page
        assert f"reference/{module}.md" in (ROOT / "mkdocs.yml").read_text()


def test_the_readmes_links_are_absolute_and_name_existing_pages() -> None:
    """README.md is also the package index's page, where relative links break, and it is not
    part of the site, so mkdocs does not check its links: every link is absolute, and those
    into the docs site or the repository name pages and files that exist."""
    site = "https://leaderelection-redis.github.io/leaderelection-redis/"
    repo = "https://github.com/leaderelection-redis/leaderelection-redis"
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert any(link.startswith(site) for link in links)
    for link in links:
        target = link.split("#")[0]
        assert "://" in target or target == "", f"README.md: relative link {link}"
        if target.startswith(site):
            page = target.removeprefix(site).strip("/")
            path = ROOT / "docs" / (f"{page}.md" if page else "index.md")
            assert path.exists(), f"README.md links to {link}: no docs/{path.name}"
        elif target.startswith(f"{repo}/blob/main/") or target.startswith(f"{repo}/tree/main/"):
            path = ROOT / target.split("/main/", 1)[1]
            assert path.exists(), f"README.md links to {link}: no such file"
