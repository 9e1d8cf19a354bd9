"""``openmusk slide``: inspect slides, tile them, extract features, draw heatmaps."""
from __future__ import annotations

import argparse
from pathlib import Path

from openmusk.cli import CliError

EXTRACT_HELP = """\
Segment tissue, tile at a target magnification and encode every tile with MUSK, writing one HDF5
file per slide in the TRIDENT/CLAM layout (datasets `features` (N, D) and `coords` (N, 2) int64,
level-0 top-left, with attributes). A rerun skips finished slides; an unreadable slide is listed as
failed in FEATURES_DIR/summary.csv and the others go on. Spread over GPUs and machines with torchrun:

  torchrun --nproc_per_node 8 -m openmusk slide extract SLIDES_DIR --out FEATURES_DIR
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``slide`` command group."""
    p = subparsers.add_parser("slide", help="whole slides: info, tiling, feature extraction, heatmaps",
                              description="Whole-slide images: read, segment tissue, tile, extract MUSK "
                                          "features, draw heatmaps.")
    sub = p.add_subparsers(dest="slide_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    info = sub.add_parser("info", help="levels, sizes and microns per pixel of a slide",
                          description="Print a slide's pyramid levels, downsamples and microns per pixel.")
    info.add_argument("slide", help="slide file (SVS, NDPI, MRXS, TIFF, ... or PNG/JPEG)")
    info.add_argument("--mpp", type=float, help="microns per pixel, for files that do not state it")
    info.set_defaults(func=_info)

    tile = sub.add_parser("tile", help="segment tissue and cut tiles (coords files, no model)",
                          description="Segment tissue and tile every slide: OUT/coords/NAME.h5 (coords "
                                      "only) and OUT/tissue/NAME.geojson. `extract` with the same --out "
                                      "reuses them.")
    tile.add_argument("slides", help="folder of slides")
    tile.add_argument("--out", required=True, help="output folder")
    _add_tiling_args(tile)
    tile.set_defaults(func=_tile)

    ex = sub.add_parser("extract", help="MUSK features of every slide in a folder (HDF5 per slide)",
                        description=EXTRACT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("slides", help="folder of slides (SLIDES_DIR)")
    ex.add_argument("--out", required=True, help="features folder (FEATURES_DIR)")
    ex.add_argument("--config", help="YAML file with ExtractConfig keys (flags below override it)")
    ex.add_argument("--model", help="model config name (default: read from the weights; "
                                    "musk_large_patch16_384 with --random-weights)")
    ex.add_argument("--weights", help="checkpoint path or hf_hub:owner/name (default hf_hub:xiangjx/musk)")
    ex.add_argument("--random-weights", action="store_true",
                    help="random initialisation instead of weights (tests, benchmarks)")
    ex.add_argument("--batch-size", type=int, help="tiles per forward pass (default 32)")
    ex.add_argument("--num-workers", type=int, help="DataLoader processes reading tiles (default 2)")
    ex.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                    help="auto: bf16/fp16 autocast on CUDA, fp32 on CPU")
    ex.add_argument("--device", help="e.g. cpu, cuda:0 (default: this rank's GPU, else cpu)")
    ex.add_argument("--single-scale", action="store_true",
                    help="D-d CLS features instead of the 2D-d multiscale ones")
    _add_tiling_args(ex)
    ex.set_defaults(func=_extract)

    hm = sub.add_parser("heatmap", help="overlay tile scores on a slide thumbnail (PNG)",
                        description="Draw tile scores from a CSV (columns x, y, width and a score "
                                    "column, e.g. written by openmusk) over the slide thumbnail.")
    hm.add_argument("slide", help="slide file")
    hm.add_argument("--scores", required=True, help="CSV with x, y, width and the score column")
    hm.add_argument("--column", default="score", help="score column (default: score)")
    hm.add_argument("--out", required=True, help="output PNG")
    hm.add_argument("--geojson", help="also write the tile scores as GeoJSON for QuPath")
    hm.add_argument("--mpp", type=float, help="microns per pixel, for files that do not state it")
    hm.set_defaults(func=_heatmap)


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    """Tiling flags shared by ``tile`` and ``extract`` (unset flags keep the config's values)."""
    p.add_argument("--target-mpp", type=float, help="tile resolution in µm/px (default 0.5 ≈ 20x)")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (default 384)")
    p.add_argument("--overlap", type=float, help="fraction shared by neighbouring tiles (default 0)")
    p.add_argument("--min-tissue", type=float, help="minimum tissue fraction of a tile (default 0.25)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides that do not state it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace):
    """ExtractConfig from --config and the flags."""
    from openmusk.slide.extract import ExtractConfig, load_extract_config

    try:
        config = load_extract_config(args.config) if getattr(args, "config", None) else ExtractConfig()
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from e
    t = config.tiling
    for flag, key in (("target_mpp", "mpp"), ("tile_size", "tile_size"), ("overlap", "overlap"),
                      ("min_tissue", "min_tissue")):
        if getattr(args, flag, None) is not None:
            setattr(t, key, getattr(args, flag))
    try:
        t.__post_init__()
    except ValueError as e:
        raise CliError(str(e)) from e
    if args.mpp is not None:
        config.slide_mpp = args.mpp
    for flag in ("model", "weights", "batch_size", "num_workers", "precision", "device"):
        if getattr(args, flag, None) is not None:
            setattr(config, flag, getattr(args, flag))
    if getattr(args, "random_weights", False):
        config.weights = None
    if getattr(args, "single_scale", False):
        config.multiscale = False
    return config


def _info(args: argparse.Namespace) -> int:
    from openmusk.slide.reader import SlideError, open_slide

    try:
        with open_slide(args.slide, default_mpp=args.mpp) as s:
            print(f"{s.path}")
            for i, ((w, h), d) in enumerate(zip(s.level_dimensions, s.level_downsamples)):
                print(f"  level {i}: {w} x {h} px, downsample {d:.4g}")
            mpp = s.mpp_if_known
            given = s.mpp_from_file is None and mpp is not None
            print(f"  mpp: {mpp if mpp is not None else 'unknown (pass --mpp)'}{' (from --mpp)' if given else ''}")
            if mpp is not None:
                print(f"  objective: {s.objective_power:g}x")
            vendor = s.properties.get("openslide.vendor")
            print(f"  format: {vendor or Path(args.slide).suffix.lstrip('.').lower()}")
    except SlideError as e:
        raise CliError(str(e)) from e
    return 0


def _tile(args: argparse.Namespace) -> int:
    from openmusk.slide.extract import tile_slides

    try:
        rows = tile_slides(args.slides, args.out, _config(args), progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e
    return _report(rows, Path(args.out) / "tiling_summary.csv")


def _extract(args: argparse.Namespace) -> int:
    import openmusk
    from openmusk.slide.extract import extract_features

    config = _config(args)
    try:
        rows = extract_features(args.slides, args.out, config, progress=not args.no_progress)
    except openmusk.WeightsNotFoundError as e:
        raise CliError(f"{e}\n(or pass --random-weights to test the pipeline)") from e
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e
    return _report(rows, Path(args.out) / "summary.csv")


def _report(rows: list, summary: Path) -> int:
    """Print this rank's counts; exit code 1 if any slide failed."""
    from openmusk.core import dist

    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    prefix = f"rank {dist.rank()}: " if dist.world_size() > 1 else ""
    print(f"{prefix}{len(rows)} slides: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
          + f"; summary: {summary}")
    return 1 if counts.get("failed") else 0


def _heatmap(args: argparse.Namespace) -> int:
    import csv

    import numpy as np

    from openmusk.slide.heatmap import draw_heatmap, export_tile_scores
    from openmusk.slide.reader import SlideError

    with open(args.scores, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("x", "y", "width", args.column) if c not in (reader.fieldnames or [])]
        if missing:
            raise CliError(f"{args.scores}: missing column(s) {missing}; found {reader.fieldnames}")
        try:
            rows = [(int(r["x"]), int(r["y"]), int(r["width"]), float(r[args.column])) for r in reader]
        except ValueError as e:
            raise CliError(f"{args.scores}: line {reader.line_num}: {e}") from e
    table = np.array(rows, dtype=np.float64).reshape(-1, 4)
    sizes = np.unique(table[:, 2]).astype(int)
    if len(sizes) != 1:
        raise CliError(f"{args.scores}: expected tiles of one size, found {sizes[:5].tolist()}")
    coords, scores = table[:, :2].astype(np.int64), table[:, 3]
    try:
        path = draw_heatmap(args.slide, coords, scores, int(sizes[0]), args.out, label=args.column,
                            slide_mpp=args.mpp)
    except (SlideError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"heatmap: {path}")
    if args.geojson:
        print(f"tile scores: {export_tile_scores(coords, scores, int(sizes[0]), args.geojson, names=[args.column])}")
    return 0
