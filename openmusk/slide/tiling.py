"""Tiling a slide at a target magnification: a grid of level-0 top-left coordinates over tissue.

The result is stored as a coords-only HDF5 file in the TRIDENT/CLAM layout (dataset ``coords``,
int64 (N, 2), level-0 pixel frame, top-left, with the tiling attributes), which feature extraction
reads back. What each attribute means, so TRIDENT and CLAM re-cut exactly the tile we encoded:

* ``patch_size_level0``: tile side in level-0 pixels, ``round(tile_size * mpp / level0_mpp)``.
* TRIDENT (default and ``trident`` layouts): ``patch_size`` = ``tile_size`` (pixels at the target),
  ``target_magnification`` = ``10 / mpp``, and ``level0_magnification`` = the magnification level 0
  has *as measured by the tile we cut*, chosen so that TRIDENT's ``patch_size * level0_magnification
  // target_magnification`` and its patcher's ``round(...)`` both give ``patch_size_level0`` (the
  slide's nominal ``objective_power``, 40 on a 0.2265 µm/px NDPI, would give a tile 9% too small).
* CLAM (``clam`` layout, :func:`clam_attrs`): ``patch_level`` 0 and ``patch_size`` =
  ``patch_size_level0`` (CLAM reads ``patch_size`` pixels **at** ``patch_level``), ``downsample``
  (1, 1), ``custom_downsample`` 1, ``target_patch_size`` = ``tile_size``; TRIDENT's magnifications
  are left out so TRIDENT's ``read_coords_legacy`` path reads the same tile.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from openmusk.data.features_h5 import patch_size_level0, read_coords_file, write_coords_file
from openmusk.slide.reader import Slide
from openmusk.slide.tissue import TissueMask

__all__ = ["TilingConfig", "Tiles", "tile_slide", "tissue_fraction_per_tile", "write_coords", "read_coords",
           "config_matches", "trident_level0_magnification", "clam_attrs", "is_openmusk_coords", "WRITER"]

WRITER = "openmusk"   # the coords attribute ``writer``: files we may replace


@dataclass
class TilingConfig:
    """How to cut tiles: size in pixels at ``mpp`` µm/px, overlap fraction, minimum tissue share."""

    mpp: float = 0.5                 # 0.5 µm/px ≈ 20x, MUSK's magnification
    tile_size: int = 384             # MUSK's input size
    overlap: float = 0.0             # fraction of the tile shared with its neighbour (0.85 for heatmaps)
    min_tissue: float = 0.25         # keep tiles whose footprint is at least this fraction tissue

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.tile_size < 1 or not self.mpp > 0:
            raise ValueError(f"tile_size and mpp must be positive, got {self.tile_size}, {self.mpp}")


@dataclass
class Tiles:
    """Tile coordinates (level-0 top-left, int64 (N, 2)) and the attributes that describe them."""

    coords: np.ndarray
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def patch_size_level0(self) -> int:
        """Side of one tile in level-0 pixels."""
        return int(self.attrs["patch_size_level0"])


def tile_slide(slide: Slide, tissue: TissueMask | None, config: TilingConfig | None = None) -> Tiles:
    """The grid of tiles fully inside the slide whose tissue share reaches ``min_tissue``."""
    config = config or TilingConfig()
    w0, h0 = slide.dimensions
    size0 = max(1, round(config.tile_size * config.mpp / slide.mpp))
    stride0 = max(1, round(size0 * (1.0 - config.overlap)))
    xs = np.arange(0, w0 - size0 + 1, stride0, dtype=np.int64)
    ys = np.arange(0, h0 - size0 + 1, stride0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.int64)
    if tissue is not None and len(coords):
        frac = tissue_fraction_per_tile(tissue, coords, size0)
        keep = frac >= config.min_tissue if config.min_tissue > 0 else frac > 0
        coords = coords[keep]
    attrs = {
        "patch_size": int(config.tile_size),
        "patch_size_level0": int(size0),
        "level0_magnification": trident_level0_magnification(size0, config.tile_size, 10.0 / config.mpp),
        "target_magnification": float(10.0 / config.mpp),
        "objective_power": float(slide.objective_power),
        "overlap": int(round(config.tile_size * config.overlap)),   # pixels at the target mpp (TRIDENT)
        "overlap_fraction": float(config.overlap),
        "level0_width": int(w0),
        "level0_height": int(h0),
        "mpp": float(config.mpp),
        "level0_mpp": float(slide.mpp),
        "min_tissue": float(config.min_tissue),
        "name": slide.name,
        "writer": WRITER,
    }
    return Tiles(coords.reshape(-1, 2), attrs)


def trident_level0_magnification(size0: int, tile_size: int, target_magnification: float) -> float:
    """The smallest ``level0_magnification`` for which TRIDENT's attribute formula
    (``patch_size * m // target``) and its patcher (``round(patch_size * (10/target) / (10/m))``)
    both give ``size0``; ``target * size0 / tile_size`` up to a float ulp."""
    m = float(target_magnification) * size0 / tile_size
    for _ in range(16):
        if (tile_size * m // target_magnification == size0
                and round(tile_size * ((10 / target_magnification) / (10 / m))) == size0):
            return m
        m = math.nextafter(m, math.inf)
    raise ArithmeticError(f"no level0_magnification reproduces a {size0} px tile from {tile_size} px")


def clam_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Coords attributes with CLAM's meanings (``patch_size`` at ``patch_level`` 0), for the CLAM layout."""
    size0 = int(attrs["patch_size_level0"])
    out = {k: v for k, v in attrs.items() if k not in ("level0_magnification", "target_magnification")}
    out.update(patch_size=size0, patch_level=0, downsample=(1.0, 1.0), custom_downsample=1,
               target_patch_size=int(attrs.get("patch_size", size0)), wsi_name=attrs.get("name", ""))
    if "level0_width" in attrs and "level0_height" in attrs:
        dims = (int(attrs["level0_width"]), int(attrs["level0_height"]))
        out.update(level_dim=dims, downsampled_level_dim=dims)
    return out


def is_openmusk_coords(attrs: dict[str, Any]) -> bool:
    """Whether a coords file was written by openmusk (and may be replaced by a new tiling)."""
    return attrs.get("writer") == WRITER or {"min_tissue", "overlap_fraction"} <= set(attrs)


def tissue_fraction_per_tile(tissue: TissueMask, coords: np.ndarray, size0: int) -> np.ndarray:
    """Fraction of each tile's footprint that is tissue, from an integral image of the mask."""
    mask = tissue.mask.astype(np.float64)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    ds = tissue.downsample
    x0 = np.clip(np.floor(coords[:, 0] / ds).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / ds).astype(int), 0, h)
    x1 = np.clip(np.maximum(np.ceil((coords[:, 0] + size0) / ds).astype(int), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.ceil((coords[:, 1] + size0) / ds).astype(int), y0 + 1), 0, h)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return total / area


