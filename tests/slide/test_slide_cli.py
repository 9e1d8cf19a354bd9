"""``openmusk slide``: info, tile then extract (coords reused), config + flags, old spellings, a failing
slide's exit code, heatmap."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from openmusk.cli import main

FAST = ["--arch", "musk_tiny_patch16_32", "--weights", "random", "--num-workers", "0", "--min-tissue", "0.9",
        "--device", "cpu", "--quiet"]


def test_info(svs_path: Path, real_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["slide", "info", str(svs_path)]) == 0
    out = capsys.readouterr().out
    assert "level 0: 2220 x 2967 px" in out and "mpp: 0.499" in out and "20x" in out
    assert main(["slide", "info", str(real_dir / "hgsc_nest.jpg")]) == 0
    assert "unknown (pass --mpp)" in capsys.readouterr().out
    assert main(["slide", "info", str(real_dir / "nope.svs")]) == 2
    assert "nope.svs" in capsys.readouterr().err


def test_tile_then_extract_reuses_coords(tmp_path: Path, svs_path: Path, capsys: pytest.CaptureFixture) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "a.svs")
    out = tmp_path / "out"
    assert main(["slide", "tile", str(slides), "--out", str(out), "--min-tissue", "0.9", "--quiet"]) == 0
    coords_file = out / "coords" / "a.h5"
    mtime = coords_file.stat().st_mtime_ns
    with h5py.File(coords_file) as f:
        tiled = f["coords"][:]
    assert main(["slide", "extract", str(slides), "--out", str(out), *FAST]) == 0
    assert coords_file.stat().st_mtime_ns == mtime                 # same settings: not re-tiled
    with h5py.File(out / "a.h5") as f:
        np.testing.assert_array_equal(f["coords"][:], tiled)
    assert "1 slides: 1 done" in capsys.readouterr().out


def test_extract_reports_failures_with_exit_code(tmp_path: Path, svs_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "good.svs")
    (slides / "broken.svs").write_bytes(svs_path.read_bytes()[:500_000])
    out = tmp_path / "out"
    assert main(["slide", "extract", str(slides), "--out", str(out), *FAST]) == 1
    printed = capsys.readouterr().out
    assert "1 done" in printed and "1 failed" in printed
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["slide"]: r for r in csv.DictReader(fh)}
    assert rows["good"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert "broken.svs" in rows["broken"]["error"]
    assert main(["slide", "extract", str(tmp_path / "missing"), "--out", str(out), *FAST]) == 2


def test_config_set_and_flags_go_through_one_loader(tmp_path: Path, svs_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "a.svs")
    assert main(["slide", "extract", "--example"]) == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text(capsys.readouterr().out.replace("batch_size: 32", "batch_size: 3")
                   .replace("min_tissue: 0.25", "min_tissue: 0.5").replace("multiscale: true", "multiscale: false"))
    out = tmp_path / "out"
    # file < --set < flags: min_tissue 0.5 (file) -> 0.8 (--set) -> 0.9 (flag); the rest from the file
    assert main(["slide", "extract", str(slides), "--out", str(out), "--config", str(cfg),
                 "--set", "tiling.min_tissue=0.8", "--set", "segment_mpp=16", *FAST]) == 0
    with h5py.File(out / "a.h5") as f:
        assert f["coords"].attrs["min_tissue"] == 0.9
        assert f["features"].shape[1] == 32 and f["features"].attrs["encoder"] == "musk_singlescale"


def test_old_flag_spellings_still_work(tmp_path: Path, svs_path: Path, capsys: pytest.CaptureFixture) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_path, slides / "a.svs")
    old = ["--model", "musk_tiny_patch16_32", "--random-weights", "--workers", "0", "--min-tissue", "0.9",
           "--device", "cpu", "--no-progress", "--single-scale"]
    assert main(["slide", "extract", str(slides), "--out-dir", str(tmp_path / "old"), *old]) == 0
    err = capsys.readouterr().err
    for note in ("--model is now spelled --arch", "--random-weights is now spelled --weights random",
                 "--workers is now spelled --num-workers", "--no-progress is now spelled --quiet",
                 "--out-dir is now spelled --out"):
        assert note in err, note
    with h5py.File(tmp_path / "old" / "a.h5") as f:
        assert f["features"].shape[1] == 32 and f["features"].attrs["encoder_weights"] == "random"
        assert json.loads(f["features"].attrs["encoder_spec"])["arch"] == "musk_tiny_patch16_32"


def test_bad_config_is_a_user_error(tmp_path: Path, svs_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batchsize: 3\n")
    assert main(["slide", "extract", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    assert "unknown key 'batchsize'" in capsys.readouterr().err
    assert main(["slide", "extract", str(tmp_path), "--out", str(tmp_path / "o"), "--overlap", "1.5"]) == 2
    assert "overlap must be in [0, 1)" in capsys.readouterr().err
    assert main(["slide", "extract", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "batch_size=ten"]) == 2
    assert "key 'batch_size' expects int, got 'ten'" in capsys.readouterr().err
    assert main(["slide", "extract", str(tmp_path), "--out", str(tmp_path / "o"), "--encoder", "nope"]) == 2
    assert "unknown encoder 'nope'" in capsys.readouterr().err
    assert main(["slide", "extract", str(tmp_path), "--out", str(tmp_path / "o"), *FAST, "--precision", "fp16"]) == 2
    assert "fp16" in capsys.readouterr().err
    assert main(["slide", "extract", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err


def test_heatmap_from_csv(tmp_path: Path, svs_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = tmp_path / "scores.csv"
    table.write_text("x,y,width,height,attention\n0,0,385,385,0.2\n770,1155,385,385,0.9\n")
    out = tmp_path / "heat.png"
    assert main(["slide", "heatmap", str(svs_path), "--scores", str(table), "--column", "attention",
                 "--out", str(out), "--geojson", str(tmp_path / "t.geojson")]) == 0
    assert Image.open(out).size[0] > 300 and (tmp_path / "t.geojson").exists()
    assert main(["slide", "heatmap", str(svs_path), "--scores", str(table), "--out", str(out)]) == 2
    assert "missing column(s) ['score']" in capsys.readouterr().err
