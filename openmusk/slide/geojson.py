"""The one GeoJSON writer for slide annotations (tissue outlines, scored tiles) that QuPath imports.

QuPath 0.4 to 0.7 (``GsonTools.PathClassTypeAdapter``) reads a classification only as a plain
string or as ``{"name": ..., "color": [r, g, b]}``; a bare ``{"name": ...}`` fails the whole file.
We write the second form, which QuPath itself writes; QuPath 0.3 reads the same object through
Gson's field mapping (``name``; the unknown ``color`` is skipped). Measurements are QuPath's
``{name: number}`` map. Coordinates are level-0 pixels, clipped to the slide; a NaN score is
written as ``null`` (strict JSON) and the tile's ``metadata.missing_scores`` names it.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["CLASS_COLORS", "class_color", "qupath_classification", "tile_polygon", "clip_geometry",
           "annotation", "write_geojson"]

# Colours of the classes we name ourselves; any other name gets a stable colour from its hash.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {"Tissue": (20, 160, 60)}
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))

Bounds = tuple[float, float]   # (width, height) of level 0


def class_color(name: str) -> tuple[int, int, int]:
    """The RGB colour of a class: ours from :data:`CLASS_COLORS`, others stable by name."""
    return CLASS_COLORS.get(name, _PALETTE[zlib.crc32(name.encode("utf-8")) % len(_PALETTE)])


def qupath_classification(name: str, color: Sequence[int] | None = None) -> dict[str, Any]:
    """A classification QuPath 0.3 to 0.7 reads: ``{"name": name, "color": [r, g, b]}``."""
    rgb = [int(c) for c in (color if color is not None else class_color(name))]
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"class {name!r}: colour must be three integers in 0..255, got {color}")
    return {"name": str(name), "color": rgb}


def tile_polygon(x: float, y: float, size: float) -> dict[str, Any]:
    """A square tile (level-0 top-left ``x, y``, side ``size``) as a closed GeoJSON polygon."""
    x, y, p = float(x), float(y), float(size)
    return {"type": "Polygon", "coordinates": [[[x, y], [x + p, y], [x + p, y + p], [x, y + p], [x, y]]]}


def clip_geometry(geometry: Mapping[str, Any], bounds: Bounds) -> dict[str, Any] | None:
    """``geometry`` (Polygon or MultiPolygon) with every vertex clamped into ``[0, W] x [0, H]``.

    Meant for outlines that overshoot the slide by a fraction of a pixel (traced masks, edge
    tiles): clamping keeps them valid. Rings left with no area are dropped; ``None`` if nothing is left.
    """
    width, height = float(bounds[0]), float(bounds[1])

    def ring(points: Iterable[Sequence[float]]) -> list[list[float]] | None:
        a = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
        a = np.column_stack([np.clip(a[:, 0], 0.0, width), np.clip(a[:, 1], 0.0, height)])
        keep = np.ones(len(a), bool)
        keep[1:] = np.any(a[1:] != a[:-1], axis=1)          # drop repeated vertices clamping made
        a = a[keep]
        if len(a) < 4:
            return None
        x, y = a[:, 0], a[:, 1]
        if abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) < 1e-9:   # no area left
            return None
        return [[_num(v) for v in p] for p in a]

    def polygon(rings: Sequence[Any]) -> list | None:
        clipped = [ring(r) for r in rings]
        if not clipped or clipped[0] is None:
            return None
        return [clipped[0]] + [r for r in clipped[1:] if r is not None]

    kind = geometry.get("type")
    if kind == "Polygon":
        rings = polygon(geometry["coordinates"])
        return None if rings is None else {"type": "Polygon", "coordinates": rings}
    if kind == "MultiPolygon":
        polys = [p for p in (polygon(q) for q in geometry["coordinates"]) if p is not None]
        return {"type": "MultiPolygon", "coordinates": polys} if polys else None
    raise ValueError(f"only Polygon and MultiPolygon geometries are written, got {kind!r}")


def annotation(geometry: Mapping[str, Any], object_type: str = "annotation", classification: str | None = None,
               measurements: Mapping[str, float] | None = None, name: str | None = None) -> dict[str, Any]:
    """One QuPath object as a GeoJSON Feature; NaN measurements become ``null`` and are listed in
    ``metadata.missing_scores``."""
    if object_type not in ("annotation", "detection", "tile"):
        raise ValueError(f"objectType must be annotation, detection or tile, got {object_type!r}")
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = str(name)
    if classification is not None:
        props["classification"] = qupath_classification(classification)
    if measurements is not None:
        values = {str(k): float(v) for k, v in measurements.items()}
        props["measurements"] = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
        missing = [k for k, v in values.items() if not math.isfinite(v)]
        if missing:
            props["metadata"] = {"missing_scores": ", ".join(missing)}
    return {"type": "Feature", "geometry": dict(geometry), "properties": props}


def write_geojson(path: str | os.PathLike, features: Iterable[Mapping[str, Any]],
                  bounds: Bounds | None = None) -> Path:
    """Write Features as a FeatureCollection (strict JSON, atomically), clipped to ``bounds``
    (level-0 width, height) when given; features left without area are dropped."""
    from openmusk.core.io import atomic_path

    out = []
    for f in features:
        geometry = f["geometry"] if bounds is None else clip_geometry(f["geometry"], bounds)
        if geometry is not None:
            out.append({**f, "geometry": geometry})
    path = Path(path)
    text = json.dumps({"type": "FeatureCollection", "features": out}, allow_nan=False, separators=(",", ":"))
    with atomic_path(path, suffix=".geojson.tmp") as tmp:
        tmp.write_text(text + "\n")
    return path


def _num(v: float) -> float | int:
    """A coordinate as an int when whole (smaller files), else rounded to 1/100 px."""
    r = round(float(v), 2)
    return int(r) if r == int(r) else r
