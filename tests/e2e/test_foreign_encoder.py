"""End to end with a non-MUSK encoder: a user's tiny ViT factory (``module:function``) extracts
features from crops of the real slide with ``openmusk slide extract --encoder``, and ``openmusk mil
train`` trains on those files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openmusk.cli import main
from openmusk.data.features_h5 import read_encoder_info, read_features

HERE = Path(__file__).resolve().parent
# 800 px crops of the real SVS region (level 0, 0.499 µm/px): four from its upper half, four from
# its lower half (two classes), each 1-4 tissue tiles of 384 px at 0.5 µm/px
CROPS = {"upper": [(500, 100), (1000, 100), (700, 500), (1100, 600)],
         "lower": [(500, 1700), (1000, 1700), (700, 1900), (1100, 2000)]}


@pytest.fixture()
def user_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """The factory's module importable by name, whatever pytest's import mode."""
    monkeypatch.syspath_prepend(str(HERE))
    return "e2e_tiny_vit"


def _slides(svs_path: Path, folder: Path) -> list[dict]:
    """Write the crops as PNG slides; cohort rows (one patient per slide)."""
    from openmusk.slide import open_slide

    folder.mkdir()
    rows = []
    with open_slide(svs_path) as s:
        for label, corners in CROPS.items():
            for i, xy in enumerate(corners):
                name = f"{label}_{i}"
                s.read_level(xy, 0, (800, 800)).save(folder / f"{name}.png")
                rows.append({"patient_id": f"P_{name}", "slide_id": name, "label": label})
    return rows


def test_user_encoder_features_train_mil(tmp_path: Path, real_dir: Path, user_module: str,
                                         capsys: pytest.CaptureFixture) -> None:
    rows = _slides(real_dir / "cmu_small_region.svs", tmp_path / "slides")
    extract = tmp_path / "extract.yaml"
    extract.write_text(f"encoder: {user_module}:tiny_vit\nencoder_kwargs: {{width: 40, depth: 1}}\n"
                       "batch_size: 4\nnum_workers: 0\ndevice: cpu\n")
    feats_dir = tmp_path / "features"
    assert main(["slide", "extract", str(tmp_path / "slides"), "--out", str(feats_dir), "--config", str(extract),
                 "--mpp", "0.499", "--quiet"]) == 0
    assert "8 slides: 8 done" in capsys.readouterr().out

    module, transform = __import__(user_module).tiny_vit(width=40, depth=1)
    for r in rows:
        path = feats_dir / f"{r['slide_id']}.h5"
        feats, coords, attrs = read_features(path)
        info = read_encoder_info(path)
        assert feats.shape == (len(coords), 40) and len(coords) >= 1       # the factory's width
        assert info["encoder"] == f"{user_module}:tiny_vit" and info["encoder_name"] == "tiny_vit"
        assert info["encoder_spec"]["width"] == 40 and info["feature_kind"] == "probe"
        assert info["feature_dim"] == 40 and "encoder_config" not in info       # no MUSK attributes
        assert attrs["patch_size_level0"] == 385
    # the stored rows are the user's module on the tiles (unnormalised, as MUSK's slide features are)
    from openmusk.slide import open_slide

    feats, coords, _ = read_features(feats_dir / "lower_1.h5")
    with open_slide(tmp_path / "slides" / "lower_1.png", default_mpp=0.499) as s:
        tile = s.read_region((int(coords[0, 0]), int(coords[0, 1])), (384, 384), 0.5)
    with torch.no_grad():
        direct = module(transform(tile)[None])[0].numpy()
    np.testing.assert_allclose(feats[0], direct, rtol=1e-4, atol=1e-5)

    with open(tmp_path / "cohort.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["patient_id", "slide_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    mil = tmp_path / "mil.yaml"
    mil.write_text("cohort: cohort.csv\nfeatures_dir: features\noutput_dir: mil\ntask: classification\n"
                   "modality: image\nmodel: abmil\nhidden_dim: 16\nattention_dim: 8\nepochs: 3\nfolds: 2\n"
                   "val_fraction: 0.5\nbootstrap: 20\ndevice: cpu\n")
    assert main(["mil", "train", str(mil), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "mil" / "metrics.json").read_text())
    assert len(metrics["summary"]["per_fold"]) == 2 and metrics["skipped"] == 0
    assert 0.0 <= metrics["pooled"]["auc"]["value"] <= 1.0

