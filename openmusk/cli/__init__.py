"""The ``openmusk`` command: one entry point whose subcommands live in one module each."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from openmusk.core.errors import UserError

# Each module defines ``register(subparsers)``; heavy imports stay inside the command handlers so
# that ``openmusk --help`` answers at once (no torch). A named command loads only its own module.
COMMANDS = {"embed": "openmusk.cli.model", "zeroshot": "openmusk.cli.model", "info": "openmusk.cli.model",
            "slide": "openmusk.cli.slide", "demo": "openmusk.cli.demo", "eval": "openmusk.cli.eval",
            "mil": "openmusk.cli.mil", "vqa": "openmusk.cli.vqa", "mstar": "openmusk.cli.mstar",
            "pretrain": "openmusk.cli.pretrain", "report": "openmusk.cli.report"}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))

DESCRIPTION = """\
openmusk: the MUSK vision-language foundation model for pathology (Xiang et al., Nature 2025).

Encode patches, reports and whole slides, run the paper's benchmarks, train slide-level models
and pretrain MUSK on your own data. Weights default to hf_hub:xiangjx/musk (accept the licence on
the Hugging Face hub, then `huggingface-cli login`); every command that loads MUSK takes
--weights PATH, and --weights random[:CONFIG] runs it with random weights (results meaningless)
before access is granted.
"""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or only the module of the command ``argv`` names."""
    from openmusk.core import __version__

    parser = argparse.ArgumentParser(prog="openmusk", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"openmusk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = next((a for a in argv or () if not a.startswith("-")), None)
    for name in (COMMANDS[named],) if named in COMMANDS else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from openmusk.core.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, user_message

    try:
        from openmusk.cli.common import check_output

        check_output(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished items are kept; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a user error becomes one line naming the culprit; a bug keeps its trace
        message = user_message(e)
        if message is None or os.environ.get("OPENMUSK_TRACEBACK"):
            raise
        print(f"openmusk {_command_words(parser, argv) or args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def _command_words(parser: argparse.ArgumentParser, argv: list[str] | None) -> str:
    """The (sub)command words of ``argv``, e.g. ``mil train``, for the one-line error."""
    words: list[str] = []
    for token in sys.argv[1:] if argv is None else argv:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or token not in sub.choices:
            break
        words.append(token)
        parser = sub.choices[token]
    return " ".join(words)


class CliError(UserError):
    """An error whose message is meant for the user as it stands (no stack trace)."""


if __name__ == "__main__":
    sys.exit(main())
