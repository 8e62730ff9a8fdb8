"""docs/testing.md shows only code that the tests run: every Python block on the page is a
verbatim excerpt of the file named in the ``<!-- quote: <path> -->`` line above it, with the
page's module names (``myapp``, ``myworkers``) standing for the example modules here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "testing.md"
MODULES = {
    "from myapp import": "from tests.testing.example_app import",
    "from myworkers import": "from tests.testing.example_workers import",
}


def test_every_code_block_of_the_page_is_quoted_from_a_tested_file() -> None:
    text = PAGE.read_text()
    blocks = re.findall(r"```python\n", text)
    quotes = re.findall(r"<!-- quote: (\S+) -->\n```python\n(.*?)\n```", text, re.S)
    assert len(quotes) == len(blocks), "a Python block of docs/testing.md has no quote line"
    assert {path for path, _ in quotes} == {
        "tests/testing/test_examples.py",
        "tests/testing/example_app.py",
        "tests/testing/example_workers.py",
    }
    for path, shown_block in quotes:
        block = shown_block
        for shown, real in MODULES.items():
            block = block.replace(shown, real)
        assert block in (ROOT / path).read_text(), f"docs/testing.md misquotes {path}:\n{block}"


def test_the_page_is_linked_from_the_nav_the_index_and_the_readme() -> None:
    assert "testing.md" in (ROOT / "mkdocs.yml").read_text()
    assert "(testing.md)" in (ROOT / "docs" / "index.md").read_text()
    site = "https://leaderelection-redis.github.io/leaderelection-redis/"
    assert f"({site}testing/)" in (ROOT / "README.md").read_text()
