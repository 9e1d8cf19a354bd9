"""Heatmaps of per-tile scores (attention, zero-shot similarity, probabilities) over a slide.

Scores are painted onto a thumbnail-sized grid, overlapping tiles averaged, and drawn as a
semi-transparent overlay with a colour bar (PNG). One documented scale: ``scale="probability"``
(the default) maps 0 to 1 onto the perceptually uniform viridis colour map, so the same colour
means the same probability in every heatmap; ``scale="minmax"`` stretches the scores' own range
(relative scores such as MIL attention). Tile scores are also exported as CSV or GeoJSON
(QuPath detections with measurements), and the top-scoring tiles as an image grid.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from openmusk.core.io import atomic_path, save_figure
from openmusk.slide.reader import Slide, open_slide

__all__ = ["score_map", "draw_heatmap", "heatmap_from_features", "export_tile_scores", "top_tiles_grid",
           "HEATMAP_CMAP", "HEATMAP_ALPHA", "SCALES", "score_range"]

HEATMAP_CMAP = "viridis"   # perceptually uniform, readable by colour-blind viewers
HEATMAP_ALPHA = 0.4        # the H&E stays visible under the overlay
SCALES = ("probability", "minmax")


def score_range(scores: np.ndarray, scale: str = "probability", vmin: float | None = None,
                vmax: float | None = None) -> tuple[float, float]:
    """The colour range: 0-1 for ``probability`` (scores must lie in it), the scores' min-max for
    ``minmax``; an explicit ``vmin``/``vmax`` wins."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scale == "probability":
        if len(s) and (s.min() < -1e-6 or s.max() > 1 + 1e-6) and vmin is None and vmax is None:
            raise ValueError(f"scores range over [{s.min():.4g}, {s.max():.4g}], outside the probability "
                             f"scale 0-1: use scale 'minmax' (slide heatmap: --scale minmax) or give vmin/vmax")
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    lo, hi = lo if vmin is None else float(vmin), hi if vmax is None else float(vmax)
    return (lo, hi) if hi > lo else (lo, lo + 1e-6)


