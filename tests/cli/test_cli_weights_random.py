"""Every command that loads MUSK runs with ``--weights random:CONFIG`` (no gated weights), says so
loudly, and writes its real outputs: embed, zeroshot, slide extract (of one slide file), eval run,
mil train with reports, vqa train, mstar pretrain-aggregator and self-taught. Tiny inputs, tiny model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from openmusk.cli import main
from openmusk.data.features_h5 import read_features, write_features

TINY = "random:musk_tiny_patch16_32"      # 32 px images, 32-d tokens, 2 layers
DIM = 64                                  # its multiscale probe features: 2 x 32
RUNTIME = ["--device", "cpu", "--precision", "fp32"]


def _image(path: Path, seed: int, size: int = 48) -> Path:
    """A pink/purple H&E-like noise image."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 170]) if seed % 2 else np.array([150, 90, 180])
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory, real_dir: Path) -> Path:
    """Images, texts, a folder dataset, a MIL/mSTAR cohort with reports and features, a VQA table."""
    root = tmp_path_factory.mktemp("random_weights")
    for i in range(4):
        _image(root / "images" / f"im{i}.png", i)
        _image(root / "bench" / "test" / ("tumour" if i % 2 else "stroma") / f"t{i}.png", i)
    (root / "texts.txt").write_text("tumour nest\nloose stroma\n")
    (root / "spec.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "format": "folder", "classes": ["stroma", "tumour"],
        "label_map": {"stroma": 0, "tumour": 1}, "splits": {"test": "test"},
        "templates": ["an H&E image of {c}"], "tasks": ["zeroshot"]}))
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        coords = np.array([(x * 32, y * 32) for y in range(3) for x in range(3)])
        write_features(root / "features" / f"s{i}.h5", rng.normal(size=(9, DIM)).astype(np.float32), coords,
                       coords_attrs={"patch_size": 32, "patch_level": 0})
        _image(root / "slides" / f"s{i}.png", i, size=96)
        rows.append({"case_id": f"s{i}", "patient_id": f"s{i}", "slide_id": f"s{i}", "label": i % 2,
                     "features": f"features/s{i}.h5", "slide": f"slides/s{i}.png",
                     "report": ["benign skin", "invasive carcinoma"][i % 2]})
    pd.DataFrame(rows).to_csv(root / "cohort.csv", index=False)
    with Image.open(real_dir / "he_tumor_1000px.png") as im:   # real tissue for the slide pipeline
        im.convert("RGB").crop((300, 300, 556, 556)).save(root / "tumour.png")
    with open(root / "vqa.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"image": f"images/im{i}.png", "question": "is there tissue?",
                                "answer": ["yes", "no"][i % 2], "split": "train"}) + "\n")
    return root


def _run(argv: list[str], capsys) -> str:
    """Run a command, require success and the random-weights banner; returns stdout."""
    torch.manual_seed(0)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "RANDOM WEIGHTS (random:musk_tiny_patch16_32)" in err and "MEANINGLESS" in err, err
    return out


def test_model_commands(data: Path, tmp_path: Path, capsys) -> None:
    out = _run(["embed", "images", str(data / "images"), "--out", str(tmp_path / "im.h5"), "--weights", TINY,
                "--num-workers", "0", "--quiet", *RUNTIME], capsys)
    assert "wrote 4 x 32 embed features" in out
    out = _run(["embed", "texts", str(data / "texts.txt"), "--out", str(tmp_path / "tx.h5"), "--weights", TINY,
                "--quiet", *RUNTIME], capsys)
    assert "wrote 2 x 32 text embeddings" in out
    out = _run(["zeroshot", str(data / "images" / "im0.png"), "--labels", "tumour,stroma", "--weights", TINY,
                *RUNTIME], capsys)
    assert "tumour" in out and "stroma" in out and "%" in out


