"""``openmusk slide``: inspect slides, tile them, extract features, draw heatmaps."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from openmusk.cli import CliError
from openmusk.cli.common import (positive_float, positive_int, RenamedFlag, add_output_arg, add_progress_arg, add_runtime_args,
                                 add_workers_arg, config_from_args)
from openmusk.cli.common import warn_random_weights

if TYPE_CHECKING:
    from openmusk.slide.config import ExtractConfig

EXTRACT_HELP = """\
Segment tissue, tile at a target magnification and encode every tile (MUSK by default, or any
--encoder: a registry name or your own module:function), writing one HDF5 file per slide in the
TRIDENT/CLAM layout (datasets `features` (N, D) and `coords` (N, 2) int64, level-0 top-left, with
attributes naming the encoder: musk_multiscale (2048-d, the default) or musk (--single-scale,
1024-d, TRIDENT's musk)). --layout trident|clam writes the folders those tools read
(features_<encoder>/ + patches/NAME_patches.h5; h5_files/ + pt_files/ + patches/NAME.h5 with CLAM's
patch_level/patch_size); --coords-dir encodes exactly another tool's tiles. A rerun skips
finished slides; an unreadable slide is listed as failed in FEATURES_DIR/summary.csv and the
others go on. Flags override --config and --set.
Spread over GPUs and machines with torchrun:

  torchrun --nproc_per_node 8 -m openmusk slide extract SLIDES_DIR --out FEATURES_DIR
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``slide`` command group."""
    p = subparsers.add_parser("slide", help="whole slides: info, tiling, feature extraction, heatmaps",
                              description="Whole-slide images: read, segment tissue, tile, extract features "
                                          "(MUSK or any encoder), draw heatmaps.")
    sub = p.add_subparsers(dest="slide_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 0)

    info = sub.add_parser("info", help="levels, sizes and microns per pixel of a slide",
                          description="Print a slide's pyramid levels, downsamples and microns per pixel.")
    info.add_argument("slide", help="slide file (SVS, NDPI, MRXS, TIFF, ... or PNG/JPEG)")
    info.add_argument("--mpp", type=positive_float, help="microns per pixel, for files that do not state it")
    info.set_defaults(func=_info)

    tile = sub.add_parser("tile", help="segment tissue and cut tiles (coords files, no model)",
                          description="Segment tissue and tile every slide: OUT/coords/NAME.h5 (coords "
                                      "only) and OUT/tissue/NAME.geojson. `extract` with the same --out "
                                      "reuses them.")
    tile.add_argument("slides", nargs="?", help="folder of slides, or one slide file")
    add_output_arg(tile, "output folder")
    _add_config_args(tile)
    _add_tiling_args(tile)
    add_progress_arg(tile)
    tile.set_defaults(func=_tile)

    ex = sub.add_parser("extract", help="features of every slide in a folder (HDF5 per slide)",
                        description=EXTRACT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("slides", nargs="?", help="folder of slides (SLIDES_DIR), or one slide file")
    add_output_arg(ex, "features folder (FEATURES_DIR)")
    _add_config_args(ex)
    ex.add_argument("--encoder", help="registry name (musk, musk_singlescale, timm, open_clip, hf, ...) or "
                                      "module:function returning an encoder or (nn.Module, transform) "
                                      "(default: musk)")
    ex.add_argument("--weights", help="checkpoint path, hf_hub:owner/name, or random[:CONFIG] "
                                      "(default: hf_hub:xiangjx/musk for MUSK)")
    ex.add_argument("--arch", help="MUSK config name (default: read from the weights; "
                                   "musk_large_patch16_384 with random weights)")
    ex.add_argument("--model", action=RenamedFlag, new="--arch", dest="arch", help=argparse.SUPPRESS)
    ex.add_argument("--random-weights", action=RenamedFlag, new="--weights random", dest="weights",
                    const="random", help=argparse.SUPPRESS)
    ex.add_argument("--batch-size", type=positive_int, help="tiles per forward pass (default 32)")
    add_workers_arg(ex)
    add_runtime_args(ex)
    ex.add_argument("--single-scale", action="store_true",
                    help="MUSK: D-d single-scale CLS features instead of the 2D-d multiscale ones")
    ex.add_argument("--coords-dir", help="encode exactly the tiles in this folder's coords files (TRIDENT "
                                         "NAME_patches.h5 or CLAM NAME.h5, also under patches/); read only")
    _add_tiling_args(ex)
    add_progress_arg(ex)
    ex.set_defaults(func=_extract)

    hm = sub.add_parser("heatmap", help="overlay tile scores on a slide thumbnail (PNG)",
                        description="Draw tile scores from a CSV (columns x, y, width and a score "
                                    "column, e.g. written by openmusk) over the slide thumbnail.")
    hm.add_argument("slide", help="slide file")
    hm.add_argument("--scores", required=True, help="CSV with x, y, width and the score column")
    hm.add_argument("--column", default="score", help="score column (default: score)")
    add_output_arg(hm, "output PNG", required=True, kind="file")
    hm.add_argument("--geojson", help="also write the tile scores as GeoJSON for QuPath")
    hm.add_argument("--mpp", type=positive_float, help="microns per pixel, for files that do not state it")
    hm.add_argument("--scale", choices=("probability", "minmax"), default="probability",
                    help="colour scale: probability = 0 to 1, the same in every heatmap (default); "
                         "minmax = the scores' own range (attention, unbounded scores)")
    hm.set_defaults(func=_heatmap)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` (an option: the slides folder is the positional), ``--example``, ``--set``."""
    p.add_argument("--config", help="YAML/JSON file with ExtractConfig keys (start from --example)")
    p.add_argument("--example", action="store_true", help="print the default config as YAML and exit")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key (dotted for sections, e.g. tiling.overlap=0.85); repeatable")
    p.set_defaults(config_required=False)


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    """Tiling flags shared by ``tile`` and ``extract`` (unset flags keep the config's values)."""
    p.add_argument("--target-mpp", type=positive_float, help="tile resolution in µm/px (default 0.5 ≈ 20x)")
    p.add_argument("--tile-size", type=positive_int, help="tile side in pixels (default 384)")
    p.add_argument("--overlap", type=float, help="fraction shared by neighbouring tiles (default 0)")
    p.add_argument("--min-tissue", type=float, help="minimum tissue fraction of a tile (default 0.25)")
    p.add_argument("--mpp", type=positive_float, help="level-0 µm/px for slides that do not state it")
    p.add_argument("--layout", choices=("openmusk", "trident", "clam"),
                   help="output folders: openmusk (default), trident or clam (their commands read them as is)")


def _config(args: argparse.Namespace) -> ExtractConfig | None:
    """ExtractConfig from --config, --set and the flags (all validated by the one loader); None
    after printing --example."""
    from openmusk.slide.config import ExtractConfig

    flags = {"slide_mpp": args.mpp, "tiling.mpp": args.target_mpp, "tiling.tile_size": args.tile_size,
             "tiling.overlap": args.overlap, "tiling.min_tissue": args.min_tissue}
    if args.slide_command == "extract":
        flags.update(encoder=args.encoder, weights=args.weights, arch=args.arch, batch_size=args.batch_size,
                     num_workers=args.num_workers, precision=args.precision, device=args.device,
                     multiscale=False if args.single_scale else None, coords_dir=args.coords_dir)
    flags["layout"] = args.layout
    config = config_from_args(args, ExtractConfig, flags, command=f"slide {args.slide_command}")
    if config is not None and (not args.slides or not args.out):
        raise CliError("give the slides folder and --out (see --help)")
    if config is not None and not Path(args.slides).exists():
        raise CliError(f"{args.slides}: no such file or folder")
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
    from openmusk.slide.pipeline import tile_slides

    config = _config(args)
    if config is None:
        return 0
    try:
        rows = tile_slides(args.slides, args.out, config, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from e
    return _report(rows, Path(args.out) / "tiling_summary.csv")


def _extract(args: argparse.Namespace) -> int:
    from openmusk.model import WeightsNotFoundError
    from openmusk.slide.encode import load_slide_encoder
    from openmusk.slide.pipeline import extract_features

    config = _config(args)
    if config is None:
        return 0
    warn_random_weights(config.weights)
    try:
        encoder = load_slide_encoder(config)
    except WeightsNotFoundError as e:
        raise CliError(f"{e}\n(or pass --weights random to test the pipeline)") from e
    except (KeyError, ValueError, TypeError, ImportError) as e:
        raise CliError(f"encoder {config.encoder!r}: {e.args[0] if e.args else e}") from e
    try:
        rows = extract_features(args.slides, args.out, config, encoder=encoder, progress=not args.quiet)
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
                            scale=args.scale, slide_mpp=args.mpp)
    except (SlideError, ValueError) as e:
        raise CliError(str(e)) from e
    print(f"heatmap: {path}")
    if args.geojson:
        from openmusk.slide.reader import open_slide

        with open_slide(args.slide, default_mpp=args.mpp) as s:
            bounds = s.dimensions
        path = export_tile_scores(coords, scores, int(sizes[0]), args.geojson, names=[args.column], bounds=bounds)
        print(f"tile scores: {path}")
    return 0
