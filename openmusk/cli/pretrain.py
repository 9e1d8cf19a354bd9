"""``openmusk pretrain``: VQ-KD tokenizer, stage 1 masked modelling, stage 2 alignment, filtering, shards."""
from __future__ import annotations

import argparse
import json

from openmusk.cli import CliError

DESCRIPTION = """\
Pretrain MUSK on your own tissue and text, following the paper's two-stage recipe.

  make-shards   convert an image folder, a CSV (image,text columns), a text file or slides
                (x10/x20/x40 fields of view) into WebDataset shards
  tokenizer     train the VQ-KD visual tokenizer against a frozen teacher (MUSK, timm)
  masked        stage 1: masked image modelling + masked language modelling on unpaired data
  contrastive   stage 2: CLIP loss + auxiliary cross-attention MLM on image-text pairs
  filter        score pairs with a trained model and keep all but the least similar ones

Each takes one YAML file whose keys are the fields of its config dataclass
(openmusk.pretrain.config); `--example` prints the defaults to start from. Runs resume from
OUTPUT_DIR/checkpoint.pt. Several processes or GPUs: launch with torchrun, e.g.
  torchrun --nproc_per_node 8 -m openmusk pretrain masked stage1.yaml
"""

_STAGES = {
    "make-shards": ("ShardsConfig", "make_shards_from_config",
                    "Write WebDataset shards from images, a CSV, a text file or slides (fields of view)."),
    "tokenizer": ("TokenizerStageConfig", "train_tokenizer",
                  "Train the VQ-KD tokenizer; writes OUTPUT_DIR/tokenizer.safetensors."),
    "masked": ("MaskedStageConfig", "train_masked",
               "Stage 1 (MIM + MLM); writes OUTPUT_DIR/model.safetensors in the released layout."),
    "contrastive": ("ContrastiveStageConfig", "train_contrastive",
                    "Stage 2 (CLIP + auxiliary MLM); writes OUTPUT_DIR/model.safetensors."),
    "filter": ("FilterConfig", "filter_pairs",
               "Bootstrapped filtering: score pairs, drop the lowest fraction, write kept pairs."),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``openmusk pretrain <stage> CONFIG.yaml``."""
    p = subparsers.add_parser("pretrain", help="pretrain MUSK (tokenizer, stage 1, stage 2, filter, shards)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (_, _, help_) in _STAGES.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("config", nargs="?", help="YAML config (keys = fields of the stage's config dataclass)")
        s.add_argument("--example", action="store_true", help="print the default config as YAML and exit")
        s.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    import yaml

    from openmusk.pretrain import config as config_mod
    from openmusk.pretrain import stages
    cls_name, fn_name, _ = _STAGES[args.stage]
    cls = getattr(config_mod, cls_name)
    if args.example:
        print(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cls()))), sort_keys=False), end="")
        return 0
    if not args.config:
        raise CliError(f"give a YAML config (start from `openmusk pretrain {args.stage} --example`)")
    try:
        cfg = config_mod.load_config(cls, args.config)
        result = getattr(stages, fn_name)(cfg)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        raise CliError(str(e)) from e
    from openmusk.core.dist import is_main
    if is_main():
        summary = {k: v for k, v in result.items() if k not in ("history", "trainer")}
        if result.get("history"):
            summary["last"] = result["history"][-1]
        print(json.dumps(summary, indent=2, default=str))
    return 0
