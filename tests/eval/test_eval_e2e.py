"""End to end on real tissue through the CLI: tumour-nest, stroma and slide-background tiles with
written captions, every task with the tiny MUSK model and a colour baseline, then the report."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import balanced_accuracy_score

from openmusk.cli import main

CAPTIONS = {
    "tumour": ["nest of high-grade serous carcinoma cells with pleomorphic nuclei",
               "tumour nest of atypical epithelial cells surrounded by lymphocytes",
               "high-grade serous ovarian carcinoma, solid tumour nest"],
    "stroma": ["ovarian stroma with bland spindle cells and collagen",
               "fibrous stroma without tumour cells",
               "pink collagenous stromal tissue with scattered fibroblasts"],
    "background": ["empty glass background with no tissue",
                   "blank white area of the slide outside the tissue",
                   "background of the slide, no cells"],
}
N_TRAIN, N_TEST, TILE = 8, 6, 224


def _tiles_from_crop(path, n):
    img = Image.open(path).convert("RGB")
    per_row = img.width // TILE
    return [img.crop(((i % per_row) * TILE, (i // per_row) * TILE,
                      (i % per_row + 1) * TILE, (i // per_row + 1) * TILE)) for i in range(n)]


def _background_tiles(svs, n):
    import openslide

    slide = openslide.OpenSlide(str(svs))
    out = []
    w, h = slide.dimensions
    for y in range(0, h - TILE, TILE):
        for x in range(0, 2 * TILE, TILE):  # the left margin of this slide is glass
            tile = slide.read_region((x, y), 0, (TILE, TILE)).convert("RGB")
            if np.asarray(tile).mean() > 215:
                out.append(tile)
            if len(out) == n:
                return out
    raise AssertionError(f"only {len(out)} background tiles found in {svs}")


@pytest.fixture(scope="module")
def bench(real_dir, tmp_path_factory):
    """data/<split>/<class>/*.png + data/captions.csv, two user dataset specs and a run config."""
    root = tmp_path_factory.mktemp("bench")
    n = N_TRAIN + N_TEST
    tiles = {"tumour": _tiles_from_crop(real_dir / "hgsc_nest.jpg", n),
             "stroma": _tiles_from_crop(real_dir / "hgsc_stromal_he.jpg", n),
             "background": _background_tiles(real_dir / "cmu_small_region.svs", n)}
    rows = [("image", "caption")]
    for label, imgs in tiles.items():
        for i, img in enumerate(imgs):
            split = "train" if i < N_TRAIN else "test"
            p = root / "data" / split / label / f"{label}_{i:02d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            img.save(p)
            if split == "test":
                rows.append((f"{split}/{label}/{p.name}", CAPTIONS[label][i % 3]))
    (root / "data" / "test" / "stroma" / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    with open(root / "data" / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)  # quotes the captions that hold commas
    tiles_spec = {"name": "hgsc_tiles", "format": "folder",
                  "classes": ["background", "tumor nest", "stroma"],
                  "label_map": {"background": 0, "tumour": 1, "stroma": 2},
                  "splits": {"train": "train", "test": "test"},
                  "templates": ["an H&E image of {c}", "a histopathology image showing {c}"],
                  "tasks": ["zeroshot", "image_retrieval", "linear_probe", "few_shot", "knn"]}
    captions_spec = {"name": "hgsc_captions", "format": "csv", "path": "captions.csv",
                     "label_column": None, "caption_column": "caption", "tasks": ["retrieval"]}
    (root / "hgsc_tiles.yaml").write_text(yaml.safe_dump(tiles_spec))
    (root / "hgsc_captions.yaml").write_text(yaml.safe_dump(captions_spec))
    config = {"output_dir": "results", "batch_size": 8, "num_workers": 2, "n_resamples": 200,
              "shots": [1, 2, 4], "few_shot_seeds": 3, "knn_k": 3, "retrieval_ks": [1, 5],
              "image_retrieval_ks": [1, 3],
              "models": [{"name": "musk_tiny", "kind": "musk", "model": "musk_tiny_patch16_384"},
                         {"name": "color_stats", "kind": "color_stats", "kwargs": {"img_size": 64}}],
              "datasets": [{"spec": "hgsc_tiles.yaml", "root": "data",
                            "retrieval_splits": ["train", "test"]},
                           {"spec": "hgsc_captions.yaml", "root": "data"}]}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.slow
def test_every_task_through_the_cli_then_the_report(bench, capsys):
    import torch

    torch.manual_seed(0)
    assert main(["eval", "run", str(bench / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert "10 cells computed" in out and "2 not applicable" in out  # colour baseline has no text
    res = bench / "results"
    cells = {p.relative_to(res).as_posix(): json.loads(p.read_text()) for p in res.glob("*/*/*.json")}
    tiles_tasks = ["zeroshot", "image_retrieval", "linear_probe", "few_shot", "knn"]
    assert set(cells) == ({f"musk_tiny/hgsc_tiles/{t}.json" for t in tiles_tasks}
                          | {"musk_tiny/hgsc_captions/retrieval.json"}
                          | {f"color_stats/hgsc_tiles/{t}.json" for t in tiles_tasks[1:]})

    for model in ("musk_tiny", "color_stats"):
        for task in ("linear_probe", "knn"):
            r = cells[f"{model}/hgsc_tiles/{task}.json"]
            y, p = r["per_sample"]["y_true"], r["per_sample"]["y_pred"]
            assert len(y) == 3 * N_TEST  # the corrupt test tile was skipped ...
            assert any("zz_corrupt.png" in s for s in r["skipped_items"])  # ... and reported
            bal = r["metrics"]["balanced_accuracy"]
            assert bal["value"] == pytest.approx(balanced_accuracy_score(y, p))
            assert bal["low"] <= bal["value"] <= bal["high"]
            assert bal["value"] > 0.7, (model, task, bal)  # chance is 1/3
    zs = cells["musk_tiny/hgsc_tiles/zeroshot.json"]
    assert zs["metrics"]["accuracy"]["value"] == pytest.approx(
        np.mean(np.array(zs["per_sample"]["y_true"]) == np.array(zs["per_sample"]["y_pred"])))
    fs = cells["musk_tiny/hgsc_tiles/few_shot.json"]
    assert set(fs["per_sample"]["per_seed"]) == {"1", "2", "4"}
    ret = cells["musk_tiny/hgsc_captions/retrieval.json"]
    assert ret["details"] == {"n_images": 3 * N_TEST, "n_texts": 3 * N_TEST, "ks": [1, 5],
                              "protocol": "clip-benchmark"}
    assert ret["metrics"]["t2i_R@5"]["value"] == pytest.approx(
        np.mean(np.array(ret["per_sample"]["t2i_rank"]) < 5))
    ir = cells["color_stats/hgsc_tiles/image_retrieval.json"]
    assert ir["details"]["n_images"] == 3 * (N_TRAIN + N_TEST)  # train + test, corrupt one skipped
    h5 = sorted(p.relative_to(res).as_posix() for p in res.glob("features/**/*.h5"))
    assert "features/musk_tiny/hgsc_tiles/train-probe.h5" in h5
    assert "features/musk_tiny/hgsc_captions/all-text.h5" in h5

    # a rerun finds every cell finished and recomputes nothing
    mtimes = {p: p.stat().st_mtime_ns for p in res.glob("*/*/*.json")}
    assert main(["eval", "run", str(bench / "run.yaml")]) == 0
    assert "0 cells computed, 10 already done" in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime_ns for p in res.glob("*/*/*.json")}

    assert main(["eval", "report", str(res), "--n-resamples", "200"]) == 0
    table = capsys.readouterr().out
    assert "hgsc_tiles" in table and "balanced_accuracy" in table and "t2i_R@1" in table
    md = (res / "report.md").read_text()
    assert "mcnemar-exact" in md and "paired-permutation-mean" in md and "paired-bootstrap" in md
    assert main(["eval", "report", str(res), "--n-resamples", "50", "--test", "paper",
                 "--out", str(res / "paper_report")]) == 0
    paper_md = (res / "paper_report" / "report.md").read_text()
    assert "wilcoxon-signed-rank" in paper_md and "NOT a valid test" in paper_md
    assert (res / "report.html").read_text().count("<img") == 6
    for png in (res / "figures").glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 200


