"""``openmusk pretrain``: VQ-KD tokenizer, stage 1 masked modelling, stage 2 alignment, filtering, shards."""
from __future__ import annotations

import argparse
import json

from openmusk.pretrain.presets import PRESETS


DESCRIPTION = """\
Pretrain MUSK on your own tissue and text, following the paper's two-stage recipe.

  make-shards   convert an image folder, a CSV (image,text columns), a text file or slides
                (x10/x20/x40 fields of view) into WebDataset shards
  tokenizer     train the VQ-KD visual tokenizer against a frozen teacher (MUSK, timm)
  masked        stage 1: masked image modelling + masked language modelling on unpaired data
  contrastive   stage 2: CLIP loss + auxiliary cross-attention MLM on image-text pairs
  filter        score pairs with a trained model and keep all but the least similar ones

`--preset musk-large-stage1|musk-large-stage2|musk-large-tokenizer` (and -paper variants of the
stages) start from the authors' recipe with the source of every number (`--example` prints it).
Each takes one YAML file whose keys are the fields of its config dataclass
(openmusk.pretrain.config; relative paths in it are taken relative to the file); `--example`
prints the defaults to start from, `--set train.lr=1e-4` overrides a key, `--device` and
`--precision` the run's. Runs resume from OUTPUT_DIR/checkpoint.pt. Several processes or GPUs:
launch with torchrun, e.g.
  torchrun --nproc_per_node 8 -m openmusk pretrain masked stage1.yaml
"""

# stage -> (config class, function of openmusk.pretrain.stages, help, section of device/precision)
_STAGES = {
    "make-shards": ("ShardsConfig", "make_shards_from_config",
                    "Write WebDataset shards from images, a CSV, a text file or slides (fields of view).", None),
    "tokenizer": ("TokenizerStageConfig", "train_tokenizer",
                  "Train the VQ-KD tokenizer; writes OUTPUT_DIR/tokenizer.safetensors.", "train."),
    "masked": ("MaskedStageConfig", "train_masked",
               "Stage 1 (MIM + MLM); writes OUTPUT_DIR/model.safetensors in the released layout.", "train."),
    "contrastive": ("ContrastiveStageConfig", "train_contrastive",
                    "Stage 2 (CLIP + auxiliary MLM); writes OUTPUT_DIR/model.safetensors.", "train."),
    "filter": ("FilterConfig", "filter_pairs",
               "Bootstrapped filtering: score pairs, drop the lowest fraction, write kept pairs.", ""),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``openmusk pretrain <stage> CONFIG.yaml``."""
    from openmusk.cli.common import add_config_args, add_runtime_args

    p = subparsers.add_parser("pretrain", help="pretrain MUSK (tokenizer, stage 1, stage 2, filter, shards)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, _, help_, section) in _STAGES.items():
        s = sub.add_parser(name, help=help_, description=help_)
        add_config_args(s)
        if section is not None:
            add_runtime_args(s)
        names = [n for n, pr in PRESETS.items() if pr.stage == name]
        if names:
            s.add_argument("--preset", choices=names, help="start from a named recipe (the authors' code, or "
                           "the paper's with -paper), each value with its source; the config file and "
                           "--set override it; with --example prints it")
        s.set_defaults(func=_run)


def _run_preset(args: argparse.Namespace, cls: type, run, flags: dict):
    """Like ``run_configured``, but the config starts from ``--preset`` (then the file, then --set)."""
    from openmusk.cli import CliError
    from openmusk.core.config import ConfigError, parse_overrides
    from openmusk.core.errors import check_writable
    from openmusk.pretrain.presets import preset_config, preset_yaml

    if args.example:
        print(preset_yaml(cls, args.preset), end="")
        return None
    try:
        overrides = {**parse_overrides(args.overrides), **flags}
        cfg = preset_config(cls, args.preset, args.config, overrides, stage=args.stage)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    check_writable(cfg.output_dir, folder=True)
    try:
        return cfg, run(cfg)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        raise CliError(str(e).strip("'\"") if isinstance(e, KeyError) else str(e)) from None


def _run(args: argparse.Namespace) -> int:
    from openmusk.cli.common import run_configured
    from openmusk.pretrain import config as config_mod
    from openmusk.pretrain import stages

    cls_name, fn_name, _, section = _STAGES[args.stage]
    flags = {} if section is None else {f"{section}device": args.device, f"{section}precision": args.precision}
    cls, run = getattr(config_mod, cls_name), getattr(stages, fn_name)
    if getattr(args, "preset", None):
        done = _run_preset(args, cls, run, {k: v for k, v in flags.items() if v is not None})
    else:
        done = run_configured(args, cls, run, f"pretrain {args.stage}", flags,
                              errors=(FileNotFoundError, ValueError, KeyError, ImportError))
    if done is None:
        return 0
    _, result = done
    from openmusk.core.dist import is_main
    if is_main():
        summary = {k: v for k, v in result.items() if k not in ("history", "trainer")}
        if result.get("history"):
            summary["last"] = result["history"][-1]
        print(json.dumps(summary, indent=2, default=str))
    return 0
