"""Heatmaps: overlapping tiles averaged (against a brute-force loop), exports, the top-tiles grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from PIL import Image

from openmusk.slide import draw_heatmap, export_tile_scores, open_slide, score_map, top_tiles_grid


def _brute_score_map(coords, scores, size0, shape, ds):
    """Per-pixel mean of the scores of every tile whose (rounded) footprint covers the pixel."""
    h, w = shape
    total, count = np.zeros(shape), np.zeros(shape)
    for (x, y), s in zip(coords, scores):
        x0, y0 = int(round(x / ds)), int(round(y / ds))
        x1, y1 = max(int(round((x + size0) / ds)), x0 + 1), max(int(round((y + size0) / ds)), y0 + 1)
        total[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] += s
        count[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def test_score_map_averages_overlaps_like_a_loop() -> None:
    rng = np.random.default_rng(0)
    coords = rng.integers(0, 1800, size=(300, 2))
    scores = rng.normal(size=300)
    fast = score_map(coords, scores, 385, (120, 100), 20.0)
    slow = _brute_score_map(coords, scores, 385, (120, 100), 20.0)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast[~np.isnan(fast)], slow[~np.isnan(slow)], atol=1e-9)
    # a hand-worked case: two half-overlapping tiles scoring 0 and 1
    m = score_map(np.array([[0, 0], [10, 0]]), np.array([0.0, 1.0]), 20, (20, 40), 1.0)
    assert (m[:, :10] == 0).all() and (m[:, 10:20] == 0.5).all() and (m[:, 20:30] == 1).all()
    assert np.isnan(m[:, 30:]).all()
    with pytest.raises(ValueError, match="3 coords but 2 scores"):
        score_map(np.zeros((3, 2)), np.zeros(2), 10, (5, 5), 1.0)


def test_heatmap_png_paints_scores_where_the_tiles_are(tmp_path: Path, svs_path: Path) -> None:
    coords = np.array([[0, 0], [1540, 2310]])            # top-left corner and bottom-right area
    out = draw_heatmap(svs_path, coords, np.array([0.0, 1.0]), 385, tmp_path / "h.png", alpha=1.0,
                       cmap="viridis")
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    lo, hi = (np.array(colormaps["viridis"](v)[:3]) * 255 for v in (0.0, 1.0))
    near = lambda c: (np.abs(img - c).sum(2) < 12)   # noqa: E731
    ys_lo, xs_lo = np.nonzero(near(lo))
    ys_hi, xs_hi = np.nonzero(near(hi))
    # the low tile sits top-left of the high tile; both patches are big (colour-bar pixels aside)
    assert len(ys_lo) > 500 and len(ys_hi) > 500
    assert np.median(ys_lo) < np.median(ys_hi) and np.median(xs_lo) < np.median(xs_hi)


def test_export_csv_and_geojson(tmp_path: Path) -> None:
    coords = np.array([[0, 0], [385, 770], [1155, 385]])
    scores = np.array([[0.1, 0.9], [0.6, 0.4], [0.25, 0.75]])
    csv_path = export_tile_scores(coords, scores, 385, tmp_path / "s.csv", names=["tumour", "stroma"],
                                  classification=["stroma", "tumour", "stroma"])
    table = pd.read_csv(csv_path)
    assert list(table.columns) == ["x", "y", "width", "height", "tumour", "stroma", "class"]
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), coords)
    np.testing.assert_allclose(table[["tumour", "stroma"]].to_numpy(), scores)
    gj = json.loads(export_tile_scores(coords, scores, 385, tmp_path / "s.geojson",
                                       names=["tumour", "stroma"]).read_text())
    assert len(gj["features"]) == 3
    f = gj["features"][1]
    ring = np.array(f["geometry"]["coordinates"][0])
    assert (ring.min(0) == [385, 770]).all() and (ring.max(0) == [770, 1155]).all()
    assert f["properties"]["objectType"] == "detection"
    assert f["properties"]["measurements"] == {"tumour": 0.6, "stroma": 0.4}
    with pytest.raises(ValueError, match="names"):
        export_tile_scores(coords, scores, 385, tmp_path / "x.csv", names=["one"])
    with pytest.raises(ValueError, match=".csv or .geojson"):
        export_tile_scores(coords, scores[:, 0], 385, tmp_path / "x.txt")


def test_top_tiles_grid_shows_the_best_tiles_in_order(tmp_path: Path, svs_path: Path) -> None:
    coords = np.array([[0, 0], [770, 1155], [1155, 1540], [385, 2310]])
    scores = np.array([0.1, 0.7, 0.9, 0.3])
    grid = top_tiles_grid(svs_path, coords, scores, 2, 385, out=tmp_path / "top.png", tile_px=96)
    assert (tmp_path / "top.png").exists()
    g = np.asarray(grid).astype(float)
    with open_slide(svs_path) as s:
        best = np.asarray(s.read_region((1155, 1540), (385, 385)).resize((96, 96), Image.BILINEAR)).astype(float)
        second = np.asarray(s.read_region((770, 1155), (385, 385)).resize((96, 96), Image.BILINEAR)).astype(float)
    first_cell, second_cell = g[18:18 + 96, 0:96], g[18:18 + 96, 96:192]
    assert np.abs(first_cell - best).mean() < 6 < np.abs(first_cell - second).mean()
    assert np.abs(second_cell - second).mean() < 6


def test_heatmap_from_a_features_file(tmp_path: Path, svs_path: Path) -> None:
    import h5py

    from openmusk.slide import heatmap_from_features

    feats = tmp_path / "slide.h5"
    with h5py.File(feats, "w") as f:
        f.create_dataset("features", data=np.zeros((2, 4), np.float32))
        f.create_dataset("coords", data=np.array([[0, 0], [1540, 2310]], np.int64)).attrs["patch_size_level0"] = 385
    a = heatmap_from_features(svs_path, feats, [0.0, 1.0], tmp_path / "a.png", alpha=1.0, cmap="viridis")
    b = draw_heatmap(svs_path, np.array([[0, 0], [1540, 2310]]), np.array([0.0, 1.0]), 385, tmp_path / "b.png",
                     alpha=1.0, cmap="viridis")
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    with pytest.raises(ValueError, match="2 tiles but 3 scores"):
        heatmap_from_features(svs_path, feats, [0.0, 1.0, 2.0], tmp_path / "c.png")
