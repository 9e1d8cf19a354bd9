"""Attention exports: per-tile scores with coordinates (HDF5 + CSV), heatmaps and top-tile grids.

Heatmaps and grids are drawn by :mod:`openmusk.slide.heatmap` from the slide images; the
attention itself is saved whether or not the slides are at hand.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["save_attention", "read_attention", "render_attention"]


def save_attention(path: str | os.PathLike, attention: dict[str, tuple[np.ndarray, dict]],
                   slide_ids: dict[str, list[str]]) -> Path:
    """Write ``{patient: (attention (N,), {"coords", "slide_index"})}`` to HDF5, atomically.

    Layout: one group per patient with ``attention`` (N,) float32, ``coords`` (N, 2) int64 and
    ``slide_index`` (N,) into the group attribute ``slides`` (JSON list of slide ids).
    """
    import json

    from openmusk.data.features_h5 import write_arrays

    arrays: dict[str, np.ndarray] = {}
    for pid, (att, sample) in attention.items():
        arrays[f"{pid}/attention"] = np.asarray(att, np.float32)
        arrays[f"{pid}/coords"] = np.asarray(sample["coords"], np.int64)
        arrays[f"{pid}/slide_index"] = np.asarray(sample["slide_index"], np.int64)
    return write_arrays(path, arrays, dataset_attrs={pid: {"slides": json.dumps(slide_ids[pid])}
                                                      for pid in attention})


def read_attention(path: str | os.PathLike) -> dict[str, dict]:
    """``{patient: {"attention", "coords", "slide_index", "slides"}}`` from :func:`save_attention`."""
    import json

    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for pid, g in f.items():
            out[pid] = {k: g[k][:] for k in ("attention", "coords", "slide_index")}
            out[pid]["slides"] = json.loads(g.attrs["slides"])
    return out


def render_attention(attention: dict[str, dict], out_dir: str | os.PathLike,
                     slide_path: Callable[[str], str | None], tile_size: Callable[[str], int],
                     top_k: int = 16, slide_mpp: float | None = None) -> list[dict]:
    """Per slide: tile CSV (always), heatmap PNG and top-``top_k`` tile grid (when the slide image is
    found by ``slide_path(slide_id)``). Returns one row per slide with what was written or why not."""
    from openmusk.slide.heatmap import draw_heatmap, export_tile_scores, top_tiles_grid

    out_dir = Path(out_dir)
    rows = []
    for pid, a in attention.items():
        for k, slide in enumerate(a["slides"]):
            sel = a["slide_index"] == k
            if not sel.any():
                continue
            coords, scores, size = a["coords"][sel], a["attention"][sel], tile_size(slide)
            stem = out_dir / f"{pid}__{slide}"
            row = {"patient_id": pid, "slide_id": slide,
                   "csv": str(export_tile_scores(coords, scores, size, f"{stem}_attention.csv",
                                                 names=("attention",)))}
            src = slide_path(slide)
            if src is None:
                row["images"] = "slide image not found"
            else:
                try:
                    draw_heatmap(src, coords, scores, size, f"{stem}_heatmap.png",
                                 title=f"{pid} / {slide}: attention", label="attention",
                                 scale="minmax", slide_mpp=slide_mpp)
                    top_tiles_grid(src, coords, scores, top_k, size, f"{stem}_top_tiles.png",
                                   slide_mpp=slide_mpp)
                    row["images"] = "ok"
                except Exception as e:  # a bad slide must not end the run: report it
                    row["images"] = f"failed: {type(e).__name__}: {e}"
            rows.append(row)
    return rows
