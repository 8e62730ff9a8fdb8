"""docs/testing.md shows only code that the tests run: every Python block on the page includes a
section of a tested file (``--8<-- "<path>:<section>"``), and every section it names is marked in
that file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "testing.md"


def test_every_code_block_of_the_page_includes_a_section_of_a_tested_file() -> None:
    text = PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)\n```", text, re.S)
    included = [re.fullmatch(r'--8<-- "([\w/.]+):([\w-]+)"', block) for block in blocks]
    assert all(included), "a Python block of docs/testing.md is not a snippet include"
    sections = [(match[1], match[2]) for match in included if match]
    assert {path for path, _ in sections} == {
        "tests/testing/test_examples.py",
        "tests/testing/example_app.py",
        "tests/testing/example_workers.py",
    }
    for path, section in sections:
        source = (ROOT / path).read_text()
        for marker in (f"# --8<-- [start:{section}]", f"# --8<-- [end:{section}]"):
            assert marker in source, f"docs/testing.md includes {path}:{section}: no {marker!r}"
    tests = re.findall(
        r"^(?:async )?def (test_\w+)", (ROOT / "tests/testing/test_examples.py").read_text(), re.M
    )
    shown = "".join(
        (ROOT / path).read_text().split(f"[start:{section}]")[1].split(f"[end:{section}]")[0]
        for path, section in sections
    )
    assert tests and all(f"def {test}(" in shown for test in tests), "a test is not shown"


def test_the_page_is_linked_from_the_nav_the_index_and_the_readme() -> None:
    assert "testing.md" in (ROOT / "mkdocs.yml").read_text()
    assert "(testing.md)" in (ROOT / "docs" / "index.md").read_text()
    site = "https://leaderelection-redis.github.io/leaderelection-redis/"
    assert f"({site}testing/)" in (ROOT / "README.md").read_text()
