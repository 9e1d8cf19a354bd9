"""Feature extraction: the TRIDENT/CLAM file layout, correctness, kill-and-resume, bad slides, config."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from openmusk.core.config import ConfigError, load_config
from openmusk.encoders import load_encoder
from openmusk.slide import (ExtractConfig, TileDataset, TilingConfig, extract_features, load_slide_encoder,
                            open_slide, read_coords)

COORD_ATTRS = {"patch_size", "patch_size_level0", "level0_magnification", "target_magnification", "overlap",
               "level0_width", "level0_height", "mpp"}


def _config(**kw) -> ExtractConfig:
    """Small and fast: tiles that are >= 90% tissue only, batches of 4, no worker processes."""
    kw = {"arch": "musk_tiny_patch16_32", "weights": None, "batch_size": 4, "num_workers": 0, "device": "cpu",
          "tiling": TilingConfig(min_tissue=0.9), **kw}
    return ExtractConfig(**kw)


@pytest.fixture(scope="module")
def tiny32():
    """The 32 px tiny MUSK encoder: tiles are read at 384 px and resized, the model costs almost nothing."""
    torch.manual_seed(0)
    return load_slide_encoder(_config())


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
    rows = extract_features(slides_dir, out, _config(), encoder=tiny32, progress=False)
    assert [(r.slide, r.status) for r in rows] == [("a_svs", "done"), ("b_pyramid", "done")]
    for name in ("a_svs", "b_pyramid"):
        with h5py.File(out / f"{name}.h5", "r") as f:     # exactly how TRIDENT/CLAM code reads it
            feats, coords = f["features"][:], f["coords"][:]
            assert feats.dtype == np.float32 and feats.shape == (len(coords), 64)   # 2 x 32 multiscale
            assert coords.dtype == np.int64 and coords.shape[1] == 2
            assert f["features"].maxshape == (None, 64) and f["features"].chunks is not None
            assert f["coords"].maxshape == (None, 2) and f["coords"].chunks is not None
            fa, ca = dict(f["features"].attrs), dict(f["coords"].attrs)
        assert fa["name"] == name and fa["encoder"] == "musk" and fa["feature_kind"] == "probe"
        assert (fa["encoder_weights"], fa["precision"], fa["feature_dim"], bool(fa["multiscale"])) == ("random", "fp32", 64, True)
        assert json.loads(fa["encoder_spec"])["arch"] == "musk_tiny_patch16_32"
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
    """Unnormalised multiscale CLS of the tiles read at 0.5 µm/px, bit for bit."""
    out = tmp_path / "features"
    config = _config(arch="musk_tiny_patch16_384", tiling=TilingConfig(min_tissue=0.98))
    extract_features(slides_dir, out, config, encoder=load_encoder("musk", model=tiny_model, device="cpu"),
                     progress=False)
    with h5py.File(out / "a_svs.h5") as f:
        feats, coords = f["features"][:], f["coords"][:]
    with open_slide(slides_dir / "a_svs.svs") as s:
        tiles = [np.asarray(s.read_region(tuple(map(int, xy)), (384, 384), mpp=0.5)) for xy in coords[:3]]
    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        ref = tiny_model.encode_image(x, head=False, normalize=False, multiscale=True)
    np.testing.assert_array_equal(feats[:3], ref.numpy())
    # the pyramid's level 0 holds the SVS's decoded pixels: identical tiles, identical features
    with h5py.File(out / "b_pyramid.h5") as f:
        np.testing.assert_array_equal(f["coords"][:], coords)
        np.testing.assert_allclose(f["features"][:], feats, rtol=1e-4, atol=1e-4)


def test_tiles_reach_the_model_as_the_musk_transform_makes_them(svs_path: Path, tiny_model) -> None:
    """Tiles at the model size: dataset + worker/batch transform equal the MUSK image transform."""
    import openmusk

    enc = load_encoder("musk", model=tiny_model, device="cpu")
    ds = TileDataset(svs_path, np.array([[700, 1200]]), 0.5, 384, transform=enc.worker_transform)
    ours = enc.batch_transform(ds[0][0][None])[0]
    with open_slide(svs_path) as s:
        tile = s.read_region((700, 1200), (384, 384), mpp=0.5)
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
        extract_features(slides_dir, out, config, encoder=tiny32, progress=False)
    monkeypatch.undo()
    assert (out / "a_svs.h5").exists() and not (out / "b_pyramid.h5").exists()
    assert not [p.name for p in out.rglob("*") if p.name.endswith("tmp")]        # no partial file
    mtime = (out / "a_svs.h5").stat().st_mtime_ns

    rows = extract_features(slides_dir, out, config, encoder=tiny32, progress=False)
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
    rows = extract_features(slides_dir, out, _config(), encoder=tiny32, progress=False)
    status = {r.slide: r.status for r in rows}
    assert status == {"a_svs": "done", "b_pyramid": "done", "c_truncated": "failed", "d_damaged": "failed"}
    summary = _summary(out)
    assert "c_truncated.svs" in summary["c_truncated"]["error"]
    assert "d_damaged.svs" in summary["d_damaged"]["error"] and "JPEG" in summary["d_damaged"]["error"]
    assert sorted(p.name for p in out.glob("*.h5")) == ["a_svs.h5", "b_pyramid.h5"]


def test_workers_read_the_same_tiles(slides_dir: Path, tmp_path: Path, tiny32) -> None:
    (slides_dir / "b_pyramid.tif").unlink()
    extract_features(slides_dir, tmp_path / "w0", _config(), encoder=tiny32, progress=False)
    extract_features(slides_dir, tmp_path / "w2", _config(num_workers=2), encoder=tiny32, progress=False)
    with h5py.File(tmp_path / "w0" / "a_svs.h5") as f0, h5py.File(tmp_path / "w2" / "a_svs.h5") as f2:
        np.testing.assert_array_equal(f0["coords"][:], f2["coords"][:])
        np.testing.assert_array_equal(f0["features"][:], f2["features"][:])


def test_bf16_autocast_on_cpu(slides_dir: Path, tmp_path: Path, tiny32) -> None:
    (slides_dir / "b_pyramid.tif").unlink()
    bf16 = load_encoder("musk", model=tiny32.model, precision="bf16", device="cpu")
    extract_features(slides_dir, tmp_path / "fp32", _config(), encoder=tiny32, progress=False)
    extract_features(slides_dir, tmp_path / "bf16", _config(), encoder=bf16, progress=False)
    with h5py.File(tmp_path / "fp32" / "a_svs.h5") as a, h5py.File(tmp_path / "bf16" / "a_svs.h5") as b:
        fa, fb = a["features"][:], b["features"][:]
        assert b["features"].dtype == np.float32 and b["features"].attrs["precision"] == "bf16"
    cos = (fa * fb).sum(1) / np.linalg.norm(fa, axis=1) / np.linalg.norm(fb, axis=1)
    assert cos.min() > 0.99 and not np.array_equal(fa, fb)     # bf16 really ran, and stayed close


def test_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tmp_path / "extract.yaml"
    good.write_text("model: musk_tiny_patch16_384\nweights: ckpt/musk.safetensors\nbatch_size: 8\n"
                    "precision: bfloat16\ntiling:\n  overlap: 0.85\n  tile_size: 224\n"
                    "segmenter:\n  pen_hue_range: [60, 240]\n")
    c = load_config(ExtractConfig, good)
    assert "'model' is now spelled 'arch'" in capsys.readouterr().err           # the old key still works
    assert (c.arch, c.batch_size, c.precision, c.device) == ("musk_tiny_patch16_384", 8, "bf16", "auto")
    assert c.weights == str(tmp_path / "ckpt" / "musk.safetensors")           # relative to the file
    assert (c.tiling.overlap, c.tiling.tile_size, c.tiling.mpp) == (0.85, 224, 0.5)
    assert c.segmenter.pen_hue_range == (60.0, 240.0)
    bad = tmp_path / "bad.yaml"
    for text, message in (("tiling:\n  overlapp: 0.5\n", r"bad.yaml: tiling: unknown key 'overlapp'.*'overlap'"),
                          ("batch_size: ten\n", r"bad.yaml: key 'batch_size' expects int, got 'ten'"),
                          ("precision: fp8\n", r"bad.yaml: precision must be one of"),
                          ("tiling:\n  overlap: 1.5\n", r"bad.yaml: tiling: overlap must be in \[0, 1\)")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(ExtractConfig, bad)


def test_config_names_the_encoder_and_its_arguments() -> None:
    assert ExtractConfig().encoder_args() == ("musk", {"weights": "hf_hub:xiangjx/musk", "arch": None})
    assert ExtractConfig(weights=None, multiscale=False).encoder_args() == (
        "musk_singlescale", {"weights": "random", "arch": None})
    # another encoder gets its own arguments, and MUSK's release is not passed to it as weights
    timm = ExtractConfig(encoder="timm", encoder_kwargs={"model": "vit_small_patch16_224"})
    assert timm.encoder_args() == ("timm", {"model": "vit_small_patch16_224"})
    assert ExtractConfig(encoder="timm", weights="random").encoder_args()[1] == {"weights": "random"}
    with pytest.raises(ValueError, match="MUSK options"):
        ExtractConfig(encoder="timm", arch="musk_tiny_patch16_32")


def test_plain_images_need_an_mpp(tmp_path: Path, real_dir: Path, svs_path: Path, tiny32) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(real_dir / "he_tumor_1000px.png", slides / "crop.png")
    shutil.copy(svs_path, slides / "wsi.svs")
    rows = {r.slide: r for r in extract_features(slides, tmp_path / "a", _config(), encoder=tiny32, progress=False)}
    assert rows["crop"].status == "failed" and "crop.png" in rows["crop"].error and "--mpp" in rows["crop"].error
    assert rows["wsi"].status == "done"
    rows = {r.slide: r for r in extract_features(slides, tmp_path / "b", _config(slide_mpp=0.5), encoder=tiny32,
                                                 progress=False)}
    assert rows["crop"].status == "done" and rows["crop"].tiles == 4          # 1000 px at 0.5: a 2 x 2 grid
    with h5py.File(tmp_path / "b" / "wsi.h5") as f:
        assert f["coords"].attrs["level0_mpp"] == pytest.approx(0.499)      # the SVS keeps its own mpp
