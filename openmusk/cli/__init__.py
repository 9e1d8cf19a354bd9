"""The ``openmusk`` command: one entry point whose subcommands live in one module each."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``; heavy imports stay inside the command handlers so
# that ``openmusk --help`` answers at once.
COMMAND_MODULES = ("openmusk.cli.model", "openmusk.cli.slide", "openmusk.cli.demo", "openmusk.cli.eval", "openmusk.cli.mil", "openmusk.cli.vqa", "openmusk.cli.mstar", "openmusk.cli.pretrain")

DESCRIPTION = """\
openmusk: the MUSK vision-language foundation model for pathology (Xiang et al., Nature 2025).

Encode patches, reports and whole slides, run the paper's benchmarks, train slide-level models
and pretrain MUSK on your own data. Weights default to hf_hub:xiangjx/musk (accept the licence on
the Hugging Face hub, then `huggingface-cli login`); every command takes --weights PATH too.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="openmusk", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CliError as e:
        print(f"openmusk {args.command}: error: {e}", file=sys.stderr)
        return 2


class CliError(Exception):
    """An error whose message is meant for the user as it stands (no stack trace)."""


if __name__ == "__main__":
    sys.exit(main())
