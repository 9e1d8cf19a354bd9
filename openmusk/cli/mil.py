"""``openmusk mil``: train slide-level models with cross-validation, and predict with them."""
from __future__ import annotations

import argparse

from openmusk.cli import CliError
from openmusk.cli.common import (add_config_args, add_output_arg, add_progress_arg, add_runtime_args,
                                 run_configured)

TRAIN_HELP = """\
Cross-validate a slide-level model (gated ABMIL, TransMIL or mean pooling; image, report or both)
for classification (AUC, balanced accuracy, specificity at 90% sensitivity) or survival (c-index,
Uno's c-index, Kaplan-Meier risk groups, log-rank, hazard ratio, Cox with covariates).

CONFIG.yaml keys are the fields of openmusk.mil.MilConfig (`--example` prints them all), e.g.

  cohort: cohort.csv            # patient_id, slide_id, label | time, event, [report], [covariates]
  features_dir: features/       # <slide_id>.h5 from `openmusk slide extract`
  output_dir: results/her2
  task: classification          # or survival (loss: nll | cox)
  modality: both                # image | text | both
  model: abmil                  # abmil | transmil | meanpool

Fold metrics are printed as folds finish. OUTPUT_DIR gets metrics.json, oof_predictions.csv,
roc.png or km.png, and per fold the model (safetensors), predictions and attention (HDF5, CSV,
heatmaps and top-tile grids when slides_dir is set). A rerun skips finished folds.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mil`` command group."""
    p = subparsers.add_parser("mil", help="slide-level models: train with cross-validation, predict",
                              description="Slide-level outcome prediction from MUSK slide features and "
                                          "report embeddings (MIL, survival, multimodal fusion).")
    sub = p.add_subparsers(dest="mil_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    tr = sub.add_parser("train", help="k-fold cross-validation of a slide-level model",
                        description=TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(tr)
    add_output_arg(tr, help="results folder (overrides output_dir)")
    tr.add_argument("--init-aggregator", metavar="PATH",
                    help="safetensors file with pretrained aggregator weights (e.g. from mSTAR)")
    tr.add_argument("--epochs", type=int, help="override epochs")
    add_runtime_args(tr)
    add_progress_arg(tr)
    tr.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="apply a trained run's fold models to a cohort (ensemble)",
                        description="Average the fold models of a finished `mil train` run over a "
                                    "cohort CSV; writes predictions.csv and attention.h5.")
    pr.add_argument("results_dir", help="output_dir of `openmusk mil train`")
    pr.add_argument("--cohort", help="cohort CSV (default: the training cohort); outcome columns optional")
    pr.add_argument("--features-dir", help="folder of <slide_id>.h5 (default: the training one)")
    add_output_arg(pr, help="output folder (default RESULTS_DIR/predictions)")
    add_progress_arg(pr)
    pr.set_defaults(func=_predict)


def _train(args: argparse.Namespace) -> int:
    """Run `mil train`."""
    from openmusk.mil import MilConfig, train
    from openmusk.model import WeightsNotFoundError

    run_configured(args, MilConfig, lambda cfg: train(cfg, progress=not args.quiet), "mil train",
                   flags={"output_dir": args.out, "init_aggregator": args.init_aggregator,
                          "epochs": args.epochs, "device": args.device, "precision": args.precision},
                   errors=(FileNotFoundError, ValueError, WeightsNotFoundError))
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Run `mil predict`."""
    from openmusk.mil import predict
    from openmusk.model import WeightsNotFoundError

    try:
        predict(args.results_dir, args.cohort, args.features_dir, args.out, progress=not args.quiet)
    except (FileNotFoundError, ValueError, WeightsNotFoundError) as e:
        raise CliError(str(e)) from None
    return 0
