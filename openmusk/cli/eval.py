"""``openmusk eval run|report|datasets``: the patch-level benchmarks from the command line."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from . import CliError
from .common import positive_int, add_config_args, add_runtime_args, add_workers_arg, run_configured
from .common import warn_random_weights

RUN_HELP = """\
Run a benchmark grid (models x datasets x tasks) described by a YAML file, e.g.

  output_dir: results
  models:
    - {name: musk, kind: musk, pretrained: "hf_hub:xiangjx/musk"}
  datasets:
    - {spec: unitopatho, root: /data/unitopatho}
    - {spec: pcam, root: /data/pcam, tasks: [zeroshot, linear_probe, few_shot]}

`--paper` runs the MUSK paper's grid (openmusk/eval/paper_grid.yaml: the released MUSK, the
paper's datasets and tasks, protocol musk-paper) on datasets under --set data_root=FOLDER.

Protocols: musk-paper (the authors' code number for number; the default of the paper's dataset
specs) or clip-benchmark (LAION CLIP_benchmark's: re-normalised zero-shot prompts, scikit-learn
logistic-regression probes); choose with `protocol:` in the YAML or --protocol.

Tasks: zeroshot, retrieval (image<->text Recall@k), image_retrieval (Acc@k, mMV@k, mAP@k),
linear_probe, few_shot, knn (default: the tasks the paper ran on each dataset). Each result is
written to OUTPUT_DIR/<model>/<dataset>/<task>.json; rerunning skips finished cells. Features are
cached in HDF5 under OUTPUT_DIR/features. Model kinds: every registered encoder (musk,
musk_singlescale, open_clip, timm, hf, color_stats; the paper's comparisons plip, biomedclip,
conch, uni, virchow, virchow2, gigapath, e.g. {name: uni, kind: uni}, each through its own library)
or factory (factory: 'module:function' returning an encoder);
`pretrained: false` gives random weights. Relative paths in the YAML are
taken relative to it. See `openmusk eval datasets` for the specs, `--example` for every key.
"""


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="patch-level benchmarks: zero-shot, retrieval, probes, reports",
                        description="Patch-level benchmarks of the MUSK paper, for MUSK and any other "
                                    "encoder, with 95% bootstrap confidence intervals.")
    esub = ev.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    run = esub.add_parser("run", help="run a benchmark grid from a YAML config",
                          description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(run)
    run.add_argument("--weights", default=None,
                     help="MUSK weights for every model of kind musk/musk_singlescale: a .safetensors/.pth "
                          "path, hf_hub:owner/name, or random[:CONFIG] to try the grid without the released "
                          "weights (sets their pretrained key)")
    add_runtime_args(run)
    add_workers_arg(run)
    run.add_argument("--batch-size", type=positive_int, default=None, help="override the batch size")
    run.add_argument("--n-resamples", type=positive_int, default=None,
                     help="override bootstrap resamples (paper: 1000)")
    run.add_argument("--protocol", default=None,
                     help="musk-paper or clip-benchmark for every dataset (default: each spec's)")
    run.add_argument("--paper", action="store_true",
                     help="run the paper's grid (openmusk/eval/paper_grid.yaml); give "
                          "--set data_root=FOLDER (one sub-folder per dataset)")
    run.set_defaults(func=_run)

    rep = esub.add_parser("report", help="table + markdown/HTML report with bar charts",
                          description="Print a table of every result under RESULTS_DIR and write "
                                      "report.md, report.html and figures/*.png (bars with 95% CI "
                                      "error bars; paired tests of each model against the first).")
    rep.add_argument("results_dir", help="the output_dir of `openmusk eval run`")
    rep.add_argument("--out", default=None, help="where to write the report (default: RESULTS_DIR)")
    rep.add_argument("--n-resamples", type=positive_int, default=1000,
                     help="bootstrap resamples for the paired tests (default: %(default)s)")
    rep.add_argument("--test", choices=("paired", "paper"), default="paired",
                     help="model comparisons: valid paired tests (exact McNemar, permutation, paired "
                          "bootstrap CI; default) or 'paper', the MUSK paper's Wilcoxon signed-rank "
                          "on bootstrap replicates (reproduction only: its p-value shrinks with "
                          "--n-resamples)")
    rep.set_defaults(func=_report)

    ds = esub.add_parser("datasets", help="list the built-in dataset specs",
                         description="List the dataset specs shipped with openmusk (classes, prompt "
                                     "templates and expected file layout); pass a name for details.")
    ds.add_argument("name", nargs="?", help="show one spec in full")
    ds.set_defaults(func=_datasets)


def _run(args: argparse.Namespace) -> int:
    from openmusk.eval.config import EvalConfig, example_eval_yaml
    from openmusk.eval.runner import run_eval

    if args.example:
        print(example_eval_yaml(), end="")
        return 0
    flags = {"device": args.device, "precision": args.precision, "num_workers": args.num_workers,
             "batch_size": args.batch_size, "n_resamples": args.n_resamples, "protocol": args.protocol}
    warn_random_weights(args.weights)
    if args.paper:
        cfg, summary = _run_paper(args, flags)
    else:
        done = run_configured(args, EvalConfig, lambda c: run_eval(_with_weights(c, args.weights)),
                              "eval run", flags=flags,
                              errors=(KeyError, FileNotFoundError, ValueError))  # unknown spec, absent device
        if done is None:
            return 0
        cfg, summary = done
    print(f"{len(summary['done'])} cells computed, {len(summary['skipped'])} already done, "
          f"{len(summary['not_applicable'])} not applicable, {len(summary['failed'])} failed; "
          f"results in {cfg.output_dir}")
    for f in summary["failed"]:
        print(f"  failed: {f['cell']}: {f['error']}")
    return 1 if summary["failed"] else 0


def _with_weights(cfg: Any, weights: str | None) -> Any:
    """``cfg`` with ``--weights`` as the weights of its MUSK models (kind musk*), when given."""
    if weights is not None:
        cfg.models = [dataclasses.replace(m, pretrained=weights) if m.kind.startswith("musk") else m
                      for m in cfg.models]
    return cfg


def _run_paper(args: argparse.Namespace, flags: dict) -> tuple:
    """The paper's grid with ``--set`` overrides and flags (no config file)."""
    from openmusk.core.config import ConfigError, parse_overrides
    from openmusk.eval.config import paper_grid_config
    from openmusk.eval.runner import run_eval

    if args.config:
        raise CliError("give either a config file or --paper, not both (--set adjusts the paper's grid)")
    try:
        overrides = parse_overrides(args.overrides)
        overrides.update({k: v for k, v in flags.items() if v is not None})
        cfg = _with_weights(paper_grid_config(overrides), args.weights)
        return cfg, run_eval(cfg)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as e:
        raise CliError(str(e).strip("'\"")) from None


def _report(args: argparse.Namespace) -> int:
    from openmusk.eval.report import format_table, load_results, results_rows, write_report

    try:
        rows = results_rows(load_results(args.results_dir))
        paths = write_report(args.results_dir, args.out, n_resamples=args.n_resamples,
                             method=args.test)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    print(format_table(rows))
    print(f"\nreport: {paths['markdown']}  {paths['html']}  figures: {paths['figures']}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    import yaml

    from openmusk.core.config import config_to_dict
    from openmusk.eval.specs import get_dataset_spec, list_dataset_specs

    if args.name:
        try:
            spec = get_dataset_spec(args.name)
        except (KeyError, ValueError, FileNotFoundError) as e:
            raise CliError(str(e).strip("'\"")) from None
        print(yaml.safe_dump(config_to_dict(spec), sort_keys=False, width=100))
        return 0
    for name in list_dataset_specs():
        s = get_dataset_spec(name)
        print(f"{name:<12} {s.format:<9} {len(s.classes):>2} classes  tasks: {', '.join(s.tasks)}")
    return 0
