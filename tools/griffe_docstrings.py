"""A griffe extension that reads the package's docstrings as mkdocstrings renders Markdown.

The docstrings are Google style with two reStructuredText habits that read well in ``help()``
and in editors, and that Markdown would show as written:

- roles such as ``:class:`Fence``` and ``:meth:`~leaderelection.LeaderObserver.changes```
  become cross-references (``[`Fence`][Fence]``), which mkdocstrings resolves in the scope of
  the documented object (``scoped_crossrefs``); a ``~`` shows the last name only;
- a paragraph ending in ``::`` followed by an indented block becomes a paragraph ending in
  ``:`` and a fenced block (Python when
  it compiles, else text).

Load it with the Python handler's ``extensions: [tools/griffe_docstrings.py:SphinxHabits]``.
"""

from __future__ import annotations

import re
from ast import PyCF_ALLOW_TOP_LEVEL_AWAIT
from typing import Any

import griffe

__all__ = ["SphinxHabits", "markdown_docstring"]

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):`(~?)\.?([\w.]+)(?:\(\))?`")


def _role(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    shown = target.rsplit(".", 1)[-1] if short else target
    return f"[`{shown}`][{target}]"


def _language(code: str) -> str:
    """``python`` for a block that compiles, else ``text`` (a tree, a transcript)."""
    try:
        compile(code, "<docstring>", "exec", flags=PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    except SyntaxError:
        return "text"
    return "python"


def markdown_docstring(text: str) -> str:
    """``text`` with its roles as cross-references and its ``::`` blocks fenced."""
    text = _ROLE.sub(_role, text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(head + ":")
            indent = len(line) - len(line.lstrip())
            block: list[str] = []
            j = i + 1
            while j < len(lines):
                current = lines[j]
                deeper = len(current) - len(current.lstrip()) > indent
                if current.strip() and not deeper:
                    break
                block.append(current)
                j += 1
            while block and not block[-1].strip():
                block.pop()
            body = list(block)
            while body and not body[0].strip():
                body.pop(0)
            depth = min(len(b) - len(b.lstrip()) for b in body if b.strip()) if body else 0
            pad = " " * indent
            out.append("")
            code = [b[depth:] if b.strip() else "" for b in body]
            out.append(pad + "```" + _language("\n".join(code)))
            out.extend(pad + c if c else "" for c in code)
            out.append(pad + "```")
            out.append("")
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxHabits(griffe.Extension):
    """Rewrites every docstring with :func:`markdown_docstring` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
