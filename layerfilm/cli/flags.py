"""The command line's flags, generated from the options tree (layerfilm.config): each command's
options become argparse arguments, grouped under their headings, and the parsed values go back to
layerfilm.config by name."""

from __future__ import annotations

import argparse
from typing import Any

from layerfilm.config import _UNSET, COMMANDS, DEFAULTS, Option, given, options, values

GROUP_TEXT = {
    "cache": "What is computed from the checkpoints is kept on disk, keyed by each checkpoint's path, size\n"
             "and modification time and by the options that change it: a re-render with another look or\n"
             "output, and stills, report or stability after a render, read no checkpoint again.",
    "where the work runs": "The weights are read and projected in tasks of a few blocks each (all key frames);\n"
                           "the results do not depend on where or in how many tasks they run.",
}


def _help(o: Option, default: Any) -> str:
    text = o.help.replace("%", "%%")
    if not any(default is x for x in (None, False, True)) and default not in ("", (None, None)):
        shown = "x".join(map(str, default)) if o.name == "size" else f"{default:g}" if isinstance(default, float) else default
        text += f" (default {shown})"
    return text


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Every option of ``command`` (layerfilm.config.COMMANDS) as a flag; unset ones keep a marker, so
    that the tree's defaults apply (layerfilm.config.given)."""
    groups: dict[str, Any] = {}
    defaults = DEFAULTS.get(command, {})
    for o in COMMANDS[command]:
        if o.group not in groups:
            groups[o.group] = parser.add_argument_group(o.group, GROUP_TEXT.get(o.group))
        g = groups[o.group]
        default = defaults.get(o.name, o.default)
        if o.kind is bool:
            g.add_argument(o.cli_flag, dest=o.name, action="store_false" if o.default else "store_true", default=_UNSET,
                           help=_help(o, default))
            continue
        text = o.parse or (o.kind if isinstance(o.kind, type) else str)  # a file option's text is its path
        g.add_argument(o.cli_flag, dest=o.name, default=_UNSET, type=text, choices=o.choices,
                       metavar=o.metavar, help=_help(o, default))


def command_options(args: argparse.Namespace):
    """(the command's options object (layerfilm.config.CLASSES), LiveOptions or None) of a parsed command line."""
    return options(args.command, given(vars(args), args.command))


def value(args: argparse.Namespace, name: str) -> Any:
    """One option's value on a parsed command line (its default when not given)."""
    return values(args.command, given(vars(args), args.command))[name]
