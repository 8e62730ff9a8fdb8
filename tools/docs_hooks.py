"""The reference tables of the documentation, generated from the code (an MkDocs hook).

A page asks for a table with a marker comment on a line of its own; :func:`on_page_markdown`
replaces the marker with the table before MkDocs renders the page:

``<!-- generated: config-fields -->``
    ``ElectionConfig``'s fields: name, type, default, environment variable and description
    (the class docstring's ``Attributes`` entry, less its ``Env`` sentence, which is the
    environment column).
``<!-- generated: cli-commands -->``
    The subcommands of ``leaderelection`` and their one-line help.
``<!-- generated: cli-common -->``
    The Redis and election options that the subcommands share.
``<!-- generated: cli-command NAME -->``
    One subcommand: its usage, description, own options and epilog, from its argparse parser.
``<!-- generated: metrics candidate -->`` and ``<!-- generated: metrics observer -->``
    The Prometheus metric families of ``LeaderElectionCollector``: of the candidates (labelled
    with ``instance_id``) and of the observers.

An unknown marker, or a docstring that disagrees with the code, fails the build. The functions
are plain (no MkDocs import), so that the tests can check the tables without building the site.
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

from leaderelection import ElectionConfig
from leaderelection._core import LATENCY_BUCKETS
from leaderelection.cli import COMMANDS, build_parser
from leaderelection.prometheus import LeaderElectionCollector

__all__ = [
    "GENERATORS",
    "cli_command",
    "cli_commands",
    "cli_common",
    "config_fields",
    "expand_markers",
    "metrics",
    "on_page_markdown",
]

MARKER = re.compile(r"^<!-- generated: (?P<name>[a-z-]+)(?P<args>(?: [\w-]+)*) -->$", re.MULTILINE)

_COMMON_GROUP = "Redis and election options"
_ESCAPED = re.compile(r"([\\`*_\[\]|])")


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs' ``on_page_markdown`` event: expand the page's markers."""
    return expand_markers(markdown)


def expand_markers(markdown: str) -> str:
    """``markdown`` with every marker replaced by what it names.

    Raises:
        ValueError: a marker names no generator, or its arguments do not fit.
    """

    def replace(match: re.Match[str]) -> str:
        generator = GENERATORS.get(match["name"])
        if generator is None:
            raise ValueError(f"unknown marker {match[0]!r}: known are {sorted(GENERATORS)}")
        return generator(*match["args"].split())

    return MARKER.sub(replace, markdown)


def _text(text: str) -> str:
    """Plain text (help strings, descriptions) as Markdown that renders it as written."""
    text = " ".join(text.split())
    text = _ESCAPED.sub(r"\\\1", text)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = [_row(*header), _row(*("---" for _ in header))]
    lines.extend(_row(*row) for row in rows)
    return "\n".join(lines)


# ------------------------------------------------------------------------ configuration