def test_slide_extract_of_one_file(data: Path, tmp_path: Path, capsys) -> None:
    out = _run(["slide", "extract", str(data / "tumour.png"), "--out", str(tmp_path / "f"), "--mpp", "2", "--tile-size", "64",
                "--weights", TINY, "--num-workers", "0", "--quiet", *RUNTIME], capsys)
    assert "1 slides" in out
    feats, coords, _ = read_features(tmp_path / "f" / "tumour.h5")
    assert feats.shape[1] == DIM and len(feats) == len(coords) > 0


def test_eval_run(data: Path, tmp_path: Path, capsys) -> None:
    cfg = {"output_dir": str(tmp_path / "res"), "batch_size": 4, "num_workers": 0, "n_resamples": 20,
           "models": [{"name": "musk", "kind": "musk"}],   # kind musk: --weights replaces its weights
           "datasets": [{"spec": str(data / "spec.yaml"), "root": str(data / "bench")}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = _run(["eval", "run", str(tmp_path / "run.yaml"), "--weights", TINY, *RUNTIME], capsys)
    assert "1 cells computed" in out and "0 failed" in out
    assert json.loads((tmp_path / "res" / "musk" / "tiny" / "zeroshot.json").read_text())


def test_mil_train_with_reports(data: Path, tmp_path: Path, capsys) -> None:
    cfg = {"cohort": str(data / "cohort.csv"), "features_dir": str(data / "features"),
           "output_dir": str(tmp_path / "mil"), "modality": "both", "model": "meanpool", "hidden_dim": 16,
           "folds": 2, "epochs": 1, "bootstrap": 10, "val_fraction": 0.0}
    (tmp_path / "mil.yaml").write_text(yaml.safe_dump(cfg))
    _run(["mil", "train", str(tmp_path / "mil.yaml"), "--weights", TINY, "--quiet", *RUNTIME], capsys)
    assert (tmp_path / "mil" / "fold_1").is_dir()


def test_vqa_train(data: Path, tmp_path: Path, capsys) -> None:
    cfg = {"data": str(data / "vqa.jsonl"), "image_root": str(data), "output_dir": str(tmp_path / "vqa"),
           "val_split": None, "epochs": 1, "batch_size": 2, "accum_steps": 1, "num_workers": 0,
           "max_len": 8, "progress": False}
    (tmp_path / "vqa.yaml").write_text(yaml.safe_dump(cfg))
    _run(["vqa", "train", str(tmp_path / "vqa.yaml"), "--weights", TINY, *RUNTIME], capsys)
    assert (tmp_path / "vqa" / "model.safetensors").is_file()


def test_mstar_both_stages(data: Path, tmp_path: Path, capsys) -> None:
    s1 = {"table": str(data / "cohort.csv"), "output_dir": str(tmp_path / "s1"), "aggregator": "abmil",
          "hidden_dim": 16, "embed_dim": 8, "batch_size": 4, "epochs": 1, "val_fraction": 0.0,
          "report_max_len": 16}
    (tmp_path / "s1.yaml").write_text(yaml.safe_dump(s1))
    _run(["mstar", "pretrain-aggregator", str(tmp_path / "s1.yaml"), "--weights", TINY, *RUNTIME], capsys)
    assert (tmp_path / "s1" / "aggregator.safetensors").is_file()
    s2 = {"stage1_dir": str(tmp_path / "s1"), "table": str(data / "cohort.csv"), "output_dir": str(tmp_path / "s2"),
          "img_size": 32, "patches_per_slide": 2, "context_patches": 4, "slides_per_step": 2, "steps": 1,
          "warmup_steps": 0, "grad_checkpointing": False, "log_every": 1, "save_every": 1}
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(s2))
    _run(["mstar", "self-taught", str(tmp_path / "s2.yaml"), "--weights", TINY, *RUNTIME], capsys)
    assert (tmp_path / "s2" / "patch_encoder.safetensors").is_file()
