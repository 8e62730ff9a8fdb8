"""The command line's layout: ``--help`` imports no subcommand, no subcommand imports another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import leaderelection.cli
from leaderelection.cli import COMMANDS
from tests.cli.conftest import clean_env

COMMAND_MODULES = {command.module for command in COMMANDS.values()}


def test_help_imports_no_subcommand() -> None:
    code = (
        "import sys\n"
        "from leaderelection.cli import main\n"
        "assert main(['--help']) == 0\n"
        "print(' '.join(m for m in sys.modules if m.startswith('leaderelection.cli.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True
    ).stdout
    assert out.splitlines()[-1] == ""


def test_python_m_runs_the_same_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "leaderelection", "--version"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout
    assert out == f"leaderelection {leaderelection.__version__}\n"


def test_no_subcommand_imports_another() -> None:
    package = Path(leaderelection.cli.__file__).parent
    for module in sorted(COMMAND_MODULES):
        tree = ast.parse((package / (module.rsplit(".", 1)[1] + ".py")).read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = (
                    f"leaderelection.cli.{node.module or ''}".rstrip(".")
                    if node.level == 1
                    else node.module or ""
                )
                imported |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        assert not imported & (COMMAND_MODULES - {module}), module