def score_map(coords: np.ndarray, scores: np.ndarray, patch_size_level0: int, shape: tuple[int, int],
              downsample: float) -> np.ndarray:
    """Mean score per pixel of an (H, W) grid at ``downsample``; NaN where no tile covers it.

    Each tile adds its score over its footprint with a 2-D difference array (corners, then
    cumulative sums), so overlapping tiles average in O(N + H W).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} coords but {len(scores)} scores")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    h, w = shape
    x0 = np.clip(np.round(coords[:, 0] / downsample).astype(int), 0, w)
    y0 = np.clip(np.round(coords[:, 1] / downsample).astype(int), 0, h)
    x1 = np.clip(np.maximum(np.round((coords[:, 0] + patch_size_level0) / downsample).astype(int), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.round((coords[:, 1] + patch_size_level0) / downsample).astype(int), y0 + 1), 0, h)
    total = np.zeros((h + 1, w + 1))
    count = np.zeros((h + 1, w + 1))
    for arr, val in ((total, scores), (count, np.ones_like(scores))):
        np.add.at(arr, (y0, x0), val)
        np.add.at(arr, (y0, x1), -val)
        np.add.at(arr, (y1, x0), -val)
        np.add.at(arr, (y1, x1), val)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _as_slide(slide: Slide | str | os.PathLike, default_mpp: float | None = None) -> Slide:
    """A Slide from a Slide or a path (``default_mpp`` for files that state none)."""
    return slide if isinstance(slide, Slide) else open_slide(slide, default_mpp=default_mpp)


def draw_heatmap(slide: Slide | str | os.PathLike, coords: np.ndarray, scores: np.ndarray,
                 patch_size_level0: int, out: str | os.PathLike, *, title: str = "",
                 label: str = "score", cmap: str = HEATMAP_CMAP, alpha: float = HEATMAP_ALPHA,
                 scale: str = "probability", vmin: float | None = None, vmax: float | None = None,
                 max_size: int = 900, slide_mpp: float | None = None) -> Path:
    """Save a PNG: the slide thumbnail with the tile scores overlaid and a colour bar.

    ``coords`` are level-0 top-left corners (as in the features file), ``patch_size_level0`` the
    tile side in level-0 pixels (its ``coords`` attribute of that name). ``scale``: probability
    (0-1, the default) or minmax (the scores' range); ``vmin``/``vmax`` override either end.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = _as_slide(slide, slide_mpp)
    thumb, downsample = s.thumbnail(max_size=max_size)
    rgb = np.asarray(thumb)
    smap = score_map(coords, scores, patch_size_level0, rgb.shape[:2], downsample)
    finite = np.asarray(scores, dtype=np.float64)
    lo, hi = score_range(finite, scale, vmin, vmax)
    aspect = rgb.shape[1] / rgb.shape[0]
    fig, ax = plt.subplots(figsize=(min(12.0, 7.0 * aspect + 1.5), 7.0), dpi=120)
    ax.imshow(rgb)
    im = ax.imshow(np.ma.masked_invalid(smap), cmap=cmap, alpha=alpha, vmin=lo, vmax=hi,
                   interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.solids.set_alpha(1.0)   # the bar shows the colours at full strength
    bar.set_label(f"{label} ({'probability 0-1' if scale == 'probability' else 'min-max of the scores'})",
                  fontsize=13)
    bar.ax.tick_params(labelsize=12)
    ax.set_axis_off()
    ax.set_title(title or f"{s.name}: {label} ({len(finite)} tiles)", fontsize=14)
    fig.tight_layout()
    out = Path(out)
    save_figure(fig, out, dpi=100)
    return out


def heatmap_from_features(slide: Slide | str | os.PathLike, features_path: str | os.PathLike,
                          scores: np.ndarray, out: str | os.PathLike, **kwargs) -> Path:
    """Heatmap of per-tile scores given in the row order of a features file (e.g. MIL attention).

    Reads ``coords`` and the tile side from the file (``patch_size_level0``, or derived from
    CLAM's/TRIDENT's attributes or the coords grid); ``kwargs`` go to :func:`draw_heatmap`.
    """
    from openmusk.data.features_h5 import patch_size_level0, read_coords_file

    coords, attrs = read_coords_file(features_path)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(coords):
        raise ValueError(f"{features_path}: {len(coords)} tiles but {len(scores)} scores")
    s = _as_slide(slide, kwargs.pop("slide_mpp", None))
    try:
        size0 = patch_size_level0(attrs, s.level_downsamples, coords, where=features_path)
        return draw_heatmap(s, coords, scores, size0, out, **kwargs)
    finally:
        if s is not slide:
            s.close()


def export_tile_scores(coords: np.ndarray, scores: np.ndarray, patch_size_level0: int,
                       path: str | os.PathLike, names: Sequence[str] = ("score",),
                       classification: Sequence[str] | None = None,
                       bounds: tuple[int, int] | None = None) -> Path:
    """Write tile scores as CSV (x, y, width, height, scores...) or GeoJSON (by the extension).

    ``scores`` is (N,) or (N, K) with K ``names``. GeoJSON tiles are QuPath detections whose
    ``measurements`` hold the scores (NaN: ``null``); an optional per-tile ``classification`` names
    their class; ``bounds`` (level-0 width, height) clips tiles to the slide.
    """
    from openmusk.slide.geojson import annotation, tile_polygon, write_geojson

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores.reshape(len(scores), -1)
    if len(scores) != len(coords) or scores.shape[1] != len(names):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(coords)} coords and "
                         f"{len(names)} names {list(names)}")
    path = Path(path)
    p = int(patch_size_level0)
    if path.suffix.lower() == ".csv":
        with atomic_path(path, suffix=".csv.tmp") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["x", "y", "width", "height", *names] + (["class"] if classification is not None else []))
            for i, (x, y) in enumerate(coords):
                extra = [classification[i]] if classification is not None else []
                writer.writerow([int(x), int(y), p, p, *(f"{v:.6g}" for v in scores[i]), *extra])
        return path
    if path.suffix.lower() not in (".geojson", ".json"):
        raise ValueError(f"{path}: tile scores are written as .csv or .geojson")
    features = [annotation(tile_polygon(x, y, p), "detection", measurements=dict(zip(names, scores[i])),
                           classification=None if classification is None else str(classification[i]))
                for i, (x, y) in enumerate(coords)]
    return write_geojson(path, features, bounds=bounds)


def top_tiles_grid(slide: Slide | str | os.PathLike, coords: np.ndarray, scores: np.ndarray, k: int,
                   patch_size_level0: int, out: str | os.PathLike | None = None, tile_px: int = 256,
                   ncols: int | None = None, slide_mpp: float | None = None) -> Image.Image:
    """The ``k`` highest-scoring tiles side by side (score above each), optionally saved as PNG."""
    from PIL import ImageDraw

    s = _as_slide(slide, slide_mpp)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    coords = np.asarray(coords).reshape(-1, 2)
    if len(scores) != len(coords):
        raise ValueError(f"{len(coords)} coords but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")[:max(0, k)]
    ncols = ncols or min(len(order), 5) or 1
    nrows = max(1, -(-len(order) // ncols))
    from PIL import ImageFont

    font = ImageFont.load_default(size=max(12, tile_px // 14))
    label_h = max(18, tile_px // 10)
    grid = Image.new("RGB", (ncols * tile_px, nrows * (tile_px + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    read_mpp = s.mpp * patch_size_level0 / tile_px
    for j, i in enumerate(order):
        r, c = divmod(j, ncols)
        tile = s.read_region((int(coords[i, 0]), int(coords[i, 1])), (tile_px, tile_px), read_mpp)
        top = r * (tile_px + label_h)
        grid.paste(tile, (c * tile_px, top + label_h))
        draw.text((c * tile_px + 3, top + 2), f"#{j + 1}  {scores[i]:.3f}", fill=(0, 0, 0), font=font)
    if out is not None:
        with atomic_path(out, suffix=".png") as tmp:
            grid.save(tmp, format="PNG")
    return grid
