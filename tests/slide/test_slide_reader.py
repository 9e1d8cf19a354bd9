"""Readers: levels, mpp and level choice on the real SVS and a pyramidal TIFF; plain images; bad files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openmusk.slide import MppMissingError, SlideError, list_slides, open_slide


def test_svs_levels_and_mpp(svs_path: Path) -> None:
    with open_slide(svs_path) as s:
        assert s.level_count == 1
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20
        assert s.best_level_for_mpp(2.0) == 0          # only one level to read from


def test_pyramid_levels_and_mpp(pyramid_path: Path) -> None:
    with open_slide(pyramid_path) as s:
        assert s.level_count == 3
        assert s.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
        assert s.level_downsamples == pytest.approx((1.0, 2.0, 4.0), rel=1e-3)
        assert s.mpp == pytest.approx(0.499, rel=1e-6)        # from the TIFF resolution tags
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.objective_power == pytest.approx(10 / 0.499)  # no objective stated: from mpp


@pytest.mark.parametrize("mpp, level", [(0.25, 0), (0.5, 0), (0.9, 0), (1.0, 1), (1.5, 1), (2.0, 2), (8.0, 2)])
def test_best_level_for_mpp(pyramid_path: Path, mpp: float, level: int) -> None:
    # the coarsest level not coarser than wanted (1% tolerance for 1.9997-style downsamples)
    with open_slide(pyramid_path) as s:
        assert s.best_level_for_mpp(mpp) == level


def test_read_region_at_mpp_uses_the_right_level(pyramid_path: Path, svs_rgb: np.ndarray,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with open_slide(pyramid_path) as s:
        levels = []
        read_level = s.read_level
        monkeypatch.setattr(s, "read_level", lambda loc, lvl, size: levels.append(lvl) or read_level(loc, lvl, size))
        tile = np.asarray(s.read_region((800, 1000), (200, 200), mpp=0.998), dtype=np.float64)
        assert levels == [1]
        # same field of view as 400 x 400 level-0 pixels averaged 2 x 2
        ref = svs_rgb[1000:1400, 800:1200].reshape(200, 2, 200, 2, 3).mean((1, 3))
        assert np.abs(tile - ref).mean() < 6.0
        other = svs_rgb[0:400, 0:400].reshape(200, 2, 200, 2, 3).mean((1, 3))  # a different place
        assert np.abs(tile - other).mean() > 20.0


def test_read_region_resizes_between_levels(svs_path: Path, svs_rgb: np.ndarray) -> None:
    with open_slide(svs_path) as s:
        tile = s.read_region((600, 1200), (384, 384), mpp=0.5)
        assert tile.size == (384, 384)
        ref = Image.fromarray(svs_rgb[1200:1200 + 385, 600:600 + 385]).resize((384, 384), Image.BILINEAR)
        assert np.abs(np.asarray(tile, float) - np.asarray(ref, float)).mean() < 3.0


def test_outside_the_slide_is_white(svs_path: Path) -> None:
    with open_slide(svs_path) as s:
        corner = np.asarray(s.read_region((2100, 2900), (200, 200)))
    assert (corner[100:, :] == 255).all() and (corner[:, 150:] == 255).all()


def test_thumbnail_size_and_downsample(pyramid_path: Path) -> None:
    with open_slide(pyramid_path) as s:
        thumb, ds = s.thumbnail(mpp=4.0)
        assert ds == pytest.approx(4.0 / 0.499, rel=0.01)
        assert thumb.size == (round(2220 / ds), round(2967 / ds))
        small, ds2 = s.thumbnail(max_size=300)
        assert max(small.size) == 300 and ds2 == pytest.approx(2967 / 300, rel=0.01)


def test_plain_image_needs_mpp(real_dir: Path) -> None:
    path = real_dir / "hgsc_nest.jpg"
    s = open_slide(path)
    assert s.level_count == 1 and s.dimensions == (1500, 1500)
    with pytest.raises(MppMissingError, match="hgsc_nest.jpg.*--mpp"):
        _ = s.mpp
    s = open_slide(path, mpp=0.25)
    assert s.mpp == 0.25
    tile = np.asarray(s.read_region((100, 100), (50, 50), mpp=0.5))   # 100 px at 0.25 -> 50 px
    ref = np.asarray(Image.open(path).convert("RGB"))[100:200, 100:200]
    ref = ref.reshape(50, 2, 50, 2, 3).mean((1, 3))
    assert np.abs(tile.astype(float) - ref).mean() < 8.0


def test_bad_files_are_named(tmp_path: Path, svs_path: Path) -> None:
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"not a slide" * 100)
    with pytest.raises(SlideError, match="garbage.svs"):
        open_slide(garbage)
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(svs_path.read_bytes()[:600_000])
    with pytest.raises(SlideError, match="truncated.svs"):
        open_slide(truncated)
    with pytest.raises(SlideError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(ValueError, match="positive"):
        open_slide(svs_path, mpp=-1)


def test_list_slides(tmp_path: Path) -> None:
    for name in ("b.svs", "a.tiff", "c.png", "notes.txt", ".hidden.svs"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_slides(tmp_path)] == ["a.tiff", "b.svs", "c.png"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_slides(tmp_path / "nowhere")


def test_thumbnail_in_strips_matches_whole_read(svs_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openmusk.slide.reader as reader

    with open_slide(svs_path) as s:
        whole, ds = s.thumbnail(mpp=4.0)
        monkeypatch.setattr(reader, "_THUMB_READ_PIXELS", 300_000)     # force ~20 strips
        strips, ds2 = s.thumbnail(mpp=4.0)
    assert ds == ds2 and whole.size == strips.size
    diff = np.abs(np.asarray(whole, float) - np.asarray(strips, float))
    assert diff.mean() < 4.0


def test_plain_image_outside_is_white(real_dir: Path) -> None:
    s = open_slide(real_dir / "hgsc_nest.jpg", mpp=0.25)
    region = np.asarray(s.read_region((1400, -50), (200, 200)))
    assert (region[:50] == 255).all() and (region[:, 100:] == 255).all()
    ref = np.asarray(Image.open(real_dir / "hgsc_nest.jpg").convert("RGB"))[0:150, 1400:1500]
    np.testing.assert_array_equal(region[50:, :100], ref)


def test_default_mpp_fills_in_but_never_overrides(svs_path: Path, real_dir: Path) -> None:
    assert open_slide(svs_path, default_mpp=0.25).mpp == pytest.approx(0.499)   # the file's value wins
    assert open_slide(svs_path, mpp=0.25).mpp == 0.25                           # an override does not
    assert open_slide(real_dir / "hgsc_nest.jpg", default_mpp=0.25).mpp == 0.25
