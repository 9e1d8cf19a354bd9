"""End to end through the CLI on real H&E tiles: stage 1, mSTAR+ in `openmusk mil train`, stage 2.

Slides are 500 x 500 crops of the real tumour-nest and stroma images (PNG, read by openmusk.slide),
tiled at 100 px; their features come from a saved tiny MUSK, the same encoder stage 2 starts from.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import openmusk
from openmusk.cli import main
from openmusk.core.io import read_json
from openmusk.pretrain.mstar.downstream import few_shot_slides
from openmusk.pretrain.mstar.stage2 import PATCH_ENCODER_WEIGHTS, patch_features
from openmusk.pretrain.mstar.synthetic import write_h5_features

pytestmark = pytest.mark.slow

TILE, IMG = 100, 64
REPORTS = {1: "High-grade serous carcinoma forming a solid tumour nest.", 0: "Fibrous stroma without tumour cells."}


def _make_slides(real_dir, root, encoder):
    """18 PNG slides (9 tumour, 9 stroma), their HDF5 features, the tables, and every tile with its label."""
    transform = openmusk.get_transform(IMG)
    rows, tiles, labels = [], [], []
    (root / "slides").mkdir(parents=True)
    for label, name in ((1, "hgsc_nest.jpg"), (0, "hgsc_stromal_he.jpg")):
        image = Image.open(real_dir / name).convert("RGB")
        for gy in range(3):
            for gx in range(3):
                sid = f"{name.split('.')[0]}_{gy}{gx}"
                crop = image.crop((gx * 500, gy * 500, gx * 500 + 500, gy * 500 + 500))
                crop.save(root / "slides" / f"{sid}.png")
                coords = np.array([(x * TILE, y * TILE) for y in range(5) for x in range(5)])
                batch = torch.stack([transform(crop.crop((x, y, x + TILE, y + TILE))) for x, y in coords])
                with torch.no_grad():
                    feats = patch_features(encoder, batch, multiscale=False).numpy()
                write_h5_features(root / "features" / f"{sid}.h5", feats, coords, patch_size=TILE)
                rows.append({"case_id": sid, "patient_id": sid, "slide_id": sid, "label": label,
                             "features": f"features/{sid}.h5", "slide": f"slides/{sid}.png",
                             "report": REPORTS[label]})
                tiles.append(batch)
                labels += [label] * len(coords)
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    return torch.cat(tiles), np.array(labels)


def test_cli_stage1_mil_init_and_self_taught_on_real_tiles(real_dir, tmp_path, capsys):
    torch.manual_seed(0)
    encoder = openmusk.create_model("musk_tiny_patch16_384").eval()
    openmusk.save_checkpoint(encoder, tmp_path / "encoder.safetensors")
    tiles, labels = _make_slides(real_dir, tmp_path, encoder)

    stage1 = {"table": "table.csv", "output_dir": "stage1", "aggregator": "transmil", "hidden_dim": 64,
              "embed_dim": 32, "arch": "musk_tiny_patch16_384", "weights": "random", "batch_size": 18,
              "epochs": 20, "lr": 1e-3, "warmup_epochs": 1, "val_fraction": 0.0}
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    assert main(["mstar", "pretrain-aggregator", str(tmp_path / "stage1.yaml"), "--device", "cpu"]) == 0
    assert "aggregator.safetensors" in capsys.readouterr().out

    mil = {"cohort": "table.csv", "features_dir": "features", "output_dir": "mil", "model": "transmil",
           "hidden_dim": 64, "folds": 2, "epochs": 2, "bootstrap": 50, "device": "cpu"}
    (tmp_path / "mil.yaml").write_text(yaml.safe_dump(mil))
    assert main(["mil", "train", str(tmp_path / "mil.yaml"), "--quiet",
                 "--init-aggregator", str(tmp_path / "stage1" / "aggregator.safetensors")]) == 0
    out = capsys.readouterr()
    log = out.out + out.err
    assert "missing [], unexpected [], mismatched []" in log, log[-2000:]

    # the old spellings out_dir / musk_model still work, with a notice naming the new ones
    stage2 = {"stage1_dir": "stage1", "table": "table.csv", "out_dir": "stage2", "musk_model": "musk_tiny_patch16_384",
              "weights": str(tmp_path / "encoder.safetensors"), "multiscale": False, "img_size": IMG,
              "patches_per_slide": 8, "context_patches": 17, "slides_per_step": 4, "steps": 60, "lr": 3e-4,
              "warmup_steps": 5, "ema_momentum": 0.9, "log_every": 10, "save_every": 30}
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    assert main(["mstar", "self-taught", str(tmp_path / "stage2.yaml")]) == 0
    err = capsys.readouterr().err
    assert "'out_dir' is now spelled 'output_dir'" in err and "'musk_model' is now spelled 'arch'" in err
    history = read_json(tmp_path / "stage2" / "metrics.json")["history"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"], history

    trained = openmusk.create_model("musk_tiny_patch16_384")
    openmusk.load_checkpoint(trained, tmp_path / "stage2" / PATCH_ENCODER_WEIGHTS)
    with torch.no_grad():
        before = patch_features(encoder, tiles, False).numpy()
        after = patch_features(trained.eval(), tiles, False).numpy()
    assert not np.allclose(before, after)
    probe_before = few_shot_slides(before, labels, k=2, seeds=range(30))["balanced_accuracy"]
    probe_after = few_shot_slides(after, labels, k=2, seeds=range(30))["balanced_accuracy"]
    assert np.mean(probe_after) > np.mean(probe_before) + 0.01, (np.mean(probe_before), np.mean(probe_after))
    shuffled = few_shot_slides(after, np.random.default_rng(0).permutation(labels), k=2, seeds=range(30))
    assert abs(np.mean(shuffled["balanced_accuracy"]) - 0.5) < 0.1
