"""``openmusk mil``: train slide-level models with cross-validation, predict, ablate modalities,
compare runs, summarise reports and build the paper's public cohorts."""
from __future__ import annotations

import argparse

from openmusk.cli import CliError
from openmusk.cli.common import (positive_int, add_config_args, add_output_arg, add_progress_arg, add_runtime_args,
                                 run_configured)
from openmusk.cli.common import add_weights_arg

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
    tr.add_argument("--epochs", type=positive_int, help="override epochs")
    add_weights_arg(tr, "report_weights")
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

    ab = sub.add_parser("ablate", help="image-only, report-only and both on the same folds, compared",
                        description="Train CONFIG with modality image, text and both into OUTPUT_DIR/"
                                    "{image,text,both} (same folds), compare them pairwise on the "
                                    "out-of-fold predictions (DeLong / paired bootstrap) and write "
                                    "ablation.csv, ablation.png and report.html.")
    add_config_args(ab)
    add_output_arg(ab, help="results folder (overrides output_dir)")
    ab.add_argument("--epochs", type=positive_int, help="override epochs")
    add_weights_arg(ab, "report_weights")
    add_runtime_args(ab)
    add_progress_arg(ab)
    ab.set_defaults(func=_ablate)

    cp = sub.add_parser("compare", help="paired comparison of two finished runs (e.g. two encoders)",
                        description="Compare RUN_A with RUN_B on their out-of-fold predictions of the same "
                                    "patients: DeLong's test (AUC) or a paired bootstrap of the c-index "
                                    "difference, per fold and pooled; writes compare.json, "
                                    "compare_folds.csv, forest.png and report.html. For two encoders, "
                                    "train the same config on each encoder's features_dir and compare.")
    cp.add_argument("run_a", help="output_dir of a `mil train` run")
    cp.add_argument("run_b", help="output_dir of another run on the same cohort")
    add_output_arg(cp, help="output folder (default RUN_A/compare_<RUN_B name>)")
    cp.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    cp.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    cp.set_defaults(func=_compare)

    sm = sub.add_parser("summarize", help="summarise a cohort's reports with a language model (cached)",
                        description="Summarise the report column of the cohort in CONFIG with its "
                                    "`summary:` section (backend transformers | openai, model, url, "
                                    "prompt prognosis | lung | gastroesophageal | a template file). "
                                    "Summaries go to summary.cache (default <cohort>.summaries.csv) with "
                                    "the model and prompt; a rerun only does what is missing.")
    add_config_args(sm)
    add_progress_arg(sm)
    sm.set_defaults(func=_summarize)

    co = sub.add_parser("cohort", help="build a cohort CSV from a public cohort's published files",
                        description="Write a mil cohort CSV from TCGA (TCGA-CDR clinical table + slide "
                                    "names + TCGA-Reports), VisioMel (metadata + labels) or BCNB "
                                    "(patient-clinical-data.xlsx).")
    cs = co.add_subparsers(dest="cohort_name", metavar="NAME", required=True)
    t = cs.add_parser("tcga", help="TCGA survival (DSS by default) with reports")
    t.add_argument("--clinical", required=True, help="TCGA-CDR-SupplementalTableS1.xlsx (or CSV/TSV)")
    t.add_argument("--slides", required=True, help="folder of slides / feature files, or a list file")
    t.add_argument("--reports", help="TCGA_Reports.csv (patient_filename, text)")
    t.add_argument("--endpoint", default="DSS", help="DSS | OS | PFI | DFI (default: %(default)s)")
    t.add_argument("--projects", nargs="*", default=[], help="TCGA projects to keep, e.g. BRCA LUAD")
    t.add_argument("--all-slides", action="store_true", help="keep frozen (non -DX) slides too")
    v = cs.add_parser("visiomel", help="VisioMel relapse with clinical variables as report text")
    v.add_argument("--metadata", required=True, help="train_metadata.csv")
    v.add_argument("--labels", required=True, help="train_labels.csv")
    v.add_argument("--template", default="clinical_melanoma", help="report template file (default: shipped)")
    b = cs.add_parser("bcnb", help="BCNB ER / PR / HER2 status")
    b.add_argument("--clinical", required=True, help="patient-clinical-data.xlsx (or CSV)")
    b.add_argument("--target", default="HER2", choices=["ER", "PR", "HER2"])
    for q in (t, v, b):
        add_output_arg(q, help="cohort CSV to write", required=True)
    co.set_defaults(func=_cohort)


def _train(args: argparse.Namespace) -> int:
    """Run `mil train`."""
    from openmusk.mil import MilConfig, train
    from openmusk.model import WeightsNotFoundError
    from openmusk.text.summarize import SummaryError

    run_configured(args, MilConfig, lambda cfg: train(cfg, progress=not args.quiet), "mil train",
                   flags={"output_dir": args.out, "init_aggregator": args.init_aggregator,
                          "epochs": args.epochs, "device": args.device, "precision": args.precision,
                          "report_weights": args.weights},
                   errors=(FileNotFoundError, ValueError, WeightsNotFoundError, SummaryError))
    return 0


def _predict(args: argparse.Namespace) -> int:
    """Run `mil predict`."""
    from openmusk.mil import predict
    from openmusk.model import WeightsNotFoundError
    from openmusk.text.summarize import SummaryError

    try:
        predict(args.results_dir, args.cohort, args.features_dir, args.out, progress=not args.quiet)
    except (FileNotFoundError, ValueError, WeightsNotFoundError, SummaryError) as e:
        raise CliError(str(e)) from None
    return 0


def _ablate(args: argparse.Namespace) -> int:
    """Run `mil ablate`."""
    from openmusk.mil import MilConfig
    from openmusk.mil.ablate import ablate
    from openmusk.model import WeightsNotFoundError
    from openmusk.text.summarize import SummaryError

    run_configured(args, MilConfig, lambda cfg: ablate(cfg, progress=not args.quiet), "mil ablate",
                   flags={"output_dir": args.out, "epochs": args.epochs, "device": args.device,
                          "precision": args.precision, "report_weights": args.weights},
                   errors=(FileNotFoundError, ValueError, WeightsNotFoundError, SummaryError))
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Run `mil compare`."""
    from openmusk.mil.compare import compare_runs

    try:
        compare_runs(args.run_a, args.run_b, args.out, n_resamples=args.bootstrap, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return 0


def _summarize(args: argparse.Namespace) -> int:
    """Run `mil summarize`."""
    from openmusk.mil import MilConfig
    from openmusk.mil.api import summarize_cohort
    from openmusk.text.summarize import SummaryError

    run_configured(args, MilConfig, lambda cfg: summarize_cohort(cfg, progress=not args.quiet),
                   "mil summarize", errors=(FileNotFoundError, ValueError, SummaryError))
    return 0


def _cohort(args: argparse.Namespace) -> int:
    """Run `mil cohort NAME`."""
    from openmusk.mil import cohorts

    try:
        if args.cohort_name == "tcga":
            df = cohorts.tcga_cohort(args.clinical, args.slides, args.reports, args.endpoint, args.projects,
                                     diagnostic_only=not args.all_slides, out=args.out)
        elif args.cohort_name == "visiomel":
            df = cohorts.visiomel_cohort(args.metadata, args.labels, args.template, out=args.out)
        else:
            df = cohorts.bcnb_cohort(args.clinical, args.target, out=args.out)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise CliError(str(e).strip("'\"")) from None
    print(f"{len(df)} patients -> {args.out}")
    return 0
