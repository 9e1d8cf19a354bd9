"""Tissue segmentation on a slide thumbnail: a classical segmenter behind a small protocol.

The classical segmenter thresholds HSV saturation with Otsu's method (capped, so that faint tissue
such as loose dermis or a thin strand is not cut away with the glass), rejects white/black
background and pen marks (green, blue, black ink) by colour, cleans up with morphology, fills small
holes and drops specks below a minimum area. Any object with ``__call__(rgb, mpp) -> bool mask``
(e.g. a deep segmenter) can replace it. Masks are traced into GeoJSON polygons in level-0 pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy import ndimage

from openmusk.slide.geojson import annotation
from openmusk.slide.reader import Slide

__all__ = ["Segmenter", "ClassicalSegmenter", "TissueMask", "segment_tissue", "otsu_threshold",
           "mask_to_polygons", "polygons_to_geojson"]


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns an RGB thumbnail (H, W, 3) uint8 at ``mpp`` µm/px into a tissue mask."""

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        ...


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance of a histogram."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


@dataclass
class ClassicalSegmenter:
    """Saturation/Otsu tissue detector with background and pen-mark rejection (all sizes in µm)."""

    min_saturation: float = 0.07       # Otsu's cut is never allowed below this (faint glass)
    max_saturation_cut: float = 0.15   # nor above this: Otsu splits dark from pale tissue on tissue-rich views
    white_level: int = 220             # pixels brighter than this in every channel are background
    black_level: int = 40              # darker than this in every channel: black ink or slide edge
    pen_hue_range: tuple[float, float] = (70.0, 250.0)  # degrees: green, cyan, blue inks (H&E is 250-20)
    pen_min_saturation: float = 0.25
    smooth_um: float = 8.0             # morphological closing/opening radius
    min_area_um2: float = 5000.0       # connected components smaller than this are specks
    max_hole_area_um2: float = 5000.0  # holes smaller than this are filled (larger: real gaps)

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        """Boolean tissue mask of the (H, W, 3) uint8 thumbnail at ``mpp`` µm per pixel."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"segmenter expects an (H, W, 3) RGB thumbnail, got shape {rgb.shape}")
        f = rgb.astype(np.float32) / 255.0
        cmax, cmin = f.max(axis=2), f.min(axis=2)
        sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
        hue = _hue_degrees(f, cmax, cmin)
        background = (rgb.min(axis=2) >= self.white_level) | (rgb.max(axis=2) <= self.black_level)
        pen = (hue >= self.pen_hue_range[0]) & (hue <= self.pen_hue_range[1]) & (sat >= self.pen_min_saturation)
        candidates = sat[~background]
        cut = (max(min(otsu_threshold(candidates), self.max_saturation_cut), self.min_saturation)
               if candidates.size else 1.0)
        mask = (sat >= cut) & ~background & ~pen
        radius = max(1, int(round(self.smooth_um / mpp)))
        disk = _disk(radius)
        mask = ndimage.binary_closing(np.pad(mask, radius), structure=disk)[radius:-radius, radius:-radius]
        mask = ndimage.binary_opening(mask, structure=_disk(max(1, radius // 2)))
        px_area = mpp * mpp
        mask = _fill_small_holes(mask, self.max_hole_area_um2 / px_area)
        return _remove_small(mask, self.min_area_um2 / px_area)


@dataclass
class TissueMask:
    """A tissue mask at ``downsample`` level-0 pixels per mask pixel, with its traced polygons."""

    mask: np.ndarray
    downsample: float
    polygons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def geojson(self) -> dict[str, Any]:
        """The tissue as a GeoJSON FeatureCollection in level-0 pixels (QuPath-importable)."""
        return polygons_to_geojson(self.polygons, "Tissue")


def segment_tissue(slide: Slide, segmenter: Segmenter | None = None, mpp: float = 4.0,
                   max_size: int = 4096) -> tuple[TissueMask, np.ndarray]:
    """Segment tissue on a thumbnail at ``mpp`` µm/px; returns the mask and the thumbnail array."""
    segmenter = segmenter or ClassicalSegmenter()
    thumb, downsample = slide.thumbnail(mpp=mpp, max_size=max_size)
    rgb = np.asarray(thumb)
    mask = np.asarray(segmenter(rgb, slide.mpp * downsample), dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"{slide.path}: segmenter returned a mask of shape {mask.shape} for a "
                         f"thumbnail of shape {rgb.shape[:2]}")
    scale = np.asarray(slide.dimensions, np.float64) / mask.shape[::-1]   # per axis: outlines end at the slide edge
    return TissueMask(mask, downsample, mask_to_polygons(mask, scale)), rgb


def mask_to_polygons(mask: np.ndarray, downsample: float | np.ndarray = 1.0) -> list[dict[str, Any]]:
    """Trace a boolean mask into polygons (exterior + holes) in level-0 pixel coordinates.

    Uses contourpy (matplotlib's contouring engine) on the mask padded by one pixel, so every
    outline is closed; a mask pixel (i, j) covers level-0 [j, j+1) x [i, i+1) times ``downsample``
    (a number, or (x, y) factors).
    """
    import contourpy

    z = np.pad(np.asarray(mask, dtype=np.float64), 1)
    gen = contourpy.contour_generator(z=z, fill_type=contourpy.FillType.OuterOffset)
    points, offsets = gen.filled(0.5, 1.5)
    polygons = []
    for pts, offs in zip(points, offsets):
        rings = []
        for a, b in zip(offs[:-1], offs[1:]):
            ring = (pts[a:b] - 1 + 0.5) * downsample   # undo the pad, move to pixel centres
            rings.append(np.round(ring, 2).tolist())
        polygons.append({"type": "Polygon", "coordinates": rings})
    return polygons


def polygons_to_geojson(polygons: list[dict[str, Any]], classification: str) -> dict[str, Any]:
    """Wrap polygons as a GeoJSON FeatureCollection of QuPath annotations (classification with colour)."""
    features = [annotation(geom, classification=classification) for geom in polygons]
    return {"type": "FeatureCollection", "features": features}


def _hue_degrees(f: np.ndarray, cmax: np.ndarray, cmin: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of a float RGB image."""
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    delta = np.maximum(cmax - cmin, 1e-6)
    hue = np.where(cmax == r, ((g - b) / delta) % 6,
                   np.where(cmax == g, (b - r) / delta + 2, (r - g) / delta + 4))
    return np.where(cmax - cmin > 0, hue * 60.0, 0.0)


def _disk(radius: int) -> np.ndarray:
    """A disk-shaped structuring element."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx * xx + yy * yy <= radius * radius


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill holes (background enclosed by tissue) smaller than ``max_area_px``."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes < max_area_px
    small[0] = False
    return mask | small[labels]


def _remove_small(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop connected components smaller than ``min_area_px``."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area_px
    keep[0] = False
    return keep[labels]
