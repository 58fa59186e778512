"""The ``drencoder`` command: a thin argparse front over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a
parser whose ``func`` default takes the parsed ``argparse.Namespace`` and returns an exit
code. Errors the user can fix (``DrencoderError``) print one line on stderr and exit 2;
argparse's own usage errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from drencoder import __version__
from drencoder.errors import DrencoderError

# Subcommand modules, in the order ``drencoder --help`` lists them.
SUBCOMMANDS = ("run", "compare", "eval", "privacy", "audit", "codec-report")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``drencoder privacy: error: ...`` and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that subcommand's module is imported, so
    ``drencoder privacy`` starts without loading torch."""
    parser = _Parser(
        prog="drencoder",
        description="Differentially private federated LoRA fine-tuning with DR-Encoder.",
    )
    parser.add_argument("--version", action="version", version=f"drencoder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in (command,) if command in SUBCOMMANDS else SUBCOMMANDS:
        importlib.import_module(f"drencoder.cli.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DrencoderError as exc:
        # One line, whatever the message's own line breaks (e.g. an install command).
        message = " ".join(str(exc).split())
        print(f"drencoder {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drencoder {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
