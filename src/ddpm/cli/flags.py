"""Old spellings of renamed flags: hidden aliases that warn once and act as the new flag.

``deprecated(parser, action, "--old")`` registers ``--old`` (and ``--no-old`` when the new flag
is a ``--x/--no-x`` switch) beside the flag of ``action``. Given on the command line, the old
spelling prints one line to stderr,

    ddpm: warning: --old is deprecated and will be removed in 0.3.0; use --new

and is then parsed by the new flag's own action: the same value conversion, choices and checks,
into the same destination. The old spelling is absent from ``--help``.
"""

from __future__ import annotations

import argparse
import sys

REMOVED_IN = "0.3.0"


def _long_name(action: argparse.Action) -> str:
    """The flag's long spelling: '--num-samples' of ('-n', '--num-samples')."""
    return next(
        s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-")
    )


class DeprecatedAlias(argparse.Action):
    """An old spelling of ``target``'s flag (hidden from the help)."""

    def __init__(self, option_strings, dest, target: argparse.Action, renamed: dict[str, str]):
        self.target = target
        self.renamed = renamed  # old option string -> the new one it stands for
        super().__init__(
            option_strings,
            dest,
            nargs=target.nargs,
            const=target.const,
            default=argparse.SUPPRESS,  # the new flag's default is the only one
            type=target.type,
            choices=target.choices,
            help=argparse.SUPPRESS,
            metavar=target.metavar,
        )

    @property
    def new(self) -> str:
        """The long spelling of the flag this alias stands for."""
        return _long_name(self.target)

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.renamed[option_string]
        print(
            f"ddpm: warning: {option_string} is deprecated and will be removed in "
            f"{REMOVED_IN}; use {new}",
            file=sys.stderr,
            flush=True,
        )
        self.target(parser, namespace, values, new)


def deprecated(
    parser: argparse.ArgumentParser, action: argparse.Action, old: str
) -> DeprecatedAlias:
    """Register the old spelling ``old`` of the flag of ``action`` on ``parser`` (a switch's
    ``--no-`` form too: --no-clip for --no-clip-denoised)."""
    new = _long_name(action)
    renamed = {old: new}
    if isinstance(action, argparse.BooleanOptionalAction):
        renamed["--no-" + old[2:]] = "--no-" + new[2:]
    return parser.add_argument(
        *renamed, dest=action.dest, action=DeprecatedAlias, target=action, renamed=renamed
    )


def aliases(parser: argparse.ArgumentParser) -> list[DeprecatedAlias]:
    """The deprecated spellings registered on parser."""
    return [a for a in parser._actions if isinstance(a, DeprecatedAlias)]