def test_config_errors_are_reported_by_the_cli(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("models: [{name: m, kind: musk}]\ndatasets: []\nepochs: 3\n")
    assert main(["eval", "run", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml: unknown key 'epochs' for EvalConfig" in capsys.readouterr().err
    (tmp_path / "bad2.yaml").write_text("models: [{name: m, kind: keras}]\ndatasets: [{spec: pcam, root: .}]\n")
    assert main(["eval", "run", str(tmp_path / "bad2.yaml")]) == 2
    assert "kind 'keras' is not one of" in capsys.readouterr().err
    (tmp_path / "bad3.yaml").write_text("models: [{name: m}]\ndatasets: [{spec: pcam, root: .}]\n")
    assert main(["eval", "run", str(tmp_path / "bad3.yaml"), "--set", "knn_k=many"]) == 2
    assert "key 'knn_k' expects int, got 'many'" in capsys.readouterr().err
    assert main(["eval", "run"]) == 2
    assert "openmusk eval run --example" in capsys.readouterr().err
    assert main(["eval", "report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_model_that_cannot_be_built_fails_its_cells_not_the_run(bench, tmp_path, capsys):
    cfg = yaml.safe_load((bench / "run.yaml").read_text())
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["models"] = [{"name": "missing", "kind": "musk", "pretrained": "nope.safetensors"},
                     {"name": "color_stats", "kind": "factory",   # the factory's module before it moved
                      "factory": "openmusk.eval.encoders:color_stats_encoder", "kwargs": {"img_size": 32}}]
    cfg["datasets"] = [{"spec": str(bench / "hgsc_tiles.yaml"), "root": str(bench / "data"),
                        "tasks": ["knn"]}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "run", str(tmp_path / "run.yaml"), "--workers", "0"]) == 1
    out, err = capsys.readouterr()
    assert "1 cells computed" in out and "1 failed" in out and "cannot build model 'missing'" in out
    assert str(tmp_path / "nope.safetensors") in out   # resolved against the YAML's folder
    assert "is now 'openmusk.encoders:color_stats_encoder'" in err and "--workers is now spelled" in err
    assert (tmp_path / "out" / "color_stats" / "hgsc_tiles" / "knn.json").is_file()
