"""``openmusk mstar``: whole-slide multimodal pretraining in the manner of mSTAR (Xu et al. 2025)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from openmusk.cli.common import add_config_args, add_output_arg, add_runtime_args, run_configured

PRETRAIN_HELP = """\
Stage 1: pretrain a slide aggregator (TransMIL, or ABMIL) so that slide embeddings align with the
patients' pathology reports (through MUSK's language side, frozen or tuned) and RNA-seq profiles
(log1p, most variable genes, standardised on training patients, through an MLP), with CLIP losses
slide-report, slide-RNA and report-RNA that use only the pairs each patient has.

CONFIG is a YAML file with the keys of AggregatorPretrainConfig (`--example` prints them all), e.g.:

  table: cohort.csv          # case_id, features (HDF5 of `openmusk slide extract`; a;b for several), report[, split]
  rna_table: rna.csv         # case_id, one column per gene (optional)
  output_dir: mstar_stage1
  aggregator: transmil
  epochs: 50

Writes OUTPUT_DIR/aggregator.safetensors (for `openmusk mil train --init-aggregator`, "mSTAR+"),
mstar_stage1.safetensors (aggregator + projections, for zero/few-shot), rna_preprocessor.json,
metrics.json (loss and held-out cross-modal retrieval per epoch) and training.png. Rerunning resumes.
"""

SELF_TAUGHT_HELP = """\
Stage 2: self-taught training of MUSK's vision side. Tiles sampled from each slide go through an
EMA teacher; the frozen stage-1 aggregator re-embeds them with cached features of the rest of the
slide; the student encoder learns to reproduce the aggregator's tokens for those tiles.

CONFIG is a YAML file with the keys of SelfTaughtConfig (`--example` prints them all), e.g.:

  stage1_dir: mstar_stage1
  table: slides.csv          # case_id, slide (WSI or image), features (HDF5 with coords, same encoder)
  output_dir: mstar_stage2
  steps: 1000
  patches_per_slide: 16

Writes OUTPUT_DIR/patch_encoder.safetensors, loadable with openmusk.load_checkpoint /
`--weights`, plus metrics.json and training.png. Rerunning resumes from the last saved step.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mstar`` command group."""
    p = subparsers.add_parser("mstar", help="whole-slide multimodal pretraining (mSTAR): aggregator, self-taught encoder",
                              description="mSTAR-style pretraining: a slide aggregator aligned with reports and "
                                          "RNA-seq (stage 1), then a self-taught patch encoder (stage 2).")
    sub = p.add_subparsers(dest="mstar_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    pre = sub.add_parser("pretrain-aggregator", help="stage 1: slide aggregator by tri-modal contrastive learning",
                         description=PRETRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(pre)
    add_output_arg(pre, help="output folder (overrides output_dir)")
    pre.add_argument("--epochs", type=int, help="override epochs")
    add_runtime_args(pre)
    pre.set_defaults(func=_pretrain)

    st = sub.add_parser("self-taught", help="stage 2: train the patch encoder against the pretrained aggregator",
                        description=SELF_TAUGHT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(st)
    add_output_arg(st, help="output folder (overrides output_dir)")
    st.add_argument("--steps", type=int, help="override steps")
    add_runtime_args(st)
    st.set_defaults(func=_self_taught)


def _run_stage(args: argparse.Namespace, cls: type, run: Callable, name: str, **flags: Any) -> tuple | None:
    """Config from the file, ``--set`` and the shared flags, then the stage; None after ``--example``."""
    return run_configured(args, cls, run, f"mstar {name}", flags={
        "output_dir": args.out, "device": args.device, "precision": args.precision, **flags})


def _pretrain(args: argparse.Namespace) -> int:
    """Run stage 1 and print held-out retrieval."""
    from openmusk.pretrain.mstar.config import AggregatorPretrainConfig
    from openmusk.pretrain.mstar.stage1 import pretrain_aggregator

    done = _run_stage(args, AggregatorPretrainConfig, pretrain_aggregator, "pretrain-aggregator", epochs=args.epochs)
    if done is None:
        return 0
    cfg, metrics = done
    for problem in metrics["problems"]:
        print(f"skipped: {problem}")
    final = metrics["final"]
    print(f"stage 1 done: {metrics['n_train']} training patients, final loss {final.get('loss', float('nan')):.4f}")
    for pair, r in final.get("retrieval", {}).items():
        print(f"  held-out {pair}: R@1 {r['R@1']:.3f} R@5 {r['R@5']:.3f} (chance {r['chance@5']:.3f}, n={r['n']})")
    print(f"aggregator for `openmusk mil train --init-aggregator`: {cfg.output_dir}/aggregator.safetensors")
    return 0


def _self_taught(args: argparse.Namespace) -> int:
    """Run stage 2 and print the loss curve's ends."""
    from openmusk.pretrain.mstar.config import SelfTaughtConfig
    from openmusk.pretrain.mstar.stage2 import PATCH_ENCODER_WEIGHTS, self_taught

    done = _run_stage(args, SelfTaughtConfig, self_taught, "self-taught", steps=args.steps)
    if done is None:
        return 0
    cfg, metrics = done
    for problem in metrics["problems"]:
        print(f"skipped: {problem}")
    h = metrics["history"]
    if h:
        print(f"stage 2 done: loss {h[0]['loss']:.4f} (step {h[0]['step']}) -> {h[-1]['loss']:.4f} (step {h[-1]['step']})")
    print(f"patch encoder: {cfg.output_dir}/{PATCH_ENCODER_WEIGHTS}")
    return 0
