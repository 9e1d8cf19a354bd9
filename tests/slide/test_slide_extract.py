"""Feature extraction: the TRIDENT/CLAM file layout, correctness, kill-and-resume, bad slides."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from openmusk.slide import ExtractConfig, TilingConfig, extract_features, load_extract_config, open_slide, read_coords
from openmusk.slide.extract import autocast_for, normalize_tiles

COORD_ATTRS = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
               "level0_width", "level0_height", "mpp"}


def _config(**kw) -> ExtractConfig:
    """Small and fast: tiles that are >= 90% tissue only, batches of 4, no worker processes."""
    kw = {"model": "musk_tiny_patch16_32", "weights": None, "batch_size": 4, "num_workers": 0,
          "tiling": TilingConfig(min_tissue=0.9), **kw}
    return ExtractConfig(**kw)


@pytest.fixture(scope="module")
def tiny32():
    """The 32 px tiny MUSK: tiles are read at 384 px and resized, the model costs almost nothing."""
    import openmusk

    torch.manual_seed(0)
    return openmusk.create_model("musk_tiny_patch16_32")


@pytest.fixture()
def slides_dir(tmp_path: Path, svs_path: Path, pyramid_path: Path) -> Path:
    d = tmp_path / "slides"
    d.mkdir()
    shutil.copy(svs_path, d / "a_svs.svs")
    shutil.copy(pyramid_path, d / "b_pyramid.tif")
    return d


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {r["slide"]: r for r in csv.DictReader(fh)}


def test_features_file_layout(slides_dir: Path, tmp_path: Path, tiny32) -> None:
    out = tmp_path / "features"
    rows = extract_features(slides_dir, out, _config(), model=tiny32, progress=False)
    assert [(r.slide, r.status) for r in rows] == [("a_svs", "done"), ("b_pyramid", "done")]
    for name in ("a_svs", "b_pyramid"):
        with h5py.File(out / f"{name}.h5", "r") as f:     # exactly how TRIDENT/CLAM code reads it
            feats, coords = f["features"][:], f["coords"][:]
            assert feats.dtype == np.float32 and feats.shape == (len(coords), 64)   # 2 x 32 multiscale
            assert coords.dtype == np.int64 and coords.shape[1] == 2
            assert f["features"].maxshape == (None, 64) and f["features"].chunks is not None
            assert f["coords"].maxshape == (None, 2) and f["coords"].chunks is not None
            fa, ca = dict(f["features"].attrs), dict(f["coords"].attrs)
        assert fa["name"] == name and fa["encoder"] == "musk_tiny_patch16_32"
        assert json.loads(fa["encoder_config"])["embed_dim"] == 32 and fa["encoder_version"].startswith("openmusk")
        assert COORD_ATTRS <= set(ca)
        assert (ca["patch_size"], ca["patch_size_level0"], ca["overlap"]) == (384, 385, 0)
        assert (ca["level0_width"], ca["level0_height"], ca["mpp"]) == (2220, 2967, 0.5)
        assert ca["target_magnification"] == 20.0
        np.testing.assert_array_equal(coords, read_coords(out / "coords" / f"{name}.h5").coords)
        assert len(np.unique(coords, axis=0)) == len(coords) >= 3
        assert (out / "tissue" / f"{name}.geojson").exists()
    summary = _summary(out)
    assert {k: v["status"] for k, v in summary.items()} == {"a_svs": "done", "b_pyramid": "done"}
    assert int(summary["a_svs"]["tiles"]) == rows[0].tiles


def test_features_equal_direct_encoding(slides_dir: Path, tmp_path: Path, tiny_model) -> None:
    out = tmp_path / "features"
    config = _config(model="musk_tiny_patch16_384", tiling=TilingConfig(min_tissue=0.98))
    extract_features(slides_dir, out, config, model=tiny_model, progress=False)
    with h5py.File(out / "a_svs.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
    with open_slide(slides_dir / "a_svs.svs") as s:
        tiles = [np.asarray(s.read_region(tuple(map(int, xy)), (384, 384), mpp=0.5)) for xy in coords[:3]]
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = tiny_model.encode_image((x - 0.5) / 0.5, head=False, normalize=False, multiscale=True)
    np.testing.assert_allclose(feats[:3], ref.numpy(), rtol=1e-4, atol=1e-4)
    # the pyramid's level 0 holds the SVS's decoded pixels: identical tiles, identical features
    with h5py.File(out / "b_pyramid.h5") as f:
        np.testing.assert_array_equal(f["coords"][:], coords)
        np.testing.assert_allclose(f["features"][:], feats, rtol=1e-4, atol=1e-4)


def test_normalisation_matches_musk_transform(svs_path: Path) -> None:
    """Tiles already at the model size: our uint8 -> [-1, 1] step equals the MUSK image transform."""
    import openmusk

    with open_slide(svs_path) as s:
        tile = s.read_region((700, 1200), (384, 384), mpp=0.5)
    ours = normalize_tiles(torch.from_numpy(np.asarray(tile).copy()).permute(2, 0, 1)[None])[0]
    np.testing.assert_allclose(ours.numpy(), openmusk.get_transform(img_size=384)(tile).numpy(), atol=1e-5)


def test_kill_halfway_then_resume(slides_dir: Path, tmp_path: Path, tiny32,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "features"
    config = _config()
    real = tiny32.encode_image
    calls = {"n": 0}
    n_a = len(read_coords_for(slides_dir / "a_svs.svs", config))
    batches_a = -(-n_a // config.batch_size)

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == batches_a + 2:       # second batch of the second slide
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny32, "encode_image", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_features(slides_dir, out, config, model=tiny32, progress=False)
    monkeypatch.undo()
    assert (out / "a_svs.h5").exists() and not (out / "b_pyramid.h5").exists()
    assert not [p.name for p in out.rglob("*") if p.name.endswith("tmp")]        # no partial file
    mtime = (out / "a_svs.h5").stat().st_mtime_ns

    rows = extract_features(slides_dir, out, config, model=tiny32, progress=False)
    assert [(r.slide, r.status) for r in rows] == [("a_svs", "skipped"), ("b_pyramid", "done")]
    assert (out / "a_svs.h5").stat().st_mtime_ns == mtime
    with h5py.File(out / "b_pyramid.h5") as f:
        coords = f["coords"][:]
        assert len(f["features"]) == len(coords) == len(np.unique(coords, axis=0))
    np.testing.assert_array_equal(coords, read_coords(out / "coords" / "b_pyramid.h5").coords)
    assert {k: v["status"] for k, v in _summary(out).items()} == {"a_svs": "skipped", "b_pyramid": "done"}


def read_coords_for(slide: Path, config: ExtractConfig):
    """The tiles extraction will cut from ``slide``."""
    from openmusk.slide import segment_tissue, tile_slide

    with open_slide(slide) as s:
        tissue, _ = segment_tissue(s, config.segmenter, mpp=config.segment_mpp)
        return tile_slide(s, tissue, config.tiling).coords


def test_corrupt_slides_are_reported_and_the_rest_finish(slides_dir: Path, tmp_path: Path, svs_path: Path,
                                                         tiny32) -> None:
    data = svs_path.read_bytes()
    (slides_dir / "c_truncated.svs").write_bytes(data[:600_000])        # cut short: cannot open
    damaged = bytearray(data)
    damaged[300_000:1_200_000] = bytes(900_000)                         # opens, tiles unreadable
    (slides_dir / "d_damaged.svs").write_bytes(bytes(damaged))
    out = tmp_path / "features"
    rows = extract_features(slides_dir, out, _config(), model=tiny32, progress=False)
    status = {r.slide: r.status for r in rows}
    assert status == {"a_svs": "done", "b_pyramid": "done", "c_truncated": "failed", "d_damaged": "failed"}
    summary = _summary(out)
    assert "c_truncated.svs" in summary["c_truncated"]["error"]
    assert "d_damaged.svs" in summary["d_damaged"]["error"] and "JPEG" in summary["d_damaged"]["error"]
    assert sorted(p.name for p in out.glob("*.h5")) == ["a_svs.h5", "b_pyramid.h5"]


def test_workers_read_the_same_tiles(slides_dir: Path, tmp_path: Path, tiny32) -> None:
    (slides_dir / "b_pyramid.tif").unlink()
    extract_features(slides_dir, tmp_path / "w0", _config(), model=tiny32, progress=False)
    extract_features(slides_dir, tmp_path / "w2", _config(num_workers=2), model=tiny32, progress=False)
    with h5py.File(tmp_path / "w0" / "a_svs.h5") as f0, h5py.File(tmp_path / "w2" / "a_svs.h5") as f2:
        np.testing.assert_array_equal(f0["coords"][:], f2["coords"][:])
        np.testing.assert_allclose(f0["features"][:], f2["features"][:], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_on_cpu(slides_dir: Path, tmp_path: Path, tiny32) -> None:
    (slides_dir / "b_pyramid.tif").unlink()
    extract_features(slides_dir, tmp_path / "fp32", _config(precision="fp32"), model=tiny32, progress=False)
    extract_features(slides_dir, tmp_path / "bf16", _config(precision="bf16"), model=tiny32, progress=False)
    with h5py.File(tmp_path / "fp32" / "a_svs.h5") as a, h5py.File(tmp_path / "bf16" / "a_svs.h5") as b:
        fa, fb = a["features"][:], b["features"][:]
        assert b["features"].dtype == np.float32 and b["features"].attrs["precision"] == "bf16"
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(fa, fb)     # bf16 really ran, and stayed close
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        autocast_for(torch.device("cpu"), "fp16")


def test_yaml_config(tmp_path: Path) -> None:
    good = tmp_path / "extract.yaml"
    good.write_text("model: musk_tiny_patch16_384\nweights: null\nbatch_size: 8\n"
                    "tiling:\n  overlap: 0.85\n  tile_size: 224\nsegmenter:\n  pen_hue_range: [60, 240]\n")
    c = load_extract_config(good)
    assert (c.model, c.weights, c.batch_size) == ("musk_tiny_patch16_384", None, 8)
    assert (c.tiling.overlap, c.tiling.tile_size, c.tiling.mpp) == (0.85, 224, 0.5)
    assert c.segmenter.pen_hue_range == (60, 240)
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling:\n  overlapp: 0.5\n")
    with pytest.raises(ValueError, match=r"bad.yaml:tiling: unknown key\(s\) \['overlapp'\]"):
        load_extract_config(bad)
    bad.write_text("precision: fp8\n")
    with pytest.raises(ValueError, match="precision"):
        load_extract_config(bad)


def test_plain_images_need_an_mpp(tmp_path: Path, real_dir: Path, svs_path: Path, tiny32) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(real_dir / "he_tumor_1000px.png", slides / "crop.png")
    shutil.copy(svs_path, slides / "wsi.svs")
    rows = {r.slide: r for r in extract_features(slides, tmp_path / "a", _config(), model=tiny32, progress=False)}
    assert rows["crop"].status == "failed" and "crop.png" in rows["crop"].error and "--mpp" in rows["crop"].error
    assert rows["wsi"].status == "done"
    rows = {r.slide: r for r in extract_features(slides, tmp_path / "b", _config(slide_mpp=0.5), model=tiny32,
                                                 progress=False)}
    assert rows["crop"].status == "done" and rows["crop"].tiles == 4          # 1000 px at 0.5: a 2 x 2 grid
    with h5py.File(tmp_path / "b" / "wsi.h5") as f:
        assert f["coords"].attrs["level0_mpp"] == pytest.approx(0.499)      # the SVS keeps its own mpp
