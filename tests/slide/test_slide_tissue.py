"""Tissue segmentation: Otsu against brute force, the mask against hand-made expectations, polygons."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from openmusk.slide import ClassicalSegmenter, Segmenter, mask_to_polygons, open_slide, otsu_threshold, segment_tissue


@pytest.fixture(scope="module")
def svs_tissue(svs_path: Path):
    with open_slide(svs_path) as s:
        return segment_tissue(s)


def _rasterize(polygons: list[dict], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Mask-pixel centres inside the polygons (even-odd over each polygon's rings)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([(xx.ravel() + 0.5) * downsample, (yy.ravel() + 0.5) * downsample], 1)
    out = np.zeros(h * w, bool)
    for poly in polygons:
        inside = np.zeros(h * w, bool)
        for ring in poly["coordinates"]:
            inside ^= MplPath(np.asarray(ring)).contains_points(pts)
        out |= inside
    return out.reshape(h, w)


def test_otsu_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.5, 0.08, 1000)]).clip(0, 1)
    hist, edges = np.histogram(values, bins=256)
    best, best_t = -1.0, None
    for k in range(1, 256):   # threshold at each inner bin edge, between-class variance by definition
        lo, hi = values[values < edges[k]], values[values >= edges[k]]
        if len(lo) == 0 or len(hi) == 0:
            continue
        var = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if var > best:
            best, best_t = var, edges[k]
    assert otsu_threshold(values) == pytest.approx(best_t, abs=(edges[1] - edges[0]) * 1.01)
    assert 0.15 < otsu_threshold(values) < 0.4


def test_mask_covers_tissue_not_background(svs_tissue) -> None:
    tissue, rgb = svs_tissue
    mask = tissue.mask
    # hand-made expectation, pixel-wise on the thumbnail: near-white glass vs clearly stained pixels
    white = rgb.min(axis=2) > 225
    f = rgb.astype(float) / 255
    sat = (f.max(2) - f.min(2)) / np.maximum(f.max(2), 1e-6)
    stained = (sat > 0.25) & (rgb.max(axis=2) > 60) & (f[..., 0] >= f[..., 1])   # pink/purple H&E
    assert white.mean() > 0.4 and stained.mean() > 0.15          # the slide is half glass
    assert (mask & white).sum() / white.sum() < 0.05              # background stays out
    assert (mask & stained).sum() / stained.sum() > 0.85          # tissue is in
    # regions inspected by eye on the thumbnail: the top-left corner is glass, the centre-bottom
    # (dermis under the epidermis) is tissue
    h, w = mask.shape
    assert mask[: h // 8, : w // 6].mean() < 0.02
    assert mask[int(h * 0.7):int(h * 0.8), int(w * 0.4):int(w * 0.55)].mean() > 0.95
    assert 0.2 < tissue.fraction < 0.5


def test_pen_marks_and_black_ink_are_rejected(svs_tissue, svs_path: Path) -> None:
    _, rgb = svs_tissue
    mpp = 0.499 * 16
    img = rgb.copy()
    img[10:40, 10:40] = (40, 160, 60)      # green marker on glass
    img[50:80, 10:40] = (40, 70, 200)      # blue marker
    img[90:120, 10:40] = (15, 15, 20)      # black ink
    img[130:160, 10:40] = (200, 90, 160)   # control: an H&E-pink blob of the same size
    mask = ClassicalSegmenter()(img, mpp)
    for rows in (slice(10, 40), slice(50, 80), slice(90, 120)):
        assert mask[rows, 10:40].mean() < 0.05
    assert mask[135:155, 15:35].mean() > 0.95


def test_min_area_and_holes() -> None:
    seg = ClassicalSegmenter(min_area_um2=400.0, max_hole_area_um2=100.0, smooth_um=1.0)
    img = np.full((80, 80, 3), 245, np.uint8)
    img[10:60, 10:60] = (190, 80, 150)         # a tissue square
    img[20:24, 20:24] = 245                    # a 16 px^2 hole: filled
    img[35:50, 35:50] = 245                    # a 225 px^2 hole: kept (a real gap)
    img[70:73, 70:73] = (190, 80, 150)         # a 9 px^2 speck: removed
    mask = seg(img, 1.0)
    assert mask[20:24, 20:24].all()
    assert not mask[37:48, 37:48].any()
    assert not mask[70:73, 70:73].any()
    assert mask[12:18, 12:58].all()


def test_polygons_reproduce_the_mask(svs_tissue) -> None:
    tissue, _ = svs_tissue
    assert len(tissue.polygons) >= 1
    raster = _rasterize(tissue.polygons, tissue.mask.shape, tissue.downsample)
    iou = (raster & tissue.mask).sum() / (raster | tissue.mask).sum()
    assert iou > 0.97
    gj = tissue.geojson()
    assert gj["type"] == "FeatureCollection" and gj["features"][0]["geometry"]["type"] == "Polygon"
    xs = np.concatenate([np.asarray(r)[:, 0] for p in tissue.polygons for r in p["coordinates"]])
    assert xs.min() >= 0 and xs.max() <= 2220 + tissue.downsample   # level-0 frame


def test_polygon_with_hole() -> None:
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[12:18, 12:18] = False
    polys = mask_to_polygons(mask, downsample=4.0)
    assert len(polys) == 1 and len(polys[0]["coordinates"]) == 2    # exterior + one hole
    assert (_rasterize(polys, mask.shape, 4.0) == mask).all()


def test_pyramid_mask_matches_svs_mask(svs_tissue, pyramid_path: Path) -> None:
    with open_slide(pyramid_path) as s:
        tissue, _ = segment_tissue(s)   # thumbnail read from level 2 instead of level 0
    a, b = svs_tissue[0].mask, tissue.mask
    assert a.shape == b.shape
    assert (a & b).sum() / (a | b).sum() > 0.9


def test_custom_segmenter_plugs_in(svs_path: Path) -> None:
    class LeftHalf:
        def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
            m = np.zeros(rgb.shape[:2], bool)
            m[:, : rgb.shape[1] // 2] = True
            return m

    assert isinstance(LeftHalf(), Segmenter)
    with open_slide(svs_path) as s:
        tissue, _ = segment_tissue(s, LeftHalf())
    assert tissue.fraction == pytest.approx(0.5, abs=0.01)

    class WrongShape:
        def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
            return np.ones((3, 3), bool)

    with open_slide(svs_path) as s, pytest.raises(ValueError, match="cmu_small_region.*shape"):
        segment_tissue(s, WrongShape())