def _attributes(doc: str) -> dict[str, str]:
    """The entries of a Google-style docstring's ``Attributes:`` section, name to text."""
    entries: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = lines.index("Attributes:") + 1
    except ValueError:
        return entries
    name = None
    for line in lines[start:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # the next section
            break
        entry = re.fullmatch(r" {4}(\w+): (.*)", line)
        if entry is not None:
            name = entry[1]
            entries[name] = entry[2]
        elif name is not None:
            entries[name] += " " + line.strip()
    return entries


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "`None`"
    if annotation is timedelta:
        return "[duration](configuration.md#durations)"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return f"`{annotation.__name__}`"
    if isinstance(annotation, types.UnionType):
        return " \\| ".join(_type_name(arg) for arg in typing.get_args(annotation))
    return "`" + repr(annotation).replace("typing.", "") + "`"


def _value(value: object) -> str:
    if isinstance(value, timedelta):
        return f"`{value.total_seconds():.4g}s`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{dict(value)!r}`"
    return f"`{value!r}`"


def config_fields() -> str:
    """The table of ``ElectionConfig``'s fields.

    The default is what ``ElectionConfig()`` holds (derived keys and ``renew_deadline`` as
    derived from the other defaults), or the call that makes it for a per-machine default.

    Raises:
        ValueError: a field has no ``Attributes`` entry in the class docstring, or the entry's
            ``Env`` sentence names another variable than ``ElectionConfig.ENV_NAMES``.
    """
    docs = _attributes(ElectionConfig.__doc__ or "")
    defaults = ElectionConfig(hostname="-")
    rows = []
    for name, field in ElectionConfig.model_fields.items():
        text = docs.get(name)
        if text is None:
            raise ValueError(f"ElectionConfig's docstring has no Attributes entry for {name!r}")
        env = ElectionConfig.ENV_NAMES.get(name)
        said = re.search(r"\s*Env ``(\w+)``(?: \(([^)]*)\))?\.", text)
        if (said[1] if said else None) != env:
            raise ValueError(
                f"ElectionConfig's docstring says env {said[1] if said else None!r} for "
                f"{name!r}; ENV_NAMES says {env!r}"
            )
        if said is not None:
            text = text[: said.start()] + text[said.end() :]
        env_cell = "(none)" if env is None else f"`{env}`"
        if said is not None and said[2]:
            env_cell += f" ({said[2].replace('``', '`')})"
        factory = field.default_factory
        if isinstance(factory, types.BuiltinFunctionType | types.FunctionType):
            module = factory.__module__.removeprefix("_")  # _socket is socket's C half
            default = f"`{module}.{factory.__name__}()`"
        else:
            default = _value(getattr(defaults, name))
        rows.append(
            (f"`{name}`", _type_name(field.annotation), default, env_cell, _docstring(text))
        )
    return _table(("Field", "Type", "Default", "Environment variable", "Description"), rows)


def _docstring(text: str) -> str:
    """A docstring's reST-ish text (double-backquoted literals) as Markdown."""
    text = " ".join(text.split())
    text = re.sub(r":\w+:`~?([\w.]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


# ----------------------------------------------------------------------------- command line


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's name and its complete parser."""
    for name in COMMANDS:
        top = build_parser(name)
        for action in top._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield name, action.choices[name]


def _parser(command: str) -> argparse.ArgumentParser:
    for name, parser in _parsers():
        if name == command:
            parser.formatter_class = _formatter
            return parser
    raise ValueError(f"no subcommand {command!r}")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=100)


def _options(
    parser: argparse.ArgumentParser, group: argparse._ArgumentGroup, header: str = "Option"
) -> str:
    formatter = parser._get_formatter()
    rows = []
    for action in group._group_actions:
        if isinstance(action, argparse._HelpAction):
            continue
        invocation = formatter._format_action_invocation(action)
        rows.append((f"`{invocation}`", _text(formatter._expand_help(action))))
    return _table((header, "Description"), rows)


def cli_commands() -> str:
    """The table of subcommands, each with its one line of ``leaderelection --help``."""
    rows = [(f"[`{name}`](#{name})", _text(command.help)) for name, command in COMMANDS.items()]
    return _table(("Command", "What it does"), rows)


def cli_common() -> str:
    """The Redis and election options, as ``run``, ``status``, ``watch`` and ``step-down``
    take them."""
    parser = _parser("status")
    for group in parser._action_groups:
        if group.title == _COMMON_GROUP:
            return _text(group.description or "") + "\n\n" + _options(parser, group)
    raise ValueError(f"status has no group {_COMMON_GROUP!r}")


def cli_command(command: str) -> str:
    """One subcommand's usage, description, options (less the common ones) and epilog."""
    parser = _parser(command)
    usage = parser.format_usage().strip()
    parts = [f"```text\n{usage}\n```", _text(parser.description or "")]
    shared = False
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        if group.title == _COMMON_GROUP:
            shared = True
            continue
        title, header = str(group.title).capitalize(), "Option"
        if group.title == "positional arguments":
            title, header = "Arguments", "Argument"
        parts.append(f"**{_text(title)}**\n\n{_options(parser, group, header)}")
    if shared:
        parts.append("It also takes the [Redis and election options](#common-options).")
    if parser.epilog:
        parts.append(_text(parser.epilog.removesuffix(" See docs/cli.md.")))
    return "\n\n".join(parts)


# -------------------------------------------------------------------------------- metrics


def metrics(kind: str) -> str:
    """The metric families of the Prometheus collector: ``candidate`` (those labelled with
    ``instance_id``) or ``observer`` (the others)."""
    if kind not in ("candidate", "observer"):
        raise ValueError(f"metrics takes candidate or observer, not {kind!r}")
    rows = []
    for family in LeaderElectionCollector().describe():
        labels: tuple[str, ...] = getattr(family, "_labelnames", ())
        if ("instance_id" in labels) != (kind == "candidate"):
            continue
        name = f"`{family.name}_total`" if family.type == "counter" else f"`{family.name}`"
        label_text = ", ".join(f"`{label}`" for label in labels)
        if family.type == "histogram":
            bounds = ", ".join(f"{bound:g}" for bound in LATENCY_BUCKETS)
            name += " (`_bucket`, `_count`, `_sum`)"
            label_text += f"; `le`: {bounds}, `+Inf` (seconds)"
        rows.append((name, family.type, label_text, _text(family.documentation)))
    return _table(("Metric", "Type", "Labels", "Help"), rows)


GENERATORS: dict[str, Callable[..., str]] = {
    "config-fields": config_fields,
    "cli-commands": cli_commands,
    "cli-common": cli_common,
    "cli-command": cli_command,
    "metrics": metrics,
}
