"""Every GeoJSON we write passes QuPath 0.4-0.7's rule (classification as a string or name + RGB
colour), is strict JSON, and holds valid shapely polygons inside the slide."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import shape

from openmusk.slide import ExtractConfig, open_slide
from openmusk.slide.encode import tiles_for_slide
from openmusk.slide.heatmap import export_tile_scores


def _strict_json(path: Path) -> dict:
    """Parse as strict JSON: a bare NaN/Infinity token fails, as in QuPath's and browsers' parsers."""
    def refuse(token: str) -> None:
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _qupath_classification_ok(c) -> bool:
    """GsonTools.PathClassTypeAdapter.read: a string, or an object with name/names AND color."""
    if c is None or isinstance(c, str):
        return True
    return (isinstance(c, dict) and ("name" in c or "names" in c) and "color" in c
            and len(c["color"]) in (3, 4) and all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"]))


def check_geojson(path: Path, width: int, height: int) -> list[dict]:
    """QuPath's rule, strict JSON, shapely validity and slide bounds for every feature."""
    data = _strict_json(path)
    assert data["type"] == "FeatureCollection" and data["features"]
    for f in data["features"]:
        props = f["properties"]
        assert props["objectType"] in ("annotation", "detection")
        assert _qupath_classification_ok(props.get("classification")), props.get("classification")
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area > 0
        x0, y0, x1, y1 = geom.bounds
        assert 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height, (geom.bounds, width, height)
    return data["features"]


def test_tissue_geojson_on_the_real_svs(svs_path: Path, tmp_path: Path) -> None:
    with open_slide(svs_path) as slide:
        tiles_for_slide(slide, tmp_path, ExtractConfig())
        w, h = slide.dimensions
    features = check_geojson(tmp_path / "tissue" / f"{svs_path.stem}.geojson", w, h)
    assert {f["properties"]["classification"]["name"] for f in features} == {"Tissue"}
    # the outline used to end at y 2976.1 on this 2967 px slide; now the tissue reaches the edge exactly
    top = max(shape(f["geometry"]).bounds[3] for f in features)
    assert top == pytest.approx(h, abs=0.01)


def test_tile_scores_geojson_clipped_with_null_scores(svs_path: Path, tmp_path: Path) -> None:
    coords = np.array([[0, 0], [385, 0], [2000, 2800]])          # the last tile runs past the slide
    scores = np.array([[0.9, 0.1], [math.nan, math.nan], [0.3, 0.7]])
    path = export_tile_scores(coords, scores, 385, tmp_path / "scores.geojson", names=["tumour", "stroma"],
                              classification=["tumour", "none", "stroma"], bounds=(2220, 2967))
    features = check_geojson(path, 2220, 2967)
    assert [f["properties"]["classification"]["name"] for f in features] == ["tumour", "none", "stroma"]
    nan_tile = features[1]["properties"]
    assert nan_tile["measurements"] == {"tumour": None, "stroma": None}
    assert nan_tile["metadata"]["missing_scores"] == "tumour, stroma"
    assert "metadata" not in features[0]["properties"]
    assert features[0]["properties"]["measurements"] == {"tumour": 0.9, "stroma": 0.1}
    assert shape(features[2]["geometry"]).bounds == (2000, 2800, 2220, 2967)
    assert features[0]["properties"]["classification"]["color"] != features[2]["properties"]["classification"]["color"]
