"""End to end: real H&E tiles -> tiny MUSK features (HDF5) -> `openmusk mil train` / `predict`."""
from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from openmusk.cli import main

TILE = 192


@pytest.fixture(scope="module")
def cohort(real_dir, tmp_path_factory):
    """24 'slides' (12 tumour-nest, 12 stroma), each 8 random tiles of the real crop it comes from."""
    import openmusk

    root = tmp_path_factory.mktemp("mil_e2e")
    torch.manual_seed(0)
    model = openmusk.create_model("musk_tiny_patch16_384")
    transform = openmusk.get_transform(img_size=384)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    (root / "features").mkdir()
    (root / "slides").mkdir()
    for label, name in (("tumour", "hgsc_nest.jpg"), ("stroma", "hgsc_stromal_he.jpg")):
        img = Image.open(real_dir / name).convert("RGB")
        grid = [(x, y) for y in range(0, img.height - TILE + 1, TILE) for x in range(0, img.width - TILE + 1, TILE)]
        with torch.no_grad():
            feats = model.encode_image(torch.stack([transform(img.crop((x, y, x + TILE, y + TILE))) for x, y in grid]),
                                       head=False, normalize=False).numpy()
        for s in range(12):
            slide = f"{label}_{s:02d}"
            pick = rng.choice(len(grid), 8, replace=False)
            with h5py.File(root / "features" / f"{slide}.h5", "w") as f:
                f.create_dataset("features", data=feats[pick].astype(np.float32))
                c = f.create_dataset("coords", data=np.array(grid, np.int64)[pick])
                c.attrs["patch_size_level0"] = TILE
            if s % 4 == 0:  # heatmaps cost ~0.7 s each: images for 6 slides, the rest have none
                (root / "slides" / f"{slide}.jpg").symlink_to(real_dir / name)
            rows.append({"patient_id": f"P{label[0]}{s:02d}", "slide_id": slide, "label": label})
    rows.append({"patient_id": "Pmissing", "slide_id": "no_such_slide", "label": "stroma"})
    with open(root / "cohort.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["patient_id", "slide_id", "label"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.slow
def test_mil_train_and_predict_cli(cohort, capsys):
    cfg = cohort / "run.yaml"
    cfg.write_text("cohort: cohort.csv\nfeatures_dir: features\noutput_dir: results\nmodel: abmil\n"
                   "hidden_dim: 64\nattention_dim: 32\nepochs: 15\npatience: 5\nfolds: 3\n"
                   "bootstrap: 100\nslides_dir: slides\nslide_extension: .jpg\nslide_mpp: 0.5\n"
                   "top_tiles: 4\n")
    assert main(["mil", "train", str(cfg), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fold 0: AUC" in out and "skipped Pmissing/no_such_slide" in out
    res = cohort / "results"
    from openmusk.core.io import read_json

    metrics = read_json(res / "metrics.json")
    # nest vs stroma from real tiles, features of a randomly initialised tiny MUSK: measured 0.82
    assert metrics["pooled"]["auc"]["value"] > 0.7
    assert len(metrics["summary"]["per_fold"]) == 3 and metrics["skipped"] == 2
    for f in ("roc.png", "oof_predictions.csv", "fold_0/model.safetensors", "fold_2/attention.h5"):
        assert (res / f).is_file(), f
    index = {r["slide_id"]: (k, r) for k in range(3)
             for r in read_json(res / f"fold_{k}" / "attention" / "index.json")}
    assert len(index) == 24   # every slide is a test slide once
    with_image = {s for s in index if (cohort / "slides" / f"{s}.jpg").exists()}
    assert len(with_image) == 6
    for slide, (k, r) in index.items():
        assert r["images"] == ("ok" if slide in with_image else "slide image not found"), r
        stem = res / f"fold_{k}" / "attention" / f"{r['patient_id']}__{slide}"
        assert (res / r["csv"]).is_file()
        assert (stem.parent / f"{stem.name}_heatmap.png").is_file() == (slide in with_image)
    # a rerun resumes: every fold is skipped
    assert main(["mil", "train", str(cfg), "--quiet"]) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 3
    assert main(["mil", "predict", str(res), "--out", str(cohort / "pred"), "--quiet"]) == 0
    import pandas as pd

    pred = pd.read_csv(cohort / "pred" / "predictions.csv")
    truth = pred["id"].str[1].map({"t": "tumour", "s": "stroma"})
    assert (pred["predicted"] == truth).mean() > 0.75


def test_cli_errors_are_clear(cohort, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cohort: x.csv\nlearning_rate: 0.1\n")
    assert main(["mil", "train", str(bad)]) == 2
    assert "unknown key 'learning_rate'" in capsys.readouterr().err
    bad.write_text(f"cohort: {cohort / 'cohort.csv'}\nfeatures_dir: {cohort / 'features'}\ntask: survival\n"
                   f"output_dir: {tmp_path / 'out'}\n")
    assert main(["mil", "train", str(bad)]) == 2
    assert "missing column(s) ['time', 'event']" in capsys.readouterr().err
