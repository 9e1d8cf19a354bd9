"""``openmusk demo``: the whole-slide pipeline on the shipped real slide, as an HTML report."""
from __future__ import annotations

import argparse

from openmusk.cli import CliError
from openmusk.cli.common import (positive_int, RenamedFlag, add_output_arg, add_progress_arg, add_runtime_args,
                                 add_workers_arg)

DEMO_HELP = """\
Run the whole-slide pipeline on the real H&E slide shipped with openmusk (a skin region of the
OpenSlide CMU-1 slide, 20x): segment tissue, tile at 0.5 µm/px, extract multiscale MUSK features,
score every tile zero-shot against tissue prompts (default: epidermis, dermis, adipose, background;
your own with --labels or --prompts) and write OUT/report.html with the thumbnail, tissue mask,
tiles, heatmaps on one probability scale (0-1), the top tiles, a table and a pan-and-zoom viewer.

--prompts FILE is YAML/JSON: {class: [prompt, ...]} or {classes: {...}, templates: ["... {c} ..."]}.

Uses --weights, else the released weights if they are in the Hugging Face cache, else a small
RANDOMLY INITIALISED model (the pipeline runs; the results mean nothing, and the report says so).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser("demo", help="whole-slide demo on a shipped slide -> HTML report",
                              description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_arg(p, "output folder (default: ./openmusk_demo)", default="openmusk_demo")
    p.add_argument("--weights", help="checkpoint path, hf_hub:owner/name, or random[:CONFIG] for the small "
                                     "random model (default: the cached release, else random)")
    p.add_argument("--random-weights", action=RenamedFlag, new="--weights random", dest="weights",
                   const="random", help=argparse.SUPPRESS)
    p.add_argument("--slide", help="run on this slide instead of the shipped one")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--labels", help='comma-separated classes to score, e.g. "tumour,stroma,necrosis"')
    classes.add_argument("--prompts", metavar="FILE", help="YAML/JSON file of classes and their prompts")
    p.add_argument("--mpp", type=float, help="level-0 µm/px of --slide if the file states none")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction (default 0.5)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    add_workers_arg(p, default=0)
    add_runtime_args(p)
    add_progress_arg(p)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from openmusk.model import WeightsNotFoundError
    from openmusk.slide.demo import labels_prompts, read_class_prompts, run_demo
    from openmusk.slide.reader import SlideError

    try:
        prompts, templates = (read_class_prompts(args.prompts) if args.prompts else
                              (labels_prompts(args.labels) if args.labels else None, None))
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    try:
        result = run_demo(args.out, weights=args.weights, slide_path=args.slide, overlap=args.overlap,
                          prompts=prompts, templates=templates,
                          batch_size=args.batch_size, num_workers=args.num_workers,
                          precision=args.precision or "auto", device=args.device, slide_mpp=args.mpp,
                          progress=not args.quiet)
    except WeightsNotFoundError as e:
        raise CliError(str(e)) from e
    except (SlideError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"{result.n_tiles} tiles in {result.seconds:.1f} s; open {result.report}")
    return 0
