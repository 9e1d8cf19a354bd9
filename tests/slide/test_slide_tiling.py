"""Tiling: level-0 coordinates inside the slide and inside tissue; coords files round-trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from openmusk.slide import TilingConfig, open_slide, read_coords, segment_tissue, tile_slide, write_coords
from openmusk.slide.tiling import config_matches, tissue_fraction_per_tile


@pytest.fixture(scope="module", params=["svs", "pyramid"])
def slide_and_tissue(request, svs_path: Path, pyramid_path: Path):
    path = svs_path if request.param == "svs" else pyramid_path
    s = open_slide(path)
    tissue, _ = segment_tissue(s)
    yield s, tissue
    s.close()


def _brute_fraction(mask: np.ndarray, ds: float, x: int, y: int, size0: int) -> float:
    """Tissue share of one tile by slicing the mask pixels its footprint touches."""
    x0, y0 = int(np.floor(x / ds)), int(np.floor(y / ds))
    x1, y1 = int(np.ceil((x + size0) / ds)), int(np.ceil((y + size0) / ds))
    return float(mask[y0:y1, x0:x1].mean())


def test_tiles_inside_slide_and_tissue(slide_and_tissue) -> None:
    s, tissue = slide_and_tissue
    tiles = tile_slide(s, tissue, TilingConfig())
    size0 = tiles.patch_size_level0
    assert size0 == round(384 * 0.5 / 0.499) == 385
    c = tiles.coords
    assert c.dtype == np.int64 and c.shape[1] == 2 and len(c) >= 10
    assert (c >= 0).all() and (c[:, 0] + size0 <= 2220).all() and (c[:, 1] + size0 <= 2967).all()
    fractions = [_brute_fraction(tissue.mask, tissue.downsample, x, y, size0) for x, y in c]
    assert min(fractions) >= 0.25
    # and every grid position left out is below the threshold
    grid = {(x, y) for x in range(0, 2220 - size0 + 1, size0) for y in range(0, 2967 - size0 + 1, size0)}
    dropped = grid - {tuple(map(int, xy)) for xy in c}
    assert len(dropped) + len(c) == len(grid)
    assert all(_brute_fraction(tissue.mask, tissue.downsample, x, y, size0) < 0.25 for x, y in dropped)
    a = tiles.attrs
    assert (a["patch_size"], a["level0_width"], a["level0_height"], a["overlap"]) == (384, 2220, 2967, 0)
    assert a["target_magnification"] == 20.0 and a["level0_magnification"] == pytest.approx(20.0, rel=0.01)


def test_integral_image_fraction_matches_brute_force(slide_and_tissue) -> None:
    _, tissue = slide_and_tissue
    rng = np.random.default_rng(1)
    coords = np.stack([rng.integers(0, 2000, 50), rng.integers(0, 2700, 50)], 1)
    fast = tissue_fraction_per_tile(tissue, coords, 200)
    slow = [_brute_fraction(tissue.mask, tissue.downsample, x, y, 200) for x, y in coords]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_overlap_and_threshold(svs_path: Path) -> None:
    with open_slide(svs_path) as s:
        tissue, _ = segment_tissue(s)
        plain = tile_slide(s, tissue, TilingConfig())
        dense = tile_slide(s, tissue, TilingConfig(overlap=0.5))
        strict = tile_slide(s, tissue, TilingConfig(min_tissue=0.9))
        everything = tile_slide(s, None, TilingConfig())
    assert dense.attrs["overlap"] == 192                      # in tile pixels at 0.5 µm/px, as TRIDENT
    stride = round(385 * 0.5)                                 # level-0 step
    assert set(np.unique(np.diff(np.unique(dense.coords[:, 0])))) == {stride}
    assert 3 * len(plain) < len(dense) < 5 * len(plain)
    assert len(strict) < len(plain) < len(everything) == (2220 // 385) * (2967 // 385)
    with pytest.raises(ValueError, match="overlap"):
        TilingConfig(overlap=1.0)


def test_coords_file_round_trip(tmp_path: Path, svs_path: Path) -> None:
    import h5py

    with open_slide(svs_path) as s:
        tissue, _ = segment_tissue(s)
        tiles = tile_slide(s, tissue, TilingConfig())
    path = write_coords(tmp_path / "x.h5", tiles)
    with h5py.File(path) as f:                         # how TRIDENT/CLAM users open it
        assert f["coords"].dtype == np.int64 and f["coords"].maxshape == (None, 2)
        np.testing.assert_array_equal(f["coords"][:], tiles.coords)
        assert f["coords"].attrs["patch_size_level0"] == 385
    back = read_coords(path)
    np.testing.assert_array_equal(back.coords, tiles.coords)
    assert back.attrs == tiles.attrs
    assert config_matches(back, TilingConfig()) and not config_matches(back, TilingConfig(overlap=0.5))
    (tmp_path / "bad.h5").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="bad.h5"):
        read_coords(tmp_path / "bad.h5")
