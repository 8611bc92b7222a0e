"""MkDocs hook: the CLI reference page, generated from the argparse parser of ``ddpm``.

Where a page holds the marker ``<!-- cli-reference -->``, the hook writes, for ``ddpm`` and for
each of its commands (``ddpm train``, ``ddpm vae train``, ...), the usage line, one table per
argument group (flag, what it does, default) and the examples of ``ddpm COMMAND --help``. It
reads whatever the parser says, so the page cannot drift from the program: hidden options
(``help=argparse.SUPPRESS``, the deprecated spellings) are left out of the tables and named in
one line below them.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
USAGE_WIDTH = 100
_SRC = Path(__file__).resolve().parents[2] / "src"
# "... (default: 64)" at the end of a flag's help: the default goes into its own column
_DEFAULT = re.compile(r"\s*\(default:\s*(.*)\)\s*$", re.DOTALL)


def _parser() -> argparse.ArgumentParser:
    """The parser of the ``ddpm`` in this source tree."""
    if str(_SRC) not in sys.path:
        sys.path.insert(0, str(_SRC))
    from ddpm.cli.main import _parser as ddpm_parser

    return ddpm_parser()


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def command_parsers(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """{"train": (parser, help), "vae train": (parser, help), ...}: every parser that runs a
    command, at any depth, with the one-line help its parent gives it."""
    found: dict[str, tuple[argparse.ArgumentParser, str]] = {}
    sub = _subcommands(parser)
    if sub is None:
        return found
    helps = {choice.dest: choice.help or "" for choice in sub._choices_actions}
    for name, child in sub.choices.items():
        inner = command_parsers(child, f"{prefix}{name} ")
        found |= inner or {f"{prefix}{name}": (child, helps.get(name, ""))}
    return found


def visible_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions ``--help`` shows (positionals included), in the parser's order."""
    return [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]


def _cell(text: str) -> str:
    """Plain text made safe for one Markdown table cell."""
    text = html.escape(" ".join(text.split()), quote=False)
    text = re.sub(r"([\\|*_\[\]])", r"\\\1", text)
    if text.count("`") % 2:  # an unpaired backtick would swallow the rest of the row
        text = text.replace("`", "\\`")
    return text


def _help_and_default(parser: argparse.ArgumentParser, action: argparse.Action) -> tuple[str, str]:
    text = action.help or ""
    try:
        text = parser._get_formatter()._expand_help(action)  # %(default)s and the like
    except (KeyError, TypeError, ValueError):
        pass
    m = _DEFAULT.search(text)
    if m:
        return text[: m.start()].rstrip(" ;,"), m.group(1).strip()
    default = action.default
    if default is None or default is argparse.SUPPRESS or action.nargs == 0:
        return text, ""
    return text, str(default)


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    metavar = ""
    if action.nargs != 0:
        formatter = argparse.HelpFormatter("ddpm")
        default = formatter._get_default_metavar_for_optional(action)
        metavar = " " + formatter._format_args(action, default)
    return ", ".join(f"`{s}{metavar}`" for s in action.option_strings)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class(prog=parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _deprecated(parser: argparse.ArgumentParser) -> list[str]:
    """'`--old` → `--new`' for each hidden alias that says which flag it stands for."""
    pairs = []
    for action in parser._actions:
        renamed = getattr(action, "renamed", None)
        if action.help == argparse.SUPPRESS and isinstance(renamed, dict):
            pairs += [f"`{old}` → `{new}`" for old, new in renamed.items()]
    return pairs


def command_markdown(parser: argparse.ArgumentParser, title: str, summary: str) -> str:
    """The reference of one command: usage, one table per argument group, examples."""
    lines = [f"## `{title}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    if parser.description:
        lines += [parser.description, ""]
    lines += ["```text", _usage(parser), "```", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a in visible_options(parser)]
        if not actions:
            continue
        lines += [f"**{group.title}**", "", "| flag | what it does | default |", "|---|---|---|"]
        for action in actions:
            text, default = _help_and_default(parser, action)
            lines.append(f"| {_names(action)} | {_cell(text)} | {_cell(default)} |")
        lines.append("")
    old = _deprecated(parser)
    if old:
        lines += [
            "Deprecated spellings (hidden from `--help`, removed in 0.3.0): "
            + ", ".join(old)
            + ".",
            "",
        ]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    return "\n".join(lines)


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference: ``ddpm`` itself, then every command."""
    parser = parser or _parser()
    commands = command_parsers(parser)
    top = command_markdown(parser, parser.prog, "")
    table = ["| command | what it does |", "|---|---|"]
    table += [
        f"| [`ddpm {name}`](#ddpm-{name.replace(' ', '-')}) | {_cell(h)} |"
        for name, (_, h) in commands.items()
    ]
    parts = [top, "\n".join(table), ""]
    parts += [command_markdown(p, p.prog, h) for p, h in commands.values()]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 (MkDocs' hook)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
