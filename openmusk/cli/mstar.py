"""``openmusk mstar``: whole-slide multimodal pretraining in the manner of mSTAR (Xu et al. 2025)."""
from __future__ import annotations

import argparse
from typing import Any, Callable

from openmusk.cli.common import positive_int, add_config_args, add_output_arg, add_runtime_args, run_configured
from openmusk.cli.common import add_weights_arg

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
Multi-process: `torchrun --nproc_per_node N -m openmusk mstar self-taught CONFIG`; each process
takes its share of the slides_per_step slides of every step, only rank 0 writes.
"""

ZERO_SHOT_HELP = """\
Slide zero-shot classification from tile features, as mSTAR and MI-Zero run it.

method topj: every tile is scored against each class's prompts (the mean prompt embedding of the
encoder's text side); a class's slide score is the mean of its j best tile scores, for each j in
topj. method aggregator: the stage-1 slide embedding against the prompts (stage1_dir).

CONFIG is a YAML file with the keys of SlidePromptConfig (`--example` prints them all), e.g.:

  table: slides.csv      # slide_id, features (HDF5 of the encoder's 'embed' tile features), label (optional)
  prompts: prompts.yaml  # templates: ["an H&E image of {c}.", ...]; classnames: {LUAD: [adenocarcinoma]}
  encoder: musk
  topj: [1, 5, 10, 50]

Writes OUTPUT_DIR/predictions.csv and metrics.json (balanced accuracy, AUC with 95% CI, per j).
"""

FEW_SHOT_HELP = """\
Slide few-shot classification: k labelled slides per class, several random draws.

few_shot_method text_prototype: class prototypes start at the prompt embedding and move towards
the shots' top-j tiles; test slides are scored by top-j pooling against them. linear | prototype:
probes on the stage-1 aggregator's slide embeddings (stage1_dir). Same CONFIG keys as zero-shot
plus shots: [1, 2, 4, 8, 16], seeds, few_shot_topj, prior. Writes OUTPUT_DIR/metrics.json.
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
    pre.add_argument("--epochs", type=positive_int, help="override epochs")
    add_weights_arg(pre, "weights")
    add_runtime_args(pre)
    pre.set_defaults(func=_pretrain)

    st = sub.add_parser("self-taught", help="stage 2: train the patch encoder against the pretrained aggregator",
                        description=SELF_TAUGHT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(st)
    add_output_arg(st, help="output folder (overrides output_dir)")
    st.add_argument("--steps", type=positive_int, help="override steps")
    add_weights_arg(st, "weights")
    add_runtime_args(st)
    st.set_defaults(func=_self_taught)

    for name, func, text in (("zero-shot", _zero_shot, ZERO_SHOT_HELP), ("few-shot", _few_shot, FEW_SHOT_HELP)):
        sp = sub.add_parser(name, help=text.splitlines()[0], description=text,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_args(sp)
        add_output_arg(sp, help="output folder (overrides output_dir)")
        sp.add_argument("--encoder", default=None, help="encoder whose text side embeds the prompts (config key 'encoder')")
        add_weights_arg(sp, "weights")
        add_runtime_args(sp)
        sp.set_defaults(func=func)


def _run_stage(args: argparse.Namespace, cls: type, run: Callable, name: str, **flags: Any) -> tuple | None:
    """Config from the file, ``--set`` and the shared flags, then the stage; None after ``--example``."""
    return run_configured(args, cls, run, f"mstar {name}", flags={
        "output_dir": args.out, "device": args.device, "precision": args.precision,
        "weights": args.weights, **flags})


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


def _prompt_run(args: argparse.Namespace, run: Callable, name: str) -> dict | None:
    """SlidePromptConfig from the file and the shared flags, then ``run``."""
    from openmusk.pretrain.mstar.config import SlidePromptConfig

    done = _run_stage(args, SlidePromptConfig, run, name, encoder=args.encoder, weights=args.weights)
    return None if done is None else done[1]


def _zero_shot(args: argparse.Namespace) -> int:
    """Run slide zero-shot and print each pooling's balanced accuracy."""
    from openmusk.pretrain.mstar.slide_prompts import run_zero_shot

    metrics = _prompt_run(args, run_zero_shot, "zero-shot")
    if metrics is None:
        return 0
    for name, m in metrics.items():
        if isinstance(m, dict) and "balanced_accuracy" in m:
            auc = m.get("auc")
            print(f"{name}: balanced accuracy {m['balanced_accuracy']:.3f}"
                  + (f", AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]" if auc else ""))
    print(f"zero-shot of {metrics['n_slides']} slides written")
    return 0


def _few_shot(args: argparse.Namespace) -> int:
    """Run slide few-shot and print balanced accuracy per k."""
    from openmusk.pretrain.mstar.slide_prompts import run_few_shot

    metrics = _prompt_run(args, run_few_shot, "few-shot")
    if metrics is None:
        return 0
    for r in metrics["results"]:
        m = r["balanced_accuracy_mean"]
        print(f"k={r['k']}: balanced accuracy {m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]")
    return 0
