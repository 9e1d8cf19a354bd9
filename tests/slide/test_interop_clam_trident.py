"""Our coords and features files carry what CLAM and TRIDENT read, with their meanings, so the tile
their code re-cuts is the tile we encoded; their files are encoded as they are and never replaced.
The formulas below are theirs, written out from their source (CLAM ``dataset_h5.Whole_Slide_Bag_FP``
and ``wsi_utils.StitchCoords``; TRIDENT ``IO.coords_to_h5``, ``WSIPatcher`` and ``read_coords_legacy``)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch

from openmusk.data.features_h5 import FeaturesFileError, patch_size_level0, read_features
from openmusk.slide import ExtractConfig, TilingConfig, extract_features, load_slide_encoder, open_slide
from openmusk.slide.encode import feature_name, tiles_for_slide
from openmusk.slide.heatmap import heatmap_from_features
from openmusk.slide.tiling import clam_attrs, tile_slide

MPP_40X = 0.2527   # an Aperio 40x scan: TRIDENT's nominal 40x would give 768 px, the right tile is 760


@pytest.fixture(scope="module")
def tiff_40x(tmp_path_factory: pytest.TempPathFactory, svs_rgb: np.ndarray) -> Path:
    """A 2-level pyramidal TIFF (downsamples 1, 4) at 0.2527 µm/px, like an Aperio 40x scan."""
    import tifffile

    path = tmp_path_factory.mktemp("x40") / "scan40x.tif"
    with tifffile.TiffWriter(path) as tw:
        level = svs_rgb
        for i in range(2):
            res = 1e4 / (MPP_40X * 4 ** i)
            tw.write(level, tile=(256, 256), compression="zlib", photometric="rgb", resolution=(res, res),
                     resolutionunit="CENTIMETER", subfiletype=0 if i == 0 else 1)
            h, w = level.shape[0] // 4 * 4, level.shape[1] // 4 * 4
            level = level[:h, :w].reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3)).round().astype(np.uint8)
    return path


@pytest.fixture(scope="module")
def tiny32():
    torch.manual_seed(0)
    return load_slide_encoder(_config())


def _config(**kw) -> ExtractConfig:
    kw = {"arch": "musk_tiny_patch16_32", "weights": None, "batch_size": 8, "num_workers": 0, "device": "cpu",
          "tiling": TilingConfig(min_tissue=0.9), **kw}
    return ExtractConfig(**kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("which", ["svs", "40x"])
def test_trident_formulas_give_our_tile(which: str, svs_path: Path, tiff_40x: Path) -> None:
    path = svs_path if which == "svs" else tiff_40x
    with open_slide(path) as slide:
        tiles = tile_slide(slide, None, TilingConfig())
        expected = round(384 * 0.5 / slide.mpp)
        downsamples = slide.level_downsamples
    a = tiles.attrs
    assert a["patch_size_level0"] == expected == {"svs": 385, "40x": 760}[which]
    ps, l0, tgt = a["patch_size"], a["level0_magnification"], a["target_magnification"]
    assert (ps, tgt) == (384, 20.0)
    assert ps * l0 // tgt == expected                                    # coords_to_h5's attribute
    assert round(ps * ((10 / tgt) / (10 / l0))) == expected             # WSIPatcher.patch_size_src
    assert a["objective_power"] == pytest.approx(20.0 if which == "svs" else 10 / MPP_40X)
    c = clam_attrs(a)                                                    # the CLAM layout's coords
    assert c["patch_size"] * downsamples[c["patch_level"]] == expected   # Whole_Slide_Bag_FP / StitchCoords
    assert c["patch_size"] * downsamples[c["patch_level"]] * c["custom_downsample"] == expected   # TRIDENT legacy
    assert not {"level0_magnification", "target_magnification"} & set(c)   # so TRIDENT takes the legacy path
    assert c["name"] == c["wsi_name"] == path.stem and c["target_patch_size"] == 384


def test_clam_layout_recuts_the_encoded_tile(tiff_40x: Path, tmp_path: Path, tiny32) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(tiff_40x, slides / "s40.tif")
    out = tmp_path / "clam"
    config = _config(layout="clam", tiling=TilingConfig(min_tissue=0.25))
    rows = extract_features(slides, out, config, encoder=tiny32, progress=False)
    assert [r.status for r in rows] == ["done"]
    before = (out / "patches" / "s40.h5").stat()
    with open_slide(slides / "s40.tif") as s:        # our CLAM-layout coords are recognised and reused
        assert tiles_for_slide(s, out, config).patch_size_level0 == 760
    after = (out / "patches" / "s40.h5").stat()      # an atomic rewrite would bring a new inode
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with h5py.File(out / "patches" / "s40.h5", "r") as f:                  # CLAM's patches/NAME.h5
        patch_level, patch_size = f["coords"].attrs["patch_level"], f["coords"].attrs["patch_size"]
        attrs, coords = dict(f["coords"].attrs), f["coords"][:]
        assert f["coords"].attrs["name"] == "s40"
    with h5py.File(out / "h5_files" / "s40.h5", "r") as f:
        feats = f["features"][:]
        np.testing.assert_array_equal(f["coords"][:], coords)
    assert "level0_magnification" not in attrs      # so TRIDENT takes its read_coords_legacy path
    assert attrs.get("custom_downsample", 1) == 1 and attrs["target_patch_size"] == 384
    pt = torch.load(out / "pt_files" / "s40.pt", weights_only=True)     # what CLAM's main.py loads
    np.testing.assert_array_equal(pt.numpy(), feats)
    with openslide.OpenSlide(str(tiff_40x)) as wsi:
        assert patch_size * wsi.level_downsamples[patch_level] == 760     # StitchCoords / legacy TRIDENT
        x, y = (int(v) for v in coords[0])
        clam_tile = wsi.read_region((x, y), int(patch_level), (int(patch_size),) * 2).convert("RGB")
    with open_slide(tiff_40x) as s:
        ours = s.read_region((x, y), (384, 384), 0.5)
    np.testing.assert_array_equal(np.asarray(clam_tile.resize((384, 384), 2)), np.asarray(ours))


def test_trident_layout_names_the_multiscale_feature(svs_path: Path, tmp_path: Path, tiny32) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "a.svs")
    out = tmp_path / "job"
    extract_features(slides, out, _config(layout="trident"), encoder=tiny32, progress=False)
    with h5py.File(out / "features_musk_multiscale" / "a.h5", "r") as f:   # never features_musk (1024-d)
        assert f["features"].shape[1] == 64 and f["features"].attrs["encoder_name"] == "musk_multiscale"
    with h5py.File(out / "patches" / "a_patches.h5", "r") as f:             # TRIDENT's read_coords
        a = dict(f["coords"].attrs)
    assert a["patch_size"] * a["level0_magnification"] // a["target_magnification"] == a["patch_size_level0"] == 385
    assert (out / "contours_geojson" / "a.geojson").exists()
    # the same folder with the single-scale (32-d) encoder: a clear error, not a silent mix
    single = load_slide_encoder(_config(multiscale=False))
    assert feature_name(single) == "musk" and feature_name(tiny32) == "musk_multiscale"
    shutil.copytree(out / "features_musk_multiscale", out / "features_musk")   # 64-d where 32-d belongs
    rows = extract_features(slides, out, _config(layout="trident"), encoder=single, progress=False)
    assert rows[0].status == "failed" and "holds 64-d features" in rows[0].error and "makes 32-d" in rows[0].error


def test_foreign_coords_are_encoded_as_they_are(tiff_40x: Path, tmp_path: Path, tiny32) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(tiff_40x, slides / "s40.tif")
    chosen = np.array([[0, 0], [512, 0], [1024, 512], [512, 1536], [1536, 2048]], np.int64)
    trident = tmp_path / "trident" / "patches"
    trident.mkdir(parents=True)
    with h5py.File(trident / "s40_patches.h5", "w") as f:                  # as TRIDENT's coords_to_h5 writes
        d = f.create_dataset("coords", data=chosen)
        d.attrs.update(patch_size=256, patch_size_level0=256 * 40 // 20, level0_magnification=40,
                       target_magnification=20, overlap=0, name="s40", level0_width=2220, level0_height=2967)
    before = _sha(trident / "s40_patches.h5")
    out = tmp_path / "out"
    rows = extract_features(slides, out, _config(coords_dir=str(trident.parent)), encoder=tiny32, progress=False)
    assert rows[0].status == "done" and rows[0].tiles == len(chosen)
    feats, coords, attrs = read_features(out / "s40.h5")
    np.testing.assert_array_equal(coords, chosen)
    assert attrs["patch_size_level0"] == 512 and _sha(trident / "s40_patches.h5") == before
    assert not (out / "coords" / "s40.h5").exists()
    # the 512 px level-0 square was encoded: the same tile read directly gives the same feature
    with open_slide(tiff_40x) as s:
        tile = s.read_region((1024, 512), (384, 384), s.mpp * 512 / 384)
    x = tiny32.batch_transform(tiny32.worker_transform(tile)[None])
    with torch.inference_mode():
        ref = tiny32.encode_image(x, kind="probe", normalize=False)
    np.testing.assert_allclose(feats[2], ref[0].numpy(), rtol=1e-5, atol=1e-5)
    # a CLAM coords file sitting where ours would go is not replaced by our own tiling
    (out / "coords").mkdir()
    with h5py.File(out / "coords" / "s40.h5", "w") as f:
        d = f.create_dataset("coords", data=chosen)
        d.attrs.update(patch_size=512, patch_level=0, name="s40")
    (out / "s40.h5").unlink()
    before = _sha(out / "coords" / "s40.h5")
    rows = extract_features(slides, out, _config(), encoder=tiny32, progress=False)
    assert rows[0].status == "failed" and "openmusk does not replace it" in rows[0].error
    assert _sha(out / "coords" / "s40.h5") == before


def test_heatmap_from_clam_made_features(tiff_40x: Path, tmp_path: Path) -> None:
    coords = np.array([[0, 0], [512, 0], [0, 512], [512, 512], [1024, 1024]], np.int64)
    bare = tmp_path / "bare.h5"                     # CLAM's extract_features_fp: no attributes at all
    with h5py.File(bare, "w") as f:
        f["features"], f["coords"] = np.zeros((5, 8), np.float32), coords
    level1 = tmp_path / "level1.h5"                 # CLAM patching at level 1 without 'downsample'
    with h5py.File(level1, "w") as f:
        f["features"], f["coords"] = np.zeros((5, 8), np.float32), coords
        f["coords"].attrs.update(patch_size=128, patch_level=1, name="s40")
    assert patch_size_level0({}, None, coords) == 512
    assert patch_size_level0({"patch_size": 128, "patch_level": 1}, (1.0, 4.0)) == 512
    assert patch_size_level0({"patch_size": 256}, None, coords) == 256   # no level: a level-0 side, not the grid
    with pytest.raises(FeaturesFileError, match="need the slide's level downsamples"):
        patch_size_level0({"patch_size": 128, "patch_level": 1})
    png = heatmap_from_features(tiff_40x, bare, np.linspace(0, 1, 5), tmp_path / "bare.png", max_size=128)
    assert png.stat().st_size > 0


def test_cli_layout_and_coords_dir(svs_path: Path, tmp_path: Path) -> None:
    from openmusk.cli import main

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "a.svs")
    chosen = np.array([[0, 0], [385, 770], [770, 1540]], np.int64)
    (tmp_path / "clam" / "patches").mkdir(parents=True)
    with h5py.File(tmp_path / "clam" / "patches" / "a.h5", "w") as f:     # CLAM's create_patches_fp output
        f.create_dataset("coords", data=chosen).attrs.update(patch_size=385, patch_level=0, name="a")
    out = tmp_path / "o"
    assert main(["slide", "extract", str(slides), "--out", str(out), "--layout", "clam", "--coords-dir",
                 str(tmp_path / "clam"), "--weights", "random:musk_tiny_patch16_32", "--num-workers", "0",
                 "--device", "cpu", "--quiet"]) == 0
    _, coords, attrs = read_features(out / "h5_files" / "a.h5")
    np.testing.assert_array_equal(coords, chosen)
    assert (attrs["patch_level"], attrs["patch_size"]) == (0, 385) and (out / "pt_files" / "a.pt").exists()
