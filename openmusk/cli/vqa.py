"""``openmusk vqa``: fine-tune MUSK for visual question answering, evaluate, compare, ask."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CliError
from .common import (positive_int, RenamedFlag, add_config_args, add_output_arg, add_runtime_args, add_workers_arg,
                     run_configured)
from .common import add_weights_arg

_TRAIN_HELP = """\
Fine-tune MUSK for VQA the BEiT-3 way (image + question fused through the multiway transformer,
CLS pooler, MLP over the answer vocabulary, cross-entropy). CONFIG.yaml's keys are the fields of
openmusk.eval.vqa.VQATrainConfig (all of them: --example), for example:

  data: path-vqa/data          # PathVQA parquet folder (train/validation/test files) or JSONL/CSV
  output_dir: runs/pathvqa
  weights: hf_hub:xiangjx/musk # null (or random) for random initialisation
  epochs: 10
  batch_size: 16
  accum_steps: 8
  lr: 2.0e-5
  freeze: none                 # frozen: none | last_k (all but the last last_k layers) | encoder
  precision: bf16              # auto (default: bf16 on a GPU, fp32 on cpu) | fp32 | bf16 | fp16

Relative paths are taken relative to the YAML file. Writes OUTPUT_DIR/model.safetensors
(backbone), vqa_head.safetensors, answers.json, history.json. An interrupted run started again
with the same config resumes after its last finished epoch.
"""


def register(sub: argparse._SubParsersAction) -> None:
    vqa = sub.add_parser("vqa", help="visual question answering: train, eval, compare, ask",
                         description="Visual question answering on pathology images (PathVQA) with "
                                     "a fine-tuned MUSK.")
    vsub = vqa.add_subparsers(dest="vqa_command", metavar="ACTION", required=True)

    tr = vsub.add_parser("train", help="fine-tune on a VQA dataset from a YAML config",
                         description=_TRAIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(tr)
    add_output_arg(tr, help="checkpoint folder (overrides output_dir of the config)")
    add_weights_arg(tr, "weights")
    add_runtime_args(tr)
    add_workers_arg(tr)
    tr.set_defaults(func=_train)

    ev = vsub.add_parser("eval", help="accuracy (overall / yes-no / open, 95%% CI) and predictions",
                         description="Evaluate a VQA checkpoint: exact-match accuracy after VQA answer "
                                     "normalisation, overall and on closed (yes/no) and open questions, "
                                     "each with a bootstrap 95% CI; writes per-question predictions.")
    ev.add_argument("weights", metavar="WEIGHTS", help="VQA checkpoint folder written by `openmusk vqa train`")
    ev.add_argument("data", help="PathVQA parquet (file or folder) or JSONL/CSV table")
    ev.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    ev.add_argument("--image-root", help="base folder for relative image paths of a table")
    ev.add_argument("--predictions", help="per-question predictions file (.csv or .jsonl)")
    ev.add_argument("--metrics", help="write the metrics as JSON here")
    ev.add_argument("--compare", help="predictions file of another run: exact McNemar test on "
                                      "per-question correctness (needs --predictions)")
    ev.add_argument("--plot", help="bar chart of the accuracies with 95%% CIs (.png/.pdf)")
    ev.add_argument("--batch-size", type=positive_int, default=32)
    add_workers_arg(ev, default=2)
    ev.add_argument("--n-resamples", dest="n_resamples", type=positive_int, default=1000,
                    help="bootstrap resamples for the CIs (default: %(default)s)")
    ev.add_argument("--resamples", action=RenamedFlag, new="--n-resamples", dest="n_resamples", type=positive_int,
                    help=argparse.SUPPRESS)
    add_runtime_args(ev)
    ev.set_defaults(func=_eval)

    cp = vsub.add_parser("compare", help="compare two runs' predictions (exact McNemar)",
                         description="Accuracies of two prediction files on their shared questions, "
                                     "an exact McNemar test on per-question correctness and the "
                                     "paired-bootstrap CI of the difference, overall and on closed / "
                                     "open questions.")
    cp.add_argument("--test", choices=("mcnemar", "mann-whitney"), default="mcnemar",
                    help="paired exact McNemar (default) or the paper's unpaired Mann-Whitney U")
    cp.add_argument("a", help="predictions of run A (.csv or .jsonl)")
    cp.add_argument("b", help="predictions of run B")
    cp.add_argument("--out", help="write the comparison as JSON here")
    cp.add_argument("--plot", help="bar chart of both runs' accuracies with 95%% CIs (.png/.pdf)")
    cp.set_defaults(func=_compare)

    ask = vsub.add_parser("ask", help="answer a question about one image",
                          description="Print the most probable answers (softmax over the answer "
                                      "vocabulary) to QUESTION about IMAGE.")
    ask.add_argument("image", help="an image file (resized and centre-cropped to the model size)")
    ask.add_argument("question", help='e.g. "is there tumour in this image?"')
    ask.add_argument("--weights", metavar="FOLDER", help="VQA checkpoint folder written by `openmusk vqa train` (required)")
    ask.add_argument("--model", action=RenamedFlag, new="--weights", dest="weights", help=argparse.SUPPRESS)
    ask.add_argument("--topk", type=positive_int, default=5)
    add_runtime_args(ask)
    ask.set_defaults(func=_ask)


def _predictor(args: argparse.Namespace):
    """The VQA model of ``args.weights`` on ``--device`` with ``--precision``."""
    from openmusk.eval.vqa import VQAPredictor

    try:
        return VQAPredictor.from_pretrained(args.weights, device=args.device, precision=args.precision)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e


def _print_accuracy(acc: dict) -> None:
    for name in ("overall", "closed", "open"):
        if name in acc:
            e = acc[name]
            print(f"  {name:8s} {100 * e['value']:6.2f}%  95% CI [{100 * e['low']:.2f}, "
                  f"{100 * e['high']:.2f}]  n={e['n']}")


def _train(args: argparse.Namespace) -> int:
    from openmusk.eval.vqa import VQATrainConfig, train_vqa

    done = run_configured(args, VQATrainConfig, train_vqa, "vqa train", flags={
        "output_dir": args.out, "device": args.device, "precision": args.precision,
        "num_workers": args.num_workers, "weights": args.weights})
    if done is None:
        return 0
    config, summary = done
    last = summary["history"][-1] if summary["history"] else {}
    print(f"trained {len(summary['history'])} epochs on {summary['train_questions']} questions, "
          f"{summary['answers']} answers; last epoch: {json.dumps(last)}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} unreadable items (see {config.output_dir}/history.json)")
    print(f"checkpoint: {config.output_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from openmusk.eval.vqa import compare_predictions, open_vqa, read_predictions
    from openmusk.core.io import write_json

    if args.compare and not args.predictions:
        raise CliError("--compare needs --predictions (this run's per-question file)")
    predictor = _predictor(args)
    try:
        data = open_vqa(args.data, split=args.split, image_root=args.image_root)
        result = predictor.evaluate(data, predictions=args.predictions, batch_size=args.batch_size,
                                    num_workers=args.num_workers, n_resamples=args.n_resamples)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"{args.split}: {result['questions']} questions on {result['images']} images "
          f"(answers in vocabulary: {100 * result['answer_coverage']:.1f}%)")
    _print_accuracy(result["accuracy"])
    for msg in result["skipped"]:
        print(f"  skipped: {msg}")
    if args.compare:
        result["comparison"] = compare_predictions(read_predictions(args.predictions),
                                                   read_predictions(args.compare))
        _print_comparison(result["comparison"], args.predictions, args.compare)
    if args.metrics:
        write_json(args.metrics, result)
    if args.plot:
        from openmusk.eval.vqa.plots import plot_accuracies

        runs = {Path(args.weights).name: result["accuracy"]}
        if args.compare:
            runs[Path(args.compare).stem] = {k: v["b"] for k, v in result["comparison"].items()
                                             if isinstance(v, dict) and "b" in v}
        plot_accuracies(runs, args.plot)
    return 0


def _print_comparison(c: dict, a: str, b: str) -> None:
    print(f"A = {a}\nB = {b}\n{c['questions']} shared questions")
    for name in ("overall", "closed", "open"):
        if name in c:
            r = c[name]
            print(f"  {name:8s} A {100 * r['a']['value']:6.2f}%  B {100 * r['b']['value']:6.2f}%  "
                  f"{r['test']} statistic={r['statistic']:.1f} p={r['p_value']:.3g}")


def _compare(args: argparse.Namespace) -> int:
    from openmusk.eval.vqa import compare_predictions, read_predictions
    from openmusk.core.io import write_json

    try:
        c = compare_predictions(read_predictions(args.a), read_predictions(args.b), test=args.test)
    except (OSError, ValueError) as e:
        raise CliError(str(e)) from e
    _print_comparison(c, args.a, args.b)
    if args.out:
        write_json(args.out, c)
    if args.plot:
        from openmusk.eval.vqa.plots import plot_accuracies

        plot_accuracies({Path(run).stem: {k: v[side] for k, v in c.items()
                                          if isinstance(v, dict) and side in v}
                         for run, side in ((args.a, "a"), (args.b, "b"))}, args.plot)
    return 0


def _ask(args: argparse.Namespace) -> int:
    if not args.weights:
        raise CliError("give the VQA checkpoint folder with --weights FOLDER")
    if not Path(args.image).is_file():
        raise CliError(f"image not found: {args.image}")
    predictor = _predictor(args)
    try:
        answers = predictor.ask(args.image, args.question, topk=args.topk)
    except OSError as e:
        raise CliError(f"{args.image}: cannot read image ({e})") from e
    print(f"Q: {args.question}")
    for answer, p in answers:
        print(f"  {p:6.3f}  {answer}")
    return 0
