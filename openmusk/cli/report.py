"""``openmusk report``: pathology report generation from slide features (HistGen-style, mSTAR's seventh task)."""
from __future__ import annotations

import argparse

from openmusk.cli.common import add_config_args, add_output_arg, add_runtime_args, run_configured

TRAIN_HELP = """\
Train a report generator on (slide features, report) pairs: a local-global hierarchical encoder
over the tile features, a cross-modal context memory and a transformer decoder, teacher forcing.

CONFIG is a YAML file with the keys of ReportGenConfig (`--example` prints them all), e.g.:

  table: pairs.csv       # slide_id, features (HDF5 of `openmusk slide extract`), report[, split: train|val|test]
  output_dir: report_generator
  epochs: 40
  beam_size: 3

Writes OUTPUT_DIR/report_generator.safetensors, vocab.json, arch.json, history.json,
test_generated.csv and metrics.json (BLEU-1..4, METEOR, ROUGE-L on the test split). Reruns resume.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command group."""
    p = subparsers.add_parser("report", help="pathology report generation from slide features: train, generate, eval",
                              description="Report generation (HistGen-style) as mSTAR evaluates it.")
    sub = p.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    tr = sub.add_parser("train", help="train a report generator", description=TRAIN_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(tr)
    add_output_arg(tr, help="output folder (overrides output_dir)")
    tr.add_argument("--epochs", type=int, help="override epochs")
    add_runtime_args(tr)
    tr.set_defaults(func=_train)

    gen = sub.add_parser("generate", help="write reports for slides with a trained generator")
    gen.add_argument("model", help="output folder of `openmusk report train`")
    gen.add_argument("table", help="CSV: slide_id, features[, report]")
    add_output_arg(gen, help="CSV to write (slide_id, generated[, report])", required=True)
    gen.add_argument("--beam-size", type=int, default=3, help="beam width; 1 = greedy (default: %(default)s)")
    gen.add_argument("--batch-size", type=int, default=4, help="slides per forward pass (default: %(default)s)")
    add_runtime_args(gen)
    gen.set_defaults(func=_generate)

    ev = sub.add_parser("eval", help="BLEU-1..4, METEOR and ROUGE-L of generated against reference reports")
    ev.add_argument("predictions", help="CSV with a reference and a generated column")
    ev.add_argument("--reference-column", default="report")
    ev.add_argument("--generated-column", default="generated")
    ev.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    add_output_arg(ev, help="also write the metrics to this JSON file")
    ev.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    """Train and print the test metrics."""
    from openmusk.mil.report_gen import ReportGenConfig, train_report_generator

    done = run_configured(args, ReportGenConfig, train_report_generator, "report train", flags={
        "output_dir": args.out, "device": args.device, "precision": args.precision, "epochs": args.epochs})
    if done is None:
        return 0
    cfg, metrics = done
    if "test" in metrics:
        print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["test"].items()))
    print(f"report generator in {cfg.output_dir}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Generate reports and write them as CSV."""
    from openmusk.core.io import atomic_path
    from openmusk.mil.report_gen import generate_reports

    table = generate_reports(args.model, args.table, args.beam_size, args.batch_size, args.device or "auto",
                             args.precision or "auto")
    with atomic_path(args.out, suffix=".csv.tmp") as tmp:
        table.to_csv(tmp, index=False)
    print(f"{len(table)} reports written to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Score a predictions CSV and print (and optionally write) the metrics."""
    from openmusk.core.io import write_json
    from openmusk.mil.report_gen import evaluate_reports

    metrics = evaluate_reports(args.predictions, args.reference_column, args.generated_column,
                               meteor=not args.no_meteor)
    print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.out:
        write_json(args.out, metrics)
    return 0