def write_coords(path: str | os.PathLike, tiles: Tiles) -> Path:
    """Write the coords-only HDF5 file (dataset ``coords`` + attributes) atomically."""
    return write_coords_file(path, tiles.coords, tiles.attrs)


def read_coords(path: str | os.PathLike, level_downsamples: Sequence[float] | None = None) -> Tiles:
    """Read a coords file written by :func:`write_coords` or TRIDENT/CLAM's patching step; the tile
    side (``patch_size_level0``) is derived from CLAM's or TRIDENT's attributes when missing."""
    coords, attrs = read_coords_file(path)
    attrs["patch_size_level0"] = patch_size_level0(attrs, level_downsamples, where=path)
    return Tiles(coords, attrs)


def config_matches(tiles: Tiles, config: TilingConfig) -> bool:
    """Whether stored tiles were cut with ``config`` (so a coords file can be reused)."""
    a = tiles.attrs
    return (int(a.get("target_patch_size", a.get("patch_size", -1))) == config.tile_size
            and math.isclose(float(a.get("mpp", -1)), config.mpp, rel_tol=1e-6)
            and math.isclose(float(a.get("overlap_fraction", -1)), config.overlap, abs_tol=1e-9)
            and math.isclose(float(a.get("min_tissue", -1)), config.min_tissue, abs_tol=1e-9))
