"""A pan-and-zoom slide viewer written next to a report: the slide as a deep-zoom (DZI) tile
pyramid, heatmaps as switchable overlays, and OpenSeadragon shipped inside the package, so the
folder opens from disk (file://) with no server and no network.

The page embeds the DZI description as an object (a browser may not fetch a local .dzi file; it
may load local tile images), draws with OpenSeadragon's canvas drawer (local images are
cross-origin for WebGL), and reads its state from the address (``viewer.html#overlay=NAME&zoom=8
&x=0.4&y=0.6``), so a link or a headless browser can open any view.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from openmusk.core.io import atomic_path
from openmusk.slide.heatmap import HEATMAP_ALPHA, HEATMAP_CMAP, score_map, score_range
from openmusk.slide.reader import Slide

__all__ = ["VIEWER_ASSETS", "DziInfo", "write_dzi", "overlay_image", "write_viewer"]

VIEWER_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "viewer"
DZI_XMLNS = "http://schemas.microsoft.com/deepzoom/2008"


@dataclass(frozen=True)
class DziInfo:
    """A written deep-zoom pyramid: ``<name>.dzi`` and ``<name>_files/<level>/<col>_<row>.<format>``."""

    name: str
    width: int
    height: int
    tile_size: int
    overlap: int
    format: str

    @property
    def levels(self) -> int:
        """Pyramid levels: level L is the slide downsampled by 2 ** (levels - 1 - L)."""
        return math.ceil(math.log2(max(self.width, self.height, 1))) + 1

    def tile_source(self) -> dict:
        """The DZI description as OpenSeadragon's inline tile source."""
        return {"Image": {"xmlns": DZI_XMLNS, "Url": f"{self.name}_files/", "Format": self.format,
                          "Overlap": str(self.overlap), "TileSize": str(self.tile_size),
                          "Size": {"Width": str(self.width), "Height": str(self.height)}}}


def write_dzi(slide: Slide, out_dir: str | os.PathLike, name: str = "slide", tile_size: int = 254,
              overlap: int = 1, quality: int = 85) -> DziInfo:
    """Write ``slide`` as a DZI pyramid (JPEG tiles) into ``out_dir``; a rerun replaces it whole.

    Tiles are read from the slide's best pyramid level for each zoom level (``Slide.read_region``
    at that level's µm/px), so the cost follows the number of tiles, not the slide's size.
    """
    out = Path(out_dir)
    width, height = slide.dimensions
    info = DziInfo(name, width, height, tile_size, overlap, "jpeg")
    tmp = out / f".{name}_files.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    top = info.levels - 1
    for level in range(info.levels):
        scale = 2 ** (top - level)
        lw, lh = math.ceil(width / scale), math.ceil(height / scale)
        (tmp / str(level)).mkdir(parents=True)
        for col in range(math.ceil(lw / tile_size)):
            for row in range(math.ceil(lh / tile_size)):
                x0, y0 = max(0, col * tile_size - overlap), max(0, row * tile_size - overlap)
                x1, y1 = min(lw, (col + 1) * tile_size + overlap), min(lh, (row + 1) * tile_size + overlap)
                tile = slide.read_region((round(x0 * scale), round(y0 * scale)), (x1 - x0, y1 - y0),
                                         slide.mpp * scale)
                tile.convert("RGB").save(tmp / str(level) / f"{col}_{row}.jpeg", quality=quality)
    final = out / f"{name}_files"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Image xmlns="{DZI_XMLNS}" Format="jpeg" '
           f'Overlap="{overlap}" TileSize="{tile_size}">\n  <Size Width="{width}" Height="{height}"/>\n</Image>\n')
    with atomic_path(out / f"{name}.dzi", suffix=".dzi.tmp") as p:
        p.write_text(xml)
    return info


def overlay_image(coords: np.ndarray, scores: np.ndarray, patch_size_level0: int,
                  slide_size: tuple[int, int], out: str | os.PathLike, *, max_size: int = 1024,
                  scale: str = "probability", cmap: str = HEATMAP_CMAP) -> Path:
    """An RGBA PNG covering the whole slide: tile scores in the colour map (the heatmaps' scale),
    transparent where no tile lies; the viewer sets its opacity."""
    from matplotlib import colormaps

    w0, h0 = slide_size
    downsample = max(w0, h0) / max_size
    shape = (max(1, round(h0 / downsample)), max(1, round(w0 / downsample)))
    smap = score_map(coords, scores, patch_size_level0, shape, downsample)
    lo, hi = score_range(scores, scale)
    rgba = colormaps[cmap](np.clip((np.nan_to_num(smap, nan=lo) - lo) / (hi - lo), 0, 1))
    rgba[..., 3] = np.isfinite(smap)
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(tmp, format="PNG")
    return Path(out)


def write_viewer(out_dir: str | os.PathLike, dzi: DziInfo, overlays: Sequence[tuple[str, str]] = (),
                 title: str = "slide", scale_label: str = "probability 0-1") -> Path:
    """``viewer.html`` and the OpenSeadragon files in ``out_dir``; ``overlays`` are (name, PNG path
    relative to ``out_dir``) pairs, shown one at a time over the slide."""
    out = Path(out_dir)
    shutil.copytree(VIEWER_ASSETS / "openseadragon", out / "openseadragon", dirs_exist_ok=True)
    config = {"tileSource": dzi.tile_source(), "overlays": [{"name": n, "url": u} for n, u in overlays],
              "opacity": HEATMAP_ALPHA}
    page = (VIEWER_ASSETS / "viewer.html").read_text()
    page = (page.replace("{{TITLE}}", html.escape(title)).replace("{{SCALE}}", html.escape(scale_label))
                .replace("{{CONFIG}}", json.dumps(config).replace("</", "<\\/")))
    path = out / "viewer.html"
    with atomic_path(path, suffix=".html.tmp") as tmp:
        tmp.write_text(page)
    return path
