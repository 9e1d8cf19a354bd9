"""The one flag vocabulary every command uses, and the glue from flags to library calls.

Spellings: ``--out`` (output file or folder), ``--num-workers``, ``--device``, ``--precision``,
``--weights`` (``random[:CONFIG]`` for random weights), ``--encoder``, ``--quiet``, ``--config`` /
``--example`` / ``--set KEY=VALUE``. Old spellings (``--out-dir``, ``--output-dir``, ``--workers``,
``--dtype``, ``--bf16``, ``--no-progress``) still work and print a one-line notice.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Sequence

from . import CliError

DEFAULT_WEIGHTS = "hf_hub:xiangjx/musk"
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


class RenamedFlag(argparse.Action):
    """An old flag spelling: stores like the new one and prints a notice naming it."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", const: Any = None,
                 nargs: Any = None, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, nargs=0 if const is not None else nargs, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from openmusk.core.config import notice

        notice(f"{option_string} is now spelled {self.new}")
        if self.const is not None:
            values = self.const
        elif self.type is None and isinstance(values, str) and self.dest == "precision":
            from openmusk.core.runtime import normalize_precision

            values = normalize_precision(values)
        setattr(namespace, self.dest, values)


def _alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any) -> None:
    p.add_argument(old, action=RenamedFlag, new=new, dest=dest, help=argparse.SUPPRESS, **kwargs)


def add_output_arg(p: argparse.ArgumentParser, help: str, required: bool = False, default: Optional[str] = None,
                   kind: str = "folder") -> None:
    """``--out`` (``--out-dir``/``--output-dir`` accepted); ``kind`` is ``file`` or ``folder``.

    The path is checked for writing before the command does any work (:func:`check_output`).
    """
    p.add_argument("--out", dest="out", required=required, default=default, help=help)
    p.set_defaults(out_kind=kind)
    for old in ("--out-dir", "--output-dir"):
        _alias(p, old, "--out", "out")


def check_output(args: argparse.Namespace) -> None:
    """Refuse an unwritable ``--out`` (a folder where a file is due, a path under a file, a
    read-only place) with one line, before any work; called once for every command."""
    from openmusk.core.errors import check_writable

    if getattr(args, "out", None) and getattr(args, "out_kind", None):
        check_writable(args.out, folder=args.out_kind == "folder")


def _number(kind: type, low: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind`` parsed from the flag's text, refused below ``low``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = what
    return parse


positive_int = _number(int, 1, True, "a positive integer")
nonnegative_int = _number(int, 0, True, "an integer >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")
nonnegative_float = _number(float, 0.0, True, "a number >= 0")


def add_workers_arg(p: argparse.ArgumentParser, default: Optional[int] = None) -> None:
    """``--num-workers`` (``--workers`` accepted)."""
    p.add_argument("--num-workers", dest="num_workers", type=nonnegative_int, default=default,
                   help="DataLoader processes reading inputs" + (" (default: %(default)s)" if default is not None else ""))
    _alias(p, "--workers", "--num-workers", "num_workers", type=nonnegative_int)


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--quiet`` (``--no-progress`` accepted): no progress bars."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _alias(p, "--no-progress", "--quiet", "quiet", const=True)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` with the shared defaults (``--dtype``/``--bf16`` accepted)."""
    p.add_argument("--device", default=None,
                   help="auto | cpu | cuda | cuda:N (default: auto = this rank's GPU under torchrun, "
                        "else the first GPU, else cpu)")
    p.add_argument("--precision", default=None, choices=PRECISION_CHOICES,
                   help="auto | fp32 | bf16 | fp16 autocast (default: auto = bf16 on a GPU, fp32 on cpu)")
    _alias(p, "--dtype", "--precision", "precision")
    _alias(p, "--bf16", "--precision bf16", "precision", const="bf16")


def add_model_args(p: argparse.ArgumentParser, weights_default: Optional[str] = DEFAULT_WEIGHTS) -> None:
    """``--weights``, ``--device`` and ``--precision``, the way every model command spells them."""
    p.add_argument("--weights", default=weights_default,
                   help="checkpoint: a .safetensors/.pth path, hf_hub:owner/name[@revision] (or hf-hub:), "
                        "or random[:CONFIG] "
                        "(default: %(default)s); the architecture is read from the checkpoint")
    add_runtime_args(p)


def add_weights_arg(p: argparse.ArgumentParser, key: str) -> None:
    """``--weights`` for a config command: sets the config key ``key`` (the MUSK weights it loads)."""
    p.add_argument("--weights", default=None,
                   help=f"MUSK weights: a .safetensors/.pth path, hf_hub:owner/name[@revision] (or hf-hub:), "
                        f"or random[:CONFIG] to "
                        f"try the command without the released weights (sets the config key {key!r}; "
                        f"default: the config's, else hf_hub:xiangjx/musk)")


RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS ({weights}): MUSK runs RANDOMLY INITIALISED. Everything runs and every file is "
    "written in its real format, but the numbers are MEANINGLESS: use this to try and script the "
    "command, never for results. Real weights: --weights PATH or hf_hub:xiangjx/musk (gated).")


def warn_random_weights(weights: Any) -> None:
    """The loud stderr banner (as the demo's) when ``weights`` asks for random weights."""
    if isinstance(weights, str) and weights.startswith("random"):
        import sys
        import textwrap

        bar = "!" * 78
        body = textwrap.fill(RANDOM_WEIGHTS_WARNING.format(weights=weights), 78)
        print(f"{bar}\n{body}\n{bar}", file=sys.stderr)


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """A positional ``config`` (YAML/JSON), ``--example`` and repeatable ``--set KEY=VALUE``."""
    p.add_argument("config", nargs="?", help="YAML or JSON config file (relative paths in it are taken "
                                             "relative to the file)")
    p.add_argument("--example", action="store_true", help="print the default config as YAML and exit")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key (dotted for sections, e.g. train.lr=1e-4); repeatable")
    p.set_defaults(config_required=required)


def config_from_args(args: argparse.Namespace, cls: type, flags: dict[str, Any] | None = None,
                     command: str = "") -> Any:
    """The config of ``cls`` from ``args.config`` + ``--set`` + named flags (validated alike).

    Prints the example and returns None when ``--example`` was given.
    """
    from openmusk.core.config import ConfigError, example_yaml, load_config, parse_overrides

    if getattr(args, "example", False):
        print(example_yaml(cls), end="")
        return None
    if not getattr(args, "config", None) and getattr(args, "config_required", True):
        raise CliError(f"give a config file (start from `openmusk {command} --example`)")
    try:
        overrides = parse_overrides(getattr(args, "overrides", None))
        overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
        return load_config(cls, getattr(args, "config", None), overrides)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None


def run_configured(args: argparse.Namespace, cls: type, run: Callable[[Any], Any], command: str,
                   flags: dict[str, Any] | None = None,
                   errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)) -> tuple[Any, Any] | None:
    """``run(config)`` for a config command: ``(config, result)``, or None after ``--example``.

    The library's errors of the given types reach the user as one line, without a traceback.
    """
    cfg = config_from_args(args, cls, flags, command)
    if cfg is None:
        return None
    if getattr(cfg, "output_dir", None):
        from openmusk.core.errors import check_writable

        check_writable(cfg.output_dir, folder=True)
    for key in ("weights", "report_weights"):  # the MUSK weights a config command loads
        warn_random_weights(getattr(cfg, key, None))
    try:
        return cfg, run(cfg)
    except errors as e:
        raise CliError(str(e).strip("'\"") if isinstance(e, KeyError) else str(e)) from None
