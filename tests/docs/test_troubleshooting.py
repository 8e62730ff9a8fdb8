"""docs/troubleshooting.md lists every log line the library can emit: each logging call in
``leaderelection/`` is found in the source (ast), and its level and message format string must
appear on the page as ``"`LEVEL` `format`"``. A new log line without an entry fails here."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "leaderelection"
PAGE = ROOT / "docs" / "troubleshooting.md"

# The methods of logging.Logger (and of the logging module) that emit a record, and its level.
LEVELS = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "exception": "ERROR",
    "critical": "CRITICAL",
    "fatal": "CRITICAL",
}
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class LogCall:
    where: str
    level: str
    message: str

    @property
    def entry(self) -> str:
        return f"`{self.level}` `{self.message}`"


def _is_get_logger(node: ast.expr) -> bool:
    """``logging.getLogger(...)`` or ``getLogger(...)``."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "getLogger") or (
        isinstance(func, ast.Name) and func.id == "getLogger"
    )


def _logger_names(tree: ast.Module) -> set[str]:
    """The names a module binds to a logger anywhere (module level or in a function), and the
    ``logging`` module itself."""
    names = {"logging"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _is_get_logger(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif (
            isinstance(node, ast.AnnAssign)
            and node.value is not None
            and _is_get_logger(node.value)
            and isinstance(node.target, ast.Name)
        ):
            names.add(node.target.id)
    return names


def _level_of(node: ast.expr, where: str) -> str:
    """The level of ``logger.log(level, ...)``: ``logging.WARNING`` or ``WARNING``."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
    assert name in LOG_LEVELS, f"{where}: logger.log() with a level that is not a constant"
    return str(name)


def log_calls() -> list[LogCall]:
    """Every logging call in the package, with its level and message format string."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        loggers = _logger_names(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in loggers
                and (node.func.attr in LEVELS or node.func.attr == "log")
            ):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            args = list(node.args)
            if node.func.attr == "log":
                assert args, f"{where}: logger.log() without a level"
                level = _level_of(args.pop(0), where)
            else:
                level = LEVELS[node.func.attr]
            message = args[0] if args else None
            assert isinstance(message, ast.Constant) and isinstance(message.value, str), (
                f"{where}: the message of a log call must be a string literal (a format string "
                "with %-style arguments), so that docs/troubleshooting.md can list it"
            )
            calls.append(LogCall(where, level, message.value))
    return calls


def test_the_source_has_log_calls_to_check() -> None:
    calls = log_calls()
    assert len(calls) > 30, calls  # the scan finds the library's logging calls
    assert LogCall("", "INFO", "Became the leader").entry in {c.entry for c in calls}


@pytest.mark.parametrize("call", log_calls(), ids=lambda call: call.where)
def test_every_log_line_has_an_entry_in_troubleshooting(call: LogCall) -> None:
    assert call.entry in PAGE.read_text(), (
        f"{call.where} logs {call.level} {call.message!r}, and docs/troubleshooting.md has no "
        f"entry for it: add one with the line {call.entry} (what it means, what to do)"
    )


def test_every_entry_on_the_page_is_a_log_line_of_the_source() -> None:
    """The page lists no message the library no longer logs (a renamed or removed line)."""
    known = {call.entry for call in log_calls()}
    text = PAGE.read_text()
    listed = {
        line.strip()
        for line in text.splitlines()
        if any(line.strip().startswith(f"`{level}` `") for level in LOG_LEVELS)
    }
    assert listed, "no entries found on the page"
    assert listed <= known, f"entries for messages the library does not log: {listed - known}"
